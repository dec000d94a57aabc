"""The watch page in a real headless Chromium (Debian's, driven by Playwright), fed by the simulated bot."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from relay import keys
from relay.simulate import Bot, stream_file
from tests.conftest import ingest_url, media, split

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required"]
LIVE = dict(seconds=30, gop=25, fragmentation="both", frag_duration=0.5)

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        await browser.close()


class LiveBot:
    """The simulated bot streaming a clip in real time, in the background."""

    def __init__(self, server: Any, bot_id: str, data: bytes) -> None:
        self.server, self.bot_id, self.data = server, bot_id, data

    async def __aenter__(self) -> "LiveBot":
        self.bot = await Bot(ingest_url(self.server), self.bot_id, ping_interval=0).__aenter__()
        self.task = asyncio.create_task(stream_file(self.bot, self.data, realtime=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.bot.close()


async def save_screenshot(page: Any, name: str, full_page: bool = False) -> None:
    """A test artifact; headless Chromium now and then fails a capture under load, so try again once."""
    from playwright.async_api import Error

    ARTIFACTS.mkdir(exist_ok=True)
    try:
        await page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)
    except Error:
        await asyncio.sleep(0.5)
        await page.screenshot(path=str(ARTIFACTS / name))


async def player_stats(page: Any) -> dict:
    return await page.evaluate("""() => {
        const v = document.querySelector('video');
        const q = v.getVideoPlaybackQuality();
        return {...(window.relayPlayer ? window.relayPlayer.stats() : {}),
                currentTime: v.currentTime, frames: q.totalVideoFrames, state: v.dataset.state,
                paused: v.paused};
    }""")


async def wait_until(page: Any, predicate: Any, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = await player_stats(page)
        if predicate(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {stats}")
        await asyncio.sleep(0.05)


async def test_watch_page_plays_live_near_the_edge_and_recovers_from_a_dropped_socket(relay, browser) -> None:
    server = await relay()
    async with LiveBot(server, "browser", media(**LIVE)):
        await asyncio.sleep(2.2)  # a late-opened page: the stream has been live for a while
        page = await browser.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        opened = time.monotonic()
        await page.goto(str(server.make_url("/watch/browser")))
        first = await wait_until(page, lambda s: s["frames"] > 0 and s["currentTime"] > 0, 5, "the first frame")
        first_frame_after = time.monotonic() - opened
        await asyncio.sleep(4)
        later = await player_stats(page)
        assert later["currentTime"] > first["currentTime"] + 3, "playback advances in real time"
        assert later["frames"] > first["frames"] + 60
        assert later["latency"] < 2.0, f"stays near the live edge: {later}"
        await save_screenshot(page, "watch.png")

        stream = server.app[keys.REGISTRY].get("browser")
        for viewer in list(stream.consumers):
            viewer.transport.abort()  # the server drops the viewer's socket
        await wait_until(page, lambda s: s.get("reconnects", 0) >= 1, 10, "a reconnect")
        resumed = await player_stats(page)
        await asyncio.sleep(3)
        after = await player_stats(page)
        assert after["currentTime"] > resumed["currentTime"] + 2, f"plays again after the drop: {after}"
        assert after["latency"] < 2.5
        assert not errors, errors
    print(f"first frame {first_frame_after:.2f}s after page open; latency {later['latency']:.2f}s")
    assert first_frame_after < 3.0


async def test_an_unsupported_codec_shows_a_specific_message(relay, browser) -> None:
    server = await relay()
    async with LiveBot(server, "hevc", media(seconds=10, video="hevc", audio="aac")):
        page = await browser.new_page()
        await page.goto(str(server.make_url("/watch/hevc")))
        await wait_until(page, lambda s: s["state"] == "unsupported", 10, "the unsupported state")
        text = await page.inner_text("body")
        assert "HEVC" in text or "hev1" in text or "hvc1" in text, text


async def test_chromium_accepts_the_mse_types_we_derive(browser) -> None:
    page = await browser.new_page()
    mimes = {name: split(media(seconds=1, **options))[0].mime for name, options in {
        "h264+aac": dict(video="h264", audio="aac"),
        "vp9+opus": dict(video="vp9", audio="opus"),
        "av1": dict(video="av1", audio=None),
        "aac": dict(video=None, audio="aac"),
        "hevc": dict(video="hevc", audio="aac"),
    }.items()}
    supported = await page.evaluate("(mimes) => Object.fromEntries(Object.entries(mimes)"
                                    ".map(([k, m]) => [k, MediaSource.isTypeSupported(m)]))", mimes)
    assert supported == {"h264+aac": True, "vp9+opus": True, "av1": True, "aac": True, "hevc": False}, mimes


@pytest.mark.parametrize("size", [{"width": 1366, "height": 768}, {"width": 390, "height": 844}])
async def test_dashboard_and_wall_render_on_desktop_and_phone(relay, browser, size) -> None:
    server = await relay()
    async with LiveBot(server, "dash-1", media(**LIVE)), LiveBot(server, "dash-2", media(**LIVE)):
        page = await browser.new_page(viewport=size)
        await page.goto(str(server.make_url("/")))
        await page.wait_for_function("document.body.innerText.includes('dash-1') && document.body.innerText.includes('dash-2')",
                                     timeout=10_000)
        overflow = await page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        assert not overflow, "no horizontal scrolling"
        await save_screenshot(page, f"dashboard-{size['width']}.png", full_page=True)
        await page.goto(str(server.make_url("/wall")))
        await page.wait_for_function(
            "[...document.querySelectorAll('video')].filter(v => v.currentTime > 0).length >= 2", timeout=15_000)
        overflow = await page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        assert not overflow
        await save_screenshot(page, f"wall-{size['width']}.png", full_page=True)
