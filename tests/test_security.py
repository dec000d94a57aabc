"""Who gets in, and every limit: through the real server, as an outsider or a user would meet them."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from relay import keys
from relay.auth import Auth
from relay.simulate import Bot, stream_file
from tests.conftest import ingest_url, media, split

HTML = {"Accept": "text/html"}


def basic(password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth("someone", password)}


def browser_session(**kwargs) -> aiohttp.ClientSession:
    """A client that keeps cookies from 127.0.0.1 as a browser does."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


async def status_of(http, url, **kwargs) -> int:
    async with http.get(url, allow_redirects=False, **kwargs) as response:
        return response.status


async def ws_status(http, url, **kwargs) -> int:
    """101 when the WebSocket opens, else the HTTP status that refused it."""
    try:
        async with http.ws_connect(url, **kwargs) as ws:
            await ws.close()
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


def ws_url(server, path: str) -> str:
    return str(server.make_url(path)).replace("http", "ws", 1)


async def live_stream(server, bot_id: str) -> Bot:
    bot = await Bot(ingest_url(server), bot_id, ping_interval=0).__aenter__()
    data = media(seconds=2)
    await stream_file(bot, data, realtime=False, send_end=False)
    return bot


async def test_with_a_viewer_password_everything_but_health_and_ingest_needs_it(relay, http) -> None:
    server = await relay(viewer_password="letmein")
    bot = await live_stream(server, "room")
    try:
        for path in ("/", "/wall", "/watch/room", "/recordings"):
            async with http.get(server.make_url(path), headers=HTML, allow_redirects=False) as response:
                assert response.status == 302 and response.headers["Location"].startswith("/login?next="), path
        for path in ("/api/streams", "/api/streams/room", "/api/streams/room/thumbnail.jpg", "/metrics",
                     "/api/recordings"):
            async with http.get(server.make_url(path)) as response:
                assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic"), path
        assert await ws_status(http, ws_url(server, "/ws/watch/room")) == 401
        for path in ("/healthz", "/static/player.js"):
            assert await status_of(http, server.make_url(path)) == 200, path

        assert await status_of(http, server.make_url("/api/streams"), headers=basic("letmein")) == 200
        assert await status_of(http, server.make_url("/api/streams"), headers=basic("nope")) == 401
        assert await ws_status(http, ws_url(server, "/ws/watch/room"), headers=basic("letmein")) == 101

        async with browser_session() as browser:  # the login form, then its cookie
            async with browser.post(server.make_url("/login"), data={"password": "nope", "next": "/"}) as response:
                assert response.status == 401
            async with browser.post(server.make_url("/login"), data={"password": "letmein", "next": "//evil.example/"},
                                    allow_redirects=False) as response:
                assert response.status == 302 and response.headers["Location"] == "/"
                cookie = response.cookies["relay_session"]
                assert cookie["httponly"] and cookie["samesite"] == "Lax"
            assert await status_of(browser, server.make_url("/"), headers=HTML) == 200
            assert await ws_status(browser, ws_url(server, "/ws/watch/room")) == 101
    finally:
        await bot.close()


async def test_a_signed_link_opens_one_bot_and_nothing_else(relay, http) -> None:
    server = await relay(viewer_password="letmein")
    bots = [await live_stream(server, name) for name in ("room", "other")]
    auth = Auth(server.settings)
    try:
        async with browser_session() as guest:
            link = server.make_url("/watch/room?" + auth.sign_link("room", 600))
            assert await status_of(guest, link) == 200
            assert await ws_status(guest, ws_url(server, "/ws/watch/room")) == 101, "the grant cookie opens the socket"
            assert await status_of(guest, server.make_url("/api/streams/room")) == 200
            assert await status_of(guest, server.make_url("/api/streams/room/thumbnail.jpg")) == 200
            for path in ("/api/streams/other", "/api/streams", "/", "/api/recordings", "/metrics"):
                assert await status_of(guest, server.make_url(path)) in (302, 401), path
            assert await ws_status(guest, ws_url(server, "/ws/watch/other")) == 401
        async with browser_session() as stranger:
            expired = server.make_url("/watch/room?" + auth.sign_link("room", 600, now=time.time() - 3600))
            assert await status_of(stranger, expired) == 401
            forged = str(link).replace("/watch/room", "/watch/other")
            assert await status_of(stranger, forged) == 401
            query = auth.sign_link("room", 600)
            assert await ws_status(stranger, ws_url(server, "/ws/watch/room?" + query)) == 101, "a link works on the socket too"

        env = dict(os.environ, RELAY_VIEWER_PASSWORD="letmein", RELAY_PUBLIC_URL=str(server.make_url("")).rstrip("/"))
        printed = subprocess.run([sys.executable, "-m", "relay", "sign-link", "room", "--ttl", "5m"], env=env,
                                 capture_output=True, text=True, check=True).stdout.strip()
        async with browser_session() as guest:
            assert await status_of(guest, printed) == 200, printed
    finally:
        for bot in bots:
            await bot.close()


