"""A network namespace behind a veth pair, for a true black hole in the kernel: taking the namespace's
link down drops every packet (no FIN, no RST). Needs root and iproute2 (`ip netns`); the `netns` fixture
skips with the reason otherwise. Only addresses inside the namespaces created here are used."""

import os
import shutil
import subprocess

import pytest

PID = os.getpid() % 10000
NS = f"tether{PID}"
HOST_IF, NS_IF = f"tth{PID}h", f"tth{PID}n"
NET = 200 + PID % 50
HOST_IP, NS_IP = f"10.213.{NET}.1", f"10.213.{NET}.2"


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed"
    r = subprocess.run(["ip", "netns", "add", f"{NS}probe"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"network namespaces not permitted here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"{NS}probe"], capture_output=True)
    return None


@pytest.fixture
def netns():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        sh("ip", "link", "set", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield NS
    finally:
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", NS, check=False)
