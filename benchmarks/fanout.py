#!/usr/bin/env python3
"""Fan-out benchmark: relay against a floor and the peers a user would otherwise deploy, side by side in one run.

    python benchmarks/fanout.py                 # every scenario, every system (about 10 minutes)
    python benchmarks/fanout.py --quick         # small numbers, for CI (under a minute)
    python benchmarks/fanout.py --scenario a --systems relay,floor --viewers 300 --duration 10

Each system under test runs as its own process on loopback. A feeder process plays the bot(s) and stamps each
fragment's send time; viewer clients live in separate load-generator processes and stamp each fragment's arrival
(last byte). See docs/performance.md for the method and the numbers, and the module docstrings of common.py,
feeder.py and loadgen.py for the details.

Systems: relay (this project), floor (pre-built frames written to the sockets, nothing else), naive (the obvious
aiohttp relay: await send_bytes per viewer), websockets (the same on the websockets library with broadcast()),
nms (node-media-server from npm, fed by ffmpeg over RTMP, read as WebSocket-FLV).
Scenarios: (a) 1,000 viewers at 2 Mbit/s, 1 s fragments; (b) the same with 5% of viewers reading at half the
stream's rate; (c) 100 bots at 2 Mbit/s, 2 viewers each, all recording; (d) viewers stepped up at 500 kbit/s until
the healthy viewers' p99 delay passes 200 ms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import numpy as np  # noqa: E402

ROOT = common.ROOT
PY = sys.executable
NMS_DIR = HERE / "node" / "node_modules" / "node-media-server"

SYSTEMS = ("relay", "floor", "naive", "websockets", "nms")
ALT_ROOT: Path | None = None  # --relay-alt: another checkout of relay, run as the system "relay-alt" (A/B runs)
ALT_ENV: dict[str, str] = {}  # --relay-alt-env: settings for relay-alt only
LABELS = {
    "relay": "relay",
    "relay-alt": "relay (alt)",
    "floor-sendfile": "floor (sendfile)",
    "floor": "floor",
    "naive": "aiohttp naive",
    "websockets": "websockets",
    "nms": "node-media-server",
}
DESCRIPTIONS = {
    "relay": "this project: python -m relay serve (records every stream)",
    "floor": "one asyncio Protocol: pre-built frame written to every viewer transport, nothing else",
    "naive": "aiohttp, a list of viewer sockets, `await ws.send_bytes(fragment)` for each in turn",
    "websockets": "websockets 'broadcast()' (frames per connection, no backpressure)",
    "nms": "node-media-server (npm), ffmpeg -> RTMP in, WebSocket-FLV out: one message per FLV tag",
}


def now_ns() -> int:
    return time.monotonic_ns()


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------------
class Proc:
    """A child process whose stdout lines we wait for."""

    def __init__(self, cmd: list[str], logfile: Path, cwd: Path | None = None, stdin: bool = False, env=None):
        self.cmd = cmd
        self.err = open(logfile, "wb")
        self.p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=self.err,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=env,
                                  start_new_session=True)
        self.buf = b""

    @property
    def pid(self) -> int:
        return self.p.pid

    def expect(self, word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(word):
                    return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{Path(self.cmd[1]).name}: no '{word}' after {timeout:.0f}s")
            r, _, _ = select.select([self.p.stdout], [], [], min(left, 0.5))
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"{Path(self.cmd[1]).name} exited ({self.p.poll()}) before '{word}'; "
                                       f"see {self.err.name}")
                self.buf += chunk

    def say(self, line: str) -> None:
        try:
            self.p.stdin.write(line.encode() + b"\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stop(self, timeout: float = 5.0) -> None:
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.err.close()


def start_system(name: str, port: int, workdir: Path, record: bool) -> tuple[Proc, dict]:
    rec = workdir / "rec"
    rec.mkdir(exist_ok=True)
    extra: dict = {}
    logfile = workdir / f"{name}.log"
    if name in ("relay", "relay-alt"):
        # The relay's defaults, except the per-address connection caps: every benchmark viewer comes from
        # 127.0.0.1. Environment variables, so that a relay without these settings still starts.
        env = dict(os.environ, RELAY_MAX_CONNECTIONS_PER_CLIENT="1000000", RELAY_MAX_VIEWERS="1000000",
                   RELAY_MAX_VIEWERS_PER_STREAM="1000000")
        if name == "relay-alt":
            env.update(ALT_ENV)
        proc = Proc([PY, "-m", "relay", "serve", "--port", str(port), "--recordings", str(rec)], logfile,
                    cwd=ALT_ROOT if name == "relay-alt" else ROOT, env=env)
    elif name in ("floor", "floor-sendfile", "naive", "websockets"):
        script = {"floor": "floor.py", "floor-sendfile": "floor.py", "naive": "naive_aiohttp.py",
                  "websockets": "ws_broadcast.py"}[name]
        cmd = [PY, str(HERE / "peers" / script), "--port", str(port)]
        if name == "floor-sendfile":
            cmd.append("--sendfile")
        if record:
            cmd += ["--record", str(rec)]
        proc = Proc(cmd, logfile, cwd=ROOT)
    elif name == "nms":
        rtmp = common.free_port()
        config = {
            "bind": "127.0.0.1",
            "notify": {"url": ""},
            "store": {"path": str(workdir / "nms-data"), "maxHistory": 100},
            "auth": {"play": False, "publish": False, "secret": ""},
            "rtmp": {"port": rtmp},
            "http": {"port": port},
            "webadmin": {"enable": False},
            "record": {"auto": bool(record), "path": str(rec)},
        }
        (workdir / "nms.json").write_text(json.dumps(config))
        proc = Proc(["node", str(NMS_DIR / "bin" / "app.js"), "-c", str(workdir / "nms.json"), "--no-admin"],
                    logfile, cwd=workdir)
        common.wait_port(rtmp, 30, proc.p)
        extra["rtmp"] = rtmp
    else:
        raise ValueError(name)
    common.wait_port(port, 30, proc.p)
    return proc, extra


def system_problem(name: str) -> str | None:
    """Why a system cannot run here (None when it can)."""
    if name == "nms":
        if not shutil.which("node"):
            return "node is not installed"
        if not (NMS_DIR / "bin" / "app.js").exists():
            return "node-media-server not installed (cd benchmarks/node && npm ci)"
        if not shutil.which("ffmpeg"):
            return "ffmpeg is not installed (apt-get install ffmpeg)"
    if name == "websockets":
        try:
            import websockets  # noqa: F401
        except ImportError:
            return "the websockets package is not installed (pip install websockets)"
    return None


_CLIPS: dict[float, Path] = {}


def flv_clip(bitrate: float, workdir: Path) -> Path:
    """The test pattern as H.264 CBR (filler NALs make the rate exact) + AAC in FLV, for ffmpeg to publish."""
    if bitrate in _CLIPS and _CLIPS[bitrate].exists():
        return _CLIPS[bitrate]
    path = workdir / f"clip-{int(bitrate)}.flv"
    video = int((bitrate - 64000) / 1000)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "10", "-pix_fmt", "yuv420p",
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline",
         "-g", "25", "-keyint_min", "25", "-sc_threshold", "0", "-b:v", f"{video}k", "-minrate", f"{video}k",
         "-maxrate", f"{video}k", "-bufsize", f"{video}k", "-x264-params", "nal-hrd=cbr:force-cfr=1",
         "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-f", "flv", str(path)],
        check=True,
    )
    _CLIPS[bitrate] = path
    return path


# -- one measurement -------------------------------------------------------------------------------------
@dataclass
class Run:
    system: str
    viewers: int
    bots: int = 1
    bitrate: float = 2e6
    fragment: float = 1.0
    duration: float = 20.0
    slow_share: float = 0.0
    record: bool = False
    load_procs: int = 1
    warmup: float = 2.0
    grace: float = 1.5
    settle: float = 1.0  # seconds before each RSS reading
    profile: str = ""  # py-spy output stem (relay only)
    result: dict = field(default_factory=dict)


def start_profiler(pid: int, run: Run, seconds: float) -> Proc:
    """py-spy on the relay during the measurement window: raw collapsed stacks (input for flamegraph.pl/speedscope)."""
    out = Path(run.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", "raw",
           "--duration", str(max(1, int(seconds))), "-o", str(out.with_suffix(".txt"))]
    log("profiling: " + " ".join(cmd))
    return Proc(cmd, out.with_suffix(".log"))


def slow_set(n: int, share: float) -> list[int]:
    """Evenly spread viewer indexes, ``share`` of ``n``."""
    return [i for i in range(n) if int((i + 1) * share) > int(i * share)]


def measure(run: Run, workdir: Path) -> dict:
    kind = "flv" if run.system == "nms" else "fmp4"
    port = common.free_port()
    rundir = Path(tempfile.mkdtemp(prefix=f"{run.system}-", dir=workdir))
    procs: list[Proc] = []
    res: dict = {"system": run.system, "viewers": run.viewers, "bots": run.bots, "bitrate": run.bitrate,
                 "fragment": run.fragment, "duration": run.duration, "slow_share": run.slow_share}
    system = None
    try:
        clip = flv_clip(run.bitrate, workdir) if kind == "flv" else None
        # the feeder starts first (imports, stream encoding) and waits for "go"
        if kind == "flv":
            cmd = [PY, str(HERE / "feeder.py"), "--mode", "rtmp", "--clip", str(clip), "--duration", str(run.duration),
                   "--out", str(rundir / "feeder.json")]
        else:
            cmd = [PY, str(HERE / "feeder.py"), "--port", str(port), "--bots", str(run.bots), "--bitrate",
                   str(run.bitrate), "--fragment", str(run.fragment), "--duration", str(run.duration),
                   "--out", str(rundir / "feeder.json")]
        system, extra = start_system(run.system, port, rundir, run.record)
        if kind == "flv":
            cmd[cmd.index("--mode") + 2:cmd.index("--mode") + 2] = ["--rtmp-port", str(extra["rtmp"])]
        feeder = Proc(cmd, rundir / "feeder.log", stdin=True)
        procs.append(feeder)
        time.sleep(run.settle)
        rss0 = common.rss_kb(system.pid)
        slow = slow_set(run.viewers, run.slow_share)
        path = "/live/bench{bot}.flv" if kind == "flv" else "/ws/watch/bench{bot}"
        loads = []
        per = -(-run.viewers // run.load_procs)
        for k in range(run.load_procs):
            first, count = k * per, min(per, run.viewers - k * per)
            if count <= 0:
                break
            mine = [i for i in slow if first <= i < first + count]
            cmd = [PY, str(HERE / "loadgen.py"), "--port", str(port), "--path", path, "--first", str(first),
                   "--count", str(count), "--total", str(run.viewers), "--bots", str(run.bots), "--kind", kind,
                   "--out", str(rundir / f"load{k}.npz")]
            if mine:
                cmd += ["--slow", ",".join(map(str, mine)), "--slow-rate", str(run.bitrate / 8 / 2)]
            loads.append(Proc(cmd, rundir / f"load{k}.log", stdin=True))
        procs += loads
        ok = failed = 0
        for lp in loads:
            _, a, b = lp.expect("ready", 180).split()
            ok, failed = ok + int(a), failed + int(b)
        time.sleep(run.settle)
        rss_idle = common.rss_kb(system.pid)
        res.update(connected=ok, connect_failed=failed, rss0_kb=rss0, rss_idle_kb=rss_idle,
                   rss_per_idle_viewer_kb=(rss_idle - rss0) / ok if ok else float("nan"))
        feeder.expect("prepared", 60)
        feeder.say("go")
        t0 = int(feeder.expect("started", 120).split()[1])
        watched = [system.pid] + [lp.pid for lp in loads] + [feeder.pid]

        def cpu_all() -> list[float]:
            return [common.cpu_seconds(pid) for pid in watched]

        def sleep_until(t_ns: int) -> None:
            delay = (t_ns - now_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)

        # The window: from half a fragment before the first fragment due after the warm-up, to half a fragment
        # after the last one is due: whole fragments, each sent and (if the system keeps up) delivered inside it.
        count = max(1, round(run.duration / run.fragment))
        first = min(count - 1, -(-int(run.warmup * 1000) // int(run.fragment * 1000)))
        frag_ns = int(run.fragment * 1e9)
        sleep_until(t0 + first * frag_ns - frag_ns // 2)
        ta, ca = now_ns(), cpu_all()
        if run.profile and run.system.startswith("relay"):
            procs.append(start_profiler(system.pid, run, (count - first) * run.fragment))
        last_due = t0 + (count - 1) * frag_ns + frag_ns * (run.bots - 1) // run.bots
        sleep_until(last_due + frag_ns // 2)
        tb, cb = now_ns(), cpu_all()
        if system.p.poll() is None:
            res["hwm_kb"] = common.hwm_kb(system.pid)
            res["rss_end_kb"] = common.rss_kb(system.pid)
        feeder.expect("sent", 120 + run.duration)
        if run.profile and run.system.startswith("relay"):
            procs[-1].p.wait(30)
        time.sleep(run.grace)
        for lp in loads:
            lp.say("stop")
        for lp in loads:
            lp.expect("done", 120)
        feeder.say("stop")
        feeder.expect("done", 60)
        window = (tb - ta) / 1e9
        res.update(window_s=window, t_a=ta, t_b=tb, t0=t0,
                   cpu_system=cb[0] - ca[0], cpu_load=sum(cb[1:-1]) - sum(ca[1:-1]), cpu_feeder=cb[-1] - ca[-1])
        analyse(res, run, rundir, len(loads), slow, kind)
    except Exception as exc:  # a system that fails is reported, the run goes on
        res["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{run.system}: {res['error']}")
        for logfile in sorted(rundir.glob("*.log")):
            tail = logfile.read_text(errors="replace").strip().splitlines()[-8:]
            if tail:
                log(f"  {logfile.name}: " + "\n    ".join(tail))
    finally:
        for p in procs:
            p.stop(3)
        if system is not None:
            system.stop(5)
        shutil.rmtree(rundir / "rec", ignore_errors=True)
    return res


def analyse(res: dict, run: Run, rundir: Path, nload: int, slow: list[int], kind: str) -> None:
    fed = json.loads((rundir / "feeder.json").read_text())
    ta, tb = res["t_a"], res["t_b"]
    loads = [np.load(rundir / f"load{k}.npz") for k in range(nload)]
    rv = np.concatenate([d["rec_viewer"] for d in loads])
    rk = np.concatenate([d["rec_key"] for d in loads])
    rt = np.concatenate([d["rec_t"] for d in loads])
    # bytes delivered in the CPU window, from each load process's byte counter
    delivered = 0.0
    for d in loads:
        delivered += float(np.interp(tb, d["ts_t"], d["ts_bytes"]) - np.interp(ta, d["ts_t"], d["ts_bytes"]))
    window = (tb - ta) / 1e9
    res["delivered_bytes"] = delivered
    res["throughput_mbps"] = delivered * 8 / window / 1e6
    res["expected_mbps"] = run.viewers * run.bitrate / 1e6  # replaced below by what the window's fragments make
    res["cpu_s_per_gb"] = res["cpu_system"] / (delivered / 1e9) if delivered else float("inf")
    res["cpu_system_pct"] = 100 * res["cpu_system"] / window
    res["cpu_load_pct"] = 100 * res["cpu_load"] / window
    res["cpu_feeder_pct"] = 100 * res["cpu_feeder"] / window
    total = run.viewers
    vi = np.concatenate([d["viewer_index"] for d in loads])
    vslow = np.zeros(total, bool)
    vslow[slow] = True
    vclosed = np.zeros(total, bool)
    vclosed[vi] = np.concatenate([d["viewer_closed"] for d in loads])
    vok = np.zeros(total, bool)
    vok[vi] = np.concatenate([d["viewer_ok"] for d in loads])
    bot_of = np.arange(total) * run.bots // total

    # send times: key -> ns, per bot; the window's keys are those sent in [ta, tb]
    if kind == "fmp4":
        maxkey = max((s[-1][0] for s in fed["sends"] if s), default=0) + 1
        send_t = np.zeros((run.bots, maxkey + 1), np.int64)
        in_window = np.zeros((run.bots, maxkey + 1), bool)
        stall = 0.0
        for b, sends in enumerate(fed["sends"]):
            for seq, due, started, end in sends:
                send_t[b, seq] = end
                in_window[b, seq] = ta <= end <= tb
                stall = max(stall, (started - due) / 1e9)
        res["bot_stall_s"] = stall  # how late the bot could start a fragment: the ingest pushing back
        keys_per_bot = in_window.sum(axis=1)
        # what the viewers should have received in the window (bots are phased, so not exactly bitrate * window)
        per_viewer = keys_per_bot[np.arange(run.viewers) * run.bots // run.viewers]
        res["expected_mbps"] = float(per_viewer.sum()) * fed["fragment_bytes"] * 8 / window / 1e6
        valid = rk <= maxkey
        rv, rk, rt = rv[valid], rk[valid], rt[valid]
        b_of_rec = bot_of[rv]
        st = send_t[b_of_rec, rk]
        win = in_window[b_of_rec, rk]
    else:
        sends = {ts: t for ts, t in fed["flv_sends"]}
        wkeys = {ts for ts, t in fed["flv_sends"] if ta <= t <= tb}
        keys_per_bot = np.array([len(wkeys)])
        res["bot_stall_s"] = 0.0
        st = np.array([sends.get(int(k), 0) for k in rk], np.int64)
        win = np.array([int(k) in wkeys for k in rk], bool)
    delay_ms = (rt - st) / 1e6
    healthy_rec = win & ~vslow[rv] & (st > 0)
    d = np.sort(delay_ms[healthy_rec])
    res["delay_samples"] = int(len(d))
    res["delay_p50_ms"] = common.percentile(d, 50)
    res["delay_p99_ms"] = common.percentile(d, 99)
    res["delay_max_ms"] = float(d[-1]) if len(d) else float("nan")
    # per-viewer delivery of the window's fragments (or FLV video tags), on time: within 1 s of being sent
    on_time = win & (st > 0) & (delay_ms <= 1000.0)
    got = np.bincount(rv[on_time], minlength=total)
    expected = keys_per_bot[bot_of]
    healthy = ~vslow
    frac = np.where(expected > 0, got / np.maximum(expected, 1), 0.0)
    threshold = 0.99 if kind == "flv" else (expected - 1) / np.maximum(expected, 1)
    sustained = healthy & vok & ~vclosed & (frac >= threshold)
    res["healthy"] = int(healthy.sum())
    res["sustained"] = int(sustained.sum())
    res["healthy_delivery_pct"] = 100 * float(got[healthy].sum()) / max(1, float(expected[healthy].sum()))
    res["window_keys"] = int(keys_per_bot.sum())
    res["disconnected_healthy"] = int((vclosed & healthy).sum())
    res["disconnected_slow"] = int((vclosed & vslow).sum())
    res["slow"] = len(slow)
    if slow:
        skipped, lag = 0, []
        for v in slow:
            mine = rv == v
            keys = np.unique(rk[mine]) if kind == "fmp4" else np.unique(rk[mine & win])
            bot = bot_of[v]
            if kind == "fmp4":
                sent_keys = np.flatnonzero(send_t[bot] > 0)
                top = keys.max() if len(keys) else 0
                skipped += int(np.sum((sent_keys <= top) & ~np.isin(sent_keys, keys)))
                last_sent = sent_keys.max()
                lag.append((last_sent - top) * run.fragment)
            else:
                skipped += 0
        res["slow_skipped"] = skipped
        res["slow_lag_s_mean"] = float(np.mean(lag)) if lag else float("nan")
    # pong turnaround for pings sent in the window
    if kind == "fmp4":
        rtts = sorted(r / 1e6 for bot in fed["pongs"] for sent, r in bot if ta <= sent <= tb)
        pings = sum(fed["pings"])
        res["pong_samples"] = len(rtts)
        res["pong_p50_ms"] = common.percentile(rtts, 50) if rtts else float("nan")
        res["pong_p99_ms"] = common.percentile(rtts, 99) if rtts else float("nan")
        res["pings"] = pings
        res["pongs"] = sum(len(b) for b in fed["pongs"])
    res["errors"] = fed.get("errors", [])


# -- scenarios -------------------------------------------------------------------------------------------
def scenario_runs(name: str, args, systems: list[str]) -> list[Run]:
    q = args.quick
    bitrate = args.bitrate
    frag = args.fragment or (0.5 if q else 1.0)
    timing = dict(load_procs=args.load_procs or 1, warmup=0.5 if q else 2.0, grace=0.3 if q else 1.5,
                  settle=0.3 if q else 1.0)
    if name in ("a", "b"):
        viewers = args.viewers or (100 if q else 1000)
        duration = args.duration or (2.5 if q else (12.0 if name == "a" else 24.0))
        share = (args.slow_share if args.slow_share is not None else 0.05) if name == "b" else 0.0
        return [Run(s, viewers, 1, bitrate or 2e6, frag, duration, share, **timing) for s in systems]
    if name == "c":
        bots = 10 if q else 100
        chosen = [s for s in systems if s != "nms" and (not q or s in ("relay", "floor"))]
        return [Run(s, 2 * bots, bots, bitrate or 2e6, frag, args.duration or (2.5 if q else 12.0), 0.0, True,
                    **timing) for s in chosen]
    if name == "custom":
        return [Run(s, args.viewers or 100, 1, bitrate or 2e6, frag, args.duration or 10.0,
                    args.slow_share or 0.0, **timing) for s in systems]
    raise ValueError(name)


def steps_for_d(args) -> list[int]:
    if args.steps:
        return [int(x) for x in args.steps.split(",")]
    if args.quick:
        return [100, 300]
    return [2000, 5000, 10000, 15000]


# -- output ----------------------------------------------------------------------------------------------
def fmt(x, spec=".1f", na="n/a") -> str:
    if x is None:
        return na
    try:
        if x != x or x in (float("inf"),):
            return na
    except TypeError:
        return str(x)
    return format(x, spec)


def table(results: list[dict], floor: dict | None) -> list[str]:
    head = ["system", "viewers ok/sust.", "Mbit/s (nominal)", "delay ms p50/p99/max", "CPU s/GB", "x floor",
            "CPU %", "peak RSS MB", "KB/idle viewer", "pong ms p50/p99", "bot stall s", "slow: skipped/lag s",
            "disc.", "load+bot CPU %"]
    rows = []
    base = floor.get("cpu_s_per_gb") if floor else None
    for r in results:
        if "delay_p50_ms" not in r:
            rows.append([LABELS[r["system"]], "error: " + r.get("error", "?")[:100]])
            continue
        ratio = r["cpu_s_per_gb"] / base if base else None
        pong = "n/a (RTMP)" if r["system"] == "nms" else \
            f"{fmt(r.get('pong_p50_ms'), '.2f')}/{fmt(r.get('pong_p99_ms'), '.2f')}"
        if not r.get("slow"):
            slow = "-"
        elif r["system"] == "nms":
            slow = "n/a"
        else:
            slow = f"{r.get('slow_skipped', 0):.0f}/{fmt(r.get('slow_lag_s_mean'), '.1f')}"
        rows.append([
            LABELS[r["system"]],
            f"{r['connected']:.0f}/{r['sustained']:.0f}",
            f"{fmt(r['throughput_mbps'], '.0f')} ({fmt(r['expected_mbps'], '.0f')})",
            f"{fmt(r['delay_p50_ms'], '.1f')}/{fmt(r['delay_p99_ms'], '.1f')}/{fmt(r['delay_max_ms'], '.0f')}",
            fmt(r["cpu_s_per_gb"], ".3f"),
            fmt(ratio, ".2f"),
            fmt(r["cpu_system_pct"], ".1f"),
            fmt(r.get("hwm_kb", float("nan")) / 1024, ".0f"),
            fmt(r["rss_per_idle_viewer_kb"], ".1f"),
            pong,
            "n/a" if r["system"] == "nms" else fmt(r.get("bot_stall_s"), ".2f"),
            slow,
            f"{r['disconnected_healthy'] + r['disconnected_slow']:.0f}",
            f"{fmt(r['cpu_load_pct'], '.0f')}+{fmt(r['cpu_feeder_pct'], '.0f')}",
        ])
    widths = [max(len(str(row[i])) for row in [head] + [r for r in rows if len(r) > 2]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        if len(row) == 2:
            lines.append(f"| {row[0].ljust(widths[0])} | {row[1]} |")
        else:
            lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    return lines


def d_table(results: dict[str, list[dict]]) -> list[str]:
    lines = ["| system | viewers | Mbit/s (of) | delay p50/p99/max ms | sustained | CPU % | CPU s/GB | client CPU % |",
             "|---|---|---|---|---|---|---|---|"]
    for system, steps in results.items():
        for r in steps:
            if "delay_p99_ms" not in r:
                lines.append(f"| {LABELS[system]} | {r['viewers']} | error: {r.get('error', '?')[:80]} |||||")
                continue
            lines.append(
                f"| {LABELS[system]} | {r['viewers']} | {fmt(r['throughput_mbps'], '.0f')} "
                f"({fmt(r['expected_mbps'], '.0f')}) | {fmt(r['delay_p50_ms'], '.1f')}/{fmt(r['delay_p99_ms'], '.1f')}/"
                f"{fmt(r['delay_max_ms'], '.0f')} | {r['sustained']}/{r['healthy']} | {fmt(r['cpu_system_pct'], '.0f')} | "
                f"{fmt(r['cpu_s_per_gb'], '.2f')} | {fmt(r['cpu_load_pct'], '.0f')}+{fmt(r['cpu_feeder_pct'], '.0f')} |")
    return lines


def d_summary(system: str, steps: list[dict], limit_ms: float) -> str:
    good = [r["viewers"] for r in steps if r.get("delay_p99_ms", float("inf")) <= limit_ms
            and r.get("sustained", 0) >= r.get("healthy", 1) * 0.99]
    bad = [r["viewers"] for r in steps if r["viewers"] not in good]
    if not good:
        return f"{LABELS[system]}: p99 over {limit_ms:.0f} ms (or viewers dropped) already at {steps[0]['viewers']} viewers"
    if not bad:
        return f"{LABELS[system]}: p99 <= {limit_ms:.0f} ms up to {max(good)} viewers (the largest step tried)"
    return f"{LABELS[system]}: p99 <= {limit_ms:.0f} ms at {max(good)} viewers, crosses it by {min(bad)}"


# -- main ------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=0, help="viewers in (a)/(b) (default 1000; quick 100)")
    ap.add_argument("--bitrate", type=float, default=0, help="bit/s in (a)-(c) (default 2e6; (d) uses 5e5)")
    ap.add_argument("--fragment", type=float, default=0, help="fragment duration, s (default 1; quick 0.5)")
    ap.add_argument("--slow-share", type=float, default=None, help="share of slow viewers in (b) (default 0.05)")
    ap.add_argument("--duration", type=float, default=0, help="seconds of streaming per measurement")
    ap.add_argument("--systems", default="", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--scenario", default="all", help="a, b, c, d, all, a comma list, or custom")
    ap.add_argument("--quick", action="store_true", help="small numbers, for CI: under a minute")
    ap.add_argument("--steps", default="", help="(d): comma-separated viewer counts")
    ap.add_argument("--d-limit-ms", type=float, default=200.0)
    ap.add_argument("--load-procs", type=int, default=0, help="viewer client processes (default 1)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat (a)-(c) and print medians")
    ap.add_argument("--json", default="", help="write every result to this file")
    ap.add_argument("--relay-alt", default="", help="another relay checkout to compare, as system 'relay-alt'")
    ap.add_argument("--relay-alt-env", action="append", default=[], metavar="RELAY_X=V",
                    help="a setting for relay-alt only (repeatable); without --relay-alt, this checkout")
    ap.add_argument("--profile", default="", help="directory: py-spy the relay in each scenario (raw stacks)")
    args = ap.parse_args()
    nofile = common.raise_nofile()
    # a SIGTERM (e.g. CI's timeout) unwinds like Ctrl-C, so every child process is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] or list(SYSTEMS)
    if args.quick and not args.systems:
        systems = ["relay", "floor", "naive", "websockets"]
    if args.relay_alt or args.relay_alt_env:
        global ALT_ROOT
        ALT_ROOT = Path(args.relay_alt or ROOT).resolve()
        ALT_ENV.update(kv.split("=", 1) for kv in args.relay_alt_env)
        if "relay-alt" not in systems:
            systems.insert(systems.index("relay") + 1 if "relay" in systems else 0, "relay-alt")
    for s in systems:
        if s not in SYSTEMS + ("relay-alt", "floor-sendfile"):
            ap.error(f"unknown system {s!r}")
    skipped = {s: why for s in systems if (why := system_problem(s))}
    runnable = [s for s in systems if s not in skipped]
    scenarios = ["a", "b", "c", "d"] if args.scenario == "all" else args.scenario.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="relay-fanout-"))
    started = time.monotonic()
    print(f"# relay fan-out benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"# host: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"load average at start {os.getloadavg()[0]:.2f}, RLIMIT_NOFILE {nofile}"
          + (" (quick mode)" if args.quick else ""))
    for s, why in skipped.items():
        print(f"# {LABELS[s]}: not run: {why}")
    print()
    everything: dict = {"scenarios": {}, "skipped": skipped}
    try:
        for sc in scenarios:
            if sc == "d":
                bitrate = args.bitrate or 5e5
                print(f"## (d) viewers stepped up at {bitrate / 1e3:.0f} kbit/s until p99 > {args.d_limit_ms:.0f} ms")
                results: dict[str, list[dict]] = {}
                d_systems = [s for s in runnable if not args.quick or args.systems or s == "relay"]
                for s in d_systems:
                    results[s] = []
                    for n in steps_for_d(args):
                        log(f"(d) {s} {n} viewers")
                        q = args.quick
                        r = measure(Run(s, n, 1, bitrate, args.fragment or (0.5 if q else 1.0),
                                        args.duration or (2.5 if q else 6.0), 0.0, load_procs=args.load_procs or 1,
                                        warmup=0.5 if q else 2.0, grace=0.3 if q else 1.0, settle=0.3 if q else 1.0),
                                    workdir)
                        results[s].append(r)
                        if "error" in r or r.get("delay_p99_ms", 0) > args.d_limit_ms \
                                or r.get("sustained", 0) < r.get("healthy", 1) * 0.99:
                            break
                for line in d_table(results):
                    print(line)
                print()
                for s, steps in results.items():
                    print("- " + d_summary(s, steps, args.d_limit_ms))
                print()
                everything["scenarios"]["d"] = results
                continue
            runs = scenario_runs(sc, args, runnable)
            if not runs:
                continue
            r0 = runs[0]
            title = {"a": "(a)", "b": "(b)", "c": "(c)", "custom": "(custom)"}.get(sc, sc)
            print(f"## {title} {r0.viewers} viewers" + (f" over {r0.bots} bots" if r0.bots > 1 else "")
                  + f", {r0.bitrate / 1e6:g} Mbit/s, {r0.fragment:g} s fragments, {r0.duration:g} s"
                  + (f", {len(slow_set(r0.viewers, r0.slow_share))} slow viewers at half rate" if r0.slow_share else "")
                  + (", all recording" if r0.record else "")
                  + (f", median of {args.repeat} runs" if args.repeat > 1 else ""))
            if args.profile:
                for r in runs:
                    r.profile = str(Path(args.profile).resolve() / f"{r.system}-{sc}")
            collected: dict[str, list[dict]] = {r.system: [] for r in runs}
            for rep in range(args.repeat):
                for r in runs:
                    log(f"({sc}) {r.system}" + (f" run {rep + 1}" if args.repeat > 1 else ""))
                    collected[r.system].append(measure(r, workdir))
            results = [median_result(v) for v in collected.values()]
            floor = next((r for r in results if r["system"] == "floor"), None)
            for line in table(results, floor):
                print(line)
            if sc == "c" and "nms" in runnable:
                print("| node-media-server | n/a: would need 100 ffmpeg publishers on the same 2 cores |")
            print()
            everything["scenarios"][sc] = collected
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"# took {time.monotonic() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if args.quick:
        print("\n(quick mode: small numbers to check that everything runs; the targets need the full scenarios)")
    else:
        targets(everything)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, default=float))
    return 0


def median_result(runs: list[dict]) -> dict:
    """Field-wise median of repeated runs (numbers only; the rest from the first run)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            if values:
                out[key] = float(np.median(values))
    return out


