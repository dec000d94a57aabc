"""The MeetStream ingest end to end: a real relay on a loopback port, real PyAV fMP4, real WebSocket
bots (``relay.simulate.Bot``) that cut the media into random chunk sizes, real files on disk.

Every wait is for a condition (status JSON, an event, a file), bounded by a timeout; no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest

from relay import keys
from relay.simulate import Bot, random_cuts, stream_file
from relay.testsrc import probe_packets

from tests.conftest import ingest_url, media, split, wait_until

NAME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z(-\d+)?\.mp4")  # -N only when a second is taken
FAST = dict(seconds=2, gop=10)  # h264+aac, 320x240, a keyframe fragment every 0.4 s: 5 fragments
OTHER = dict(seconds=1, video="vp9", audio="opus", gop=5)  # a different codec pair: 5 fragments
BIG = dict(seconds=3, width=1920, height=1080, gop=1)  # all-intra 1080p: about 2 MB, 75 fragments


# -- helpers ------------------------------------------------------------------------------------
class TracingBot(Bot):
    """A simulator bot that also keeps what it sent (JSON and bytes) and every pong with its arrival time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent_json: list[dict] = []
        self.sent = bytearray()
        self.pong_log: list[tuple[float, dict]] = []

    async def send_json(self, msg: dict[str, Any]) -> None:
        await super().send_json(msg)
        self.sent_json.append(msg)

    async def send_raw(self, chunk: bytes) -> None:
        await super().send_raw(chunk)
        self.sent += chunk

    def _check_pong(self, pong: dict[str, Any]) -> None:
        if pong.get("type") == "video_latency_pong":
            self.pong_log.append((time.time() * 1000, pong))
        super()._check_pong(pong)


@pytest.fixture
def seed() -> int:
    value = random.randrange(1 << 31)
    print(f"chunking seed={value}")  # shown by pytest when the test fails, to replay its cuts
    return value


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recordings_of(server: Any) -> Path:
    return Path(server.settings.recordings)


async def status(http: aiohttp.ClientSession, server: Any, bot_id: str) -> dict | None:
    async with http.get(server.make_url(f"/api/streams/{bot_id}")) as response:
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        return await response.json()


async def all_streams(http: aiohttp.ClientSession, server: Any) -> dict:
    async with http.get(server.make_url("/api/streams")) as response:
        assert response.status == 200
        return await response.json()


