"""Hostile and broken input through the real server, each case beside a healthy stream.

Every test runs an offender (a bot, a raw socket, a viewer) while a well-behaved bot streams real media to the
same relay with a viewer attached. The offender gets a clear close code and reason (1007 invalid data, 1008
policy, 1009 too big) or is cut off in bounded time; the healthy stream is untouched: its viewer receives every
fragment and its recording is byte-exact, indexed, and finalized.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest

from relay import keys
from relay.simulate import random_cuts

from tests.conftest import ingest_url, media, split, wait_until
from test_ingest import TracingBot, check_recording, only_recording, recordings_of, sha, sidecar, wait_ended, \
    wait_status

HEALTHY = dict(seconds=2, gop=10)  # h264+aac 320x240, 5 keyframe fragments, 80 KB
BULKY = dict(seconds=2, width=1280, height=720, gop=10)  # 180 KB: repeated, enough to clog a socket that never reads
OFFENDER = dict(seconds=1, video="vp9", audio="opus", gop=5)  # the offender's own real media, where it needs some
MAX_BOX = 256 << 10
MAX_FRAME = 256 << 10


# -- the healthy stream ------------------------------------------------------------------------------
class Healthy:
    """A bot streaming real media, with a viewer attached from the start, for as long as the offense lasts.

    It paces its chunks (``pace`` seconds apart) until ``finish()``, which sends the rest at once, ends the
    stream and checks it: the viewer got the init and every fragment in order, the recording is the exact
    bytes sent (indexed and finalized), every ping was answered correctly."""

    def __init__(self, server: Any, http: aiohttp.ClientSession, viewer: Callable, seed: int, *,
                 clip: dict = HEALTHY, repeats: int = 1, pace: float = 0.002, max_chunk: int = 2048) -> None:
        self.server, self.http, self.seed, self.pace, self.max_chunk = server, http, seed, pace, max_chunk
        one = media(**clip)
        if repeats > 1:
            one = one[: one.rindex(b"mfra") - 4]  # each repeat starts with its own init: a new init mid-stream
        self.clip, self.repeats = one, repeats
        self.data = one * repeats
        self.init, self.fragments = split(one)
        self.watcher = viewer(server, "healthy")
        self.hurry = asyncio.Event()

    async def start(self) -> "Healthy":
        await self.watcher.__aenter__()
        self.bot = await TracingBot(ingest_url(self.server), "healthy", ping_interval=0.1, seed=self.seed,
                                    max_chunk=self.max_chunk).__aenter__()
        await self.bot.start(self.init.info, 25.0)
        await wait_status(self.http, self.server, "healthy", lambda s: s["viewers"] >= 1, "the healthy viewer")
        self.task = asyncio.create_task(self._pump())
        if self.pace:  # the offense starts with the healthy stream live: its viewer has a fragment already
            await self.watcher.wait_for_binaries(2)
        return self

    async def _pump(self) -> None:
        pos = 0
        for cut in random_cuts(len(self.data), self.bot.rng, self.max_chunk):
            if self.pace and not self.hurry.is_set():
                await asyncio.sleep(self.pace)
            await self.bot.send_raw(self.data[pos:cut])
            pos = cut

    async def finish(self) -> None:
        self.hurry.set()
        await asyncio.wait_for(self.task, 30)
        await self.bot.ping(10**6)
        await wait_until(lambda: self.bot.report.pongs == self.bot.report.pings, "the healthy bot's pongs")
        await self.bot.end(2.0)
        await self.bot.close()
        await asyncio.wait_for(self.watcher.ended.wait(), 10)
        await self.watcher.__aexit__(None, None, None)
        report = self.bot.report
        assert report.close_code == 1000 and report.pong_errors == [] and report.pongs >= 1, report
        state = await wait_ended(self.http, self.server, "healthy")
        assert state["errors"] == [] and state["connections"] == 1, state
        assert state["fragments"] == len(self.fragments) * self.repeats
        expected = ([self.init.data] + [f.data for f in self.fragments]) * self.repeats
        assert len(self.watcher.binaries) == len(expected), "the healthy viewer missed fragments"
        assert self.watcher.binaries == expected, "the healthy viewer got other bytes than the bot sent"
        assert self.watcher.order[-1] == "end" and self.watcher.order.count("init") == self.repeats
        path = only_recording(recordings_of(self.server) / "healthy")
        if self.repeats == 1:
            check_recording(path, self.data, self.bot.sent_json[0], "video_stream_end")
        else:
            assert sha(path.read_bytes()) == sha(self.data)
            side = sidecar(path)
            assert side["end_reason"] == "video_stream_end" and side["error"] is None and side["bytes"] == len(self.data)
            assert len(side["inits"]) == self.repeats and len(side["fragments"]) == len(self.fragments) * self.repeats

    async def abandon(self) -> None:
        self.hurry.set()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.bot.close()
        with contextlib.suppress(BaseException):
            await self.watcher.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def alongside(server: Any, http: aiohttp.ClientSession, viewer: Callable, seed: int,
                    **options: Any) -> AsyncIterator[Healthy]:
    healthy = await Healthy(server, http, viewer, seed, **options).start()
    try:
        yield healthy
    except BaseException:
        await healthy.abandon()
        raise
    await healthy.finish()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="relay")
    return caplog


# -- helpers -----------------------------------------------------------------------------------------
def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, payload: bytes) -> bytes:
    return box(kind, bytes(4) + payload)


async def final_sidecar(folder: Path, count: int = 1) -> list[Path]:
    """The recordings in ``folder`` once ``count`` of them have a final sidecar, oldest first."""

    def final() -> list[Path] | None:
        sides = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
        if len(sides) == count and all(s["ended_at"] for s in sides):
            return [folder / s["file"] for s in sorted(sides, key=lambda s: s["started_at"])]
        return None

    return await wait_until(final, f"{count} finalized recording(s) in {folder.name}")


async def barrier(bot: TracingBot) -> None:
    """Every message the bot sent so far has been handled by the relay (pongs come back in order)."""
    pongs = bot.report.pongs
    await bot.ping(random.randrange(1 << 40))
    await wait_until(lambda: bot.report.pongs > pongs, "the barrier pong")


def strict_json(text: str) -> Any:
    """JSON as a browser parses it: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


