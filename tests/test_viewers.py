"""Viewer WebSockets through the real relay, fed by the simulated bot with real media."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from relay.media import BoxSplitter
from relay.simulate import Bot, stream_file
from relay.testsrc import decode_frames
from tests.conftest import ingest_url, media, split

# Fragments of 0.25 s inside 2 s GOPs: a late joiner must be served from the keyframe, not the newest fragment.
MID_GOP = dict(seconds=4, gop=50, fragmentation="both", frag_duration=0.25)


def assert_playable_from_a_keyframe(segments: list[bytes]) -> None:
    """What a viewer got: an init, then messages of whole fragments, starting at a keyframe, decodable."""
    init, *messages = segments
    assert init[4:8] == b"ftyp"
    for message in messages:
        splitter = BoxSplitter()
        boxes = splitter.feed(message)
        assert splitter.buffered == 0, "a message holds whole boxes only"
        assert boxes[0].type in ("moof", "styp", "prft", "emsg", "sidx", "free")
    _, fragments = split(b"".join(segments))
    assert fragments and fragments[0].keyframe
    assert decode_frames(b"".join(segments)) > 0  # strict: a GOP without its keyframe raises


async def test_early_viewer_and_late_joiner_both_start_at_a_keyframe_and_decode(relay, viewer) -> None:
    server = await relay()
    data = media(**MID_GOP)
    _, fragments = split(data)
    async with viewer(server, "meet") as early:
        async with Bot(ingest_url(server), "meet", ping_interval=0) as bot:
            init, *_ = split(data)
            await stream_file(bot, data[: fragments[11].offset], realtime=False, send_end=False)
            await early.wait_for_binaries(1 + 11)  # the init and eleven fragments
            async with viewer(server, "meet") as late:
                await late.wait_for_binaries(1)
                await stream_file_rest(bot, data, fragments[11].offset)
                await early.ended.wait()
                await late.ended.wait()
    assert early.order[0] == "waiting" and early.order[1] == "init"
    assert early.texts[1]["mime"] == init.mime and early.texts[1]["meta"]["bot_id"] == "meet"
    assert_playable_from_a_keyframe(early.segments_after_last_init())
    assert_playable_from_a_keyframe(late.segments_after_last_init())
    late_fragments = split(b"".join(late.segments_after_last_init()))[1]
    gop_start = max(i for i in range(11) if fragments[i].keyframe)
    assert gop_start > 0 and not fragments[10].keyframe
    assert late_fragments[0].data == fragments[gop_start].data, "the late joiner starts at the GOP's keyframe"
    assert [f.data for f in late_fragments] == [f.data for f in fragments[gop_start:]]
    assert len(early.binaries) - 1 == len(fragments)
    assert early.order[-1] == late.order[-1] == "end"
    assert early.close_code == late.close_code == 1000


async def test_with_keyframes_inside_fragments_a_late_joiner_starts_at_the_fragment_holding_one(relay, viewer) -> None:
    """ffmpeg's fragments by duration rarely start on a keyframe; MSE drops the frames before it."""
    server = await relay()
    data = media(seconds=4, gop=50, fragmentation="duration", frag_duration=0.25)
    _, fragments = split(data)
    joined_at = 12
    holder = max(i for i in range(joined_at) if fragments[i].random_access)
    assert holder > 0 and not fragments[holder].keyframe, "the media really has a keyframe mid-fragment"
    async with Bot(ingest_url(server), "ffmpeg", ping_interval=0) as bot:
        await stream_file(bot, data[: fragments[joined_at].offset], realtime=False, send_end=False)
        async with viewer(server, "ffmpeg") as late:
            await late.wait_for_binaries(1)
            await stream_file_rest(bot, data, fragments[joined_at].offset)
            await late.ended.wait()
    got = split(b"".join(late.segments_after_last_init()))[1]
    assert [f.data for f in got] == [f.data for f in fragments[holder:]]


async def stream_file_rest(bot: Bot, data: bytes, offset: int) -> None:
    await bot.send(data[offset:])
    await bot.end(1.0)


def raw_viewer(port: int, bot_id: str) -> socket.socket:
    """A viewer that completes the WebSocket handshake and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /ws/watch/{bot_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


async def test_a_viewer_that_never_reads_stays_bounded_and_is_dropped_without_delaying_others(relay, viewer, http) -> None:
    bound = 256 * 1024
    server = await relay(viewer_queue_bytes=bound, viewer_max_behind=1.0)
    clip = media(seconds=4, width=1280, height=720)
    clip = clip[: clip.rindex(b"mfra") - 4]
    repeats = 40  # each repeat starts with its own init: ~10 MB, well past the 4 MB a loopback socket buffers
    stuck = await asyncio.to_thread(raw_viewer, server.port, "busy")
    try:
        async with viewer(server, "busy") as healthy:
            async with Bot(ingest_url(server), "busy", ping_interval=0) as bot:
                await bot.start()
                peak_unsent = 0
                for _ in range(repeats):
                    await bot.send(clip)
                    status = await (await http.get(server.make_url("/api/streams/busy"))).json()
                    peak_unsent = max([peak_unsent] + [v["unsent"] for v in status["viewer_list"]])
                sent_at = time.monotonic()
                per_clip = len(split(clip)[1])
                await healthy.wait_for_binaries(repeats * (1 + per_clip))
                delivered_after = time.monotonic() - sent_at
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    status = await (await http.get(server.make_url("/api/streams/busy"))).json()
                    if status["viewers"] == 1:
                        break
                    await asyncio.sleep(0.1)
                await bot.end(1.0)
    finally:
        stuck.close()
    assert status["viewers"] == 1, "the stuck viewer was disconnected"
    assert delivered_after < 1.0, "the healthy viewer got every fragment without waiting on the stuck one"
    largest_fragment = max(f.size for f in split(clip)[1])
    assert peak_unsent <= bound + largest_fragment + 64 * 1024
    assert len(healthy.binaries) == repeats * (1 + per_clip)


async def test_unknown_stream_is_closed_after_the_wait_timeout(relay, viewer) -> None:
    server = await relay(viewer_wait_timeout=0.5)
    async with viewer(server, "nobody") as client:
        await asyncio.wait_for(client.ended.wait(), 5)
    assert client.order == ["waiting"]
    assert client.close_code == 4404


async def test_an_invalid_bot_id_is_refused(relay, viewer) -> None:
    server = await relay()
    async with viewer(server, "a..b") as client:
        await asyncio.wait_for(client.ended.wait(), 5)
    assert client.close_code == 1008


async def test_viewer_stats_reach_the_status_api(relay, viewer, http) -> None:
    server = await relay()
    data = media(seconds=2)
    async with Bot(ingest_url(server), "stats", ping_interval=0) as bot:
        await stream_file(bot, data[: split(data)[1][1].offset], realtime=False, send_end=False)
        async with viewer(server, "stats") as client:
            await client.wait_for_binaries(2)
            await client.ws.send_json({"type": "stats", "latency": 0.8, "buffered": 1.2, "dropped": 3, "decoded": 99,
                                       "evil": "x" * 1000})
            for _ in range(50):
                status = await (await http.get(server.make_url("/api/streams/stats"))).json()
                if status["viewer_list"] and status["viewer_list"][0]["client"]:
                    break
                await asyncio.sleep(0.05)
            reported = status["viewer_list"][0]["client"]
            assert {k: reported[k] for k in ("latency", "buffered", "dropped", "decoded")} == {
                "latency": 0.8, "buffered": 1.2, "dropped": 3, "decoded": 99}
            assert "evil" not in reported
            assert status["viewer_list"][0]["fragments_sent"] >= 1
