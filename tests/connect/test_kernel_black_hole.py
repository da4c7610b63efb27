"""A true black hole in the kernel: a signaling server in its own network namespace behind a veth
pair; taking the namespace's link down drops every packet (no FIN, no RST). tether.connect must detect
the silence by its ping deadline and recover once the link is back.

Needs root and iproute2 (`ip netns`); skipped with the reason otherwise. Only addresses inside the
namespaces created here are used.
"""

import asyncio
import subprocess
import sys
import textwrap
import time

import tether
from support import MS
from support.netns import NS_IF, NS_IP, sh
from tether import events as ev

SERVER = textwrap.dedent(
    f"""
    import asyncio, sys
    from tether.testing import SignalServer
    async def main():
        async with SignalServer("{NS_IP}", 0) as srv:
            print(srv.port, flush=True)
            await asyncio.sleep(120)
    asyncio.run(main())
    """
)


async def test_kernel_blackhole_is_detected_and_recovered(netns):
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", SERVER, stdout=subprocess.PIPE
    )
    try:
        port = int((await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip())
        c = await tether.connect(
            f"ws://{NS_IP}:{port}/",
            ping_interval=0.3,
            ping_timeout=0.3,
            open_timeout=1,
            policy=tether.Backoff(0.1, max_delay=0.3, jitter="none"),
        )
        evs = c.events()
        await c.send("before")
        assert await c.recv() == "before"
        sh("ip", "netns", "exec", netns, "ip", "link", "set", NS_IF, "down")  # packets vanish
        t0 = time.monotonic()
        while not isinstance(e := await asyncio.wait_for(evs.__anext__(), 15), ev.ConnectionLost):
            pass
        detect = time.monotonic() - t0
        assert "ping timeout" in e.reason, e.reason
        assert detect < 0.6 + 2.0, detect
        await asyncio.sleep(500 * MS)  # reconnect attempts vanish into the hole as well
        sh("ip", "netns", "exec", netns, "ip", "link", "set", NS_IF, "up")
        while not isinstance(await asyncio.wait_for(evs.__anext__(), 20), ev.Reconnected):
            pass
        await c.send("after")
        assert await c.recv() == "after"
        await c.aclose()
    finally:
        server.kill()
        await server.wait()