class RawWebSocket:
    """A WebSocket client written by hand, for frames aiohttp's client will not send (invalid UTF-8)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str) -> "RawWebSocket":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, opcode: int, payload: bytes) -> None:
        """One final frame, masked as every client frame must be."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    async def close_frame(self, timeout: float = 5) -> tuple[int, str]:
        """Read until the server's close frame: (code, reason)."""
        async def until_close() -> tuple[int, str]:
            while True:
                opcode, payload = await self.read_frame()
                if opcode == 8:
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

        return await asyncio.wait_for(until_close(), timeout)

    def close(self) -> None:
        self.writer.close()


# -- 1. a box cut short, then the bot goes away ---------------------------------------------------------
@pytest.mark.parametrize("where,goodbye", [("header", "close"), ("moof", "abort"), ("mdat", "close")])
async def test_truncated_box_then_disconnect(relay, http, viewer, seed, logs, where: str, goodbye: str) -> None:
    server = await relay()
    data = media(**OFFENDER)
    init, fragments = split(data)
    moof_size = struct.unpack_from(">I", fragments[2].data)[0]
    cut = fragments[2].offset + {"header": 5, "moof": moof_size // 2, "mdat": moof_size + 100}[where]
    async with alongside(server, http, viewer, seed):
        bot = await TracingBot(ingest_url(server), "cut", ping_interval=0, seed=seed + 1, max_chunk=1024).__aenter__()
        await bot.start(init.info, 25.0)
        await bot.send(data[:cut])
        await barrier(bot)
        if goodbye == "abort":
            bot.ws._conn.transport.abort()  # no close frame, no FIN: a reset
        await bot.close()
        [path] = await final_sidecar(recordings_of(server) / "cut")
    if goodbye == "close":
        assert bot.report.close_code == 1000
    assert path.read_bytes() == data[:cut] == bytes(bot.sent), "the recording is exactly what arrived"
    side = sidecar(path)
    assert side["fragments"] == [f.index_entry() for f in fragments[:2]], "only complete fragments are indexed"
    assert side["end_reason"] == "disconnected" and side["error"] is None and side["bytes"] == cut
    assert any("cut: stream ended inside a box" in r.getMessage() for r in logs.records)


# -- 2. media the relay cannot relay: 1007 and the reason ---------------------------------------------
def _short_avcc_init() -> bytes:
    """An init segment whose last bytes are an avcC cut to two bytes (its enclosing boxes end there too)."""
    visual = bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HH", 320, 240) + bytes(50)
    entry = box(b"avc1", visual + box(b"avcC", b"\x01\x64"))
    stsd = full_box(b"stsd", struct.pack(">I", 1) + entry)
    mdia = box(b"mdia", full_box(b"mdhd", bytes(8) + struct.pack(">II", 90000, 0) + bytes(4))
               + full_box(b"hdlr", bytes(4) + b"vide" + bytes(13)) + box(b"minf", box(b"stbl", stsd)))
    trak = box(b"trak", full_box(b"tkhd", bytes(8) + struct.pack(">I", 1) + bytes(64)) + mdia)
    return box(b"ftyp", b"isom\0\0\0\0") + box(b"moov", trak)


BAD_MEDIA: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "oversized box": (lambda init: init + struct.pack(">I4s", MAX_BOX + 1, b"mdat") + bytes(4000),
                      f"invalid fMP4: box 'mdat' of {MAX_BOX + 1} bytes exceeds the limit"),
    "4 GiB largesize": (lambda init: init + struct.pack(">I4sQ", 1, b"mdat", 4 << 30) + bytes(4000),
                        f"invalid fMP4: box 'mdat' of {4 << 30} bytes exceeds the limit"),
    "largesize 2**63": (lambda init: init + struct.pack(">I4sQ", 1, b"moof", 2**63),
                        "invalid fMP4: box 'moof' of 9223372036854775808 bytes exceeds the limit"),
    "box size 7": (lambda init: init + struct.pack(">I4s", 7, b"moof") + bytes(100), "invalid fMP4: box 'moof': impossible size 7"),
    "moov without tracks": (lambda init: box(b"ftyp", b"isom\0\0\0\0") + box(b"moov", full_box(b"mvhd", bytes(96))),
                            "invalid fMP4: init segment has no audio or video track"),
    "only mdat": (lambda init: box(b"mdat", os.urandom(3000)) * 4, "invalid fMP4: mdat before the init segment"),
    "binary garbage": (lambda init: b"\x00\x00\x10\x00\x01" + os.urandom(6000), "invalid fMP4: not an MP4 box"),
    "garbage after the init": (lambda init: init + b"\x00\x00\x00\x20\xff\xfe\xfd\xfc" + os.urandom(2000),
                               "invalid fMP4: not an MP4 box"),
    "codec config cut short": (lambda init: _short_avcc_init(), "invalid fMP4: 'avcC' configuration box too short"),
}