async def test_admin_actions_need_the_admin_password(relay, http, viewer) -> None:
    server = await relay(viewer_password="letmein", admin_password="boss")
    data = media(seconds=2)
    async with Bot(ingest_url(server), "done", ping_interval=0) as bot:
        await stream_file(bot, data, realtime=False)
    for _ in range(100):
        files = list((Path(server.settings.recordings) / "done").glob("*Z.mp4"))
        if files:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    name = files[0].stem
    delete = server.make_url(f"/recordings/done/{name}")
    async with http.delete(delete, headers=basic("letmein")) as response:
        assert response.status == 401, "the viewer password is not enough"
    async with http.delete(delete, headers=basic("boss")) as response:
        assert response.status == 200
    assert not files[0].exists() and not files[0].with_suffix(".json").exists()

    admin = basic("boss")
    bot = await live_stream(server, "live")
    try:
        async with aiohttp.ClientSession(headers=basic("letmein")) as session:
            client = viewer(server, "live")
            client.session = session
            async with client:
                await client.wait_for_binaries(1)
                status = await (await http.get(server.make_url("/api/streams/live"), headers=admin)).json()
                viewer_id = status["viewer_list"][0]["id"]
                kick = server.make_url(f"/api/viewers/{viewer_id}/kick")
                assert (await http.post(kick, headers=basic("letmein"))).status == 401
                assert (await http.post(kick, headers=admin)).status == 200
                await asyncio.wait_for(client.ended.wait(), 5)
                assert client.close_code == 4403
        assert (await http.post(server.make_url("/api/streams/live/end"), headers=admin)).status == 200
        await asyncio.wait_for(bot.closed.wait(), 5)
        assert bot.report.close_code == 1000 and "admin" in bot.report.close_reason
        ended = await (await http.get(server.make_url("/api/streams/live"), headers=admin)).json()
        assert ended["state"] == "ended"
    finally:
        await bot.close()


async def test_without_an_admin_password_admin_actions_are_local_only(relay, http) -> None:
    server = await relay()
    async with http.post(server.make_url("/api/viewers/1/kick")) as local:
        assert local.status == 404, "allowed from this machine: the viewer just does not exist"
    proxied = await relay(trusted_proxies="127.0.0.1/32")
    async with http.post(proxied.make_url("/api/viewers/1/kick"), headers={"X-Forwarded-For": "203.0.113.9"}) as remote:
        assert remote.status == 403


async def test_websockets_from_other_sites_are_refused(relay, http) -> None:
    server = await relay(allowed_origins="https://app.example.com")
    bot = await live_stream(server, "room")
    try:
        url = ws_url(server, "/ws/watch/room")
        assert await ws_status(http, url, headers={"Origin": "https://evil.example"}) == 403
        assert await ws_status(http, url, headers={"Origin": f"http://127.0.0.1:{server.port}"}) == 101
        assert await ws_status(http, url, headers={"Origin": "https://app.example.com"}) == 101
    finally:
        await bot.close()


