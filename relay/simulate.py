"""A client that behaves like a MeetStream bot: the demo's source, the tests' and benchmarks' fake bot.

It sends the vendor's start message, pings once a second and checks every pong, cuts the fMP4 into
chunks of random sizes that ignore box boundaries, paces them by the fragments' timestamps when asked
to, and sends the end message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp

from .media import FragmentAssembler, InitInfo

log = logging.getLogger("relay.simulate")

_VIDEO = {"avc1": "h264", "avc3": "h264", "hvc1": "h265", "hev1": "h265", "vp09": "vp9", "av01": "av1"}
_AUDIO = {"mp4a": "aac", "opus": "opus", "flac": "flac"}


def start_message(bot_id: str, info: InitInfo | None, framerate: float = 0.0) -> dict[str, Any]:
    """The vendor's ``video_stream_start``, filled in from the init segment."""
    msg: dict[str, Any] = {"type": "video_stream_start", "bot_id": bot_id, "container": "fmp4"}
    for track in info.tracks if info else ():
        family = track.codec.split(".")[0]
        if track.kind == "video" and "codec" not in msg:
            msg |= {"codec": _VIDEO.get(family, family), "width": track.width, "height": track.height,
                    "framerate": round(framerate, 3)}
        elif track.kind == "audio" and "audio_codec" not in msg:
            msg |= {"audio_codec": _AUDIO.get(family, family), "audio_sample_rate": track.sample_rate,
                    "audio_bitrate": 64000}
    return msg


def random_cuts(size: int, rng: random.Random, max_chunk: int = 65536) -> list[int]:
    """Chunk end offsets of log-uniform sizes from 1 byte to ``max_chunk``: many tiny and some large."""
    cuts, pos = [], 0
    while pos < size:
        pos = min(size, pos + int(math.exp(rng.uniform(0, math.log(max_chunk)))))
        cuts.append(pos)
    return cuts


@dataclass
class BotReport:
    bytes_sent: int = 0
    chunks: int = 0
    pings: int = 0
    pongs: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    pong_errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""


