"""The lifecycle SignalServer and ChaosProxy share: not running until started (idempotently), not
running again after aclose(), and every call in between says how to start one."""

import pytest

from tether.testing import ChaosProxy, SignalServer


async def test_signal_server_and_chaos_proxy_share_one_lifecycle():
    server = SignalServer()
    with pytest.raises(RuntimeError, match=r"SignalServer is not running; use `async with SignalServer\(\)`"):
        server.stats()
    async with server:
        await server.start()  # idempotent: the same server keeps running
        port = server.port
        proxy = ChaosProxy(f"127.0.0.1:{port}")
        with pytest.raises(RuntimeError, match=r"ChaosProxy is not running; use `async with ChaosProxy\(...\)`"):
            proxy.stats()
        await proxy.start()
        first = proxy.port
        await proxy.start()
        assert proxy.port == first and server.port == port
        assert set(proxy.stats()) == {
            "accepted",
            "active",
            "bytes_up",
            "bytes_down",
            "resets",
            "closes",
            "upstream_failures",
        }
        assert "not running" not in repr(proxy)
        await proxy.aclose()
        assert "not running" in repr(proxy)
        with pytest.raises(RuntimeError, match="ChaosProxy is not running"):
            proxy.reset()
        assert set(server.stats()) == {
            "tcp_accepts",
            "handshakes",
            "refused",
            "active",
            "messages_in",
            "messages_out",
            "pings",
        }
    with pytest.raises(RuntimeError, match="SignalServer is not running"):
        server.drop()
