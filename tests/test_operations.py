"""Operating the relay: status API, metrics, thumbnails, recordings (HLS, Range, remux, retention), create-bot."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import av
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from relay import keys
from relay.media import BoxSplitter
from relay.simulate import Bot, stream_file
from relay.testsrc import probe_packets
from tests.conftest import ingest_url, media, split

CLIP = dict(seconds=4, gop=25, fragmentation="both", frag_duration=0.5)


async def get_json(http, server, path: str) -> dict:
    async with http.get(server.make_url(path)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def recording_of(server, bot_id: str) -> Path:
    folder = Path(server.settings.recordings) / bot_id
    for _ in range(100):
        files = sorted(folder.glob("*Z.mp4"))
        if files:
            return files[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no recording in {folder}")


async def finished_recording(server, bot_id: str) -> Path:
    path = await recording_of(server, bot_id)
    for _ in range(100):
        try:
            if json.loads(path.with_suffix(".json").read_text()).get("ended_at"):
                return path
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was not finalized")


async def test_status_and_metrics_match_what_was_streamed(relay, http, viewer) -> None:
    server = await relay(metrics_max_streams=1)
    data = media(**CLIP)
    init, fragments = split(data)
    half = fragments[len(fragments) // 2].offset
    async with viewer(server, "ops") as watcher, Bot(ingest_url(server), "ops", ping_interval=0) as bot:
        await stream_file(bot, data[:half], realtime=False, send_end=False)
        await bot.ping(1)
        sent = [f for f in fragments if f.offset + f.size <= half]
        await watcher.wait_for_binaries(1 + len(sent))
        async with Bot(ingest_url(server), "other", ping_interval=0) as other:
            await stream_file(other, data, realtime=False, send_end=False)
            await asyncio.sleep(0.2)
            status = await get_json(http, server, "/api/streams/ops")
            assert status["state"] == "live"
            assert status["fragments"] == len(sent)
            assert status["bytes_in"] == len(init.data) + sum(f.size for f in sent)
            assert status["mime"] == init.mime and status["meta"]["codec"] == "h264"
            assert status["tracks"][0]["width"] == 320 and status["resolution"] == "320x240"
            assert status["gop_seconds"] == pytest.approx(1.0, abs=0.05) and status["fragment_rate"] > 0
            assert status["keyframes"] == sum(f.random_access for f in sent)
            assert status["viewers"] == 1 and status["one_way_delay_ms"] is not None
            assert status["recording"]["bytes"] <= half and status["recording"]["path"].endswith(".mp4")
            listed = await get_json(http, server, "/api/streams")
            assert {s["bot_id"] for s in listed["streams"]} == {"ops", "other"}

            async with http.get(server.make_url("/metrics")) as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                values = metric_values(await response.text())
    assert values[("relay_ingest_bytes_total", ())] == half + len(data)
    assert values[("relay_fragments_total", ())] == len(sent) + len(fragments)
    assert values[("relay_ingest_connections_total", ())] == 2
    assert values[("relay_viewers", ())] == 1 and values[("relay_streams", ())] == 2
    assert values[("relay_viewer_bytes_total", ())] >= sum(len(b) for b in watcher.binaries)
    assert values[("relay_ping_one_way_delay_seconds_count", ())] == 1
    per_stream = [labels for (name, labels) in values if name == "relay_stream_viewers"]
    assert per_stream == [(("bot_id", "ops"),)], "series are capped to the most watched streams"


async def test_refusals_are_counted_by_reason(relay, http) -> None:
    server = await relay(ingest_token="t")
    async with http.get(server.make_url("/ingest"), headers={"Upgrade": "websocket"}) as response:
        assert response.status == 401
    async with Bot(ingest_url(server, "/ingest/t"), "../x", ping_interval=0) as bot:
        await bot.start()
        await asyncio.wait_for(bot.closed.wait(), 5)
    async with http.get(server.make_url("/metrics")) as response:
        values = metric_values(await response.text())
    assert values[("relay_refused_total", (("reason", "ingest_token"),))] == 1
    assert values[("relay_refused_total", (("reason", "invalid_bot_id"),))] == 1


async def test_thumbnail_is_a_jpeg_of_the_stream_size_made_only_when_asked(relay, http) -> None:
    server = await relay(thumbnail_interval=60)
    data = media(seconds=3, width=480, height=270)
    async with Bot(ingest_url(server), "thumb", ping_interval=0) as bot:
        await stream_file(bot, data, realtime=False, send_end=False)
        for _ in range(100):
            stream = server.app[keys.REGISTRY].get("thumb")
            if stream is not None and stream.gop:
                break
            await asyncio.sleep(0.05)
        assert stream.thumbnailer is None, "no thumbnail work for a stream nobody looked at"
        async with http.get(server.make_url("/api/streams/thumb/thumbnail.jpg")) as response:
            assert response.status == 200 and response.content_type == "image/jpeg"
            etag, jpeg = response.headers["ETag"], await response.read()
            assert "max-age=60" in response.headers["Cache-Control"]
        with av.open(io.BytesIO(jpeg)) as container:
            frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (480, 270)
        async with http.get(server.make_url("/api/streams/thumb/thumbnail.jpg"), headers={"If-None-Match": etag}) as again:
            assert again.status == 304
    async with http.get(server.make_url("/api/streams/nobody/thumbnail.jpg")) as missing:
        assert missing.status == 404


def playlist_ranges(text: str) -> list[tuple[int, int, float]]:
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", text)]
    ranges = [(int(o), int(s)) for s, o in re.findall(r"#EXT-X-BYTERANGE:(\d+)@(\d+)", text)]
    return [(offset, size, d) for (offset, size), d in zip(ranges, durations)]


async def test_hls_playlist_of_a_finished_recording_covers_every_fragment(relay, http) -> None:
    server = await relay()
    data = media(**CLIP)
    init, fragments = split(data)
    async with Bot(ingest_url(server), "vod", ping_interval=0) as bot:
        await stream_file(bot, data, realtime=False)
    path = await finished_recording(server, "vod")
    async with http.get(server.make_url(f"/recordings/vod/{path.stem}.m3u8")) as response:
        assert response.content_type == "application/vnd.apple.mpegurl"
        text = await response.text()
    assert text.startswith("#EXTM3U") and "#EXT-X-ENDLIST" in text and "#EXT-X-PLAYLIST-TYPE:VOD" in text
    assert f'#EXT-X-MAP:URI="{path.name}",BYTERANGE="{len(init.data)}@0"' in text
    segments = playlist_ranges(text)
    file = path.read_bytes()
    assert segments[0][0] == len(init.data)
    assert all(a[0] + a[1] == b[0] for a, b in zip(segments, segments[1:])), "segments are contiguous"
    assert segments[-1][0] + segments[-1][1] == fragments[-1].offset + fragments[-1].size, "every fragment listed"
    starts = {f.offset for f in fragments if f.keyframe}
    assert {offset for offset, _, _ in segments} == starts, "each segment starts at a keyframe fragment"
    for offset, size, _ in segments:
        splitter = BoxSplitter()
        assert splitter.feed(file[offset : offset + size])[0].type == "moof" and splitter.buffered == 0
    assert abs(sum(d for _, _, d in segments) - sum(f.duration for f in fragments)) < 0.01
    target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", text).group(1))
    assert all(round(d) <= target for _, _, d in segments)

    async with http.get(server.make_url(f"/recordings/vod/{path.stem}.mp4"), headers={"Range": "bytes=100-199"}) as ranged:
        assert ranged.status == 206 and await ranged.read() == data[100:200]
    listing = await get_json(http, server, "/api/recordings")
    assert listing["recordings"][0]["name"] == path.stem and listing["recordings"][0]["size"] == len(data)
    async with http.get(server.make_url("/recordings/vod/..%2f..%2fetc.m3u8")) as bad:
        assert bad.status == 404


async def test_a_growing_recording_has_a_growing_event_playlist(relay, http) -> None:
    server = await relay()
    data = media(**CLIP)
    _, fragments = split(data)
    async with Bot(ingest_url(server), "grow", ping_interval=0) as bot:
        await stream_file(bot, data[: fragments[3].offset], realtime=False, send_end=False)
        path = await recording_of(server, "grow")
        url = server.make_url(f"/recordings/grow/{path.stem}.m3u8")
        async with http.get(url) as response:
            first = await response.text()
        await bot.send(data[fragments[3].offset : fragments[7].offset])
        await asyncio.sleep(0.2)
        async with http.get(url) as response:
            second = await response.text()
        async with http.delete(server.make_url(f"/recordings/grow/{path.stem}")) as busy:
            assert busy.status == 409
    assert "#EXT-X-ENDLIST" not in first and "#EXT-X-PLAYLIST-TYPE:EVENT" in first
    assert sum(s for _, s, _ in playlist_ranges(second)) > sum(s for _, s, _ in playlist_ranges(first))
    last_start = max(f.offset for f in fragments[:7] if f.keyframe)
    assert sum(s for _, s, _ in playlist_ranges(second)) == last_start - fragments[0].offset, \
        "every whole segment, not the newest one that may still grow"


async def test_remux_keeps_every_packet_and_puts_moov_first(relay, tmp_path) -> None:
    server = await relay(remux_on_end=True)
    data = media(seconds=3, video="h264", audio="aac")
    async with Bot(ingest_url(server), "remux", ping_interval=0) as bot:
        await stream_file(bot, data, realtime=False)
    path = await finished_recording(server, "remux")
    remuxed = path.with_suffix(".remux.mp4")
    for _ in range(100):
        if remuxed.exists():
            break
        await asyncio.sleep(0.05)
    out = remuxed.read_bytes()
    assert out.index(b"moov") < out.index(b"mdat") and b"moof" not in out
    original = [(p["kind"], p["pts"], p["size"], p["is_keyframe"]) for p in probe_packets(data)]
    with av.open(str(remuxed)) as container:
        copied = [(p.stream.type, p.pts, p.size, p.is_keyframe) for p in container.demux() if p.size]
    assert sorted(copied, key=str) == sorted(original, key=str)

    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay", "remux", str(path), "--out",
                                               str(tmp_path / "cli.mp4"), stdout=asyncio.subprocess.PIPE)
    assert await cli.wait() == 0 and (tmp_path / "cli.mp4").stat().st_size > 0


async def test_retention_deletes_only_old_finished_recordings(relay) -> None:
    server = await relay(retention_days=1)
    storage = server.app[keys.STORAGE]
    root = Path(server.settings.recordings)
    old, new, active = (root / "b" / f"2026-01-0{i}T00-00-00Z.mp4" for i in (1, 2, 3))
    for path in (old, new, active):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        path.with_suffix(".json").write_text("{}")
    week_ago = time.time() - 7 * 86400
    for path in (old, active):
        os.utime(path, (week_ago, week_ago))
    removed = storage.apply_retention({active})
    assert removed == [old]
    assert not old.exists() and not old.with_suffix(".json").exists()
    assert new.exists() and active.exists()


async def test_low_disk_stops_recording_but_not_the_live_relay(relay, http, viewer) -> None:
    server = await relay(min_free_space=1 << 60)
    async with http.get(server.make_url("/readyz")) as response:
        assert response.status == 503 and (await response.json())["low_space"] is True
    data = media(seconds=2)
    async with viewer(server, "full") as watcher, Bot(ingest_url(server), "full", ping_interval=0) as bot:
        await stream_file(bot, data, realtime=False, send_end=False)
        await watcher.wait_for_binaries(1 + len(split(data)[1]))
        status = await get_json(http, server, "/api/streams/full")
    assert "min_free_space" in status["recording"]["error"]
    assert any("min_free_space" in e for e in status["errors"])
    healthy = await relay()
    async with http.get(healthy.make_url("/readyz")) as response:
        assert response.status == 200 and (await response.json())["recordings_writable"] is True


async def test_create_bot_sends_the_vendors_payload(aiohttp_server) -> None:
    seen = []

    async def create(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"bot_id": "bot-123", "status": "joining"})

    vendor = web.Application()
    vendor.router.add_post("/api/v1/bots/create_bot", create)
    fake = await aiohttp_server(vendor)
    env = dict(os.environ, MEETSTREAM_API_KEY="k3y", RELAY_INGEST_TOKEN="s3cret")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "create-bot", "--meeting-link", "https://meet.google.com/abc-defg-hij",
        "--public-url", "https://relay.example.com", "--api-base", str(fake.make_url("/")).rstrip("/"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert seen == [("Token k3y", {
        "meeting_link": "https://meet.google.com/abc-defg-hij",
        "video_required": True,
        "live_video_required": {"websocket_url": "wss://relay.example.com/ingest?token=s3cret"},
    })]
    assert "bot-123" in out.decode() and "https://relay.example.com/watch/bot-123" in out.decode()


async def test_json_logs_carry_the_bot_id(tmp_path, unused_tcp_port) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--port", str(unused_tcp_port), "--recordings", str(tmp_path),
        "--log-format", "json", stderr=asyncio.subprocess.PIPE)
    try:
        url = f"ws://127.0.0.1:{unused_tcp_port}/ingest"
        for _ in range(100):
            try:
                async with Bot(url, "logged", ping_interval=0) as bot:
                    await stream_file(bot, media(seconds=1), realtime=False)
                break
            except OSError:
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    events = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    stream_events = [e for e in events if e["logger"].startswith("relay.") and "logged" in e["msg"]]
    assert {"ts", "level", "logger", "msg"} <= set(events[0])
    assert any("stream start bot_id=logged" in e["msg"] for e in stream_events)
    assert any("recording closed bot_id=logged" in e["msg"] for e in stream_events)
