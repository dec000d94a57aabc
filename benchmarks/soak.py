"""Soak: several bots and many viewers against one relay process for a long time, with random disconnects.

    python benchmarks/soak.py                       # 30 minutes, 4 bots, 20 viewers
    python benchmarks/soak.py --minutes 1           # a quick check
    python benchmarks/soak.py --minutes 30 --bots 8 --viewers 50 --keep /tmp/soak

The relay runs as ``python -m relay serve`` in a subprocess. Each bot streams real PyAV fMP4 in real time, one
connection after another; each connection either streams its whole clip and says ``video_stream_end``, or
stops at a random byte (often inside a box) and then closes cleanly or drops its TCP connection without a
close frame, and reconnects within the reconnect grace. Before a connection goes away its bot makes sure the
relay has handled every byte (a ping whose pong comes back after them), so what the relay should have recorded
is known exactly. Each viewer watches a random bot for a random while, checks the viewer protocol (an ``init``
message, then the init segment, then whole fragments), and leaves cleanly or by aborting its socket.

Every 10 s the relay's RSS (VmRSS of the process) is sampled. At the end:
- memory is flat: the least-squares slope of RSS over the last 10 minutes (the second half of a shorter run)
  is below ``--max-slope`` MB/min;
- every recording is byte-exact: file i of a bot holds exactly the bytes connection i of that bot sent, and
  its sidecar is final and indexes only whole fragments;
- the relay logged no error (no ``level=ERROR``, no traceback);
- the viewers saw no protocol violation.
The exit status is 0 when all hold. Not part of the test suite (it takes minutes by design).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from benchmarks.common import free_port  # noqa: E402
from relay.media import FragmentAssembler  # noqa: E402
from relay.simulate import Bot, random_cuts  # noqa: E402
from relay.testsrc import encode_fmp4  # noqa: E402

CLIPS = [  # what the bots stream: a mix of codecs, sizes and fragmentations, 8 to 12 s each
    dict(seconds=10, gop=25),
    dict(seconds=8, width=640, height=360, gop=50),
    dict(seconds=12, video="vp9", audio="opus", gop=25),
    dict(seconds=10, gop=50, fragmentation="duration", frag_duration=0.5),
]
SAMPLE_EVERY = 10.0


# -- bookkeeping -------------------------------------------------------------------------------------
@dataclass
class Connection:
    bot_id: str
    index: int
    how: str  # "end", "close" or "drop"
    sent: bytearray = field(default_factory=bytearray)
    fragments: list = field(default_factory=list)  # the clip's fragments, to check the sidecar index


@dataclass
class Tally:
    connections: list[Connection] = field(default_factory=list)
    viewer_sessions: int = 0
    viewer_fragments: int = 0
    viewer_bytes: int = 0
    viewer_problems: list[str] = field(default_factory=list)
    bot_problems: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)


class SoakBot(Bot):
    """A bot that keeps the bytes it sent and counts pongs for barriers."""

    def __init__(self, *args, connection: Connection, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connection = connection

    async def send_raw(self, chunk: bytes) -> None:
        await super().send_raw(chunk)
        self.connection.sent += chunk


def split(data: bytes) -> tuple:
    assembler = FragmentAssembler()
    events = assembler.feed(data) + assembler.finish()
    return events[0], events[1:]


# -- the relay process ---------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def start_relay(work: Path, port: int, grace: float) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    log = (work / "relay.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--port", str(port), "--recordings", str(work / "recordings"),
        "--sidecar-interval", "1", "--min-free-space", "0", "--reconnect-grace", str(grace),
        "--viewer-wait-timeout", "3600", cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"relay exited with {proc.returncode}; see {work / 'relay.log'}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return proc
            if time.monotonic() > deadline:
                raise RuntimeError("the relay did not come up")
            await asyncio.sleep(0.1)


# -- bots ---------------------------------------------------------------------------------------------
async def barrier(bot: SoakBot, seq: int) -> None:
    """Every byte sent so far has been handled by the relay: a pong comes back after them."""
    before = bot.report.pongs
    await bot.ping(seq)
    deadline = time.monotonic() + 30
    while bot.report.pongs <= before:
        if time.monotonic() > deadline or bot.closed.is_set():
            raise RuntimeError("no barrier pong")
        await asyncio.sleep(0.01)


async def run_bot(number: int, url: str, clips: list[bytes], stop: float, rng: random.Random, tally: Tally) -> None:
    bot_id = f"soak-{number}"
    index = 0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop:
            clip = rng.choice(clips)
            init, fragments = split(clip)
            how = rng.choices(["end", "close", "drop"], weights=[6, 2, 2])[0]
            cut = len(clip) if how == "end" else rng.randrange(len(init.data) + 1, len(clip))
            connection = Connection(bot_id, index, how, fragments=fragments)
            tally.connections.append(connection)
            index += 1
            bot = SoakBot(f"{url}/ingest", bot_id, ping_interval=1.0, seed=rng.randrange(1 << 30), max_chunk=16384,
                          session=session, connection=connection)
            try:
                await bot.__aenter__()
                await bot.start(init.info, 25.0)
                began = time.monotonic()
                t0 = fragments[0].decode_time
                due = [(f.offset + f.size, f.decode_time - t0) for f in fragments]
                pos = 0
                for end in random_cuts(cut, bot.rng, bot.max_chunk):
                    wait = next((t for limit, t in due if end <= limit), due[-1][1])
                    delay = began + wait - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await bot.send_raw(clip[pos:end])
                    pos = end
                await barrier(bot, 10**9 + index)
                if how == "end":
                    await bot.end(time.monotonic() - began)
                    await bot.close()
                elif how == "close":
                    await bot.close()
                else:
                    bot.ws._conn.transport.abort()
                    await bot.close()
                if bot.report.pong_errors:
                    tally.bot_problems.append(f"{bot_id}#{connection.index}: {bot.report.pong_errors[:3]}")
            except Exception as exc:  # noqa: BLE001 - a soak reports, it does not stop
                tally.bot_problems.append(f"{bot_id}#{connection.index} ({how}): {exc!r}")
                with contextlib.suppress(Exception):
                    await bot.close()
            await asyncio.sleep(rng.uniform(0, 2.0) if how != "end" else rng.uniform(0, 4.0))


# -- viewers ------------------------------------------------------------------------------------------
async def run_viewer(number: int, url: str, bots: int, stop: float, rng: random.Random, tally: Tally) -> None:
    ws_base = url.replace("http", "ws", 1)
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop:
            bot_id = f"soak-{rng.randrange(bots)}"
            stay = rng.uniform(2, 40)
            tally.viewer_sessions += 1
            try:
                async with session.ws_connect(f"{ws_base}/ws/watch/{bot_id}", max_msg_size=0) as ws:
                    expect = "any"  # "init-bytes" right after an init message
                    leave = time.monotonic() + min(stay, max(0.0, stop - time.monotonic()))
                    while time.monotonic() < leave:
                        try:
                            msg = await ws.receive(timeout=max(0.05, leave - time.monotonic()))
                        except TimeoutError:
                            break
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            kind = json.loads(msg.data).get("type")
                            if kind == "init":
                                expect = "init-bytes"
                            elif kind == "end":
                                break
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            head = msg.data[4:8]
                            if expect == "init-bytes":
                                if head != b"ftyp":
                                    tally.viewer_problems.append(f"viewer {number}: init message not followed by ftyp")
                                expect = "fragments"
                            elif expect == "any":
                                tally.viewer_problems.append(f"viewer {number}: media before any init message")
                            elif head not in (b"moof", b"styp", b"prft", b"emsg", b"free", b"sidx"):
                                tally.viewer_problems.append(f"viewer {number}: a binary that is no fragment: {head!r}")
                            else:
                                tally.viewer_fragments += 1
                            tally.viewer_bytes += len(msg.data)
                        else:
                            break
                    if rng.random() < 0.5:
                        ws._conn.transport.abort()  # gone without a close frame
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, (aiohttp.ClientError, ConnectionError)):
                    tally.viewer_problems.append(f"viewer {number}: {exc!r}")
            await asyncio.sleep(rng.uniform(0, 3.0))


# -- checks -------------------------------------------------------------------------------------------
def slope_mb_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return (cov / var) * 60 / (1 << 20) if var else 0.0


def check_recordings(work: Path, tally: Tally) -> tuple[int, list[str]]:
    problems, checked = [], 0
    by_bot: dict[str, list[Connection]] = {}
    for connection in tally.connections:
        if connection.sent:
            by_bot.setdefault(connection.bot_id, []).append(connection)
    for bot_id, connections in sorted(by_bot.items()):
        folder = work / "recordings" / bot_id
        sides = [json.loads(p.read_text()) for p in folder.glob("*.json")]
        sides.sort(key=lambda s: s["started_at"])
        if len(sides) != len(connections):
            problems.append(f"{bot_id}: {len(sides)} recordings for {len(connections)} connections")
        for side, connection in zip(sides, connections):
            content = (folder / side["file"]).read_bytes()
            checked += 1
            where = f"{bot_id}/{side['file']} (connection {connection.index}, {connection.how})"
            if hashlib.sha256(content).digest() != hashlib.sha256(connection.sent).digest():
                problems.append(f"{where}: {len(content)} bytes on disk, {len(connection.sent)} sent")
            whole = [f.index_entry() for f in connection.fragments if f.offset + f.size <= len(connection.sent)]
            if not side["ended_at"] or side["bytes"] != len(content) or side["error"] is not None:
                problems.append(f"{where}: sidecar not final or wrong: {json.dumps(side)[:300]}")
            elif side["fragments"] != whole:
                problems.append(f"{where}: sidecar indexes {len(side['fragments'])} fragments, {len(whole)} are whole")
    return checked, problems


# -- main ---------------------------------------------------------------------------------------------
async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="relay-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.minutes:g} min, {args.bots} bots, {args.viewers} viewers, seed {args.seed}, in {work}", flush=True)
    clips = [encode_fmp4(**options) for options in CLIPS]
    port = free_port()
    proc = await start_relay(work, port, grace=5.0)
    url = f"http://127.0.0.1:{port}"
    tally = Tally()
    began = time.monotonic()
    stop = began + args.minutes * 60

    async def sample() -> None:
        while True:
            elapsed = time.monotonic() - began
            rss = rss_bytes(proc.pid)
            tally.rss.append((elapsed, rss))
            print(f"  t={elapsed:6.0f}s  rss={rss / (1 << 20):6.1f} MB  connections={len(tally.connections):4d}  "
                  f"viewer sessions={tally.viewer_sessions:4d}  fragments to viewers={tally.viewer_fragments}", flush=True)
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    workers = [run_bot(i, url, clips, stop, random.Random(rng.random()), tally) for i in range(args.bots)]
    workers += [run_viewer(i, url, args.bots, stop, random.Random(rng.random()), tally) for i in range(args.viewers)]
    await asyncio.gather(*workers)
    await asyncio.sleep(7)  # reconnect grace (5 s) runs out: every stream ends, every recording is final
    sampler.cancel()
    tally.rss.append((time.monotonic() - began, rss_bytes(proc.pid)))
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 30)

    window = min(600.0, args.minutes * 60 / 2)
    last = [(t, r) for t, r in tally.rss if t >= args.minutes * 60 - window]
    slope = slope_mb_per_min(last)
    checked, problems = check_recordings(work, tally)
    log = (work / "relay.log").read_text(errors="replace")
    errors = [line for line in log.splitlines() if "level=ERROR" in line or "Traceback" in line]
    hows = {how: sum(c.how == how for c in tally.connections) for how in ("end", "close", "drop")}
    rss_mb = [r / (1 << 20) for _, r in tally.rss]

    print(f"\nconnections: {len(tally.connections)} ({hows}), recordings checked byte for byte: {checked}")
    print(f"viewer sessions: {tally.viewer_sessions}, fragments delivered: {tally.viewer_fragments}, "
          f"{tally.viewer_bytes / (1 << 20):.1f} MB")
    print(f"relay RSS: start {rss_mb[0]:.1f} MB, peak {max(rss_mb):.1f} MB, end {rss_mb[-1]:.1f} MB; "
          f"slope over the last {window / 60:.1f} min: {slope:+.3f} MB/min (limit {args.max_slope})")
    print(f"relay exit status after SIGTERM: {code}; error lines in its log: {len(errors)}")
    failures = []
    if window < 300:
        print("  (memory not judged: the window is under 5 min; runs of 10 min or more judge their last 10 min)")
    elif slope > args.max_slope:
        failures.append(f"memory grows {slope:.3f} MB/min")
    failures += problems
    failures += [f"log: {line}" for line in errors[:10]]
    failures += tally.viewer_problems[:10] + tally.bot_problems[:10]
    if code != 0:
        failures.append(f"relay exited with {code}")
    for failure in failures:
        print("FAIL", failure)
    print("soak", "FAILED" if failures else "passed")
    if not failures and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--bots", type=int, default=4)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 31))
    parser.add_argument("--max-slope", type=float, default=0.5, help="MB/min of RSS growth allowed (default 0.5)")
    parser.add_argument("--keep", help="work directory to keep (recordings, relay.log); default: a temp dir, "
                                       "removed when the soak passes")
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