async def wait_status(http: aiohttp.ClientSession, server: Any, bot_id: str, check: Callable[[dict], bool],
                      what: str, timeout: float = 10.0) -> dict:
    last: list[dict | None] = [None]

    async def probe() -> dict | None:
        last[0] = await status(http, server, bot_id)
        return last[0] if last[0] is not None and check(last[0]) else None

    try:
        return await wait_until(probe, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status of {bot_id!r}: {last[0]}") from None


async def wait_ended(http: aiohttp.ClientSession, server: Any, bot_id: str) -> dict:
    return await wait_status(http, server, bot_id, lambda s: s["state"] == "ended", f"{bot_id} to end")


async def wait_sessions_gone(server: Any) -> None:
    """Every ingest connection of this server has finished (its outputs are finalized)."""
    await wait_until(lambda: not server.app[keys.INGEST_SESSIONS], "ingest sessions to finish")


async def start_for_viewers(http: aiohttp.ClientSession, server: Any, bot: Bot, data: bytes, viewers: int = 1,
                            **extra: Any) -> None:
    """Send the start message, then wait until ``viewers`` viewers are attached, so they miss nothing."""
    await bot.start(split(data)[0].info, 25.0, **extra)
    await wait_status(http, server, bot.bot_id, lambda s: s["viewers"] >= viewers, f"{viewers} viewer(s)")


def only_recording(folder: Path) -> Path:
    files = sorted(folder.glob("*.mp4"))
    assert len(files) == 1, f"expected one recording in {folder}, found {[f.name for f in files]}"
    return files[0]


def sidecar(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def check_index(content: bytes, side: dict) -> None:
    """The sidecar's index describes ``content`` exactly, as our parser and FFmpeg see those bytes."""
    init, fragments = split(content)
    assert len(side["inits"]) == 1
    assert side["inits"][0]["offset"] == 0 and side["inits"][0]["size"] == len(init.data)
    assert side["inits"][0]["mime"] == init.mime
    entries = side["fragments"]
    assert len(entries) == len(fragments) > 0
    position = len(init.data)
    for entry, fragment in zip(entries, fragments):
        assert entry["offset"] == position, f"index not contiguous at {entry}"
        assert content[entry["offset"] + 4: entry["offset"] + 8] in (b"styp", b"moof"), entry
        assert entry == fragment.index_entry()
        position += entry["size"]
    assert content[position + 4: position + 8] in (b"mfra", b""), "bytes after the last fragment that are not the mfra"
    # An independent opinion: FFmpeg's demuxer on the same bytes (first video packet of each fragment).
    packets = probe_packets(content)
    for entry in entries:
        inside = [p for p in packets if entry["offset"] <= p["pos"] < entry["offset"] + entry["size"]]
        video = [p for p in inside if p["kind"] == "video"]
        first = (video or inside)[0]
        assert abs(first["dts"] * first["time_base"] - entry["decode_time"]) < 1e-3, (entry, first)
        if video:
            assert video[0]["is_keyframe"] == entry["keyframe"], (entry, video[0])


def check_recording(path: Path, sent: bytes, start: dict | None, end_reason: str | None = None) -> dict:
    """The file holds exactly ``sent``; its sidecar is final and indexes it."""
    content = path.read_bytes()
    assert sha(content) == sha(sent), f"{path}: {len(content)} bytes on disk, {len(sent)} sent"
    side = sidecar(path)
    assert side["file"] == path.name
    assert side["bytes"] == len(sent) == path.stat().st_size
    assert side["start_message"] == (start or {})
    assert side["ended_at"] and side["end_reason"]
    if end_reason is not None:
        assert side["end_reason"] == end_reason
    assert side["error"] is None and side["bytes_lost"] == 0
    check_index(content, side)
    return side


def free_box(size: int) -> bytes:
    """A top-level ``free`` box of ``size`` bytes in all: valid fMP4 padding between fragments."""
    return struct.pack(">I4s", size, b"free") + bytes(size - 8)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- 1. latency pings ---------------------------------------------------------------------------
async def test_pongs_echo_every_ping(relay: Callable, seed: int) -> None:
    server = await relay()
    data = media(**FAST)
    async with TracingBot(ingest_url(server), "pinger", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await bot.ping(0)  # before the start message: answered as well
        stop = asyncio.Event()

        async def pinger() -> None:
            seq = 1
            while not stop.is_set():
                await bot.ping(seq)
                seq += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.03)

        task = asyncio.create_task(pinger())
        await stream_file(bot, data, realtime=True)  # about 1.6 s of paced media
        stop.set()
        await task
        await wait_until(lambda: bot.report.pongs == bot.report.pings, "a pong for every ping", 5)
        assert bot.report.pong_errors == []
        # Fields are echoed unchanged, whatever their JSON type (the vendor's values are opaque).
        odd = {"type": "video_latency_ping", "bot_id": "pinger", "seq": "x-17", "sent_at_ms": 1732430000123.5}
        await bot.send_json(odd)
        await wait_until(lambda: len(bot.pong_log) == bot.report.pings + 1, "the pong of the odd ping", 5)
    assert bot.report.pings >= 20
    assert bot.report.pong_errors == ["pong for unknown seq 'x-17'"]  # the simulator did not send that one
    assert bot.report.close_code == 1000
    pongs = [pong for _, pong in bot.pong_log]
    assert [p["seq"] for p in pongs] == list(range(bot.report.pings)) + ["x-17"]
    for arrived_ms, pong in bot.pong_log:
        assert set(pong) == {"type", "seq", "sent_at_ms", "bot_id", "server_received_at_ms"}
        assert pong["bot_id"] == "pinger"
        received = pong["server_received_at_ms"]
        assert type(received) is int
        assert abs(received - arrived_ms) < 1000
        if isinstance(pong["seq"], int):
            assert type(pong["sent_at_ms"]) is int and pong["sent_at_ms"] <= received <= arrived_ms
    assert pongs[-1]["sent_at_ms"] == 1732430000123.5
    received = [p["server_received_at_ms"] for p in pongs]
    assert received == sorted(received)


async def test_ping_answered_while_megabytes_are_in_flight(relay: Callable, http: aiohttp.ClientSession,
                                                           seed: int) -> None:
    server = await relay()
    data = media(**BIG)
    assert len(data) > 1_500_000
    async with TracingBot(ingest_url(server), "busy", ping_interval=0, seed=seed) as bot:
        await bot.start(split(data)[0].info, 25.0)
        sender = asyncio.create_task(bot.send(data))  # ~2 MB in random chunks up to 64 KB
        seq = 0
        while not sender.done():
            seq += 1
            await bot.ping(seq)
            await asyncio.sleep(0.005)  # pacing of the pings, not a wait for anything
        await sender
        # And one ping right behind a single 2 MB frame of the same bytes again (a new init, then its fragments).
        await bot.send_raw(data)
        await bot.ping(seq + 1)
        await wait_until(lambda: bot.report.pongs == bot.report.pings, "a pong for every ping", 10)
        await bot.end(3.0)
    await wait_ended(http, server, "busy")
    assert bot.report.pong_errors == []
    assert bot.report.pings == seq + 1 >= 2
    pongs = [pong for _, pong in bot.pong_log]
    assert [p["seq"] for p in pongs] == list(range(1, seq + 2))  # answered in order
    received = [p["server_received_at_ms"] for p in pongs]
    assert received == sorted(received)
    assert max(bot.report.rtts_ms) < 3000, bot.report.rtts_ms
    # the pong after the 2 MB frame was handled after that frame (order kept): its bytes are all recorded
    path = only_recording(recordings_of(server) / "busy")
    assert sha(path.read_bytes()) == sha(bytes(bot.sent)) and len(bot.sent) == 2 * len(data)


# -- 2. the recording ---------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    FAST,
    dict(seconds=2, gop=50, fragmentation="duration", frag_duration=0.3, separate_moof=True),
], ids=["keyframe-fragments", "mid-gop-separate-moofs"])
async def test_recording_is_byte_exact_and_indexed(relay: Callable, http: aiohttp.ClientSession, seed: int,
                                                   options: dict) -> None:
    server = await relay()
    data = media(**options)
    init, fragments = split(data)
    before = datetime.now(UTC).replace(microsecond=0)
    async with TracingBot(ingest_url(server), "rec-1", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await stream_file(bot, data, realtime=False)
    after = datetime.now(UTC)
    state = await wait_ended(http, server, "rec-1")
    assert bot.sent == data and bot.report.chunks > 10

    path = only_recording(recordings_of(server) / "rec-1")
    assert NAME.fullmatch(path.name) and "-" not in path.name[20:], path.name
    named = datetime.strptime(path.name, "%Y-%m-%dT%H-%M-%SZ.mp4").replace(tzinfo=UTC)
    assert before <= named <= after
    side = check_recording(path, data, bot.sent_json[0], "video_stream_end")
    assert bot.sent_json[0]["type"] == "video_stream_start" and bot.sent_json[0]["bot_id"] == "rec-1"
    assert side["bot_id"] == "rec-1"
    assert datetime.fromisoformat(side["started_at"]) <= datetime.fromisoformat(side["ended_at"])

    assert state["connections"] == 1
    assert state["fragments"] == len(fragments)
    assert state["keyframes"] == sum(f.keyframe for f in fragments)
    assert state["bytes_in"] == len(init.data) + sum(f.size for f in fragments)
    assert state["mime"] == init.mime
    assert state["recording"]["bytes"] == len(data) and state["recording"]["error"] is None
    assert state["recording"]["fragments"] == len(fragments)
    assert Path(state["recording"]["path"]) == path
    assert state["errors"] == []
    listed = await all_streams(http, server)
    assert [s["bot_id"] for s in listed["ended"]] == ["rec-1"] and listed["streams"] == []


# -- 3. two bots at once ------------------------------------------------------------------------
async def test_two_bots_at_once_stay_apart(relay: Callable, http: aiohttp.ClientSession, viewer: Callable,
                                           seed: int) -> None:
    server = await relay()
    url = ingest_url(server)
    streams = {"bot-a": media(**FAST), "bot-b": media(**OTHER)}

    async def run(bot_id: str, data: bytes, n: int) -> TracingBot:
        async with TracingBot(url, bot_id, ping_interval=0, seed=seed + n, max_chunk=2048) as bot:
            await start_for_viewers(http, server, bot, data)
            await bot.ping(1)
            await bot.send(data)
            await bot.ping(2)
            await bot.end(1.0)
            await wait_until(lambda: bot.report.pongs == 2, "pongs")
        return bot

    async with viewer(server, "bot-a") as watch_a, viewer(server, "bot-b") as watch_b:
        bots = await asyncio.gather(run("bot-a", streams["bot-a"], 1), run("bot-b", streams["bot-b"], 2))
        await asyncio.wait_for(asyncio.gather(watch_a.ended.wait(), watch_b.ended.wait()), 10)
    for bot, watcher in zip(bots, (watch_a, watch_b)):
        data = streams[bot.bot_id]
        init, fragments = split(data)
        assert bot.report.pong_errors == []
        assert {p["bot_id"] for _, p in bot.pong_log} == {bot.bot_id}
        check_recording(only_recording(recordings_of(server) / bot.bot_id), data, bot.sent_json[0])
        state = await wait_ended(http, server, bot.bot_id)
        assert state["mime"] == init.mime
        assert state["fragments"] == len(fragments)
        assert state["bytes_in"] == len(init.data) + sum(f.size for f in fragments)
        assert state["meta"] == bot.sent_json[0]
        assert Path(state["recording"]["path"]).parent.name == bot.bot_id
        assert watcher.binaries == [init.data] + [f.data for f in fragments]
        assert [t["mime"] for t in watcher.texts if t.get("type") == "init"] == [init.mime]
    assert "avc1" in (await status(http, server, "bot-a"))["mime"]
    assert "vp09" in (await status(http, server, "bot-b"))["mime"]
    assert sorted(p.name for p in recordings_of(server).iterdir()) == ["bot-a", "bot-b"]


# -- 4. reconnect -------------------------------------------------------------------------------
async def test_reconnect_without_end_continues_the_stream(relay: Callable, http: aiohttp.ClientSession,
                                                          viewer: Callable, seed: int) -> None:
    server = await relay(reconnect_grace=10.0)
    url = ingest_url(server)
    first, second = media(**FAST), media(seconds=1, gop=5, width=160, height=120)
    init1, frags1 = split(first)
    init2, frags2 = split(second)
    assert init1.data != init2.data
    async with viewer(server, "again") as watcher:
        async with TracingBot(url, "again", ping_interval=0, seed=seed, max_chunk=4096) as bot1:
            await start_for_viewers(http, server, bot1, first)
            await bot1.send(first)
            await watcher.wait_for_binaries(1 + len(frags1))
        # The bot vanished without video_stream_end: the stream waits for it, its recording is final.
        state = await wait_status(http, server, "again", lambda s: s["state"] == "reconnecting", "reconnecting")
        assert state["connections"] == 1 and state["viewers"] == 1
        async with TracingBot(url, "again", ping_interval=0, seed=seed + 1, max_chunk=4096) as bot2:
            await bot2.start(init2.info, 25.0)
            state = await wait_status(http, server, "again", lambda s: s["state"] == "live", "live again")
            assert state["connections"] == 2 and state["viewers"] == 1
            await bot2.send(second)
            await bot2.end(1.0)
            state = await wait_ended(http, server, "again")
        await asyncio.wait_for(watcher.ended.wait(), 5)

    assert state["connections"] == 2 and state["fragments"] == len(frags1) + len(frags2)
    files = sorted(recordings_of(server).joinpath("again").glob("*.mp4"), key=lambda p: sidecar(p)["started_at"])
    assert len(files) == 2 and all(NAME.fullmatch(p.name) for p in files), files
    check_recording(files[0], first, bot1.sent_json[0], "disconnected")
    check_recording(files[1], second, bot2.sent_json[0], "video_stream_end")
    kinds = [k for k in watcher.order if k in ("init", "bin", "end")]
    assert kinds == ["init"] + ["bin"] * (1 + len(frags1)) + ["init"] + ["bin"] * (1 + len(frags2)) + ["end"]
    assert watcher.binaries == [init1.data] + [f.data for f in frags1] + [init2.data] + [f.data for f in frags2]
    assert watcher.segments_after_last_init() == [init2.data] + [f.data for f in frags2]


# -- 5. media before (or without) the start message ---------------------------------------------
async def test_media_before_start_is_not_lost(relay: Callable, http: aiohttp.ClientSession, seed: int) -> None:
    server = await relay()
    data = media(**FAST)
    init, fragments = split(data)
    early = len(init.data) + fragments[0].size // 2  # the init and half a fragment before the start message
    async with TracingBot(ingest_url(server), "early", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await stream_file(bot, data, realtime=False, early_bytes=early)
    state = await wait_ended(http, server, "early")
    assert state["fragments"] == len(fragments)
    check_recording(only_recording(recordings_of(server) / "early"), data, bot.sent_json[0], "video_stream_end")


async def wait_unnamed_final(root: Path) -> Path:
    """The one recording of an unnamed connection, once its sidecar is final."""

    def final() -> Path | None:
        sides = list(root.glob("unnamed-*/*.json"))
        if len(sides) == 1 and json.loads(sides[0].read_text())["ended_at"]:
            return sides[0].with_suffix(".mp4")
        return None

    return await wait_until(final, "an unnamed recording to be finalized")


async def test_media_without_start_is_recorded_unnamed(relay: Callable, http: aiohttp.ClientSession,
                                                       seed: int) -> None:
    server = await relay()
    data = media(**FAST)
    async with TracingBot(ingest_url(server), "who", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await bot.send(data)
    path = await wait_unnamed_final(recordings_of(server))
    assert re.fullmatch(r"unnamed-[0-9a-f]+", path.parent.name) and NAME.fullmatch(path.name)
    check_recording(path, data, None, "disconnected")
    state = await status(http, server, path.parent.name)
    assert state is not None and state["fragments"] == len(split(data)[1])


async def test_too_much_media_before_start_names_the_stream_while_connected(
        relay: Callable, http: aiohttp.ClientSession, seed: int) -> None:
    server = await relay(max_prestart_bytes=8192)
    data = media(**FAST)
    init, fragments = split(data)
    async with TracingBot(ingest_url(server), "silent", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await bot.send(data)

        async def live_unnamed() -> dict | None:
            found = [s for s in (await all_streams(http, server))["streams"] if s["bot_id"].startswith("unnamed-")]
            if found and found[0]["recording"]["bytes"] == len(data) and found[0]["fragments"] == len(fragments):
                return found[0]
            return None

        state = await wait_until(live_unnamed, "the unnamed stream to show up with all its bytes")
        assert state["state"] == "live" and state["mime"] == init.mime
        assert not bot.closed.is_set()
    path = await wait_unnamed_final(recordings_of(server))
    assert path.parent.name == state["bot_id"]
    check_recording(path, data, None, "disconnected")


# -- 6. the ingest token ------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["/ingest", "/ingest?token=", "/ingest?token=s3cre", "/ingest?token=s3cret2",
                                    "/ingest/wrong", "/ingest/S3CRET", "/ingest?tok=s3cret"])
async def test_token_refused_before_the_upgrade(relay: Callable, http: aiohttp.ClientSession, suffix: str) -> None:
    server = await relay(ingest_token="s3cret")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ingest_url(server, suffix))
    assert refused.value.status == 401
    assert server.app[keys.INGEST_SESSIONS] == set()
    assert not recordings_of(server).exists()


@pytest.mark.parametrize("suffix", ["/ingest?token=s3cret", "/ingest/s3cret"])
async def test_token_accepted(relay: Callable, http: aiohttp.ClientSession, seed: int, suffix: str) -> None:
    server = await relay(ingest_token="s3cret")
    data = media(**OTHER)
    async with TracingBot(ingest_url(server, suffix), "tok", ping_interval=0.05, seed=seed) as bot:
        await stream_file(bot, data, realtime=False)
        await wait_until(lambda: bot.report.pongs == bot.report.pings, "pongs")
    await wait_ended(http, server, "tok")
    check_recording(only_recording(recordings_of(server) / "tok"), data, bot.sent_json[0], "video_stream_end")


# -- 7. bot ids that must not reach the filesystem ------------------------------------------------
BAD_IDS = ["../etc", "a/b", "", "x" * 10240, 12345, None, ["a"], {"id": "a"}, "..", ".hidden", "/abs",
           "a\\b", "nul\x00byte", "sp ace", "ünï"]


@pytest.mark.parametrize("early", [False, True], ids=["start-first", "media-first"])
@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda v: repr(v)[:12])
async def test_bad_bot_id_is_refused(relay: Callable, http: aiohttp.ClientSession, tmp_path: Path, seed: int,
                                     bad: Any, early: bool) -> None:
    server = await relay()
    data = media(**OTHER)
    init, _ = split(data)
    before = tree(tmp_path)
    async with TracingBot(ingest_url(server), "ignored", ping_interval=0, seed=seed) as bot:
        if early:  # media before the bad start: kept, but only under a generated name
            await bot.send(data[: len(init.data) + 100])
        await bot.send_json({"type": "video_stream_start", "bot_id": bad, "codec": "vp9", "container": "fmp4"})
        await asyncio.wait_for(bot.closed.wait(), 5)
    assert bot.report.close_code == 1008
    assert "bot_id" in bot.report.close_reason
    await wait_sessions_gone(server)
    created = tree(tmp_path) - before
    assert all(p == "recordings" or p.startswith("recordings/unnamed-") for p in created), created
    assert bool(created) == early, created
    listed = await all_streams(http, server)
    names = [s["bot_id"] for s in listed["streams"] + listed["ended"]]
    assert all(n.startswith("unnamed-") for n in names) and len(names) == early
    if isinstance(bad, str) and bad:
        for part in filter(None, re.split(r"[/\\]", bad)):
            assert not any(Path(p).name == part for p in tree(tmp_path)), f"{part!r} reached the disk"
    if early:
        path = await wait_unnamed_final(recordings_of(server))
        assert path.read_bytes() == bytes(bot.sent)