@pytest.mark.parametrize("kind", BAD_MEDIA)
async def test_media_that_cannot_be_relayed_closes_1007(relay, http, viewer, seed, kind: str) -> None:
    server = await relay(max_box_size=MAX_BOX)
    make, reason = BAD_MEDIA[kind]
    init = split(media(**OFFENDER))[0]
    payload = make(init.data)
    async with alongside(server, http, viewer, seed):
        async with TracingBot(ingest_url(server), "bad", ping_interval=0, seed=seed + 1) as bot:
            await bot.start()
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await bot.send_raw(payload)  # one frame: it reaches the recording whole before it is parsed
            await asyncio.wait_for(bot.closed.wait(), 5)
        [path] = await final_sidecar(recordings_of(server) / "bad")
    assert bot.report.close_code == 1007, bot.report
    assert bot.report.close_reason.startswith(reason[:123]), bot.report.close_reason
    assert path.read_bytes() == payload, "the recording keeps every byte that arrived"
    side = sidecar(path)
    assert side["end_reason"].startswith(reason) and side["fragments"] == []
    state = await wait_status(http, server, "bad", lambda s: s["state"] != "live", "the offender to drop")
    assert any(e.startswith(reason) for e in state["errors"]), state["errors"]


# -- 3. text frames: invalid UTF-8, too big, too deep -------------------------------------------------
async def test_invalid_utf8_text_closes_1007(relay, http, viewer, seed) -> None:
    server = await relay()
    data = media(**OFFENDER)
    init, fragments = split(data)
    head = data[: fragments[1].offset]
    async with alongside(server, http, viewer, seed):
        raw = await RawWebSocket.connect(server.port, "/ingest")
        try:
            await raw.send(1, json.dumps({"type": "video_stream_start", "bot_id": "utf8", "container": "fmp4"}).encode())
            await raw.send(2, head)
            await raw.send(1, b'{"type": "video_latency_ping", "seq": "\xff\xfe\xc3\x28", "bot_id": "utf8"}')
            code, _ = await raw.close_frame()
        finally:
            raw.close()
        [path] = await final_sidecar(recordings_of(server) / "utf8")
        state = await wait_status(http, server, "utf8", lambda s: s["state"] != "live", "utf8 to drop")
    assert code == 1007
    assert path.read_bytes() == head
    assert sidecar(path)["fragments"] == [fragments[0].index_entry()]
    assert "Invalid UTF-8" in sidecar(path)["end_reason"], sidecar(path)["end_reason"]
    assert any("Invalid UTF-8" in e for e in state["errors"]), state["errors"]


