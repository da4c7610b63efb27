"""`ssl=`: a private CA as a bundle path, an ssl.SSLContext, or the system store (SSL_CERT_FILE), against
a `websockets` TLS server with a certificate from a CA made here."""

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import textwrap

import pytest
import websockets

import tether
from support import FAST, MS

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command to make a CA")


def run(*args, cwd):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tether test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign", cwd=d)  # fmt: skip
    run("openssl", "req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)  # fmt: skip
    return d


@pytest.fixture
async def wss_url(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "srv.pem", pki / "srv.key")

    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0, ssl=ctx) as srv:
        yield f"wss://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"


# TLS handshakes and records cost CPU a busy box may not have at once
FAST = dict(FAST, ping_timeout=2000 * MS, open_timeout=5000 * MS, close_timeout=1000 * MS)


async def echo_once(url, **kw):
    async with tether.connect(url, **FAST, **kw) as conn:
        await conn.send("over tls")
        return await asyncio.wait_for(conn.recv(), 5)


async def test_private_ca_is_refused_by_default(wss_url):
    with pytest.raises(tether.GaveUp, match="certificate"):
        await asyncio.wait_for(echo_once(wss_url), 20)


async def test_ca_bundle_path(wss_url, pki):
    assert await echo_once(wss_url, ssl=str(pki / "ca.pem")) == "over tls"
    assert await echo_once(wss_url, ssl=pki / "ca.pem") == "over tls"
    assert await echo_once(wss_url, ssl=["bundled", pki / "ca.pem"]) == "over tls"


async def test_ssl_context_trust_anchors(wss_url, pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    assert await echo_once(wss_url, ssl=ctx) == "over tls"


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_a_message_larger_than_the_tls_buffer_is_echoed(wss_url, pki, compression):
    """rustls takes plaintext only while its unwritten records stay under 64 KiB. Before, a frame larger
    than that failed with "failed to write whole buffer": the connection was lost at every re-send and
    the message dropped as poison (over ws:// the same message echoed at once)."""
    message = os.urandom(300_000)  # random: deflate cannot shrink it
    async with tether.connect(wss_url, **FAST, ssl=pki / "ca.pem", compression=compression) as conn:
        await conn.send(message)
        assert await asyncio.wait_for(conn.recv(), 15) == message
        assert conn.stats()["connects"] == 1


async def test_a_ca_directory(wss_url, pki, tmp_path):
    """A hashed CA directory (OpenSSL's capath: certificates, links to them, other files). An SSLContext
    given capath= lists none of its certificates (OpenSSL reads them per handshake), so the directory is
    given as the path. Before, a directory could not be read at all."""
    shutil.copy(pki / "ca.pem", tmp_path / "ca.pem")
    run("openssl", "rehash", str(tmp_path), cwd=tmp_path)
    (tmp_path / "README").write_text("not a certificate")
    assert await echo_once(wss_url, ssl=tmp_path) == "over tls"
    assert await echo_once(wss_url, ssl=str(tmp_path)) == "over tls"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no usable CA certificate in .*empty"):
        tether.connect(wss_url, ssl=empty)


def test_bad_choices_are_value_or_type_errors(pki):
    with pytest.raises(ValueError, match="cannot read CA bundle"):
        tether.connect("wss://127.0.0.1:1/", ssl="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="no usable CA certificate"):
        tether.connect("wss://127.0.0.1:1/", ssl=str(pki / "srv.key"))
    with pytest.raises(ValueError, match="CERT_NONE"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tether.connect("wss://127.0.0.1:1/", ssl=ctx)
    with pytest.raises(ValueError, match="ws:// URL"):
        tether.connect("wss://127.0.0.1:1/", ssl=False)
    with pytest.raises(TypeError):
        tether.connect("wss://127.0.0.1:1/", ssl=3)


async def test_system_store_honours_ssl_cert_file(wss_url, pki):
    # a separate process, so the environment variable is read by the system store loader
    code = textwrap.dedent(
        f"""
        import asyncio, tether
        async def main():
            async with tether.connect({wss_url!r}, ssl="system", open_timeout=5) as c:
                await c.send("sys")
                print(await asyncio.wait_for(c.recv(), 5))
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env={**os.environ, "SSL_CERT_FILE": str(pki / "ca.pem")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == "sys"


async def never_reached(ws):
    await ws.close()


def redirect_to(location):
    """A `process_request` hook that answers every handshake with a 302 to `location`."""

    def process_request(connection, request):
        response = connection.respond(302, "")
        response.headers["Location"] = location
        return response

    return process_request


async def test_a_redirect_from_ws_up_to_wss_is_followed(wss_url, pki):
    async with websockets.serve(never_reached, "127.0.0.1", 0, process_request=redirect_to(wss_url)) as plain:
        url = f"ws://127.0.0.1:{plain.sockets[0].getsockname()[1]}/"
        assert await echo_once(url, ssl=str(pki / "ca.pem")) == "over tls"


async def test_a_redirect_from_wss_down_to_ws_is_refused(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "srv.pem", pki / "srv.key")
    down = redirect_to("ws://127.0.0.1:9/plain")
    async with websockets.serve(never_reached, "127.0.0.1", 0, ssl=ctx, process_request=down) as srv:
        url = f"wss://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"
        with pytest.raises(tether.GaveUp, match="from wss:// down to ws://") as info:
            await asyncio.wait_for(echo_once(url, ssl=str(pki / "ca.pem")), 20)
    assert info.value.attempts == 1 and info.value.last_error.http_status == 302