# -- 8. garbage on one connection, a good stream beside it -----------------------------------------
GARBAGE_KINDS = ["binary-garbage", "text-not-json", "text-not-object", "fragments-without-init"]


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
async def test_garbage_closes_only_the_offender(relay: Callable, http: aiohttp.ClientSession, viewer: Callable,
                                                seed: int, kind: str) -> None:
    server = await relay()
    url = ingest_url(server)
    good_data, bad_data = media(**FAST), media(**OTHER)
    good_init, good_frags = split(good_data)
    bad_init, bad_frags = split(bad_data)
    rng = random.Random(seed)
    garbage = bytearray(rng.randbytes(5000))
    garbage[4] = 0x01  # an unprintable box type: this can never parse as a box header

    async def run_good(bot: TracingBot) -> None:
        await start_for_viewers(http, server, bot, good_data)
        await bot.send(good_data)
        await bot.end(2.0)

    async def run_bad(bot: TracingBot) -> None:
        await bot.start(bad_init.info, 25.0)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):  # it may be cut off mid-send
            if kind == "binary-garbage":
                await bot.send(bad_data[: bad_frags[1].offset])  # init + one whole fragment
                await bot.send_raw(bytes(garbage))
            elif kind.startswith("text-"):
                await bot.send(bad_data[: bad_frags[1].offset + 100])
                await bot.ws.send_str("{not json" if kind == "text-not-json" else '["a", "list"]')
            else:
                await bot.send(bad_data[bad_frags[0].offset:])  # moof + mdat, never an init
        await asyncio.wait_for(bot.closed.wait(), 5)

    async with viewer(server, "good") as watcher:
        async with TracingBot(url, "good", ping_interval=0.05, seed=seed, max_chunk=2048) as good, \
                TracingBot(url, "bad", ping_interval=0, seed=seed + 1, max_chunk=2048) as bad:
            await asyncio.gather(run_good(good), run_bad(bad))
        await asyncio.wait_for(watcher.ended.wait(), 10)

    reason = {"binary-garbage": "invalid fMP4: not an MP4 box", "text-not-json": "text frame is not JSON",
              "text-not-object": "text frame is not a JSON object",
              "fragments-without-init": "invalid fMP4: moof before the init segment"}[kind]
    assert bad.report.close_code == 1007
    assert bad.report.close_reason.startswith(reason), bad.report.close_reason
    bad_state = await wait_status(http, server, "bad", lambda s: s["state"] == "reconnecting", "bad to drop")
    assert any(e.startswith(reason) for e in bad_state["errors"]), bad_state["errors"]
    bad_file = only_recording(recordings_of(server) / "bad")  # final: the state changes after the sidecar
    on_disk = bad_file.read_bytes()
    if kind == "fragments-without-init":
        assert bytes(bad.sent).startswith(on_disk) and on_disk  # what came after the refusal is not read
    else:  # everything it sent before it was cut off, garbage included
        assert sha(on_disk) == sha(bytes(bad.sent)), (len(on_disk), len(bad.sent))
    assert sidecar(bad_file)["end_reason"].startswith(reason), sidecar(bad_file)["end_reason"]

    assert good.report.close_code == 1000 and good.report.pong_errors == []
    state = await wait_ended(http, server, "good")
    assert state["errors"] == [] and state["fragments"] == len(good_frags)
    check_recording(only_recording(recordings_of(server) / "good"), good_data, good.sent_json[0], "video_stream_end")
    assert watcher.binaries == [good_init.data] + [f.data for f in good_frags]
    assert watcher.order[-1] == "end"