async def test_text_frame_over_max_frame_size_closes_1009(relay, http, viewer, seed) -> None:
    server = await relay(max_frame_size=MAX_FRAME)
    data = media(**OFFENDER)
    head = data[: split(data)[1][1].offset]
    async with alongside(server, http, viewer, seed):
        async with TracingBot(ingest_url(server), "huge", ping_interval=0, seed=seed + 1, max_chunk=4096) as bot:
            await bot.start()
            await bot.send(head)
            huge = json.dumps({"type": "video_latency_ping", "seq": 1, "pad": "x" * (MAX_FRAME + 1000)})
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await bot.ws.send_str(huge)
            await asyncio.wait_for(bot.closed.wait(), 5)
        [path] = await final_sidecar(recordings_of(server) / "huge")
    assert bot.report.close_code == 1009, bot.report
    assert bot.report.pongs == 0
    assert path.read_bytes() == head == bytes(bot.sent)


async def test_deeply_nested_json_closes_1007(relay, http, viewer, seed, logs) -> None:
    server = await relay()
    async with alongside(server, http, viewer, seed):
        async with TracingBot(ingest_url(server), "deep", ping_interval=0, seed=seed + 1) as bot:
            await bot.start()
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await bot.ws.send_str("[" * 5000 + "]" * 5000)
            await asyncio.wait_for(bot.closed.wait(), 5)
    assert not [r for r in logs.records if r.levelno >= logging.ERROR], "an unhandled error was logged"
    assert bot.report.close_code == 1007 and bot.report.close_reason == "text frame is not JSON", bot.report


async def test_a_viewer_sending_deeply_nested_json_is_ignored(relay, http, viewer, seed, logs) -> None:
    server = await relay()
    async with alongside(server, http, viewer, seed):
        async with viewer(server, "healthy") as nosy:
            await nosy.ws.send_str("[" * 5000 + "]" * 5000)
            await nosy.ws.send_str(json.dumps({"type": "stats", "latency": 1.5}))
            state = await wait_status(http, server, "healthy", lambda s: any(v["client"] for v in s["viewer_list"]),
                                      "the viewer's stats after the nested JSON", timeout=1.5)
    assert state["viewers"] == 2
    assert not [r for r in logs.records if r.levelno >= logging.ERROR], "an unhandled error was logged"


# -- 4. pings with missing or wrong-typed fields --------------------------------------------------------
class EchoBot(TracingBot):
    """Keeps every pong as it came, checks nothing (odd seqs are not even hashable)."""

    def _check_pong(self, pong: dict[str, Any]) -> None:
        if pong.get("type") == "video_latency_pong":
            self.pong_log.append((time.time() * 1000, pong))
            self.report.pongs += 1


