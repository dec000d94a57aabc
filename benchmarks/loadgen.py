"""Viewer load generator: N raw-socket WebSocket readers in one process (uvloop, BufferedProtocol).

Every viewer's socket is read into one shared 256 KiB buffer; only frame headers and the first 24 bytes of each
message are looked at in Python (no per-byte work, no copy of payloads). For each complete message the arrival time
of its last byte (``time.monotonic_ns()``, CLOCK_MONOTONIC, the same clock the bot stamps with) is recorded with the
message's key:
- fMP4 (``--kind fmp4``): the fragment's ``mfhd`` sequence number (see common.SyntheticStream);
- FLV (``--kind flv``, node-media-server's WebSocket-FLV, one FLV tag per message): the timestamp of each H.264
  NALU video tag in ms (the RTMP message timestamp the publisher proxy records).

A "slow" viewer reads at ``--slow-rate`` bytes/s (token bucket over pause_reading/resume_reading) with a small
receive buffer (``--slow-rcvbuf``), like a client on a slow link: the backlog then sits in the server's socket and
user-space buffers, where a real slow link puts it, instead of in a 32 MiB loopback receive window; and it
advertises an Ethernet-sized MSS (``--slow-mss``), since with loopback's 64 KiB segments the server's send buffer
autotunes to 4 MiB even for a reader this slow. Measured here: with 8 KiB / 1448 the server's kernel send buffer
settles near 0.4 MB (about 3 s of a half-rate reader's deficit at 2 Mbit/s); with the defaults it holds 4 MB.

Protocol with the orchestrator: prints ``ready <ok> <failed>`` once every viewer has connected (or failed);
stops at ``stop`` on stdin (or EOF), writes ``--out`` (npz), prints ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys
import time
from array import array

import common
import numpy as np
import uvloop

BUF = bytearray(256 * 1024)
VIEW = memoryview(BUF)
monotonic_ns = time.monotonic_ns

KIND_FMP4, KIND_FLV = 0, 1

# records of complete media messages: viewer index, key, arrival of the last byte
REC_VIEWER = array("i")
REC_KEY = array("q")
REC_T = array("q")
# total bytes over time (for the throughput in a window)
TS_T = array("q")
TS_BYTES = array("q")
TOTAL = [0]


class Viewer(asyncio.BufferedProtocol):
    __slots__ = ("index", "kind", "path", "host", "transport", "handshake", "connected", "closed_by_server",
                 "lost", "need", "opcode", "hdr", "peek", "peek_need", "bytes", "messages", "slow_rate",
                 "started_ns", "paused", "loop", "done_fut", "close_code", "init_seen", "last_key", "key_count")

    def __init__(self, index: int, kind: int, host: str, path: str, slow_rate: float, loop) -> None:
        self.index = index
        self.kind = kind
        self.host = host
        self.path = path
        self.transport = None
        self.handshake = bytearray()
        self.connected = loop.create_future()
        self.closed_by_server = False
        self.lost = False
        self.need = 0  # payload bytes left in the current frame
        self.opcode = 0
        self.hdr = bytearray()  # a frame header cut by a read
        self.peek = bytearray()  # the first bytes of the current payload
        self.peek_need = 0
        self.bytes = 0
        self.messages = 0
        self.slow_rate = slow_rate
        self.started_ns = 0
        self.paused = False
        self.loop = loop
        self.close_code = None
        self.init_seen = False
        self.last_key = -1
        self.key_count = 0

    # -- connection ----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc) -> None:
        self.lost = True
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"lost during handshake: {exc}"))

    def eof_received(self):
        self.closed_by_server = True
        return False

    def get_buffer(self, sizehint: int):
        return VIEW

    def buffer_updated(self, n: int) -> None:
        self.bytes += n
        TOTAL[0] += n
        if self.handshake is not None:
            self.handshake += VIEW[:n]
            end = self.handshake.find(b"\r\n\r\n")
            if end < 0:
                if len(self.handshake) > 16384:
                    self.transport.abort()
                return
            head, rest = bytes(self.handshake[:end]), bytes(self.handshake[end + 4:])
            self.handshake = None
            if not head.startswith(b"HTTP/1.1 101"):
                self.connected.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                self.transport.abort()
                return
            self.started_ns = monotonic_ns()
            self.connected.set_result(True)
            if rest:
                self.frames(memoryview(rest), len(rest), monotonic_ns())
            return
        now = monotonic_ns()
        self.frames(VIEW, n, now)
        if self.slow_rate:
            allowed = self.slow_rate * (now - self.started_ns) / 1e9 + 65536
            if self.bytes > allowed and not self.paused:
                self.paused = True
                self.transport.pause_reading()
                self.loop.call_later((self.bytes - allowed) / self.slow_rate, self.resume)

    def resume(self) -> None:
        self.paused = False
        if not self.lost:
            self.transport.resume_reading()

    # -- frames ---------------------------------------------------------------------------------
    def frames(self, buf, n: int, now: int) -> None:
        pos = 0
        need = self.need
        while pos < n:
            if need:
                take = n - pos if need > n - pos else need
                if self.peek_need:
                    k = take if take < self.peek_need else self.peek_need
                    self.peek += buf[pos:pos + k]
                    self.peek_need -= k
                pos += take
                need -= take
                if not need:
                    self.need = 0
                    self.message(now)
                continue
            # a frame header: 2 bytes, then 2 or 8 bytes of extended length (server frames are unmasked)
            stop = pos + 10 if pos + 10 < n else n
            carried = len(self.hdr)
            if carried:
                self.hdr += buf[pos:pos + 10 - carried if pos + 10 - carried < n else n]
                h = self.hdr
            else:
                h = buf[pos:stop]
            avail = len(h)
            if avail < 2:
                if not carried:
                    self.hdr = bytearray(h)
                self.need = 0
                return
            b1 = h[1] & 0x7F
            hl = 2 if b1 < 126 else (4 if b1 == 126 else 10)
            if avail < hl:
                if not carried:
                    self.hdr = bytearray(h)
                self.need = 0
                return
            if hl == 2:
                length = b1
            elif hl == 4:
                length = (h[2] << 8) | h[3]
            else:
                length = int.from_bytes(h[2:10], "big")
            self.opcode = h[0] & 0x0F
            pos += hl - carried
            if carried:
                self.hdr = bytearray()
            self.peek = bytearray()
            self.peek_need = length if self.opcode >= 8 else (24 if length > 24 else length)
            need = length
            if not need:
                self.need = 0
                self.message(now)
        self.need = need

    def message(self, now: int) -> None:
        self.messages += 1
        op = self.opcode
        if op == 2 or op == 0:
            p = self.peek
            if self.kind == KIND_FMP4:
                if len(p) >= 24 and p[4:8] == b"moof":
                    key = int.from_bytes(p[20:24], "big")
                else:
                    self.init_seen = True
                    return
            else:
                # FLV tag: type, 3 bytes size, 3 bytes timestamp + 1 extended, 3 stream id, then the body
                if len(p) >= 13 and p[0] == 9 and p[12] == 1 and (p[11] & 0x0F) == 7:
                    key = (p[7] << 24) | (p[4] << 16) | (p[5] << 8) | p[6]
                else:
                    return
            REC_VIEWER.append(self.index)
            REC_KEY.append(key)
            REC_T.append(now)
            self.last_key = key
            self.key_count += 1
        elif op == 9:  # ping: answer with a (masked, zero-key) pong
            self.send(0xA, bytes(self.peek))
        elif op == 8:
            self.closed_by_server = True
            self.close_code = int.from_bytes(self.peek[:2], "big") if len(self.peek) >= 2 else 1005
            self.send(0x8, bytes(self.peek[:2]))
            self.transport.close()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.lost or self.transport.is_closing():
            return
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload)

    def close(self) -> None:
        if not self.lost and not self.transport.is_closing():
            self.send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()



async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True, help="path template: {bot} is replaced by the viewer's bot index")
    ap.add_argument("--first", type=int, default=0, help="index of this process's first viewer")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--bots", type=int, default=1, help="viewer i watches bot (i * bots // total)")
    ap.add_argument("--total", type=int, default=0, help="viewers over all load processes (default --count)")
    ap.add_argument("--slow", default="", help="comma-separated viewer indexes reading at --slow-rate")
    ap.add_argument("--slow-rate", type=float, default=0.0, help="bytes/s")
    ap.add_argument("--slow-rcvbuf", type=int, default=8 * 1024)
    ap.add_argument("--slow-mss", type=int, default=1448)
    ap.add_argument("--kind", choices=("fmp4", "flv"), default="fmp4")
    ap.add_argument("--parallel", type=int, default=64, help="handshakes in flight")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    common.raise_nofile()
    loop = asyncio.get_running_loop()
    total = args.total or args.count
    slow = {int(x) for x in args.slow.split(",") if x}
    kind = KIND_FMP4 if args.kind == "fmp4" else KIND_FLV
    host = f"127.0.0.1:{args.port}"
    viewers: list[Viewer] = []
    gate = asyncio.Semaphore(args.parallel)
    failed = []

    async def connect(i: int) -> None:
        bot = i * args.bots // total
        rate = args.slow_rate if i in slow else 0.0
        v = Viewer(i, kind, host, args.path.format(bot=bot), rate, loop)
        viewers.append(v)
        async with gate:
            for attempt in range(3):
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if rate:
                        # a slow link: a small receive window and Ethernet-sized segments, so the backlog sits in
                        # the server's buffers as it would behind a real slow link, not in loopback-sized ones
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.slow_rcvbuf)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, args.slow_mss)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, ("127.0.0.1", args.port))
                    await loop.create_connection(lambda: v, sock=sock)
                    await asyncio.wait_for(v.connected, 30)
                    return
                except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    if attempt == 2 or v.connected.done():
                        failed.append((i, repr(exc)))
                        return
                    v.connected = loop.create_future()
                    v.handshake = bytearray()
                    v.lost = False
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(connect(i) for i in range(args.first, args.first + args.count)))
    ok = sum(1 for v in viewers if v.connected.done() and not v.connected.exception())
    for i, why in failed[:3]:
        print(f"viewer {i} failed: {why}", file=sys.stderr)
    print(f"ready {ok} {len(failed)}", flush=True)

    stop = loop.create_future()

    def sample() -> None:
        TS_T.append(monotonic_ns())
        TS_BYTES.append(TOTAL[0])
        if not stop.done():
            loop.call_later(0.05, sample)

    sample()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line or line.strip() == b"stop":
            break
    stop.set_result(None)
    sample()
    closed = np.array([v.closed_by_server for v in viewers], bool)
    codes = np.array([v.close_code or 0 for v in viewers], np.int32)
    for v in viewers:
        v.close()
    await asyncio.sleep(0.2)
    ru = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
    np.savez(
        args.out,
        rec_viewer=np.frombuffer(REC_VIEWER, np.int32) if REC_VIEWER else np.zeros(0, np.int32),
        rec_key=np.frombuffer(REC_KEY, np.int64) if REC_KEY else np.zeros(0, np.int64),
        rec_t=np.frombuffer(REC_T, np.int64) if REC_T else np.zeros(0, np.int64),
        ts_t=np.frombuffer(TS_T, np.int64),
        ts_bytes=np.frombuffer(TS_BYTES, np.int64),
        viewer_index=np.array([v.index for v in viewers], np.int32),
        viewer_bytes=np.array([v.bytes for v in viewers], np.int64),
        viewer_ok=np.array([v.connected.done() and not v.connected.exception() for v in viewers], bool),
        viewer_closed=closed,
        viewer_code=codes,
        viewer_slow=np.array([v.slow_rate > 0 for v in viewers], bool),
        cpu=np.array([ru.ru_utime, ru.ru_stime]),
    )
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    uvloop.install()
    sys.exit(asyncio.run(main()))
