"""Faults below the relay: a disk that refuses writes, a recordings directory that cannot exist, a bot whose
connection drops in the middle of a box. The live relay goes on, the error is reported, no file on disk is
corrupt, and a recording holds exactly the bytes that reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from relay import keys
from relay.media import FragmentAssembler, MediaError
from relay.simulate import random_cuts
from relay.testsrc import decode_frames

from tests.conftest import free_port, ingest_url, media, split, wait_until
from test_ingest import TracingBot, check_recording, only_recording, recordings_of, sidecar, wait_ended, \
    wait_status

ROOT = Path(__file__).resolve().parents[1]
CLIP = dict(seconds=5, gop=10)  # h264+aac 320x240, a keyframe fragment every 0.4 s: 13 fragments, 200 KB
OTHER = dict(seconds=2, width=480, height=270, gop=15)  # what the bot streams after it reconnects


def video_frames(fragments: list) -> int:
    return sum(run.samples for f in fragments for run in f.runs if run.track_id == 1)


def complete_fragments(content: bytes) -> list:
    """The fragments wholly inside ``content`` (an init segment and what follows), by our parser."""
    assembler = FragmentAssembler()
    events = assembler.feed(content)
    with contextlib.suppress(MediaError):
        events += assembler.finish()
    return [e for e in events if not hasattr(e, "info")]


async def barrier(bot: TracingBot) -> None:
    """Everything the bot sent so far has been handled by the relay (pongs come back in order)."""
    pongs = bot.report.pongs
    await bot.ping(10**9 + pongs)
    await wait_until(lambda: bot.report.pongs > pongs, "the barrier pong")


# -- a relay process with a file-size limit ---------------------------------------------------------------
class RelayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, recordings: Path) -> None:
        self.proc, self.port, self.recordings = proc, port, recordings
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:  # a pipe, not a file: the file-size limit must not cut the log short
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    def make_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def log(self) -> str:
        return "".join(self.lines)


@contextlib.asynccontextmanager
async def relay_process(tmp_path: Path, *flags: str, file_size_limit: int) -> AsyncIterator[RelayProcess]:
    recordings = tmp_path / "recordings"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    port = free_port()

    def limit() -> None:  # in the child: writes past the limit fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--port", str(port), "--recordings", str(recordings),
        "--sidecar-interval", "0.2", "--min-free-space", "0", *flags, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=limit)
    relay = RelayProcess(proc, port, recordings)
    try:
        async def healthy() -> bool:
            assert proc.returncode is None, f"relay exited with {proc.returncode}:\n{relay.log}"
            try:
                async with aiohttp.ClientSession() as http, http.get(relay.make_url("/healthz")) as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(healthy, "the relay to answer /healthz", 20)
        yield relay
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(relay.reader, 5)


async def watch(http: aiohttp.ClientSession, url: str, binaries: list[bytes], texts: list[dict]) -> None:
    async with http.ws_connect(url, max_msg_size=0) as ws:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                binaries.append(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                texts.append(json.loads(msg.data))


async def get_status(http: aiohttp.ClientSession, url: str) -> dict | None:
    async with http.get(url) as response:
        return await response.json() if response.status == 200 else None


# -- (a) the disk refuses writes: a file-size limit ----------------------------------------------------------
LIMIT = 64 << 10


@pytest.mark.parametrize("part", ["live", "end", "resume"])
async def test_write_errors_while_recording(tmp_path: Path, seed: int, part: str) -> None:
    """RLIMIT_FSIZE: every write past 64 KB fails with EFBIG. ``live``: while the stream goes on, the viewer gets
    everything, the status says what failed, the sidecar on disk parses and says so too, the file holds a byte
    prefix of the stream. ``end``: then the stream ends normally and everything is finalized. ``resume``: with a
    storage check every 0.3 s the relay tries new files after a check (each starts at a keyframe, with the init)
    and each stops at the limit in turn: every one of them is a self-contained, decodable fMP4."""
    resume = part == "resume"
    data = media(**CLIP)
    init, fragments = split(data)
    flags = ("--storage-check-interval", "0.3") if resume else ()
    async with relay_process(tmp_path, *flags, file_size_limit=LIMIT) as relay, aiohttp.ClientSession() as http:
        binaries: list[bytes] = []
        texts: list[dict] = []
        viewing = asyncio.create_task(watch(http, relay.make_url("/ws/watch/fsize").replace("http", "ws", 1),
                                            binaries, texts))
        await wait_until(lambda: texts, "the viewer to wait for the stream")
        url = relay.make_url("/api/streams/fsize")
        async with TracingBot(f"ws://127.0.0.1:{relay.port}/ingest", "fsize", ping_interval=0, seed=seed,
                              max_chunk=4096, session=http) as bot:
            await bot.start(init.info, 25.0)
            pos = 0
            for cut in random_cuts(len(data), bot.rng, 4096):  # paced: the relay's storage checks run meanwhile
                try:
                    await bot.send_raw(data[pos:cut])
                except aiohttp.ClientError as exc:
                    raise AssertionError(f"the relay dropped the bot ({exc}); relay log:\n{relay.log[-4000:]}")
                pos = cut
                if resume:
                    await asyncio.sleep(0.006)
            await barrier(bot)
            # While live: every fragment reached the viewer, the error is in the status.
            await wait_until(lambda: len(binaries) == 1 + len(fragments), "every fragment at the viewer")
            assert binaries == [init.data] + [f.data for f in fragments], "the live relay carried on"
            live = await wait_until(lambda: get_status(http, url), "the stream's status")
            assert live["state"] == "live" and (resume or "File too large" in live["recording"]["error"])
            assert any(e.startswith("recording:") and "File too large" in e for e in live["errors"]), live["errors"]
            if part == "live":
                folder = relay.recordings / "fsize"
                [path] = folder.glob("*.mp4")
                side = await wait_until(lambda: (s := json.loads(path.with_suffix(".json").read_text()))["error"]
                                        and s, "the sidecar to say so")
                content = path.read_bytes()
                assert 0 < len(content) <= LIMIT and data.startswith(content), "the file is a byte prefix"
                assert "File too large" in side["error"] and side["ended_at"] is None
                assert side["bytes"] <= len(content)
                assert side["fragments"] == [f.index_entry() for f in fragments if f.offset + f.size <= side["bytes"]]
                assert "Traceback" not in relay.log, relay.log
                return
            await bot.end(1.0)
        try:
            await asyncio.wait_for(viewing, 5)
        except TimeoutError:
            raise AssertionError(f"the viewer never saw the end; relay log:\n{relay.log[-4000:]}") from None

        async def ended_status() -> dict | None:
            state = await get_status(http, url)
            return state if state and state["state"] == "ended" else None

        ended = await wait_until(ended_status, "the stream to end")
    assert bot.report.close_code == 1000
    errors = [e for e in ended["errors"] if e.startswith("recording:")]
    assert errors and all("File too large" in e for e in errors), ended["errors"]
    assert ended["recording"]["error"] is not None or resume
    # On disk: every sidecar is final, whole JSON; every file is within the limit and holds what it should.
    files = sorted((relay.recordings / "fsize").glob("*.mp4"))
    sides = {p: json.loads(p.with_suffix(".json").read_text()) for p in files}
    assert files and not list(relay.recordings.rglob("*.tmp"))
    first = min(files, key=lambda p: sides[p]["started_at"])
    content = first.read_bytes()
    assert 0 < len(content) <= LIMIT and data.startswith(content), "the first file is a byte prefix of the stream"
    side = sides[first]
    assert side["ended_at"] and "File too large" in side["error"] and side["bytes_lost"] > 0
    assert side["bytes"] <= len(content)
    assert side["fragments"] == [f.index_entry() for f in fragments if f.offset + f.size <= side["bytes"]]
    resumed = sorted((p for p in files if p != first), key=lambda p: sides[p]["started_at"])
    if not resume:
        assert resumed == []
        assert "Traceback" not in relay.log, relay.log
        return
    assert resumed, f"no recording resumed after the storage checks; log:\n{relay.log[-3000:]}"
    for path in resumed:  # each: the init, then the stream from a keyframe fragment on, cut at the limit
        content, side = path.read_bytes(), sides[path]
        assert side["ended_at"] and content.startswith(init.data) and len(content) <= LIMIT
        start = next(f for f in fragments if data.startswith(content[len(init.data):], f.offset))
        assert start.keyframe, "a resumed file starts at a keyframe"
        shift = start.offset - len(init.data)
        assert side["inits"][0]["offset"] == 0 and side["inits"][0]["size"] == len(init.data)
        whole = [f for f in fragments if start.offset <= f.offset and f.offset + f.size - shift <= side["bytes"]]
        assert side["fragments"] == [f.index_entry() | {"offset": f.offset - shift} for f in whole]
        playable = content[: len(init.data) + sum(f.size for f in whole)]
        assert whole and decode_frames(playable) == video_frames(whole)
    assert "Traceback" not in relay.log, relay.log


# -- (b) a recordings directory that cannot be ------------------------------------------------------------
@pytest.mark.parametrize("where", ["a file in its place", "under a file", "in procfs"])
async def test_an_impossible_recordings_directory(relay, http, viewer, seed, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a directory")
    recordings = {"a file in its place": blocker, "under a file": blocker / "recordings",
                  "in procfs": Path(f"/proc/relay-recordings-{os.getpid()}")}[where]
    server = await relay(recordings=str(recordings))
    data = media(**CLIP)
    init, fragments = split(data)
    async with viewer(server, "nodir") as watcher:
        async with TracingBot(ingest_url(server), "nodir", ping_interval=0, seed=seed, max_chunk=8192) as bot:
            await bot.start(init.info, 25.0)
            await wait_status(http, server, "nodir", lambda s: s["viewers"] == 1, "the viewer")
            await bot.send(data)
            live = await wait_status(http, server, "nodir", lambda s: s["fragments"] == len(fragments)
                                     and s["recording"]["error"] is not None, "the recording error, while live")
            await bot.end(1.0)
        await asyncio.wait_for(watcher.ended.wait(), 10)
    assert live["state"] == "live" and bot.report.close_code == 1000
    assert watcher.binaries == [init.data] + [f.data for f in fragments]
    state = await wait_ended(http, server, "nodir")
    assert state["recording"]["bytes"] == 0 and state["recording"]["bytes_lost"] == len(data)
    assert any(e.startswith("recording:") for e in state["errors"]), state["errors"]
    assert blocker.read_bytes() == b"not a directory" and sorted(tmp_path.iterdir()) == [blocker]
    assert not recordings.exists() or recordings == blocker
    async with http.get(server.make_url("/readyz")) as response:
        assert response.status == 503, "readiness says the recordings disk is not writable"


# -- (c) the bot's connection drops inside a box, then it reconnects -------------------------------------
async def test_a_connection_dropped_mid_box_then_a_reconnect(relay, http, viewer, seed) -> None:
    server = await relay()
    first, second = media(**CLIP), media(**OTHER)
    init1, frags1 = split(first)
    init2, frags2 = split(second)
    moof_size = int.from_bytes(frags1[4].data[:4], "big")
    cut = frags1[4].offset + moof_size + frags1[4].size // 3  # inside the fifth fragment's mdat
    url = ingest_url(server)
    async with viewer(server, "drop") as watcher:
        bot1 = await TracingBot(url, "drop", ping_interval=0, seed=seed, max_chunk=2048).__aenter__()
        await bot1.start(init1.info, 25.0)
        await wait_status(http, server, "drop", lambda s: s["viewers"] == 1, "the viewer")
        await bot1.send(first[:cut])
        await barrier(bot1)  # every byte sent has reached the relay: nothing is in flight when the line dies
        bot1.ws._conn.transport.abort()  # no close frame, no FIN: a reset, as when a NAT or the bot's host dies
        await bot1.close()
        state = await wait_status(http, server, "drop", lambda s: s["state"] == "reconnecting", "the drop to be seen")
        assert state["viewers"] == 1 and state["fragments"] == 4
        async with TracingBot(url, "drop", ping_interval=0, seed=seed + 1, max_chunk=2048) as bot2:
            await bot2.start(init2.info, 25.0)
            await bot2.send(second)
            await bot2.end(1.0)
        await asyncio.wait_for(watcher.ended.wait(), 10)
    # The viewer: the first stream's whole fragments, then a new init and the new clip, which decodes.
    assert watcher.order.count("init") == 2 and watcher.order[-1] == "end"
    assert watcher.binaries[:5] == [init1.data] + [f.data for f in frags1[:4]]
    after = watcher.segments_after_last_init()
    assert after == [init2.data] + [f.data for f in frags2]
    assert decode_frames(b"".join(after)) == video_frames(frags2) > 0
    # The recordings: the first ends at the exact bytes received, indexing only whole fragments; the second is exact.
    path1, path2 = sorted(recordings_of(server).joinpath("drop").glob("*.mp4"), key=lambda p: sidecar(p)["started_at"])
    content = path1.read_bytes()
    assert content == first[:cut] == bytes(bot1.sent)
    side = sidecar(path1)
    assert side["ended_at"] and side["bytes"] == cut and side["error"] is None
    assert side["fragments"] == [f.index_entry() for f in frags1[:4]]
    assert decode_frames(content[: frags1[4].offset]) == video_frames(frags1[:4])
    check_recording(path2, second, bot2.sent_json[0], "video_stream_end")


# -- (d) recording resumes in a new file when space returns ---------------------------------------------
async def test_recording_resumes_in_a_new_file_when_space_returns(relay, http, viewer, seed) -> None:
    server = await relay(min_free_space=1 << 60, storage_check_interval=3600)
    storage = server.app[keys.STORAGE]
    await asyncio.to_thread(storage.check_space)
    assert storage.low_space
    data = media(**CLIP)
    init, fragments = split(data)
    async with viewer(server, "space") as watcher:
        async with TracingBot(ingest_url(server), "space", ping_interval=0, seed=seed, max_chunk=4096) as bot:
            await bot.start(init.info, 25.0)
            await wait_status(http, server, "space", lambda s: s["viewers"] == 1, "the viewer")
            await bot.send(data[: fragments[4].offset + 100])
            await barrier(bot)
            low = await wait_status(http, server, "space", lambda s: s["recording"]["error"] is not None,
                                    "recording to stop for lack of space")
            assert "min_free_space" in low["recording"]["error"] and low["recording"]["bytes"] == 0
            storage.settings = storage.settings.with_(min_free_space=0)  # space returns
            await asyncio.to_thread(storage.check_space)
            assert not storage.low_space
            await bot.send(data[fragments[4].offset + 100 :])
            await bot.end(1.0)
        await asyncio.wait_for(watcher.ended.wait(), 10)
    assert watcher.binaries == [init.data] + [f.data for f in fragments], "the live relay never stopped"
    state = await wait_ended(http, server, "space")
    assert any("min_free_space" in e for e in state["errors"]), state["errors"]
    path = only_recording(recordings_of(server) / "space")  # the refused one never got a file
    content = path.read_bytes()
    start = fragments[4]  # the first keyframe fragment completed after space returned
    assert start.keyframe and content == init.data + data[start.offset :]
    side = sidecar(path)
    shift = start.offset - len(init.data)
    assert side["inits"] == [side["inits"][0]] and side["inits"][0]["offset"] == 0
    assert side["fragments"] == [f.index_entry() | {"offset": f.offset - shift} for f in fragments[4:]]
    assert side["error"] is None and side["bytes"] == len(content) and side["end_reason"] == "video_stream_end"
    assert decode_frames(content) == video_frames(fragments[4:])
