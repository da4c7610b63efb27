"""Delivery under stress, against a server tether did not write: a `websockets` Sans-I/O server that crashes
after a random 10-250 frames (TCP reset, bare FIN or close 1011) and comes back on the same port
(tests/support/flapping_server.py). Every send that resolved must reach the server or be named by a
`tether.SendFailed`; with no poison message none may fail. benches/bench_flapping.py runs the same with
5,000 messages and more seeds."""

import asyncio

import pytest

import tether
from support.flapping_server import FlappingServer, numbered_run

N = 1500


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(
    ("send_buffer", "in_flight", "pacing"),
    [(1024, 100, 0.0), (1024, 1, 0.0), (1024, 1, 0.001), (64, 30, 0.0)],
    ids=["1024-100", "1024-1", "1024-1-paced", "64-30"],
)
async def test_no_resolved_send_is_lost_while_the_server_flaps(send_buffer, in_flight, pacing, seed):
    n = N // 3 if pacing else N
    async with FlappingServer(seed=seed) as srv:
        run = await asyncio.wait_for(
            numbered_run(srv.url, srv.record, n=n, in_flight=in_flight, pacing=pacing, send_buffer=send_buffer), 60
        )
    assert len(run.resolved) == n
    assert sum(srv.record.crashes.values()) >= 3, srv.record.crashes
    assert not run.lost, f"{len(run.lost)} resolved sends never reached the server and were named by no SendFailed"
    assert not run.named, f"{len(run.named)} messages failed with no poison message: {sorted(run.named)[:5]}"


@pytest.mark.parametrize("seed", [1, 2])
async def test_no_resolved_send_is_lost_with_three_kinds_of_sender_while_the_server_flaps(seed):
    """Sends awaited on the loop, sends left to tasks (`asyncio.create_task(conn.send(m))`) and sends from
    another thread (called there, awaited on the loop through `run_coroutine_threadsafe`), all at once into
    one connection to a server that crashes every 10-250 frames: every send that resolved reaches the
    server, none fails, and each sender's messages reach it in the order they were sent."""
    n = 400
    loop = asyncio.get_running_loop()
    resolved: set[str] = set()

    def from_thread() -> None:
        for i in range(n):
            m = f"h{i}"
            asyncio.run_coroutine_threadsafe(conn.send(m), loop).result(60)  # raises what the send raised
            resolved.add(m)

    async with FlappingServer(seed=seed) as srv:
        conn = tether.connect(
            srv.url, policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none"), quiet_jitter=0, stable_after=0.2
        )
        async with conn:
            thread = loop.run_in_executor(None, from_thread)
            tasks = {}
            for i in range(n):
                await conn.send(f"a{i}")
                resolved.add(f"a{i}")
                tasks[f"t{i}"] = asyncio.create_task(conn.send(f"t{i}"))
                if i % 50 == 0:
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(thread, 60)
            for m, t in tasks.items():
                await asyncio.wait_for(t, 60)
                resolved.add(m)
            await asyncio.wait_for(conn.flush(), 60)
    assert len(resolved) == 3 * n
    assert sum(srv.record.crashes.values()) >= 3, srv.record.crashes
    received = [m for m in srv.record.received if isinstance(m, str)]
    assert not resolved - set(received), sorted(resolved - set(received))[:5]
    for sender in "aht":
        # re-sent after a crash, a message is read again: each sender's first readings are in its order
        firsts = list(dict.fromkeys(m for m in received if m[0] == sender))
        assert firsts == [f"{sender}{i}" for i in range(n)], (sender, firsts[:10])


@pytest.mark.parametrize("busy_core", [False, True], ids=["idle", "one-core-busy"], indirect=True)
async def test_no_resolved_send_is_lost_on_many_connections_at_once_while_the_server_flaps(busy_core):
    """20 connections each send a backlog of 1,000 into the same flapping server at once, with and without
    one core kept busy: every send that resolved reaches the server and none fails."""
    conns, n = 20, 1000

    async def one(k: int) -> set[str]:
        resolved = set()
        conn = tether.connect(
            srv.url,
            send_buffer=64,
            policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="full"),
            quiet_jitter=0,
            stable_after=0.2,
        )
        async with conn:
            for i in range(n):
                await conn.send(f"c{k}-{i}")
                resolved.add(f"c{k}-{i}")
            await conn.flush()
        return resolved

    async with FlappingServer(seed=7) as srv:
        runs = await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(conns))), 120)
    resolved = set().union(*runs)
    assert len(resolved) == conns * n
    assert sum(srv.record.crashes.values()) >= conns, srv.record.crashes
    missing = resolved - set(srv.record.received)
    assert not missing, f"{len(missing)} resolved sends never reached the server: {sorted(missing)[:5]}"