ODD_PINGS = [
    {"type": "video_latency_ping"},
    {"type": "video_latency_ping", "seq": [1, 2], "sent_at_ms": "yesterday", "bot_id": 42},
    {"type": "video_latency_ping", "seq": None, "sent_at_ms": None, "bot_id": None},
    {"type": "video_latency_ping", "seq": {"a": 1}, "sent_at_ms": True, "bot_id": ["x"]},
    {"type": "video_latency_ping", "seq": 3, "sent_at_ms": -5},
    {"type": "video_latency_ping", "seq": 4, "sent_at_ms": 1e300, "bot_id": "pinger"},
    {"type": "video_latency_ping", "seq": "ü📹", "sent_at_ms": 12.5, "bot_id": ""},
    {"type": "video_latency_ping", "sent_at_ms": 2**63, "extra": {"deep": [1]}},
]


async def test_pings_with_missing_or_wrong_typed_fields_get_an_echo(relay, http, viewer, seed, logs) -> None:
    server = await relay()
    data = media(**OFFENDER)
    async with alongside(server, http, viewer, seed):
        async with EchoBot(ingest_url(server), "pinger", ping_interval=0, seed=seed + 1) as bot:
            await bot.start(split(data)[0].info, 25.0)
            await bot.send(data)
            for ping in ODD_PINGS:
                await bot.send_json(ping)
            await wait_until(lambda: len(bot.pong_log) == len(ODD_PINGS), "a pong per odd ping", 5)
            assert not bot.closed.is_set(), "the connection stays open"
            async with http.get(server.make_url("/api/streams")) as response:
                strict_json(await response.text())
            await bot.end(1.0)
    assert bot.report.close_code == 1000
    for ping, (_, pong) in zip(ODD_PINGS, bot.pong_log):
        echoed = {k: ping[k] for k in ("seq", "sent_at_ms", "bot_id") if k in ping}
        assert pong == {"type": "video_latency_pong", **echoed, "server_received_at_ms": pong["server_received_at_ms"]}
        assert type(pong["server_received_at_ms"]) is int
    check_recording(only_recording(recordings_of(server) / "pinger"), data, bot.sent_json[0], "video_stream_end")
    assert any("ping lacks fields" in r.getMessage() for r in logs.records)


async def test_a_ping_with_an_enormous_integer_is_answered_and_survived(relay, http, viewer, seed, logs) -> None:
    server = await relay()
    async with alongside(server, http, viewer, seed):
        async with TracingBot(ingest_url(server), "bigint", ping_interval=0, seed=seed + 1) as bot:
            await bot.start()
            await bot.ws.send_str('{"type": "video_latency_ping", "seq": 1, "bot_id": "bigint", "sent_at_ms": '
                                  + "9" * 400 + "}")
            await bot.ping(2)
            await wait_until(lambda: len(bot.pong_log) == 2 or bot.closed.is_set(), "both pongs", 5)
            assert not bot.closed.is_set(), f"closed with {bot.ws.close_code}"
            await bot.end(1.0)
    assert [p["seq"] for _, p in bot.pong_log] == [1, 2]
    assert not [r for r in logs.records if r.levelno >= logging.ERROR], "an unhandled error was logged"


async def test_a_ping_with_nan_does_not_break_the_status_json(relay, http, viewer, seed) -> None:
    server = await relay()
    async with alongside(server, http, viewer, seed):
        async with TracingBot(ingest_url(server), "nan", ping_interval=0, seed=seed + 1) as bot:
            await bot.start()
            await bot.send_raw(split(media(**OFFENDER))[0].data)
            for value in ("NaN", "Infinity", "-Infinity"):
                await bot.ws.send_str('{"type": "video_latency_ping", "seq": 1, "bot_id": "nan", "sent_at_ms": %s}' % value)
            await wait_until(lambda: len(bot.pong_log) == 3, "the pongs", 5)
            for path in ("/api/streams", "/api/streams/nan"):
                async with http.get(server.make_url(path)) as response:
                    strict_json(await response.text())
            await bot.end(1.0)


