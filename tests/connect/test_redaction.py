"""No secret reaches an exception, event, repr or log record: token, key, signature and cookie names, their
percent-encoded forms, and names the application registers with ``tether.add_redacted_names``."""

import asyncio

import pytest

import tether
from support import records

SECRET = "S3CRETv4lue"
PARAMS = [
    "access%5Ftoken",
    "refresh_token",
    "id_token",
    "client_secret",
    "api_key",
    "password",
    "pwd",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "sig",
    "signature",
    "my_app_secret",
]


@pytest.fixture
async def refusing_server():
    """A raw asyncio server that rejects every WebSocket handshake with 401 and a cookie."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\nSet-Cookie: sid=" + SECRET.encode() + b"\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


def test_redact_covers_the_names():
    tether.add_redacted_names("my_app_secret")
    for name in PARAMS:
        assert SECRET not in tether.redact(f"wss://h/p?x=1&{name}={SECRET}"), name
    text = tether.redact(f"Cookie: a={SECRET}; b=2\nSet-Cookie: sid={SECRET}; Path=/")
    assert SECRET not in text, text
    with pytest.raises(ValueError):
        tether.add_redacted_names("not a name")
    with pytest.raises(TypeError):
        tether.add_redacted_names(3)


async def everything_shown(url, tether_logs, **kw):
    """Every text a failed first connect to `url` shows: reprs, the error, events, log records."""
    conn = tether.connect(url, open_timeout=2, **kw)
    seen = [repr(conn), conn.url, conn._n.name]
    got = []

    async def watch():
        async for e in conn.events():
            got.append(e)

    watcher = asyncio.ensure_future(watch())
    with pytest.raises(tether.GaveUp) as info:
        await asyncio.wait_for(conn._start(), 10)
    await asyncio.wait_for(watcher, 5)
    err = info.value
    seen += [str(err), repr(err), str(err.last_error), repr(conn), str(conn.stats())]
    seen += [repr(e) for e in got]
    seen += [r.getMessage() for r in records(tether_logs)]
    seen += [str(v) for r in records(tether_logs) for v in r.__dict__.values()]
    assert "401" in str(err)
    return seen


async def test_no_secret_in_errors_events_reprs_or_logs(refusing_server, tether_logs):
    tether.add_redacted_names("my_app_secret")
    query = "&".join(f"{n}={SECRET}" for n in PARAMS)
    url = f"ws://user:{SECRET}@127.0.0.1:{refusing_server}/rtc?{query}"
    seen = await everything_shown(url, tether_logs, headers={"Cookie": f"sid={SECRET}"})
    leaks = [s for s in seen if SECRET in s]
    assert not leaks, leaks


@pytest.mark.parametrize("tail", [f"#access_token={SECRET}", f"?room=1#access_token={SECRET}"])
async def test_a_token_in_the_fragment(refusing_server, tether_logs, tail):
    """As OAuth's implicit flow hands it out: the parameter name was read back to `?` or `&` only."""
    seen = await everything_shown(f"ws://127.0.0.1:{refusing_server}/cb{tail}", tether_logs)
    leaks = [s for s in seen if SECRET in s]
    assert not leaks, leaks


@pytest.mark.parametrize("name", ["api-key", "x-api-key"])
async def test_credential_header_names_as_query_parameters(refusing_server, tether_logs, name):
    """Azure OpenAI's realtime WebSocket takes `?api-key=` from browsers."""
    seen = await everything_shown(f"ws://127.0.0.1:{refusing_server}/rt?api-version=1&{name}={SECRET}", tether_logs)
    leaks = [s for s in seen if SECRET in s]
    assert not leaks, leaks


@pytest.mark.parametrize("sep", ["/", "?", "#", " "])
def test_a_password_with_an_unencoded_delimiter_stays_out_of_the_value_error(sep):
    """The URL then does not parse as meant (`bob` the host, the password its port): the error showed the
    password twice, in the URL and as the port that is not one."""
    with pytest.raises(ValueError) as info:
        tether.connect(f"ws://bob:{SECRET}{sep}x@127.0.0.1:9/p")
    assert SECRET not in str(info.value), str(info.value)
