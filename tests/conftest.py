"""Shared fixtures: a real relay on a loopback port, real PyAV-made media, real WebSocket clients."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest
from yarl import URL

from relay.app import create_app
from relay.config import Settings
from relay.media import FragmentAssembler, InitSegment
from relay.server import Server
from relay.testsrc import encode_fmp4


@functools.lru_cache(maxsize=None)
def media(seconds: float = 3.0, **options: Any) -> bytes:
    """fMP4 made by PyAV, encoded once per distinct set of options for the whole session."""
    return encode_fmp4(seconds=seconds, **options)


def split(data: bytes) -> tuple[InitSegment, list]:
    """The init segment and fragments of a whole fMP4, by our own parser."""
    assembler = FragmentAssembler()
    events = assembler.feed(data) + assembler.finish()
    return events[0], events[1:]


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def seed() -> int:
    """A random seed for chunking, printed so a failure can be replayed."""
    value = random.randrange(1 << 31)
    print(f"chunking seed={value}")
    return value


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(port=0, recordings=str(tmp_path / "recordings"), reconnect_grace=2.0, viewer_wait_timeout=5.0,
                    sidecar_interval=0.2, min_free_space=0)


class RunningRelay:
    """The relay as ``python -m relay serve`` runs it (same server class: TLS, handshake guard), on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.server = Server(self.app, settings)

    @property
    def port(self) -> int:
        return self.server.port

    def make_url(self, path: str) -> URL:
        scheme = "https" if self.settings.tls_cert else "http"
        return URL(f"{scheme}://127.0.0.1:{self.port}{path}")


@pytest.fixture
async def relay(settings: Settings) -> Callable:
    """``await relay(**setting_changes)`` starts a real relay on a loopback port and returns it."""
    started: list[RunningRelay] = []

    async def start(**changes: Any) -> RunningRelay:
        running = RunningRelay(settings.with_(**changes))
        await running.server.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.stop()


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as session:
        yield session


class ViewerClient:
    """A browser stand-in: connects to /ws/watch/<bot_id> and keeps every message in order."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.texts: list[dict] = []
        self.binaries: list[bytes] = []
        self.order: list[str] = []  # "init", "bin", "end", ...
        self.close_code: int | None = None
        self.close_reason = ""
        self.ended = asyncio.Event()
        self.got_binary = asyncio.Event()

    async def __aenter__(self) -> "ViewerClient":
        self.ws = await self.session.ws_connect(self.url, max_msg_size=0)
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, 5)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(msg.data)
                self.texts.append(message)
                self.order.append(message.get("type", "?"))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.binaries.append(msg.data)
                self.order.append("bin")
                self.got_binary.set()
        self.close_code = self.ws.close_code
        self.ended.set()

    def segments_after_last_init(self) -> list[bytes]:
        """The init segment and the fragments that followed the latest init message."""
        inits = [i for i, kind in enumerate(self.order) if kind == "init"]
        assert inits, f"no init message; got {self.order[:10]}"
        binaries_before = self.order[: inits[-1]].count("bin")
        return self.binaries[binaries_before:]

    async def wait_for_binaries(self, count: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.binaries) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(enough(), timeout)


@pytest.fixture
def viewer(http: aiohttp.ClientSession) -> Callable[[Any, str], ViewerClient]:
    def make(server: Any, bot_id: str) -> ViewerClient:
        return ViewerClient(http, str(server.make_url(f"/ws/watch/{bot_id}")).replace("http", "ws", 1))

    return make


def ingest_url(server: Any, suffix: str = "/ingest") -> str:
    return str(server.make_url(suffix)).replace("http", "ws", 1)
