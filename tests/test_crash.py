"""The relay as a real process (``python -m relay serve``) killed mid-stream.

SIGKILL: what reached the relay is on disk, a byte prefix of what the bot sent, playable up to its
last complete fragment, and the sidecar is never half-written. SIGTERM: an orderly exit that
finalizes the recording and its sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from relay.media import FragmentAssembler, MediaError
from relay.simulate import Bot, stream_file
from relay.testsrc import decode_frames, probe_packets

from tests.conftest import free_port, media, split, wait_until

ROOT = Path(__file__).resolve().parents[1]
CLIP = dict(seconds=5, gop=10)  # h264+aac, a keyframe fragment every 0.4 s: 12 fragments over 5 s


class TracingBot(Bot):
    """A simulator bot that keeps every byte it managed to send."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = bytearray()

    async def send_raw(self, chunk: bytes) -> None:
        await super().send_raw(chunk)
        self.sent += chunk


class RelayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, recordings: Path, log: Path) -> None:
        self.proc, self.port, self.recordings, self.log = proc, port, recordings, log
        self.base = f"http://127.0.0.1:{port}"
        self.ingest = f"ws://127.0.0.1:{port}/ingest"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def relay_process(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    recordings = tmp_path / "recordings"
    log = tmp_path / "relay.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--port", str(port), "--recordings", str(recordings),
            "--sidecar-interval", "0.2", cwd=ROOT, env=env, stdout=out, stderr=out,
        )
    relay = RelayProcess(proc, port, recordings, log)

    async def healthy() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"relay exited with {proc.returncode}:\n{relay.output()}")
        try:
            async with aiohttp.ClientSession() as http, http.get(relay.base + "/healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    try:
        await wait_until(healthy, "the relay to answer /healthz", 20)
        yield relay
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def the_recording(relay: RelayProcess, bot_id: str) -> Path | None:
    files = list((relay.recordings / bot_id).glob("*.mp4"))
    assert len(files) <= 1, files
    return files[0] if files else None


async def wait_recorded(relay: RelayProcess, bot_id: str, size: int) -> Path:
    """The recording once at least ``size`` bytes of it are on disk."""

    def enough() -> Path | None:
        path = the_recording(relay, bot_id)
        return path if path is not None and path.stat().st_size >= size else None

    return await wait_until(enough, f"{size} bytes recorded", 15)


def complete_prefix(content: bytes) -> tuple[bytes, list]:
    """Cut ``content`` after its last complete fragment: (those bytes, the init and fragments in them)."""
    assembler = FragmentAssembler()
    events = assembler.feed(content)
    with contextlib.suppress(MediaError):  # a tail cut inside a box
        events += assembler.finish()
    assert events and hasattr(events[0], "info"), "no init segment on disk"
    fragments = events[1:]
    assert fragments, "no complete fragment on disk"
    return content[: fragments[-1].offset + fragments[-1].size], events


def check_playable_prefix(content: bytes, bot: TracingBot, original: bytes) -> int:
    """``content`` is a prefix of what the bot sent (``original``, of which it sent ``bot.sent``); up
    to its last complete fragment it decodes strictly, to exactly the video frames those fragments
    hold. Returns the number of fragments."""
    assert content and original.startswith(content), f"{len(content)} bytes on disk are not a prefix of what was sent"
    # The chunk in flight when the server died may have arrived without its send call returning.
    assert len(content) <= len(bot.sent) + bot.max_chunk
    prefix, events = complete_prefix(content)
    init, fragments = events[0], events[1:]
    video = {t.track_id for t in init.info.video_tracks}
    frames = sum(run.samples for f in fragments for run in f.runs if run.track_id in video)
    _, reference = split(original)
    assert [f.index_entry() for f in fragments] == [f.index_entry() for f in reference[: len(fragments)]]
    by_ffmpeg = [p for p in probe_packets(original) if p["kind"] == "video" and p["pos"] < len(prefix)]
    assert frames == len(by_ffmpeg) > 0
    assert decode_frames(prefix) == frames
    return len(fragments)


def check_sidecar_if_any(path: Path, content: bytes, original: bytes) -> dict | None:
    side_path = path.with_suffix(".json")
    if not side_path.exists():
        return None
    side = json.loads(side_path.read_text())  # never half-written: this must parse
    assert side["file"] == path.name and side["bytes"] <= len(content)
    _, reference = split(original)
    assert side["fragments"] == [f.index_entry() for f in reference[: len(side["fragments"])]]
    return side


async def stop_streaming(task: asyncio.Task) -> None:
    """The bot's stream_file, once the server is gone: let it fail or finish, quietly."""
    with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
        await asyncio.wait_for(task, 10)


async def test_sigkill_mid_stream_leaves_a_playable_prefix(relay_process: RelayProcess, seed: int) -> None:
    relay = relay_process
    data = media(**CLIP)
    _, fragments = split(data)
    async with TracingBot(relay.ingest, "crash", ping_interval=0.2, seed=seed, max_chunk=4096) as bot:
        streaming = asyncio.create_task(stream_file(bot, data, realtime=True))
        # About 2.5 s in: the fragment due at 2.4 s is reaching the disk (a condition, not a sleep).
        path = await wait_recorded(relay, "crash", fragments[6].offset + 1)
        os.kill(relay.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(relay.proc.wait(), 10) == -signal.SIGKILL
        await stop_streaming(streaming)
    assert bot.report.pongs > 0 and bot.report.pong_errors == []
    content = path.read_bytes()
    assert len(content) < len(data), "the whole file got through: the kill came too late to test anything"
    count = check_playable_prefix(content, bot, data)
    assert count >= 6
    side = check_sidecar_if_any(path, content, data)
    if side is not None:
        assert side["ended_at"] is None and len(side["fragments"]) <= count


async def test_sigkill_inside_a_fragment(relay_process: RelayProcess, seed: int) -> None:
    """The same with the tail certainly cut inside a fragment: the bot stops halfway through one."""
    relay = relay_process
    data = media(**CLIP)
    _, fragments = split(data)
    cut = fragments[3].offset + fragments[3].size // 2
    async with TracingBot(relay.ingest, "half", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await stream_file(bot, data[:cut], realtime=True, send_end=False)
        path = await wait_recorded(relay, "half", cut)
        os.kill(relay.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(relay.proc.wait(), 10) == -signal.SIGKILL
    content = path.read_bytes()
    assert content == data[:cut] == bytes(bot.sent)
    assert check_playable_prefix(content, bot, data) == 3
    with pytest.raises(MediaError):  # the tail really is a partial fragment
        split(content)
    check_sidecar_if_any(path, content, data)


async def test_sigterm_finalizes_the_recording(relay_process: RelayProcess, seed: int) -> None:
    relay = relay_process
    data = media(**CLIP)
    _, fragments = split(data)
    async with TracingBot(relay.ingest, "term", ping_interval=0.2, seed=seed, max_chunk=4096) as bot:
        streaming = asyncio.create_task(stream_file(bot, data, realtime=True))
        path = await wait_recorded(relay, "term", fragments[3].offset + 1)
        os.kill(relay.proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(relay.proc.wait(), 15) == 0, relay.output()
        await asyncio.wait_for(bot.closed.wait(), 5)
        await stop_streaming(streaming)
    assert bot.report.close_code == 1001, (bot.report, relay.output())
    assert "shutting down" in bot.report.close_reason
    content = path.read_bytes()
    assert len(content) < len(data)
    count = check_playable_prefix(content, bot, data)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["ended_at"] is not None and "shutdown" in side["end_reason"], side
    assert side["bytes"] == len(content) and side["error"] is None and side["bytes_lost"] == 0
    assert len(side["fragments"]) == count
    assert side["fragments"] == [f.index_entry() for f in fragments[:count]]
    assert not list(relay.recordings.rglob("*.tmp"))
    assert "Traceback" not in relay.output(), relay.output()


async def test_sigterm_finalizes_every_bot_even_mute_ones(relay_process: RelayProcess, seed: int) -> None:
    """Several bots at SIGTERM, some of which never answer the close frame: every one gets a 1001
    close at once, every recording is finalized, and the relay does not wait on the mute ones."""
    relay = relay_process
    data = media(**CLIP)
    _, fragments = split(data)
    head = data[: fragments[1].offset]
    closes: dict[str, tuple[float, int, str]] = {}

    async def mute(http: aiohttp.ClientSession, bot_id: str) -> aiohttp.ClientWebSocketResponse:
        """A bot that reads but never answers the server's close frame."""
        ws = await http.ws_connect(relay.ingest, autoclose=False)
        await ws.send_json({"type": "video_stream_start", "bot_id": bot_id, "container": "fmp4"})
        await ws.send_bytes(head)

        async def read() -> None:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    closes[bot_id] = (time.monotonic(), msg.data, msg.extra)
                    return
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return

        ws.reader = asyncio.create_task(read())
        return ws

    async with aiohttp.ClientSession() as http:
        mutes = [await mute(http, f"mute-{i}") for i in range(3)]
        async with TracingBot(relay.ingest, "talker", ping_interval=0, seed=seed, max_chunk=4096) as bot:
            streaming = asyncio.create_task(stream_file(bot, data, realtime=True))
            await wait_recorded(relay, "talker", fragments[1].offset + 1)
            for i in range(3):
                await wait_recorded(relay, f"mute-{i}", len(head))
            signalled = time.monotonic()
            os.kill(relay.proc.pid, signal.SIGTERM)
            await asyncio.wait_for(bot.closed.wait(), 5)
            closes["talker"] = (time.monotonic(), bot.report.close_code, bot.report.close_reason)
            await stop_streaming(streaming)
            assert await asyncio.wait_for(relay.proc.wait(), 15) == 0, relay.output()
            await asyncio.wait_for(asyncio.gather(*(ws.reader for ws in mutes)), 5)
    assert sorted(closes) == ["mute-0", "mute-1", "mute-2", "talker"]
    for bot_id, (at, code, reason) in closes.items():
        assert code == 1001 and "shutting down" in reason, (bot_id, code, reason)
        assert at - signalled < 3, f"{bot_id} got its close frame {at - signalled:.1f}s after SIGTERM"
    for bot_id, sent in [("talker", data)] + [(f"mute-{i}", head) for i in range(3)]:
        path = the_recording(relay, bot_id)
        side = json.loads(path.with_suffix(".json").read_text())
        assert path.read_bytes() and sent.startswith(path.read_bytes())
        assert side["bytes"] == path.stat().st_size
        assert "shutdown" in side["end_reason"] and side["ended_at"], side
        assert side["fragments"] == [f.index_entry() for f in fragments[: len(side["fragments"])]]
    assert the_recording(relay, "mute-0").read_bytes() == head