# -- 5. bot ids that must never reach the filesystem --------------------------------------------------
BAD_BOT_IDS = ["../../escape", "a/../../b", "/etc/passwd", "..", "x" * 10240, "", "nul\x00byte", "ünï", "a b",
               42, None, ["list"], {"bot": "x"}]


async def test_invalid_bot_ids_close_1008_and_touch_nothing(relay, http, viewer, seed, tmp_path: Path) -> None:
    server = await relay()
    head = media(**OFFENDER)[: split(media(**OFFENDER))[1][0].offset]
    before = {p for p in tmp_path.parent.rglob("*")}
    async with alongside(server, http, viewer, seed):
        for bot_id in BAD_BOT_IDS:
            async with TracingBot(ingest_url(server), "x", ping_interval=0, seed=seed + 1) as bot:
                await bot.send_json({"type": "video_stream_start", "bot_id": bot_id, "container": "fmp4"})
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    await bot.send_raw(head)
                await asyncio.wait_for(bot.closed.wait(), 5)
            assert bot.report.close_code == 1008, (bot_id, bot.report)
            assert bot.report.close_reason.startswith("invalid bot_id: "), (bot_id, bot.report.close_reason)
    created = {p for p in tmp_path.parent.rglob("*")} - before
    root = recordings_of(server)
    assert {p for p in created if root / "healthy" not in (p, *p.parents)} == {root}, "anything but the healthy stream"
    async with http.get(server.make_url("/api/streams")) as response:
        listing = await response.json()
    assert [s["bot_id"] for s in listing["streams"] + listing["ended"]] == ["healthy"]


# -- 6. two connections claim one bot_id ---------------------------------------------------------------
async def test_the_newer_of_two_connections_for_one_bot_id_replaces_the_older(relay, http, viewer, seed, logs) -> None:
    server = await relay()
    first, second = media(**OFFENDER), media(seconds=1, gop=5)
    init1, frags1 = split(first)
    init2, frags2 = split(second)
    url = ingest_url(server)
    async with alongside(server, http, viewer, seed), viewer(server, "dup") as watcher:
        older = await TracingBot(url, "dup", ping_interval=0, seed=seed + 1, max_chunk=1024).__aenter__()
        await older.start(init1.info, 25.0)

        async def keep_sending() -> None:  # the older connection streams on, until it is cut off
            pos = 0
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                for cut in random_cuts(len(first), older.rng, 1024):
                    await older.send_raw(first[pos:cut])
                    pos = cut
                    await asyncio.sleep(0.002)

        streaming = asyncio.create_task(keep_sending())
        recorded = await wait_status(http, server, "dup", lambda s: s["fragments"] >= 2, "two fragments of the older")
        async with TracingBot(url, "dup", ping_interval=0, seed=seed + 2, max_chunk=1024) as newer:
            await newer.start(init2.info, 25.0)
            await newer.send(second)
            await newer.end(1.0)
        await asyncio.wait_for(older.closed.wait(), 5)
        await asyncio.wait_for(streaming, 10)
        await older.close()
        await asyncio.wait_for(watcher.ended.wait(), 10)
        older_path, newer_path = await final_sidecar(recordings_of(server) / "dup", 2)

    assert older.report.close_code == 1008 and "replaced" in older.report.close_reason, older.report
    assert newer.report.close_code == 1000
    assert any("bot_id=dup connected again" in r.getMessage() and "the newer connection replaces" in r.getMessage()
               and r.levelno == logging.WARNING for r in logs.records), "the log says which connection won"
    # The older recording: finalized, exactly the bytes that arrived before its close, complete fragments indexed.
    content = older_path.read_bytes()
    assert first.startswith(content) and len(content) <= len(older.sent)
    assert len(content) >= recorded["recording"]["bytes"] > 0
    side = sidecar(older_path)
    assert "replaced" in side["end_reason"] and side["error"] is None and side["bytes"] == len(content)
    assert side["fragments"] == [f.index_entry() for f in frags1 if f.offset + f.size <= len(content)]
    check_recording(newer_path, second, newer.sent_json[0], "video_stream_end")
    # The viewer: the older stream's init and fragments, then the newer one's, whole.
    assert watcher.segments_after_last_init() == [init2.data] + [f.data for f in frags2]
    before = watcher.binaries[: len(watcher.binaries) - 1 - len(frags2)]
    assert before == [init1.data] + [f.data for f in frags1[: len(before) - 1]] and len(before) >= 3