# -- 9. what the vendor may add -----------------------------------------------------------------
async def test_unknown_messages_and_extra_fields_are_tolerated(relay: Callable, http: aiohttp.ClientSession,
                                                               seed: int) -> None:
    server = await relay()
    data = media(**FAST)
    rng = random.Random(seed)
    extra = {"meeting_platform": "google_meet", "nested": {"a": [1, 2, {"b": None}]}, "unicode": "ünï 📹"}
    async with TracingBot(ingest_url(server), "extra", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await bot.start(split(data)[0].info, 25.0, **extra)
        chunks, pos = [], 0
        for cut in random_cuts(len(data), rng, 4096):
            chunks.append(data[pos:cut])
            pos = cut
        odd = [{"type": "whatever", "x": 1}, {"no_type": True}, {"type": None}, {"type": 7, "bot_id": "other"},
               {"type": "video_stream_stats", "fps": 24.9, "bitrate": [1, 2]}]
        for chunk in chunks:
            await bot.send_raw(chunk)
            if rng.random() < 0.3:
                await bot.send_json(rng.choice(odd))
        for message in odd:
            await bot.send_json(message)
        await bot.ping(1)
        await bot.send_json({"type": "video_latency_ping", "bot_id": "extra", "seq": 2,
                             "sent_at_ms": int(time.time() * 1000), "region": "eu"})
        await bot.end(2.0)
        await wait_until(lambda: len(bot.pong_log) == 2, "two pongs")
    state = await wait_ended(http, server, "extra")
    assert state["errors"] == [] and state["meta"]["nested"] == extra["nested"]
    start = bot.sent_json[0]
    assert start["meeting_platform"] == "google_meet"
    check_recording(only_recording(recordings_of(server) / "extra"), data, start, "video_stream_end")
    assert [p["seq"] for _, p in bot.pong_log] == [1, 2]


# -- 10. the disk refuses -----------------------------------------------------------------------
async def test_recording_failure_does_not_stop_the_relay(relay: Callable, http: aiohttp.ClientSession,
                                                         viewer: Callable, seed: int) -> None:
    server = await relay()
    root = recordings_of(server)
    root.mkdir(parents=True)
    blocker = root / "nodisk"
    blocker.write_bytes(b"a file where the bot's folder should be")  # mkdir fails, even for root
    data = media(**FAST)
    init, fragments = split(data)
    async with viewer(server, "nodisk") as watcher:
        async with TracingBot(ingest_url(server), "nodisk", ping_interval=0, seed=seed, max_chunk=4096) as bot:
            await start_for_viewers(http, server, bot, data)
            await bot.send(data)
            await bot.ping(1)
            await wait_until(lambda: bot.report.pongs == 1, "the pong")
            live = await wait_status(http, server, "nodisk", lambda s: s["fragments"] == len(fragments)
                                     and s["recording"]["error"] is not None, "the recording error while live")
            await bot.end(2.0)
        await asyncio.wait_for(watcher.ended.wait(), 10)
    assert live["state"] == "live"
    assert watcher.binaries == [init.data] + [f.data for f in fragments]
    assert bot.report.close_code == 1000 and bot.report.pong_errors == [] and bot.report.pongs == 1
    state = await wait_ended(http, server, "nodisk")
    assert "nodisk" in state["recording"]["error"]
    assert state["recording"]["bytes"] == 0 and state["recording"]["bytes_lost"] == len(data)
    assert any(e.startswith("recording:") and "nodisk" in e for e in state["errors"]), state["errors"]
    assert blocker.read_bytes() == b"a file where the bot's folder should be"
    assert tree(root) == {"nodisk"}
    # The server goes on serving other streams, recordings included.
    other = media(**OTHER)
    async with TracingBot(ingest_url(server), "healthy", ping_interval=0, seed=seed + 1) as bot2:
        await stream_file(bot2, other, realtime=False)
    await wait_ended(http, server, "healthy")
    check_recording(only_recording(root / "healthy"), other, bot2.sent_json[0], "video_stream_end")


# -- 11. large frames ---------------------------------------------------------------------------
async def test_whole_file_in_one_frame(relay: Callable, http: aiohttp.ClientSession, viewer: Callable) -> None:
    server = await relay()
    data = media(**BIG)
    init, fragments = split(data)
    async with viewer(server, "onebig") as watcher:
        async with TracingBot(ingest_url(server), "onebig", ping_interval=0) as bot:
            await start_for_viewers(http, server, bot, data)
            await bot.send_raw(data)
            await bot.end(3.0)
        await asyncio.wait_for(watcher.ended.wait(), 10)
    state = await wait_ended(http, server, "onebig")
    assert state["fragments"] == len(fragments) > 50
    assert bot.report.chunks == 1
    check_recording(only_recording(recordings_of(server) / "onebig"), data, bot.sent_json[0], "video_stream_end")
    assert watcher.binaries == [init.data] + [f.data for f in fragments]


async def test_twenty_megabyte_frame(relay: Callable, http: aiohttp.ClientSession, viewer: Callable) -> None:
    server = await relay()
    base = media(**FAST)
    init, fragments = split(base)
    last = fragments[-1]
    padding = free_box(20 << 20)
    data = base[: last.offset] + padding + base[last.offset:]  # the last fragment grows a 20 MB free box
    async with viewer(server, "huge") as watcher:
        async with TracingBot(ingest_url(server), "huge", ping_interval=0) as bot:
            await start_for_viewers(http, server, bot, data)
            await bot.send_raw(data)
            await bot.ping(1)
            await bot.end(2.0)
            await wait_until(lambda: bot.report.pongs == 1, "the pong")
        await asyncio.wait_for(watcher.ended.wait(), 10)
    assert len(data) > 20 << 20 and bot.report.close_code == 1000
    state = await wait_ended(http, server, "huge")
    assert state["fragments"] == len(fragments)
    path = only_recording(recordings_of(server) / "huge")
    assert sha(path.read_bytes()) == sha(data)
    side = sidecar(path)
    assert side["bytes"] == len(data)
    assert [e["offset"] for e in side["fragments"]] == [f.offset for f in fragments[:-1]] + [last.offset]
    assert side["fragments"][-1]["size"] == last.size + len(padding)
    assert watcher.binaries == [init.data] + [f.data for f in fragments[:-1]] + [padding + last.data]


async def test_frame_over_the_limit_closes_1009(relay: Callable, http: aiohttp.ClientSession, seed: int) -> None:
    server = await relay(max_frame_size=1 << 20)
    data = media(**FAST)
    init, fragments = split(data)
    head = data[: fragments[1].offset]
    async with TracingBot(ingest_url(server), "toolarge", ping_interval=0, seed=seed, max_chunk=4096) as bot:
        await bot.start(init.info, 25.0)
        await bot.send(head)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await bot.ws.send_bytes(free_box((1 << 20) + 4096))  # valid fMP4, just too big a message
        await asyncio.wait_for(bot.closed.wait(), 5)
    assert bot.report.close_code == 1009
    state = await wait_status(http, server, "toolarge", lambda s: s["state"] == "reconnecting", "toolarge to drop")
    assert state["fragments"] == 1
    path = only_recording(recordings_of(server) / "toolarge")
    assert sha(path.read_bytes()) == sha(head)
    assert "exceeds limit" in sidecar(path)["end_reason"], sidecar(path)["end_reason"]
    # The server carries on.
    other = media(**OTHER)
    async with TracingBot(ingest_url(server), "next", ping_interval=0, seed=seed + 1, max_chunk=4096) as bot2:
        await stream_file(bot2, other, realtime=False)
    await wait_ended(http, server, "next")
    check_recording(only_recording(recordings_of(server) / "next"), other, bot2.sent_json[0], "video_stream_end")