async def test_ingest_networks_and_trusted_proxies(relay, http) -> None:
    server = await relay(ingest_allow="10.0.0.0/8")
    assert await ws_status(http, ingest_url(server)) == 403
    proxied = await relay(ingest_allow="10.0.0.0/8", trusted_proxies="127.0.0.1/32")
    assert await ws_status(http, ingest_url(proxied), headers={"X-Forwarded-For": "10.1.2.3"}) == 101
    assert await ws_status(http, ingest_url(proxied), headers={"X-Forwarded-For": "192.0.2.1"}) == 403
    assert await ws_status(http, ingest_url(server), headers={"X-Forwarded-For": "10.1.2.3"}) == 403, \
        "forwarded headers from a peer that is not a trusted proxy are ignored"


async def test_tls_serves_https_and_wss(relay, tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = await relay(tls_cert=str(cert), tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        async with session.get(server.make_url("/healthz")) as response:
            assert response.status == 200
        data = media(seconds=2)
        url = str(server.make_url("/ingest")).replace("https", "wss", 1)
        async with Bot(url, "secure", ping_interval=0, session=session) as bot:
            await stream_file(bot, data, realtime=False)
    files = list((Path(server.settings.recordings) / "secure").glob("*Z.mp4"))
    for _ in range(50):
        if files and files[0].stat().st_size == len(data):
            break
        await asyncio.sleep(0.05)
    assert files[0].read_bytes() == data


async def test_connection_limits_refuse_with_a_reason(relay, http, viewer) -> None:
    server = await relay(max_ingest_connections=1, max_viewers_per_stream=1)
    bot = await live_stream(server, "one")
    try:
        assert await ws_status(http, ingest_url(server)) == 503
        async with viewer(server, "one") as first:
            await first.wait_for_binaries(1)
            assert await ws_status(http, ws_url(server, "/ws/watch/one")) == 503
    finally:
        await bot.close()

    per_client = await relay(max_connections_per_client=2)
    sockets = [await http.ws_connect(ws_url(per_client, "/ws/watch/x")) for _ in range(2)]
    assert await ws_status(http, ws_url(per_client, "/ws/watch/x")) == 429
    for ws in sockets:
        await ws.close()

    streams = await relay(max_streams=1)
    first = await live_stream(streams, "a")
    try:
        async with Bot(ingest_url(streams), "b", ping_interval=0) as second:
            await second.start()
            await asyncio.wait_for(second.closed.wait(), 5)
        assert second.report.close_code == 1008 and "max_streams" in second.report.close_reason
    finally:
        await first.close()
    async with http.get(streams.make_url("/metrics")) as response:
        assert 'relay_refused_total{reason="max_streams"} 1.0' in await response.text()


async def test_rate_idle_and_size_limits(relay, http, viewer) -> None:
    data = media(seconds=2)
    fast = await relay(max_ingest_rate=len(data) // 40)  # its 10 s burst is a quarter of the clip
    async with Bot(ingest_url(fast), "flood", ping_interval=0) as bot:
        await bot.start()
        await bot.send(data)
        await asyncio.wait_for(bot.closed.wait(), 5)
    assert bot.report.close_code == 1008 and "max_ingest_rate" in bot.report.close_reason

    idle = await relay(ingest_idle_timeout=0.5)
    async with Bot(ingest_url(idle), "quiet", ping_interval=0) as bot:
        await bot.start()
        await asyncio.wait_for(bot.closed.wait(), 5)
    assert bot.report.close_code == 1008 and "nothing received" in bot.report.close_reason

    capped = await relay(max_recording_size=len(data) // 2)
    async with viewer(capped, "big") as watcher, Bot(ingest_url(capped), "big", ping_interval=0) as bot:
        await stream_file(bot, data, realtime=False, send_end=False)
        await watcher.wait_for_binaries(1 + len(split(data)[1]))
        status = await (await http.get(capped.make_url("/api/streams/big"))).json()
    assert "max_recording_size" in status["recording"]["error"]
    assert status["recording"]["bytes"] <= len(data) // 2


async def test_slow_handshakes_are_closed_and_others_served(relay, http) -> None:
    server = await relay(handshake_timeout=0.5)
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /ws/watch/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    assert await status_of(http, server.make_url("/healthz")) == 200
    started = time.monotonic()
    slow.settimeout(5)
    assert await asyncio.to_thread(slow.recv, 100) == b"", "the server hung up"
    assert time.monotonic() - started < 3
    slow.close()