# -- 7. slowloris ---------------------------------------------------------------------------------------
async def trickle(port: int, request: bytes, interval: float, limit: float) -> float | None:
    """Send ``request`` a byte at a time; the seconds until the server hung up, or None if it never did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for byte in request:
            if time.monotonic() - started > limit:
                return None
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    return time.monotonic() - started
        return None
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


SLOW_REQUEST = (b"GET /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + b"X-Padding: " + b"a" * 400 + b"\r\n\r\n")


async def test_slowloris_handshakes_are_closed_while_others_are_served(relay, http, viewer, seed) -> None:
    server = await relay(handshake_timeout=0.8)
    async with alongside(server, http, viewer, seed):
        slow = [asyncio.create_task(trickle(server.port, SLOW_REQUEST, 0.05, 5)) for _ in range(8)]
        served = []
        while not all(t.done() for t in slow):
            started = time.monotonic()
            async with http.get(server.make_url("/healthz")) as response:
                assert response.status == 200
            served.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        closed_after = [t.result() for t in slow]
    assert all(t is not None and t < 0.8 + 1.0 for t in closed_after), closed_after
    assert max(served) < 0.5, f"a quick request waited {max(served):.2f}s"


async def test_a_slow_second_request_on_a_keep_alive_connection_is_closed(relay, http, viewer, seed) -> None:
    server = await relay(handshake_timeout=0.5)
    async with alongside(server, http, viewer, seed):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            await reader.read(100)
            hung_up = None
            started = time.monotonic()
            for byte in SLOW_REQUEST:
                if time.monotonic() - started > 1.5:
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                            hung_up = time.monotonic() - started
                            break
                except ConnectionError:
                    hung_up = time.monotonic() - started
                    break
        finally:
            writer.close()
    assert hung_up is not None and hung_up < 0.5 + 0.8, f"still open after {time.monotonic() - started:.1f}s"


async def test_keep_alive_clients_leave_no_way_around_the_handshake_timeout(relay, http, viewer, seed) -> None:
    """Keep-alive clients whose requests straddle the moment the guard fires on their connection, then go away;
    then slowloris connections: every one of them is still closed in time (none inherits a mark, a slot, an id
    left behind by the earlier connections)."""
    server = await relay(handshake_timeout=0.3)
    async with alongside(server, http, viewer, seed):
        async def keep_alive_client() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(6):  # a request every 0.1 s for 0.6 s: never idle long, across the guard's deadline
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                await asyncio.sleep(0.1)
            writer.close()

        for _ in range(3):
            await asyncio.gather(*(keep_alive_client() for _ in range(3)))
            await asyncio.sleep(0.05)
            escaped = await asyncio.gather(*(trickle(server.port, SLOW_REQUEST, 0.05, 1.0) for _ in range(4)))
            assert None not in escaped, f"{escaped.count(None)} slowloris connection(s) escaped the handshake timeout"
            assert all(t < 0.3 + 0.5 for t in escaped), escaped


# -- 8. a viewer that never reads ----------------------------------------------------------------------
def raw_viewer(port: int, bot_id: str) -> socket.socket:
    """A viewer that completes the WebSocket handshake, then never reads again (and can hold little)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /ws/watch/{bot_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
                 "\r\n\r\n".encode())
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


