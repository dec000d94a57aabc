#!/usr/bin/env python3
"""Glass-to-glass latency in the browser: capture of a frame at the bot -> its display in /watch/<id>.

    python benchmarks/glass.py                  # fragments of 0.5 s and 2 s, 3 page opens each (about 2 minutes)
    python benchmarks/glass.py --quick          # one open of 8 s per fragment duration
    python benchmarks/glass.py --fragments 1 --opens 1 --seconds 30

The relay runs as its own process (``python -m relay serve``). A live bot in this process encodes the test
pattern in real time (``relay.testsrc.LivePattern(clock=True)``: each picture carries its wall-clock capture time
in ms as a row of 8x8 black/white blocks, see ``stamp_clock``/``read_clock``) and streams it with
``relay.simulate.stream_live``. Fragments: ``fragmentation="both"`` with ``frag_duration`` = the fragment duration
and a GOP of max(1 s, fragment): keyframe-started fragments of exactly 2 s, or 0.5 s fragments two per GOP.

Headless Chromium (Debian's, via Playwright) opens the watch page after the stream has been live for a few
seconds, as a viewer joining a meeting would. A script installed before the page's own
(``add_init_script``) registers ``video.requestVideoFrameCallback`` on the player's <video>; for each displayed
frame it draws the stamp rows onto a canvas, decodes them (the same rules as ``read_clock``: inner 4x4 pixels of
each block, mid-grey threshold, marker and checksum) and records ``Date.now()`` at the callback minus the stamped
ms: the capture-to-display latency. Page open to first frame is the first callback's time since navigation start
(``performance.now()`` is measured from it). Reported: medians over the page opens of each open's p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required"]

# Runs in the page before its own scripts: reads the clock stamp of every displayed frame.
HOOK = r"""
(() => {
  const G = window.__glass = {frames: [], first: null, failures: 0, callbacks: 0};
  const MARKER = [1, 0, 1, 1, 0, 0, 1, 0];
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  function readClock(video) {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return null;
    const cols = Math.floor(w / 8), rows = Math.ceil(64 / cols);
    if (canvas.width !== cols * 8 || canvas.height !== rows * 8) { canvas.width = cols * 8; canvas.height = rows * 8; }
    ctx.drawImage(video, 0, 0, cols * 8, rows * 8, 0, 0, cols * 8, rows * 8);
    const px = ctx.getImageData(0, 0, cols * 8, rows * 8).data, stride = cols * 8 * 4;
    const bits = [];
    for (let i = 0; i < 64; i++) {
      const bx = (i % cols) * 8, by = Math.floor(i / cols) * 8;
      let sum = 0;
      for (let y = by + 2; y < by + 6; y++)
        for (let x = bx + 2; x < bx + 6; x++) { const o = y * stride + x * 4; sum += px[o] + px[o + 1] + px[o + 2]; }
      bits.push(sum / 48 > 127.5 ? 1 : 0);
    }
    for (let i = 0; i < 8; i++) if (bits[i] !== MARKER[i]) return null;
    const bytes = [];
    for (let b = 0; b < 7; b++) { let v = 0; for (let k = 0; k < 8; k++) v = v * 2 + bits[8 + b * 8 + k]; bytes.push(v); }
    let value = 0, check = 0;
    for (let b = 0; b < 6; b++) { value = value * 256 + bytes[b]; check = (check + bytes[b]) & 0xff; }
    return check === bytes[6] ? value : null;
  }
  function hook(video) {
    const onFrame = (now, meta) => {
      const wall = Date.now();
      G.callbacks++;
      if (G.first === null) G.first = {sinceOpen: now, wall};
      const ms = readClock(video);
      if (ms === null) G.failures++;
      else G.frames.push([wall, ms, performance.timeOrigin + meta.expectedDisplayTime]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  const find = () => { const v = document.querySelector("video"); if (v) hook(v); else requestAnimationFrame(find); };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", find); else find();
})();
"""


def pct(values: list[float], q: float) -> float:
    return common.percentile(sorted(values), q) if values else float("nan")


async def one_open(browser, url: str, seconds: float) -> dict:
    page = await browser.new_page()
    await page.add_init_script(HOOK)
    await page.goto(url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        first = await page.evaluate("window.__glass && window.__glass.first")
        if first:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(seconds)
    g = await page.evaluate("window.__glass")
    stats = await page.evaluate("window.relayPlayer ? window.relayPlayer.stats() : null")
    await page.close()
    frames = g["frames"]
    settle = 2000  # ms after the first frame: the player's start-up catch-up is not the steady state
    t_first = g["first"]["wall"] if g["first"] else None
    steady = [wall - ms for wall, ms, _ in frames if t_first is not None and wall >= t_first + settle]
    shown = [disp - ms for wall, ms, disp in frames if t_first is not None and wall >= t_first + settle]
    return {
        "first_frame_ms": g["first"]["sinceOpen"] if g["first"] else float("nan"),
        "frames": len(frames),
        "failures": g["failures"],
        "latency_p50": pct(steady, 50),
        "latency_p95": pct(steady, 95),
        "display_p50": pct(shown, 50),
        "player_latency": stats.get("latency") if stats else None,
        "player_target": stats.get("targetLatency") if stats else None,
        "dropped": stats.get("dropped") if stats else None,
    }


async def measure(port: int, fragment: float, opens: int, seconds: float, warm: float, query: str = "") -> list[dict]:
    from playwright.async_api import async_playwright
    from relay.simulate import Bot, stream_live
    from relay.testsrc import LivePattern

    fps = 25
    bot_id = f"glass-{str(fragment).replace('.', '_')}"
    pattern = LivePattern(video="h264", audio="aac", width=640, height=360, fps=fps,
                          gop=round(fps * max(1.0, fragment)), fragmentation="both", frag_duration=fragment,
                          clock=True)
    results = []
    try:
        async with Bot(f"ws://127.0.0.1:{port}/ingest", bot_id, ping_interval=1.0) as bot:
            feed = asyncio.create_task(stream_live(bot, pattern.chunks()))
            try:
                await asyncio.sleep(warm)
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                    try:
                        for _ in range(opens):
                            url = f"http://127.0.0.1:{port}/watch/{bot_id}" + (f"?{query}" if query else "")
                            results.append(await one_open(browser, url, seconds))
                    finally:
                        await browser.close()
            finally:
                pattern.stop()
                try:
                    await asyncio.wait_for(feed, 10)
                except (asyncio.TimeoutError, Exception):
                    feed.cancel()
    finally:
        pattern.close()
    return results


def med(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    return statistics.median(values) if values else float("nan")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fragments", default="0.5,2", help="fragment durations, s (comma-separated)")
    ap.add_argument("--opens", type=int, default=3, help="page opens per fragment duration")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds of playback measured per open")
    ap.add_argument("--warm", type=float, default=4.0, help="seconds the stream is live before the first open")
    ap.add_argument("--query", default="", help="query string for the watch page, e.g. latency=0.5")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.opens, args.seconds, args.warm = 1, 8.0, 3.0
    if not os.path.exists(CHROMIUM):
        print(f"glass: {CHROMIUM} is missing (apt-get install chromium)")
        return 1
    common.raise_nofile()
    port = common.free_port()
    tmp = tempfile.mkdtemp(prefix="relay-glass-")
    log = open(Path(tmp) / "relay.log", "wb")
    relay = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--port", str(port), "--recordings", tmp],
                             cwd=common.ROOT, stdout=log, stderr=log)
    try:
        common.wait_port(port, 30, relay)
        print(f"# glass-to-glass latency, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
              f"load average {os.getloadavg()[0]:.2f}; {args.opens} page open(s) x {args.seconds:g} s per row"
              + (f"; /watch/<id>?{args.query}" if args.query else "") + "\n")
        print("| fragment | page open -> first frame ms | capture -> display ms p50 / p95 | frames (stamp unread) "
              "| player latency s (target) | target p50 <= fragment + 300 ms |")
        print("|---|---|---|---|---|---|")
        for fragment in [float(x) for x in args.fragments.split(",")]:
            rows = await measure(port, fragment, args.opens, args.seconds, args.warm, args.query)
            p50, p95, first = med(rows, "latency_p50"), med(rows, "latency_p95"), med(rows, "first_frame_ms")
            frames = sum(r["frames"] for r in rows)
            failures = sum(r["failures"] for r in rows)
            limit = fragment * 1000 + 300
            verdict = "n/a" if p50 != p50 else ("met" if p50 <= limit else f"MISSED by {p50 - limit:.0f} ms")
            opens = ", ".join(f"{r['first_frame_ms']:.0f}" for r in rows)
            print(f"| {fragment:g} s | {first:.0f} ({opens}) "
                  f"| {p50:.0f} / {p95:.0f} | {frames} ({failures}) "
                  f"| {med(rows, 'player_latency'):.2f} ({med(rows, 'player_target'):.2f}) | {verdict} |", flush=True)
        print("\nTargets: page open -> first frame < 1000 ms; capture -> display p50 <= fragment duration + 300 ms.")
    finally:
        relay.terminate()
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
