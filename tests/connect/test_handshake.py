"""The opening handshake and the end of a connection, against servers tether did not write (the
`websockets` server with `process_request`, raw asyncio servers): a first connect that can never
succeed raises at once or by `connect_timeout`, redirects are followed as websockets follows them
(bounded, credentials kept to their origin), and a close code declared final ends `async for`."""

import asyncio
import base64
import hashlib
import inspect
import logging
import time
from http import HTTPStatus

import pytest
import websockets
import websockets.exceptions

import tether
from support import FAST, MS, accept_key, eventually, policy, records
from tether import events as ev


def url_of(srv, path="/"):
    return f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{path}"


async def echo(ws):
    async for m in ws:
        await ws.send(m)


def answer(status, body="", location=None):
    """A `process_request` hook answering every handshake with `status` (and a Location)."""

    def process_request(connection, request):
        response = connection.respond(status, body)
        if location is not None:
            response.headers["Location"] = location
        return response

    return process_request


async def gave_up(conn, within):
    t0 = time.monotonic()
    with pytest.raises(tether.GaveUp) as info:
        await asyncio.wait_for(conn._start(), within + 10)
    return info.value, time.monotonic() - t0


# -- a first connect that can never succeed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"), [(HTTPStatus.NOT_FOUND, "no such room"), (HTTPStatus.OK, "<html>a web page</html>")]
)
async def test_a_first_connect_answered_with_a_non_101_status_raises_at_once(status, body):
    # before: retried forever with WARNINGs (the wait_for below timed out)
    async with websockets.serve(echo, "127.0.0.1", 0, process_request=answer(status, body)) as srv:
        conn = tether.connect(url_of(srv), **FAST)
        e, took = await gave_up(conn, within=3.0)
    assert e.attempts == 1 and e.reason == "fatal error", e
    assert e.last_error.http_status == int(status)
    assert f"HTTP {int(status)}" in str(e) and "first connect" in str(e), str(e)
    assert took < 3.0, took  # at once, not retried
    assert conn.state == "failed"


@pytest.mark.parametrize("status", [HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS])
async def test_a_first_connect_retries_a_busy_server(status):
    refused = []

    def process_request(connection, request):
        if len(refused) < 2:
            refused.append(status)
            return connection.respond(status, "busy")
        return None

    async with websockets.serve(echo, "127.0.0.1", 0, process_request=process_request) as srv:
        async with tether.connect(url_of(srv), policy=policy(), quiet_jitter=0, **FAST) as conn:
            await conn.send("in")
            assert await asyncio.wait_for(conn.recv(), 5) == "in"
    assert refused == [status, status]


async def test_after_a_first_success_the_policy_retries_the_same_answer():
    handshakes = []

    def process_request(connection, request):
        handshakes.append(request.path)
        if 2 <= len(handshakes) <= 3:  # the server is being redeployed: 404 twice, then back
            return connection.respond(HTTPStatus.NOT_FOUND, "gone for now")
        return None

    async def handler(ws):
        if len(handshakes) == 1:
            await ws.close(1012, "restarting")
            return
        await echo(ws)

    async with websockets.serve(handler, "127.0.0.1", 0, process_request=process_request) as srv:
        conn = tether.connect(url_of(srv), policy=policy(), quiet_jitter=0, **FAST)
        stream = conn.events()
        got = []
        async with conn:

            async def until_reconnected():
                async for e in stream:
                    got.append(e)
                    if isinstance(e, ev.Reconnected):
                        return

            await asyncio.wait_for(until_reconnected(), 10)
            await conn.send("back")
            assert await asyncio.wait_for(conn.recv(), 5) == "back"
    assert len(handshakes) == 4, handshakes
    assert sum(isinstance(e, ev.Reconnecting) for e in got) == 3, got  # the two 404s were retried


async def test_a_wrong_sec_websocket_accept_fails_a_first_connect():
    requests = 0

    async def handle(reader, writer):
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        wrong = base64.b64encode(hashlib.sha1(b"not the client's key").digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {wrong}\r\n\r\n".encode()
        )
        await writer.drain()
        await reader.read()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with srv:
        conn = tether.connect(url_of(srv), **FAST)
        e, took = await gave_up(conn, within=3.0)
    assert "Sec-WebSocket-Accept" in str(e), str(e)
    assert e.attempts == 1 and requests == 1 and took < 3.0