async def test_a_viewer_that_never_reads_is_cut_off_and_others_keep_receiving(relay, http, viewer, seed, logs) -> None:
    server = await relay(viewer_queue_bytes=64 << 10, viewer_max_behind=0.3)
    stuck = await asyncio.to_thread(raw_viewer, server.port, "healthy")  # attached before the first byte
    try:
        # 24 x 180 KB of 720p: well past what loopback buffers for a socket nobody reads (about 3 MB)
        async with alongside(server, http, viewer, seed, clip=BULKY, repeats=24, pace=0, max_chunk=1 << 16) as healthy:
            peak = 0
            while not healthy.task.done():
                state = await wait_status(http, server, "healthy", lambda s: True, "status")
                peak = max([peak] + [v["unsent"] for v in state["viewer_list"]])
                await asyncio.sleep(0.02)
            await wait_status(http, server, "healthy", lambda s: s["viewers"] == 1, "the stuck viewer to be cut off", 5)
    finally:
        stuck.close()
    assert peak <= 2 * (64 << 10), f"{peak} bytes queued for one viewer (viewer_queue_bytes is 64 KB)"
    assert any("viewer closing bot_id=healthy" in r.getMessage() and "code=4408" in r.getMessage()
               for r in logs.records), "the stuck viewer was closed with 4408"


# -- 9. hostile shapes the parser takes whole ----------------------------------------------------------
async def test_whole_fragments_ahead_of_garbage_in_one_frame_are_indexed_and_relayed(relay, http, viewer, seed) -> None:
    server = await relay()
    data = media(**OFFENDER)
    init, fragments = split(data)
    head = data[: fragments[2].offset]
    async with alongside(server, http, viewer, seed), viewer(server, "tail") as watcher:
        async with TracingBot(ingest_url(server), "tail", ping_interval=0, seed=seed + 1) as bot:
            await bot.start(init.info, 25.0)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await bot.send_raw(head + b"\x00\x00\x00\x20\xff\xfe\xfd\xfc" + bytes(24))
            await asyncio.wait_for(bot.closed.wait(), 5)
        [path] = await final_sidecar(recordings_of(server) / "tail")
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: len(watcher.binaries) >= 3, "the init and two fragments at the viewer", 1)
    assert bot.report.close_code == 1007
    assert watcher.binaries == [init.data, fragments[0].data, fragments[1].data]
    assert sidecar(path)["fragments"] == [fragments[0].index_entry(), fragments[1].index_entry()]


async def test_ended_streams_let_go_of_their_media(relay, http, viewer, seed) -> None:
    server = await relay()
    data = media(**OFFENDER)
    async with alongside(server, http, viewer, seed):
        for n in range(3):
            async with TracingBot(ingest_url(server), f"gone-{n}", ping_interval=0, seed=seed + n) as bot:
                await bot.start(split(data)[0].info, 25.0)
                await bot.send(data)
                await bot.end(1.0)
            await wait_ended(http, server, f"gone-{n}")
        ended = [s for s in server.app[keys.REGISTRY].ended if s.bot_id.startswith("gone-")]
        assert len(ended) == 3
        held = sum(len(item.fragment.data) for stream in ended for item in stream.gop)
    assert held == 0, f"{held} bytes of media held by {len(ended)} ended streams"


def _rss() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) * 1024


async def test_a_flood_of_tiny_fragments_cannot_balloon_server_memory(relay, http, viewer, seed) -> None:
    from test_fuzz import tiny_fragment

    server = await relay(sidecar_interval=1.0)
    init = split(media(seconds=1, gop=5))[0]
    flood = b"".join(tiny_fragment(1) for _ in range(5000))  # 440 KB, 5000 fragments of 88 bytes
    async with alongside(server, http, viewer, seed):
        before = _rss()
        async with TracingBot(ingest_url(server), "tiny", ping_interval=0, seed=seed + 1) as bot:
            await bot.start()
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await bot.send_raw(init.data)
                for _ in range(15):  # 6.6 MB, 75000 fragments: within the default rate limit's 10 s burst
                    await bot.send_raw(flood)
                await bot.ping(1)
            await wait_until(lambda: bot.report.pongs or bot.closed.is_set(), "the flood to be handled", 30)
        grown = _rss() - before
    assert bot.report.close_code == 1008 or grown < 16 << 20, f"server RSS grew {grown >> 20} MB for 6.6 MB of input"