def targets(everything: dict) -> None:
    sc = everything["scenarios"]

    def get(s: str, system: str) -> dict | None:
        runs = sc.get(s, {}).get(system)
        return median_result(runs) if runs else None

    lines = []
    a_relay, a_floor, b_relay, b_naive = get("a", "relay"), get("a", "floor"), get("b", "relay"), get("b", "naive")
    if a_relay and a_floor and "cpu_s_per_gb" in a_relay and "cpu_s_per_gb" in a_floor:
        ratio = a_relay["cpu_s_per_gb"] / a_floor["cpu_s_per_gb"]
        lines.append(f"relay CPU/GB within 1.3x of the floor in (a): {ratio:.2f}x -> {'met' if ratio <= 1.3 else 'MISSED'}")
    if b_relay and b_naive and "cpu_s_per_gb" in b_relay and "cpu_s_per_gb" in b_naive:
        ratio = b_naive["cpu_s_per_gb"] / b_relay["cpu_s_per_gb"]
        lines.append(f"relay CPU/GB at least 3x better than aiohttp naive in (b): {ratio:.2f}x -> "
                     f"{'met' if ratio >= 3 else 'MISSED'}")
    for s, r in (("a", a_relay), ("b", b_relay)):
        if r and "delay_p99_ms" in r:
            lines.append(f"healthy viewers' p99 delay < 20 ms in ({s}): {r['delay_p99_ms']:.1f} ms -> "
                         f"{'met' if r['delay_p99_ms'] < 20 else 'MISSED'}")
    if a_relay and a_relay.get("pong_p99_ms") == a_relay.get("pong_p99_ms") and "pong_p99_ms" in a_relay:
        lines.append(f"pong p99 < 5 ms under (a): {a_relay['pong_p99_ms']:.2f} ms -> "
                     f"{'met' if a_relay['pong_p99_ms'] < 5 else 'MISSED'}")
    if a_relay and "rss_per_idle_viewer_kb" in a_relay:
        kb = a_relay["rss_per_idle_viewer_kb"]
        lines.append(f"server RSS per idle viewer < 50 KB: {kb:.1f} KB -> {'met' if kb < 50 else 'MISSED'}")
    if lines:
        print("\n## targets (relay)")
        for line in lines:
            print("- " + line)


if __name__ == "__main__":
    sys.exit(main())
