"""logger= on every tether object that logs: its records go to that logger, with the same extra fields,
and none of them to ``tether.*``. The Rust-side filter includes the given logger's level."""

import asyncio
import gc
import logging
import weakref

import pytest

import tether


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def routed():
    """A handler on ``livekit.agents`` (DEBUG) and one on ``tether`` (DEBUG): (framework, tether)."""
    framework, own = logging.getLogger("livekit.agents"), logging.getLogger("tether")
    fh, th = ListHandler(), ListHandler()
    saved = framework.level, own.level
    framework.setLevel(logging.DEBUG)
    own.setLevel(logging.DEBUG)
    framework.addHandler(fh)
    own.addHandler(th)
    tether.sync_log_level()
    yield fh.records, th.records
    framework.removeHandler(fh)
    own.removeHandler(th)
    framework.setLevel(saved[0])
    own.setLevel(saved[1])
    tether.sync_log_level()


def only_framework(framework, own):
    assert framework, "no record reached the framework's logger"
    assert all(r.name == "livekit.agents" for r in framework)
    assert not own, [(r.name, r.getMessage()) for r in own]


async def test_connect_records_go_to_the_given_logger(routed):
    """Both the retry records (tether.reconnect) and the connection's own (tether.ws) are routed."""
    framework, own = routed

    async def accept_and_drop(reader, writer):  # not a WebSocket server: every handshake fails
        writer.close()

    server = await asyncio.start_server(accept_and_drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = tether.connect(
            f"ws://127.0.0.1:{port}/",
            policy=tether.Backoff(0.01, jitter="none", max_attempts=3),
            quiet_jitter=0,
            name="lk",
            logger=logging.getLogger("livekit.agents"),
        )
        with pytest.raises(tether.GaveUp):
            await asyncio.wait_for(conn._start(), 30)
        await conn.aclose()
    finally:
        server.close()
        await server.wait_closed()
    only_framework(framework, own)
    opening = [r for r in framework if r.getMessage().startswith("opening WebSocket")]
    assert opening and opening[0].strategy == "connect" and opening[0].attempt == 1  # a tether.ws record
    retries = [r for r in framework if hasattr(r, "retry_count") and hasattr(r, "delay_s")]
    assert retries and retries[0].tether_name == "lk"
    assert retries[0].levelno == logging.DEBUG and retries[0].delay_s == 0.0  # quiet_jitter=0: at once
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith("gave up on lk") for r in framework)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), ("soon", TypeError)])
def test_connect_quiet_jitter_is_checked(bad, exc):
    with pytest.raises(exc):
        tether.connect("ws://127.0.0.1:1/", quiet_jitter=bad)


def test_connect_logger_is_checked():
    with pytest.raises(TypeError):
        tether.connect("ws://127.0.0.1:1/", logger=42)


async def test_procpool_records_go_to_the_given_logger(routed):
    framework, own = routed

    async def spawn():
        raise OSError("no worker today")

    pool = tether.ProcPool(
        spawn=spawn, acquire_attempts=2, respawn=tether.Backoff(0.01, jitter="none"), logger="livekit.agents"
    )
    try:
        with pytest.raises(tether.PoolExhausted):
            await asyncio.wait_for(pool.acquire(), 30)
    finally:
        await pool.aclose()
    only_framework(framework, own)
    failed = [r for r in framework if r.getMessage().startswith("spawn failed")]
    assert failed and failed[0].levelno == logging.WARNING and "no worker today" in failed[0].error
    assert failed[0].consecutive == 1


async def test_watchdog_alarm_goes_to_the_given_logger(routed):
    framework, own = routed
    wd = tether.Watchdog("room", logger="livekit.agents")
    alarms = wd.alarms()
    wd.dwell("reconnecting", 0.1)
    wd.set_state("reconnecting")
    await asyncio.wait_for(alarms.__anext__(), 10)
    wd.close()
    only_framework(framework, own)
    (alarm,) = framework
    assert alarm.levelno == logging.WARNING and alarm.kind == "dwell" and alarm.key == "reconnecting"
    assert alarm.watchdog == "room" and alarm.limit_s == pytest.approx(0.1)


async def test_readiness_gate_records_go_to_the_given_logger(routed):
    framework, own = routed
    gate = tether.ReadinessGate(logger=logging.getLogger("livekit.agents"))

    async def dispatch(job_id, attempt):
        pass

    with pytest.raises(tether.NotReady):
        await gate.dispatch("job-r", dispatch, timeouts={"joined": 0.1})
    only_framework(framework, own)
    # the NotReady is the failure's report; its record (DEBUG) still goes to the given logger
    stuck = [r for r in framework if "never joined" in r.getMessage()]
    assert stuck and stuck[0].job_id == "job-r" and stuck[0].stage == "joined", [r.getMessage() for r in framework]
    assert stuck[0].levelno == logging.DEBUG


@pytest.mark.parametrize("make", [lambda lg: tether.Watchdog(logger=lg), lambda lg: tether.ReadinessGate(logger=lg)])
def test_logger_argument_is_checked(make):
    with pytest.raises(TypeError):
        make(42)
    with pytest.raises(ValueError):
        make("")