async def test_a_poison_message_is_failed_alone_while_the_server_also_flaps():
    n = 600
    async with FlappingServer(seed=3, poison="POISON") as srv:
        conn = tether.connect(
            srv.url, policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none"), quiet_jitter=0, stable_after=0.2
        )
        async with conn:
            for i in range(n):
                await conn.send(f"m{i} POISON" if i == n // 2 else f"m{i}")
            with pytest.raises(tether.SendFailed) as ei:
                await asyncio.wait_for(conn.flush(), 60)
            # nothing else fails: a flush after the poison one went is clean
            await asyncio.wait_for(conn.flush(), 60)
    e = ei.value
    assert e.messages == [f"m{n // 2} POISON"], e.messages
    [f] = e.failures
    assert (f.seq, f.message, f.losses, f.code) == (n // 2 + 1, f"m{n // 2} POISON", 3, None), f
    assert "3 connection losses" in f.reason and "#301" in str(e), str(e)
    received = set(srv.record.received)
    assert {f"m{i}" for i in range(n) if i != n // 2} <= received
    assert srv.record.poisoned >= 3, srv.record.poisoned


async def test_close_1009_fails_that_one_message_while_the_server_also_flaps():
    n, big = 600, "B" * 5000
    async with FlappingServer(seed=4, max_size=1000) as srv:
        conn = tether.connect(
            srv.url, policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none"), quiet_jitter=0, stable_after=0.2
        )
        async with conn:
            for i in range(n):
                await conn.send(big if i == n // 2 else f"m{i}")
            with pytest.raises(tether.SendFailed) as ei:
                await asyncio.wait_for(conn.flush(), 60)
            await asyncio.wait_for(conn.flush(), 60)
    e = ei.value
    assert e.messages == [big]
    assert (e.code, e.size, e.failures[0].seq, e.failures[0].code) == (1009, 5000, n // 2 + 1, 1009)
    assert "1009" in str(e) and big not in str(e)
    assert {f"m{i}" for i in range(n) if i != n // 2} <= set(srv.record.received)
    assert srv.record.too_big == 1, srv.record.too_big


async def test_a_flush_names_every_message_it_fails_and_they_can_be_re_sent():
    big_bytes, big_text = b"\x01" * 3000, "T" * 2000
    async with FlappingServer(max_size=1000, crash_after=None) as srv:
        conn = tether.connect(srv.url, policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none"), quiet_jitter=0)
        async with conn:
            for m in ["ok0", big_bytes, "ok1", big_text, "ok2"]:
                await conn.send(m)
            with pytest.raises(tether.SendFailed) as ei:
                await asyncio.wait_for(conn.flush(), 30)
            e = ei.value
            # every failed message, in send order, with its number and reason; the text names no payload
            assert e.messages == [big_bytes, big_text]
            assert [(f.seq, f.code, f.losses) for f in e.failures] == [(2, 1009, None), (4, 1009, None)]
            assert all(isinstance(f, tether.FailedMessage) and "1009" in f.reason for f in e.failures)
            assert "2 messages" in str(e) and "#2" in str(e) and "#4" in str(e), str(e)
            assert "TTTT" not in str(e) and "TTTT" not in repr(e)
            # the README's recipe: send a too-big message again in parts
            for f in e.failures:
                for i in range(0, len(f.message), 1000):
                    await conn.send(f.message[i : i + 1000])
            await asyncio.wait_for(conn.flush(), 30)
    assert srv.record.received.count("ok1") >= 1 and srv.record.received[-1] == big_text[1000:]
    assert b"".join(m for m in srv.record.received if isinstance(m, bytes)) == big_bytes


def fast(**kw):
    return dict(policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none", **kw), quiet_jitter=0)


# Each connection reads the message, then closes with the code before it answers the ping that follows it:
# five losses in a row that confirmed nothing, then the server is gone (connects refused) and the client
# gives up. A close the server chose (normal, going away, restart, try again later, bad gateway, an
# application code) says why it closed: it blames no message, so the message is still unconfirmed at the
# end, named by the GaveUp. A loss that looks like the message killed the server is a strike, and the
# third one fails it.
@pytest.mark.parametrize("code", ["1000", "1001", "1012", "1013", "1014", "3000", "4000", "4999"])
async def test_a_close_the_server_chose_never_fails_the_message_in_flight(code):
    async with FlappingServer(crash_after=(1, 1), modes=(code,), connections=5) as srv:
        conn = tether.connect(srv.url, stable_after=0, **fast(max_attempts=2))
        async with conn:
            await conn.send("join-request")
            with pytest.raises(tether.GaveUp) as ei:
                await asyncio.wait_for(conn.flush(), 30)
    assert srv.record.connections == 5 and srv.record.crashes[code] == 5, srv.record
    assert (ei.value.messages, ei.value.failures) == (["join-request"], []), ei.value.failures


@pytest.mark.parametrize("mode", ["rst", "fin", "1011", "1002", "1003", "1007"])
async def test_a_loss_that_looks_like_the_message_killed_the_server_is_a_strike(mode):
    async with FlappingServer(crash_after=(1, 1), modes=(mode,)) as srv:
        conn = tether.connect(srv.url, **fast())
        async with conn:
            await conn.send("join-request")
            with pytest.raises(tether.SendFailed) as ei:
                await asyncio.wait_for(conn.flush(), 30)
    [f] = ei.value.failures
    assert (f.message, f.losses) == ("join-request", 3), f
    assert srv.record.connections == 3, srv.record