async def test_a_101_on_http_1_0_is_not_an_upgrade():
    """101 and Upgrade are HTTP/1.1's (websockets refuses the answer: "expected HTTP/1.1"): the first
    connect fails at once, naming the version. Before, tether opened the connection."""

    async def handle(reader, writer):
        accept = accept_key(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await writer.drain()
        await reader.read()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with srv:
        with pytest.raises(websockets.exceptions.InvalidMessage):
            await websockets.connect(url_of(srv), open_timeout=5)
        conn = tether.connect(url_of(srv), **FAST)
        e, took = await gave_up(conn, within=3.0)
    assert "a 101 on HTTP/1.0" in str(e), str(e)
    assert e.attempts == 1 and took < 3.0


async def test_a_first_connect_to_a_down_server_gives_up_at_connect_timeout():
    # before: still connecting after 15 s with the default policy, forever
    conn = tether.connect("ws://127.0.0.1:1/", connect_timeout=1.5, **FAST)
    e, took = await gave_up(conn, within=1.5)
    assert e.reason == "connect_timeout exceeded", e
    assert e.attempts >= 2
    assert "refused" in str(e.last_error).lower(), e.last_error
    assert took < 1.5 + 1.0, took
    assert conn.state == "failed"


def test_the_first_connect_is_bounded_by_default():
    assert inspect.signature(tether.connect).parameters["connect_timeout"].default == 30.0
    with pytest.raises(ValueError, match="connect_timeout"):
        tether.connect("ws://127.0.0.1:1/", connect_timeout=0)


async def test_connect_timeout_none_leaves_the_first_connect_to_the_policy():
    conn = tether.connect("ws://127.0.0.1:1/", connect_timeout=None, policy=policy(max_attempts=3), **FAST)
    e, _ = await gave_up(conn, within=3.0)
    assert e.reason == "attempt budget exhausted" and e.attempts == 4, e


async def test_connect_timeout_cuts_an_attempt_that_hangs():
    # a server that accepts TCP and never answers the upgrade: the attempt is cut at connect_timeout,
    # not at the end of its open_timeout
    async def hang(reader, writer):
        try:
            await reader.read()
        finally:
            writer.close()  # since Python 3.12.1 the server's wait_closed waits for it

    srv = await asyncio.start_server(hang, "127.0.0.1", 0)
    async with srv:
        conn = tether.connect(url_of(srv), connect_timeout=1.0, **{**FAST, "open_timeout": 20})
        e, took = await gave_up(conn, within=1.0)
    assert e.reason == "connect_timeout exceeded" and took < 1.0 + 1.0, (e, took)


# -- redirects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_followed(status):
    paths = []

    def process_request(connection, request):
        paths.append(request.path)
        if request.path == "/old":
            return answer(status, location="/new?room=1")(connection, request)
        return None

    # before: "handshake rejected with HTTP 302", retried forever
    async with websockets.serve(echo, "127.0.0.1", 0, process_request=process_request) as srv:
        async with tether.connect(url_of(srv, "/old"), **FAST) as conn:
            await conn.send("moved")
            assert await asyncio.wait_for(conn.recv(), 5) == "moved"
    assert paths == ["/old", "/new?room=1"]


async def test_a_redirect_to_another_origin_carries_no_credentials():
    seen = {}
    to = {}

    def record(server):
        def process_request(connection, request):
            seen[(server, request.path)] = request.headers  # case-insensitive
            if request.path == "/":
                return answer(302, location=to["url"])(connection, request)
            return None

        return process_request

    headers = {"Authorization": "Bearer SECRET", "Cookie": "session=SECRET", "X-Room": "r1"}
    async with (
        websockets.serve(echo, "127.0.0.1", 0, process_request=record("a")) as a,
        websockets.serve(echo, "127.0.0.1", 0, process_request=record("b")) as b,
    ):
        to["url"] = url_of(b, "/landing")  # another port: another origin
        async with tether.connect(url_of(a), headers=headers, **FAST) as conn:
            await conn.send("x")
            assert await asyncio.wait_for(conn.recv(), 5) == "x"
        # within the origin, credentials go along (so the test can tell them apart)
        to["url"] = "/landing"
        async with tether.connect(url_of(a), headers=headers, **FAST):
            pass
    assert seen[("a", "/")]["Authorization"] == "Bearer SECRET"
    assert seen[("a", "/landing")]["Authorization"] == "Bearer SECRET"
    assert seen[("a", "/landing")]["Cookie"] == "session=SECRET"
    other = seen[("b", "/landing")]
    assert "Authorization" not in other and "Cookie" not in other, other
    assert other["X-Room"] == "r1"


async def test_across_origins_websockets_drops_three_credential_headers_and_tether_every_one():
    """The README's comparison, measured against the installed websockets client: both follow the same
    cross-origin redirect with the same headers. websockets 16.1 and later strip Authorization, Cookie and
    Proxy-Authorization (earlier releases forward everything); tether also strips API-key headers and names
    given to add_redacted_names."""
    from websockets.asyncio.client import connect as ws_connect

    seen: dict[str, dict[str, str]] = {}
    to = {}

    def record(server):
        def process_request(connection, request):
            if request.path == "/":
                return answer(302, location=to["url"])(connection, request)
            seen[request.headers["X-Client"]] = {k.lower(): v for k, v in request.headers.raw_items()}
            return None

        return process_request

    secrets = {"Authorization": "Bearer S", "Cookie": "s=S", "Proxy-Authorization": "Basic S", "X-Api-Key": "S"}
    tether.add_redacted_names("x-tenant-token")
    secrets["X-Tenant-Token"] = "S"
    async with (
        websockets.serve(echo, "127.0.0.1", 0, process_request=record("a")) as a,
        websockets.serve(echo, "127.0.0.1", 0, process_request=record("b")) as b,
    ):
        to["url"] = url_of(b, "/landing")
        async with ws_connect(url_of(a), additional_headers={**secrets, "X-Client": "websockets"}):
            pass
        async with tether.connect(url_of(a), headers={**secrets, "X-Client": "tether"}, **FAST):
            pass
    kept = {client: sorted(k for k in h if k in {s.lower() for s in secrets}) for client, h in seen.items()}
    strips = tuple(int(p) for p in websockets.__version__.split(".")[:2]) >= (16, 1)
    by_websockets = ["x-api-key", "x-tenant-token"] if strips else sorted(s.lower() for s in secrets)
    assert kept == {"websockets": by_websockets, "tether": []}, (websockets.__version__, kept)


async def test_a_redirect_loop_stops_after_10_redirects():
    requests = 0

    async def handle(reader, writer):
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with srv:
        conn = tether.connect(url_of(srv, "/loop"), **FAST)
        e, took = await gave_up(conn, within=3.0)
    assert "more than 10 redirects" in str(e), str(e)
    assert e.last_error.http_status == 302
    assert requests == 11 and e.attempts == 1 and took < 3.0, (requests, took)


async def test_redirect_urls_are_redacted_in_logs(tether_logs):
    def process_request(connection, request):
        if request.path.startswith("/old"):
            return answer(307, location="/new?access_token=SECRET2")(connection, request)
        return None

    async with websockets.serve(echo, "127.0.0.1", 0, process_request=process_request) as srv:
        async with tether.connect(url_of(srv, "/old?token=SECRET1"), **FAST):
            pass
    logged = [r.getMessage() for r in records(tether_logs)]
    hops = [m for m in logged if "redirect" in m]
    assert hops and "/new?access_token=REDACTED" in hops[0], logged
    assert not [m for m in logged if "SECRET" in m], logged


async def test_a_redirect_to_a_non_websocket_url_is_not_followed():
    async with websockets.serve(echo, "127.0.0.1", 0, process_request=answer(302, location="https://x.test/")) as srv:
        conn = tether.connect(url_of(srv), **FAST)
        e, _ = await gave_up(conn, within=3.0)
    assert "not a WebSocket URL" in str(e) and e.attempts == 1, str(e)


# -- close codes declared final ---------------------------------------------------------------------


def closing_server(code, reason="bye"):
    """A server that sends one message then closes with `code`, on every connection; counts them."""
    connections = []

    async def handler(ws):
        connections.append(ws)
        await ws.send(f"hello {len(connections)}")
        await ws.close(code, reason)

    return handler, connections


async def test_a_final_close_code_ends_async_for_cleanly():
    handler, connections = closing_server(1000)
    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        # before: a TypeError (no such option), and without it the loop reconnected forever
        conn = await tether.connect(url_of(srv), final_close_codes=(1000,), policy=policy(), **FAST)
        got = [m async for m in conn]  # ends, no exception
        assert got == ["hello 1"]
        assert conn.state == "closed"
        with pytest.raises(tether.ConnectionClosed) as info:
            await conn.recv()
        assert info.value.code == 1000 and "bye" in str(info.value), info.value
        await conn.aclose()
        await asyncio.sleep(200 * MS)  # room for a reconnect, which must not happen
    assert len(connections) == 1


async def test_by_default_a_normal_closure_reconnects():
    handler, connections = closing_server(1000)
    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        async with tether.connect(url_of(srv), policy=policy(), quiet_jitter=0, **FAST) as conn:
            assert await asyncio.wait_for(conn.recv(), 5) == "hello 1"
            assert await asyncio.wait_for(conn.recv(), 5) == "hello 2"
    assert len(connections) >= 2


async def test_a_fatal_close_code_still_raises_gave_up():
    handler, _ = closing_server(1000)
    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        conn = tether.connect(url_of(srv), fatal_close_codes=(1000,), policy=policy(), **FAST)
        with pytest.raises(tether.GaveUp, match="1000"):
            # the close may come before the first connect's await returned: then the await raises it
            await conn
            async for _ in conn:
                pass
        assert conn.state == "failed"


def test_a_close_code_cannot_be_both_fatal_and_final():
    with pytest.raises(ValueError, match="1000"):
        tether.connect("ws://127.0.0.1:1/", fatal_close_codes=(1000,), final_close_codes=(1000, 4000))


@pytest.mark.parametrize("arg", ["fatal_close_codes", "final_close_codes"])
@pytest.mark.parametrize(
    ("codes", "error", "said"),
    [
        ((70000,), ValueError, r"70000 is outside 1000\.\.4999"),
        ((-1,), ValueError, r"-1 is outside 1000\.\.4999"),
        ((999,), ValueError, r"999 is outside 1000\.\.4999"),
        ((5000,), ValueError, r"5000 is outside 1000\.\.4999"),
        ((1005,), ValueError, r"1005 .*never arrives"),
        ((1006,), ValueError, r"1006 .*never arrives"),
        ((1004,), ValueError, r"1004 .*never arrives"),
        ((1015,), ValueError, r"1015 .*never arrives"),
        ((2000,), ValueError, r"2000 .*never arrives"),
        ((True,), TypeError, r"int close codes, not bool"),
        ((1000.5,), TypeError, r"int close codes, not float"),
        (("1000",), TypeError, r"int close codes, not str"),
        ("1000", TypeError, r"int close codes, not str"),
        (1000, TypeError, r"an iterable of int close codes"),
    ],
)
def test_close_codes_that_can_never_arrive_are_refused_naming_the_argument(arg, codes, error, said):
    with pytest.raises(error, match=f"{arg}.*{said}"):
        tether.connect("ws://127.0.0.1:1/", **{arg: codes})
    # every code a server may send is accepted
    tether.connect("ws://127.0.0.1:1/", **{arg: (1000, 1003, 1011, 1014, 3000, 4999)})


# -- when events() starts delivering ----------------------------------------------------------------


async def test_events_delivers_what_happens_after_the_call_even_before_the_first_anext():
    go = asyncio.Event()
    first = []

    async def handler(ws):
        if not first:
            first.append(ws)
            await go.wait()
            ws.transport.abort()  # a TCP reset, no close frame
            return
        await echo(ws)

    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        async with tether.connect(url_of(srv), policy=policy(), quiet_jitter=0, **FAST) as conn:
            stream = conn.events()  # subscribed here, though nothing iterates it until the end
            go.set()
            await eventually(lambda: conn.stats()["connects"] >= 2, what="the reconnect")
            got = []
            while (e := stream.try_next()) is not None:
                got.append(type(e))
    assert got[:1] == [ev.ConnectionLost] and ev.Reconnected in got, got


async def test_a_first_connect_gave_up_logs_one_error(tether_logs):
    async with websockets.serve(echo, "127.0.0.1", 0, process_request=answer(HTTPStatus.NOT_FOUND)) as srv:
        await gave_up(tether.connect(url_of(srv), **FAST), within=3.0)
    levels = [r.levelno for r in records(tether_logs) if r.levelno >= logging.WARNING]
    assert levels == [logging.ERROR], levels  # no WARNING per retry: there is none


async def hello(ws):
    await ws.send(f"hello {ws.subprotocol}")
    await ws.wait_closed()


async def test_credentials_in_the_url_are_sent_as_basic_authorization_like_websockets(tether_logs):
    """websockets' client turns `user:password@` into `Authorization: Basic`; tether sent none (a server
    behind Basic auth answered 401, fatal on a first connect). The password stays out of every record."""
    user, password = "alice", "s3cret"  # percent-decoding (a Rust test) is not done by every websockets
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def require_basic(connection, request):
        if request.headers.get("Authorization") != expected:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "")
        return None

    async with websockets.serve(hello, "127.0.0.1", 0, process_request=require_basic) as srv:
        url = url_of(srv).replace("ws://", f"ws://{user}:{password}@")
        async with websockets.connect(url, open_timeout=10) as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == "hello None"
        async with tether.connect(url, policy=policy(), **FAST) as conn:
            assert await asyncio.wait_for(conn.recv(), 10) == "hello None"
            assert "s3cret" not in repr(conn)
    assert not [r for r in records(tether_logs) if "s3cret" in r.getMessage()]