def test_procpool_logger_argument_is_checked():
    async def spawn():
        return None

    with pytest.raises(TypeError):
        tether.ProcPool(spawn=spawn, logger=42)


def test_event_stream_lag_warning_goes_to_the_objects_logger(routed):
    """The "consumer fell behind" warning of an object's event stream is one of its records too."""
    framework, own = routed
    r = tether.Reconnector(tether.Backoff(0.01, jitter="none"), name="lagging", logger="livekit.agents")
    stream = r.events()
    for _ in range(1100):  # more than the stream buffers
        r.failed(OSError("refused"))
    assert stream.try_next() is not None
    only_framework(framework, own)
    lag = [x for x in framework if "fell behind" in x.getMessage()]
    assert len(lag) == 1 and lag[0].levelno == logging.WARNING and lag[0].dropped > 0


def test_logger_name_routes_an_objects_records_there(caplog):
    """logger=: records of that object go to the framework's logger with the same extra
    fields; tether's own loggers get none of them; the framework's filters apply."""
    tether_logger = logging.getLogger("tether")
    saved = tether_logger.level
    tether_logger.setLevel(logging.WARNING)
    caplog.set_level(logging.DEBUG, logger="livekit.agents")
    try:
        r = tether.Reconnector(tether.Backoff(0.05, jitter="none"), name="livekit", logger="livekit.agents")
        assert tether.sync_log_level() == logging.DEBUG  # the framework logger's DEBUG is in the Rust-side filter
        r.failed(OSError("refused"))
        r.failed(OSError("refused"))
        recs = [x for x in caplog.records if x.name == "livekit.agents"]
        assert [x.levelno for x in recs] == [logging.DEBUG, logging.WARNING]
        assert [x.retry_count for x in recs] == [1, 2]
        assert recs[1].delay_s == 0.05 and recs[1].tether_name == "livekit" and recs[1].error == "OSError: refused"
        assert not hasattr(recs[0], "logger")  # the routing key is not an extra field
        assert not [x for x in caplog.records if x.name.startswith("tether")]

        # an existing filter on the framework logger keeps working (users demote livekit's retry WARNING with one)
        class DemoteRetries(logging.Filter):
            def filter(self, record):
                return not record.getMessage().startswith("failed to connect")

        demote = DemoteRetries()
        logging.getLogger("livekit.agents").addFilter(demote)
        try:
            caplog.clear()
            r.failed(OSError("refused"))
            assert not caplog.records
        finally:
            logging.getLogger("livekit.agents").removeFilter(demote)
    finally:
        tether_logger.setLevel(saved)
        tether.sync_log_level()


def test_logger_object_and_rust_side_filter():
    lg = logging.Logger("standalone")  # not made by getLogger: routed by identity, not by name
    handler = ListHandler()
    lg.addHandler(handler)
    lg.setLevel(logging.WARNING)
    tether_logger = logging.getLogger("tether")
    saved = tether_logger.level
    tether_logger.setLevel(logging.WARNING)
    try:
        r = tether.Reconnector(tether.Backoff(0.05, jitter="none"), name="obj", logger=lg)
        assert tether.sync_log_level() == logging.WARNING
        r.failed(OSError("a"))  # quiet: DEBUG, filtered in Rust
        r.failed(OSError("b"))  # WARNING
        assert [x.levelno for x in handler.records] == [logging.WARNING]
        assert handler.records[0].retry_count == 2 and handler.records[0].name == "standalone"
    finally:
        tether_logger.setLevel(saved)
        tether.sync_log_level()


@pytest.mark.parametrize("make", [tether.Reconnector, tether.Watchdog], ids=lambda m: m.__name__)
async def test_a_logger_made_for_a_session_is_released_with_its_objects(make):
    """A ``logging.Logger`` made directly (one per session, not by getLogger) and given as logger= lives
    as long as the tether object that uses it: its records keep going there while the object lives, and
    once the object is dropped the logger (its handlers) is freed and its DEBUG no longer lowers the
    Rust-side filter. Before, tether._logging kept every such logger for good, and its level with it."""
    tether_logger = logging.getLogger("tether")
    saved = tether_logger.level
    tether_logger.setLevel(logging.WARNING)
    try:
        lg = logging.Logger("agent.session")
        lg.setLevel(logging.DEBUG)
        handler = ListHandler()
        lg.addHandler(handler)
        freed = weakref.ref(lg)
        obj = make(logger=lg)
        del lg  # the application keeps only the tether object
        gc.collect()
        assert tether.sync_log_level() == logging.DEBUG
        if isinstance(obj, tether.Reconnector):
            obj.failed(OSError("refused"))
            assert [x.levelno for x in handler.records] == [logging.DEBUG]
        else:
            obj.close()
        del obj
        await asyncio.sleep(0)
        gc.collect()
        assert freed() is None
        assert tether.sync_log_level() == logging.WARNING
    finally:
        tether_logger.setLevel(saved)
        tether.sync_log_level()


@pytest.mark.parametrize("bad,exc", [(42, TypeError), (b"name", TypeError), ("", ValueError)])
def test_reconnector_logger_argument_is_checked(bad, exc):
    with pytest.raises(exc):
        tether.Reconnector(logger=bad)
