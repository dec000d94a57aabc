"""Recordings in a real headless Chromium: byte-range HLS played by hls.js (seek included), a growing recording
played while it is written, the /recordings page with delete, and live thumbnails on the dashboard and wall."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from relay.pages import VENDOR
from relay.simulate import Bot, stream_file
from tests.conftest import ingest_url, media
from tests.test_browser import LiveBot, browser, save_screenshot  # noqa: F401  (browser is a fixture)
from tests.test_operations import finished_recording, playlist_ranges, recording_of

if not VENDOR["hls.min.js"].is_file():
    if os.environ.get("CI"):
        raise RuntimeError("hls.js is missing: `make deps` installs it from the npm registry (npm ci)")
    pytest.skip("hls.js is not installed (make deps, or npm ci)", allow_module_level=True)

CLIP = dict(seconds=8, gop=25, fragmentation="keyframe")  # a keyframe (and a fragment) every second
LIVE = dict(seconds=30, gop=25, fragmentation="keyframe", width=480, height=270)
DESKTOP, PHONE = {"width": 1366, "height": 768}, {"width": 390, "height": 844}

VIDEO = """() => {
    const v = document.querySelector('video');
    const q = v.getVideoPlaybackQuality();
    const p = window.recordingPlayer || {};
    return {currentTime: v.currentTime, duration: v.duration, paused: v.paused, frames: q.totalVideoFrames,
            mode: p.mode, live: p.live, errors: p.errors || []};
}"""


async def video_state(page) -> dict:
    return await page.evaluate(VIDEO)


async def wait_video(page, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = await video_state(page)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {state}")
        await asyncio.sleep(0.05)


async def open_page(browser, url, viewport=DESKTOP, requests: list | None = None) -> tuple:
    """A new page at ``url``, and the list its script errors go to (``requests`` gets every request)."""
    page = await browser.new_page(viewport=viewport)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    if requests is not None:
        page.on("request", lambda request: requests.append(request))
    await page.goto(str(url))
    return page, problems


async def test_a_finished_recording_plays_in_chromium_and_seeks_to_the_middle(relay, browser) -> None:
    server = await relay()
    async with Bot(ingest_url(server), "vod", ping_interval=0) as bot:
        await stream_file(bot, media(**CLIP), realtime=False)
    path = await finished_recording(server, "vod")
    requests: list = []
    page, problems = await open_page(browser, server.make_url(f"/recordings/vod/{path.stem}"), requests=requests)

    first = await wait_video(page, lambda s: s["currentTime"] > 0.3 and not s["paused"], 10, "playback")
    assert first["mode"].startswith("hls.js"), first
    assert 7.5 < first["duration"] < 8.5, "the whole recording is seekable"
    ranges = [r.headers.get("range", "") for r in requests if r.url.endswith(f"{path.stem}.mp4")]
    assert ranges and all(r.startswith("bytes=") for r in ranges), f"segments are byte ranges of the file: {ranges}"
    middle = first["duration"] / 2
    await page.evaluate("() => { const v = document.querySelector('video'); v.currentTime = v.duration / 2; }")
    seeked = await wait_video(page, lambda s: s["currentTime"] >= middle, 5, "the seek")
    assert seeked["currentTime"] < middle + 1.0, f"it jumped to the middle rather than playing there: {seeked}"
    later = await wait_video(page, lambda s: s["currentTime"] > middle + 1.2, 5, "playback after the seek")
    assert later["frames"] > seeked["frames"] + 20, "frames are decoded after the seek"
    assert not [e for e in later["errors"] if e["fatal"]] and not problems, (later["errors"], problems)
    assert await page.text_content("#rec-state") == "complete"
    await save_screenshot(page, "recording-1366.png", full_page=True)


async def test_a_recording_still_being_written_has_a_growing_playlist_and_plays(relay, browser, http) -> None:
    server = await relay()
    async with LiveBot(server, "grow", media(**LIVE)):
        path = await recording_of(server, "grow")
        playlist = server.make_url(f"/recordings/grow/{path.stem}.m3u8")
        await asyncio.sleep(1.5)
        async with http.get(playlist) as response:
            first = await response.text()
        await asyncio.sleep(2.2)
        async with http.get(playlist) as response:
            second = await response.text()
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in first and "#EXT-X-ENDLIST" not in first + second
        assert len(playlist_ranges(second)) >= len(playlist_ranges(first)) + 2, (first, second)

        page, problems = await open_page(browser, server.make_url(f"/recordings/grow/{path.stem}"), PHONE)
        assert "still recording" in (await page.inner_text("#rec-state")).lower()
        start = await wait_video(page, lambda s: s["currentTime"] > 0.3 and s["frames"] > 5, 10, "playback")
        assert start["live"] and start["mode"].startswith("hls.js")
        listed = sum(d for _, _, d in playlist_ranges(second))
        # it plays on past what the playlist held when the page opened: hls.js reloads the EVENT playlist
        later = await wait_video(page, lambda s: s["currentTime"] > listed + 1, 8, "playback past the first playlist")
        assert later["frames"] > start["frames"] + 50
        await save_screenshot(page, "recording-live-390.png", full_page=True)
    # the bot is gone: the recording is closed, its playlist gets ENDLIST, and the page says it is complete
    await page.wait_for_function("document.getElementById('rec-state').textContent === 'complete'", timeout=10_000)
    assert not [e for e in (await video_state(page))["errors"] if e["fatal"]] and not problems


async def test_recordings_page_lists_them_and_deletes_one_but_not_one_still_written(relay, browser) -> None:
    server = await relay()
    async with Bot(ingest_url(server), "done", ping_interval=0) as bot:
        await stream_file(bot, media(**CLIP), realtime=False)
    done = await finished_recording(server, "done")
    async with LiveBot(server, "busy", media(**LIVE)):
        busy = await recording_of(server, "busy")
        page, problems = await open_page(browser, server.make_url("/recordings"), PHONE)
        row = page.locator("tr[data-bot-id=done]")
        text = await row.text_content()
        assert all(part in text for part in ("0:08", "H.264 · AAC", "complete", "KB")), text
        assert await row.locator(f"a.button[href='/recordings/done/{done.stem}']").count() == 1, "play link"
        assert await row.locator(f"a[href='/recordings/done/{done.stem}.mp4']").count() == 1, "download link"
        assert "recording" in await page.locator("tr[data-bot-id=busy]").text_content()
        overflow = await page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        assert not overflow, "no horizontal scrolling on a phone"
        await save_screenshot(page, "recordings-390.png", full_page=True)

        # still being written: 409, said on the page, nothing deleted
        await page.locator("tr[data-bot-id=busy] button[data-delete]").click()
        await page.locator("tr[data-bot-id=busy] button[data-delete]").click()  # the confirming click
        await page.wait_for_function("!document.getElementById('rec-notice').hidden")
        assert "still being recorded" in await page.inner_text("#rec-notice")
        assert busy.exists() and await page.locator("tr[data-bot-id=busy]").count() == 1

        delete = row.locator("button[data-delete]")
        await delete.click()
        assert await delete.inner_text() == "Confirm delete" and done.exists(), "one click alone deletes nothing"
        await delete.click()
        await page.wait_for_function("!document.querySelector('tr[data-bot-id=done]')", timeout=5_000)
        assert "Deleted" in await page.inner_text("#rec-notice")
        assert not done.exists() and not done.with_suffix(".json").exists(), "the file and its sidecar are gone"
        assert not problems, problems


async def test_deleting_needs_the_admin_password_when_one_is_set(relay, browser) -> None:
    server = await relay(admin_password="s3cret")
    async with Bot(ingest_url(server), "kept", ping_interval=0) as bot:
        await stream_file(bot, media(**CLIP), realtime=False)
    kept = await finished_recording(server, "kept")
    # (a browser asks for the password itself on the server's 401; these contexts answer it, wrongly and rightly)
    for password, deleted in (("wrong", False), ("s3cret", True)):
        context = await browser.new_context(http_credentials={"username": "admin", "password": password})
        page = await context.new_page()
        await page.goto(str(server.make_url("/recordings")))
        for _ in range(2):
            await page.locator("tr[data-bot-id=kept] button[data-delete]").click()
        await page.wait_for_function("!document.getElementById('rec-notice').hidden", timeout=5_000)
        notice = await page.text_content("#rec-notice")
        assert ("Deleted" in notice) if deleted else ("needs the admin password" in notice), notice
        assert kept.exists() != deleted
        await context.close()


async def test_dashboard_and_wall_show_live_thumbnails_only_for_streams_with_video(relay, browser) -> None:
    server = await relay(thumbnail_interval=1)
    async with LiveBot(server, "cam", media(**LIVE)), LiveBot(server, "voice", media(seconds=30, video=None, audio="aac")), \
            LiveBot(server, "hevc", media(seconds=10, video="hevc", audio="aac")):
        requests: list = []
        page, problems = await open_page(browser, server.make_url("/"), requests=requests)
        img = "document.querySelector('.stream[data-bot-id=cam] img[data-field=thumb-img]')"
        await page.wait_for_function(f"{img} && {img}.complete && {img}.naturalWidth > 0", timeout=10_000)
        assert await page.evaluate(f"{img}.naturalWidth") == LIVE["width"]
        await page.wait_for_function("document.querySelector('.stream[data-bot-id=voice]')")
        assert await page.locator(".stream[data-bot-id=voice] .thumb").is_hidden(), "audio only: no picture box"
        await save_screenshot(page, "dashboard-thumbnails-1366.png")

        # the players' wall: a tile shows the thumbnail as its poster until it plays (this one never will:
        # Chromium has no HEVC, the relay's PyAV decodes it all the same)
        await page.goto(str(server.make_url("/wall")))
        await page.wait_for_function("(document.querySelector('.tile[data-bot-id=hevc] video') || {}).poster"
                                     "?.includes('/api/streams/hevc/thumbnail.jpg')", timeout=10_000)

        await page.clock.install()  # the page's clock, to move it on to the next thumbnail at once
        await page.goto(str(server.make_url("/wall?thumbs=1")))
        tile = "document.querySelector('.tile[data-bot-id=cam] img')"
        await page.wait_for_function(f"{tile} && {tile}.complete && {tile}.naturalWidth > 0", timeout=10_000)
        assert await page.evaluate(f"{tile}.naturalWidth") == LIVE["width"]
        assert await page.locator("video").count() == 0, "thumbnails only: no players"
        first = await page.evaluate(f"{tile}.getAttribute('src')")
        await page.clock.run_for(6_000)
        await page.wait_for_function(f"{tile}.getAttribute('src') !== {first!r} && {tile}.complete", timeout=5_000)
        assert await page.evaluate(f"{tile}.naturalWidth") == LIVE["width"], "refreshed, and loaded"
        await save_screenshot(page, "wall-thumbnails-1366.png")
    thumbs = [r.url for r in requests if "thumbnail.jpg" in r.url]
    assert thumbs and not [u for u in thumbs if "/voice/" in u], "no thumbnail request for a stream without video"
    assert not problems, problems