async def test_the_url_scheme_is_case_insensitive():
    """RFC 3986 §3.1: `WS://host/` is `ws://host/`, as websockets reads it, in the URL given and in a
    redirect's `Location`. Before, tether.connect raised ValueError ("URL scheme must be ws or wss, got
    \"WS\"") and a redirect to `WS://` was not followed."""

    def upper_case_redirect(connection, request):
        if request.path == "/old":
            return answer(302, location=url_of(srv, "/new").replace("ws://", "WS://"))(connection, request)
        return None

    async with websockets.serve(hello, "127.0.0.1", 0, process_request=upper_case_redirect) as srv:
        upper = url_of(srv).replace("ws://", "WS://")
        async with websockets.connect(upper, open_timeout=10) as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == "hello None"
        for url in (upper, url_of(srv, "/old")):
            async with tether.connect(url, policy=policy(), **FAST) as conn:
                assert await asyncio.wait_for(conn.recv(), 10) == "hello None"


async def test_a_subprotocol_asked_for_in_the_headers_may_be_picked():
    """Without a `subprotocols=` option, the application's own `Sec-WebSocket-Protocol` header asks for
    one; an answer that picked it was refused as picking one not asked for (RFC 6455 §4.1 refuses only
    that), so a server that requires one (graphql-ws, MQTT, STOMP) could never be reached."""
    async with websockets.serve(hello, "127.0.0.1", 0, subprotocols=["chat"]) as srv:
        headers = {"Sec-WebSocket-Protocol": "graphql-ws, chat"}
        async with tether.connect(url_of(srv), headers=headers, policy=policy(), **FAST) as conn:
            assert await asyncio.wait_for(conn.recv(), 10) == "hello chat"
    async with websockets.serve(
        hello, "127.0.0.1", 0, subprotocols=["chat"], select_subprotocol=lambda c, s: "chat"
    ) as srv:
        conn = tether.connect(url_of(srv), policy=policy(), **FAST)
        with pytest.raises(tether.GaveUp, match="subprotocol"):
            await asyncio.wait_for(conn._start(), 10)