class Bot:
    """One bot connection. Use as ``async with Bot(url, bot_id) as bot:``."""

    def __init__(self, url: str, bot_id: str, *, ping_interval: float = 1.0, max_chunk: int = 65536,
                 seed: int | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.url = url
        self.bot_id = bot_id
        self.ping_interval = ping_interval
        self.max_chunk = max_chunk
        self.rng = random.Random(seed)
        self.report = BotReport()
        self._session = session
        self._own_session = session is None
        self._outstanding: dict[Any, float] = {}
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.closed = asyncio.Event()

    async def __aenter__(self) -> "Bot":
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.ws = await self._session.ws_connect(self.url, max_msg_size=0, autoping=True)
        self._tasks.append(asyncio.create_task(self._receive()))
        if self.ping_interval > 0:
            self._tasks.append(asyncio.create_task(self._ping_loop()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close as a bot does: stop pinging, send a close frame, let the reader see the reply."""
        for task in self._tasks[1:]:
            task.cancel()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws is not None and self.report.close_code is None:
            self.report.close_code = self.ws.close_code
        if self._own_session and self._session is not None:
            await self._session.close()

    # -- messages -----------------------------------------------------------------------------
    async def send_json(self, msg: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_str(json.dumps(msg))

    async def start(self, info: InitInfo | None = None, framerate: float = 0.0, **extra: Any) -> None:
        await self.send_json(start_message(self.bot_id, info, framerate) | extra)

    async def end(self, duration: float) -> None:
        await self.send_json({"type": "video_stream_end", "bot_id": self.bot_id,
                              "duration_seconds": round(duration, 3)})

    async def send(self, data: bytes) -> None:
        """Send bytes in random-sized binary frames that ignore box boundaries."""
        pos = 0
        for cut in random_cuts(len(data), self.rng, self.max_chunk):
            await self.send_raw(data[pos:cut])
            pos = cut

    async def send_raw(self, chunk: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(chunk)
        self.report.bytes_sent += len(chunk)
        self.report.chunks += 1

    async def ping(self, seq: int) -> None:
        sent = int(time.time() * 1000)
        self._outstanding[seq] = sent
        self.report.pings += 1
        await self.send_json({"type": "video_latency_ping", "bot_id": self.bot_id, "seq": seq, "sent_at_ms": sent})

    async def _ping_loop(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.ping_interval)
            seq += 1
            await self.ping(seq)

    async def _receive(self) -> None:
        # Not ``async for``: it swallows the CLOSE message, and with it the server's close reason
        # (aiohttp's client socket keeps only the code).
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._check_pong(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                self.report.close_reason = msg.extra or ""
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        self.report.close_code = self.ws.close_code
        self.closed.set()

    def _check_pong(self, pong: dict[str, Any]) -> None:
        if pong.get("type") != "video_latency_pong":
            return
        seq = pong.get("seq")
        sent = self._outstanding.pop(seq, None)
        problems = []
        if sent is None:
            problems.append(f"pong for unknown seq {seq!r}")
        elif pong.get("sent_at_ms") != sent:
            problems.append(f"seq {seq}: sent_at_ms {pong.get('sent_at_ms')!r} != {sent}")
        if pong.get("bot_id") != self.bot_id:
            problems.append(f"seq {seq}: bot_id {pong.get('bot_id')!r} != {self.bot_id!r}")
        if not isinstance(pong.get("server_received_at_ms"), int):
            problems.append(f"seq {seq}: server_received_at_ms missing or not an integer")
        self.report.pong_errors += problems
        if sent is not None:
            self.report.pongs += 1
            self.report.rtts_ms.append(time.time() * 1000 - sent)


async def stream_file(bot: Bot, data: bytes, *, realtime: bool = True, send_end: bool = True,
                      early_bytes: int = 0) -> None:
    """Stream a whole fMP4 as a bot would, paced by its fragments' decode times when ``realtime``.

    ``early_bytes`` of media go out before the start message (the vendor warns this happens).
    """
    assembler = FragmentAssembler()
    events = assembler.feed(data)
    init = events[0] if events else None
    fragments = [e for e in events[1:] if not hasattr(e, "info")]
    framerate = _framerate(init.info if init else None, fragments)
    due = _due_times(len(data), fragments) if realtime else None
    if early_bytes:
        await bot.send_raw(data[:early_bytes])
    await bot.start(init.info if init else None, framerate)
    began = time.monotonic()
    pos = early_bytes
    for cut in random_cuts(len(data) - pos, bot.rng, bot.max_chunk):
        end = early_bytes + cut
        if due is not None:
            delay = began + due(end) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await bot.send_raw(data[pos:end])
        pos = end
    if send_end:
        await bot.end(time.monotonic() - began)


def _framerate(info: InitInfo | None, fragments: list) -> float:
    if info is None or not info.video_tracks:
        return 0.0
    video_id = info.video_tracks[0].track_id
    for fragment in fragments[1:] or fragments:  # the first fragment's timing carries the encoder's start-up offset
        for run in fragment.runs:
            if run.track_id == video_id and run.duration and run.samples > 1:
                return run.samples * info.video_tracks[0].timescale / run.duration
    return 0.0


def _due_times(size: int, fragments: list) -> Any:
    """A function from a byte offset to when it is due: when the fragment holding it starts, relative to the first."""
    if not fragments:
        return lambda offset: 0.0
    t0 = fragments[0].decode_time
    starts = [(f.offset + f.size, f.decode_time - t0) for f in fragments]

    def due(offset: int) -> float:
        for end, start in starts:
            if offset <= end:
                return start
        return starts[-1][1]

    return due


async def stream_live(bot: Bot, chunks: AsyncIterator[bytes], *, duration: float | None = None,
                      framerate: float | None = None) -> None:
    """Relay a live source (e.g. ``LivePattern().chunks()``) as the bot, re-cut at random sizes.

    Without ``framerate`` the start message estimates it from the first fragment.
    """
    assembler = FragmentAssembler()
    started = False
    pending = bytearray()
    began = time.monotonic()
    async for chunk in chunks:
        if not started:
            pending += chunk
            events = assembler.feed(chunk)
            fragments = [e for e in events if not hasattr(e, "info")]
            if assembler.init is None or not fragments:
                continue
            await bot.start(assembler.init.info, framerate or _framerate(assembler.init.info, fragments))
            started, chunk = True, bytes(pending)
        await bot.send(chunk)
        if duration is not None and time.monotonic() - began >= duration:
            break
    await bot.end(time.monotonic() - began)
