"""The fake bots that feed a system under test, in one process.

WebSocket systems (``--mode ws``): ``--bots`` simulator bots (``relay.simulate.Bot``: the vendor's start message,
media cut into log-uniform random chunks of 1 B..64 KiB that ignore box boundaries, pings with the vendor's
``video_latency_ping``) each stream ``common.SyntheticStream`` paced in real time: fragment i is handed to the
socket at T0 + phase + i * fragment. After the write of its last chunk returns (the bytes are in the kernel), the
bot stamps ``time.monotonic_ns()``: the fragment's send time. Bot b's phase is b/bots of a fragment, so 100 bots
do not all send at the same instant. Pings go every ``--ping-interval`` s; the pong turnaround is measured with
``monotonic_ns`` on the bot's side (ping written -> pong read).

node-media-server (``--mode rtmp``): ffmpeg publishes a pre-encoded FLV clip over RTMP with ``-re -c copy`` through
a pass-through TCP proxy in this process; the proxy parses the RTMP chunk stream (headers only) and stamps, for each
H.264 NALU video message, the time its last byte was written to the server: that message's send time, keyed by its
RTMP timestamp (ms), which is the FLV tag timestamp the viewers see.

Prints ``started <T0 ns>`` when media starts flowing and ``done`` at the end; writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import time

import common
import uvloop

monotonic_ns = time.monotonic_ns


_STDIN: asyncio.StreamReader | None = None


async def wait_for(word: str) -> None:
    """Until the orchestrator writes ``word`` on our stdin (or closes it)."""
    global _STDIN
    if _STDIN is None:
        loop = asyncio.get_running_loop()
        _STDIN = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(_STDIN), sys.stdin)
    while True:
        line = await _STDIN.readline()
        if not line or line.strip() == word.encode():
            return


async def wait_stop() -> None:
    await wait_for("stop")


async def ws_mode(args) -> dict:
    import aiohttp
    from relay.simulate import Bot

    class BenchBot(Bot):
        """The simulator's bot, with the ping turnaround timed in monotonic ns."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.ping_sent: dict[int, int] = {}
            self.turnaround: list[tuple[int, int]] = []  # (sent at, rtt) ns

        async def ping(self, seq: int) -> None:
            self.ping_sent[seq] = monotonic_ns()
            await super().ping(seq)

        def _check_pong(self, pong) -> None:
            if pong.get("type") == "video_latency_pong":
                sent = self.ping_sent.pop(pong.get("seq"), None)
                if sent is not None:
                    self.turnaround.append((sent, monotonic_ns() - sent))
            super()._check_pong(pong)

    stream = common.SyntheticStream(args.bitrate, args.fragment)
    print("prepared", flush=True)
    await wait_for("go")
    frag_ns = int(args.fragment * 1e9)
    count = max(1, round(args.duration / args.fragment))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    bots = []
    for b in range(args.bots):
        bot = BenchBot(f"ws://127.0.0.1:{args.port}/ingest", f"{args.prefix}{b}", ping_interval=args.ping_interval,
                       seed=b, session=session)
        await bot.__aenter__()
        bots.append(bot)
    for bot in bots:
        await bot.start(stream.info, float(stream.fps))
        await bot.send(stream.init)
    t0 = monotonic_ns() + 300_000_000
    print(f"started {t0}", flush=True)
    sends: list[list] = [[] for _ in bots]

    async def run(b: int, bot) -> None:
        phase = b * frag_ns // len(bots)
        for i in range(count):
            due = t0 + phase + i * frag_ns
            delay = (due - monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            data = stream.fragment(i)
            started = monotonic_ns()
            await bot.send(data)
            sends[b].append((i + 1, due, started, monotonic_ns()))

    results = await asyncio.gather(*(run(b, bot) for b, bot in enumerate(bots)), return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print("sent", flush=True)
    await wait_stop()  # the stream stays open (no end message) until the viewers' results are in
    for bot in bots:
        try:
            await asyncio.wait_for(bot.end(args.duration), 2)
        except Exception:
            pass
    await asyncio.gather(*(asyncio.wait_for(bot.close(), 5) for bot in bots), return_exceptions=True)
    await session.close()
    return {
        "t0": t0,
        "fragment_bytes": stream.target,
        "sends": sends,
        "pongs": [bot.turnaround for bot in bots],
        "pings": [bot.report.pings for bot in bots],
        "errors": errors,
    }


# -- RTMP (node-media-server) ------------------------------------------------------------------------
class RtmpParser:
    """Client-to-server RTMP chunk stream, headers only: yields (type, timestamp, first bytes) per complete message."""

    def __init__(self) -> None:
        self.handshake = 1 + 1536 + 1536  # C0 + C1 + C2
        self.chunk_size = 128
        self.buf = bytearray()
        self.streams: dict[int, dict] = {}

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        out = []
        buf = self.buf
        buf += data
        pos = 0
        if self.handshake:
            k = min(self.handshake, len(buf))
            self.handshake -= k
            pos = k
        while True:
            start = pos
            if len(buf) - pos < 1:
                break
            b0 = buf[pos]
            fmt, csid = b0 >> 6, b0 & 0x3F
            p = pos + 1
            if csid == 0:
                if len(buf) - p < 1:
                    break
                csid = 64 + buf[p]
                p += 1
            elif csid == 1:
                if len(buf) - p < 2:
                    break
                csid = 64 + buf[p] + 256 * buf[p + 1]
                p += 2
            st = self.streams.setdefault(csid, {"abs": 0, "delta": 0, "len": 0, "type": 0, "left": 0,
                                                "ext": False, "head": b""})
            hsize = (11, 7, 3, 0)[fmt]
            if len(buf) - p < hsize:
                break
            h = buf[p:p + hsize]
            p += hsize
            ts_field = int.from_bytes(h[0:3], "big") if fmt <= 2 else None
            ext = ts_field == 0xFFFFFF if ts_field is not None else st["ext"]
            ext_ts = 0
            if ext:
                if len(buf) - p < 4:
                    break
                ext_ts = int.from_bytes(buf[p:p + 4], "big")
                p += 4
            new_message = st["left"] == 0
            length, kind, abs_ts, delta = st["len"], st["type"], st["abs"], st["delta"]
            if fmt == 0:
                length, kind = int.from_bytes(h[3:6], "big"), h[6]
                abs_ts, delta = (ext_ts if ext else ts_field), 0
            elif fmt in (1, 2):
                delta = ext_ts if ext else ts_field
                if fmt == 1:
                    length, kind = int.from_bytes(h[3:6], "big"), h[6]
                abs_ts += delta
            elif new_message:
                abs_ts += delta
            left = length if new_message else st["left"]
            take = min(self.chunk_size, left)
            if len(buf) - p < take:
                break  # the whole chunk is parsed again when its payload is here
            st["len"], st["type"], st["abs"], st["delta"], st["ext"] = length, kind, abs_ts, delta, ext
            if new_message:
                st["head"] = b""
            if len(st["head"]) < 16:
                st["head"] += bytes(buf[p:p + min(take, 16 - len(st["head"]))])
            if kind == 1 and new_message and take >= 4:
                self.chunk_size = int.from_bytes(buf[p:p + 4], "big") & 0x7FFFFFFF
            p += take
            st["left"] = left - take
            pos = p
            if st["left"] == 0:
                out.append((kind, abs_ts, st["head"]))
        del buf[:pos]
        return out


async def rtmp_mode(args) -> dict:
    loop = asyncio.get_running_loop()
    sends: list[tuple[int, int]] = []
    first = loop.create_future()
    done = loop.create_future()

    class Upstream(asyncio.Protocol):
        def __init__(self, downstream):
            self.down = downstream

        def data_received(self, data):
            self.down.write(data)

        def connection_lost(self, exc):
            self.down.close()

    class Proxy(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = RtmpParser()
            self.up = None
            self.pending = []
            loop.create_task(self.open())

        async def open(self):
            self.up, _ = await loop.create_connection(lambda: Upstream(self.transport), "127.0.0.1", args.rtmp_port)
            for data in self.pending:
                self.forward(data)

        def data_received(self, data):
            if self.up is None:
                self.pending.append(data)
            else:
                self.forward(data)

        def forward(self, data):
            self.up.write(data)
            now = monotonic_ns()
            for kind, ts, head in self.parser.feed(data):
                if kind == 9 and len(head) >= 2 and head[0] & 0x0F == 7 and head[1] == 1:
                    sends.append((ts, now))
                    if not first.done():
                        first.set_result(now)

        def connection_lost(self, exc):
            if self.up is not None:
                self.up.close()
            if not done.done():
                done.set_result(None)

    print("prepared", flush=True)
    await wait_for("go")
    server = await loop.create_server(Proxy, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", args.clip,
         "-t", str(args.duration), "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{proxy_port}/live/{args.prefix}0"],
        stdin=subprocess.DEVNULL,
    )
    t0 = await asyncio.wait_for(first, 30)
    print(f"started {t0}", flush=True)
    while ffmpeg.poll() is None:
        await asyncio.sleep(0.05)
    print("sent", flush=True)
    await wait_stop()
    server.close()
    return {"t0": t0, "flv_sends": sends, "ffmpeg_rc": ffmpeg.returncode, "errors": []}


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("ws", "rtmp"), default="ws")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rtmp-port", type=int, default=0)
    ap.add_argument("--clip", default="")
    ap.add_argument("--bots", type=int, default=1)
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--bitrate", type=float, default=2e6)
    ap.add_argument("--fragment", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--ping-interval", type=float, default=0.1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    common.raise_nofile()
    result = await (ws_mode(args) if args.mode == "ws" else rtmp_mode(args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    uvloop.install()
    sys.exit(asyncio.run(main()))
