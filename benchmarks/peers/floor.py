"""System 2, the floor: the least a Python process can do to fan fragments out.

One asyncio Protocol on uvloop, no framework. It does the WebSocket handshake itself, reads the bot's masked frames
(unmasking with aiohttp's C helper), answers the bot's pings, finds fragment boundaries from the top-level box
headers (a fragment ends with its ``mdat``), frames each fragment once and writes the same bytes to every viewer's
transport. No flow control, no GOP cache, no skipping, no logging, no metrics. With ``--record DIR`` it also appends
the bot's bytes to a file with a plain blocking write (scenario c).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys

import uvloop
from aiohttp._websocket.helpers import websocket_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


class Stream:
    def __init__(self) -> None:
        self.viewers: set = set()
        self.init: bytes | None = None


STREAMS: dict[str, Stream] = {}
RECORD_DIR: str | None = None


def stream(bot_id: str) -> Stream:
    s = STREAMS.get(bot_id)
    if s is None:
        s = STREAMS[bot_id] = Stream()
    return s


SENDFILE = False


def sendfile_all(viewers, data: bytes) -> None:
    """Experiment (``--sendfile``): the frame goes into a fresh memfd once, and each viewer socket whose transport
    has nothing queued gets it with sendfile(2): the kernel attaches the memfd's pages to the socket instead of
    copying the bytes. What sendfile cannot take (a full socket buffer) is queued on the transport as usual. A new
    memfd per fragment: pages handed to sockets must not change while they are in flight."""
    fd = os.memfd_create("fragment")
    try:
        os.write(fd, data)
        view = memoryview(data)
        size = len(data)
        for t in viewers:
            if t.get_write_buffer_size() or t.is_closing():
                t.write(data)
                continue
            try:
                sent = os.sendfile(t.get_extra_info("socket").fileno(), fd, 0, size)
            except BlockingIOError:
                sent = 0
            except OSError:
                continue
            if sent < size:
                t.write(view[sent:])
    finally:
        os.close(fd)


class Conn(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.t = transport
        self.buf = bytearray()
        self.mode = "http"
        self.stream: Stream | None = None
        # ingest state
        self.media = bytearray()  # bytes since the last fragment boundary
        self.scan = 0  # offset in self.media of the next box header
        self.record = None

    def data_received(self, data: bytes) -> None:
        if self.mode == "ingest":
            self.buf += data
            self.ingest_frames()
        elif self.mode == "viewer":
            if b"\x88" in data[:1]:  # a close frame from the viewer
                self.t.close()
        else:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                self.upgrade(bytes(self.buf[:end]))
                del self.buf[: end + 4]
                if self.mode == "ingest" and self.buf:
                    self.ingest_frames()

    def upgrade(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        key = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("sec-websocket-key:")), "")
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        self.t.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        if path.startswith("/ingest"):
            self.mode = "ingest"
        elif path.startswith("/ws/watch/"):
            self.mode = "viewer"
            self.stream = stream(path[len("/ws/watch/"):])
            self.stream.viewers.add(self.t)
            if self.stream.init is not None:
                self.t.write(frame(b'{"type":"init"}', 1))
                self.t.write(frame(self.stream.init))
        else:
            self.t.close()

    def connection_lost(self, exc) -> None:
        if self.mode == "viewer" and self.stream is not None:
            self.stream.viewers.discard(self.t)
        if self.record is not None:
            self.record.close()

    # -- ingest: the bot's masked frames -------------------------------------------------------------
    def ingest_frames(self) -> None:
        buf = self.buf
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            p = pos + 2
            if length == 126:
                if len(buf) - p < 2:
                    break
                length = int.from_bytes(buf[p:p + 2], "big")
                p += 2
            elif length == 127:
                if len(buf) - p < 8:
                    break
                length = int.from_bytes(buf[p:p + 8], "big")
                p += 8
            masked = b1 & 0x80
            if masked:
                if len(buf) - p < 4:
                    break
                mask = bytes(buf[p:p + 4])
                p += 4
            if len(buf) - p < length:
                break
            payload = bytearray(buf[p:p + length])
            if masked:
                websocket_mask(mask, payload)
            pos = p + length
            self.on_frame(b0 & 0x0F, payload)
        del buf[:pos]

    def on_frame(self, opcode: int, payload: bytearray) -> None:
        if opcode == 2:
            if self.record is not None:
                self.record.write(payload)
            self.on_media(payload)
        elif opcode == 1:
            msg = json.loads(payload)
            if msg.get("type") == "video_latency_ping":
                reply = {"type": "video_latency_pong", "seq": msg.get("seq"), "sent_at_ms": msg.get("sent_at_ms"),
                         "bot_id": msg.get("bot_id"), "server_received_at_ms": 0}
                self.t.write(frame(json.dumps(reply).encode(), 1))
            elif msg.get("type") == "video_stream_start":
                self.stream = stream(msg["bot_id"])
                if RECORD_DIR:
                    self.record = open(os.path.join(RECORD_DIR, f"{msg['bot_id']}.mp4"), "wb", buffering=0)
        elif opcode == 8:
            self.t.write(frame(bytes(payload[:2]), 8))
            self.t.close()
        elif opcode == 9:
            self.t.write(frame(bytes(payload), 10))

    def on_media(self, data: bytearray) -> None:
        media = self.media
        media += data
        while len(media) - self.scan >= 8:
            size, kind = struct.unpack_from(">I4s", media, self.scan)
            end = self.scan + size
            if len(media) < end:
                break
            if kind == b"mdat":
                fragment = frame(bytes(media[:end]))
                if SENDFILE:
                    sendfile_all(self.stream.viewers, fragment)
                else:
                    for t in self.stream.viewers:
                        t.write(fragment)
            elif kind == b"moov":
                self.stream.init = bytes(media[:end])
                head, init = frame(b'{"type":"init"}', 1), frame(self.stream.init)
                for t in self.stream.viewers:
                    t.write(head)
                    t.write(init)
            else:
                self.scan = end
                continue
            del media[:end]
            self.scan = 0


async def main() -> None:
    global RECORD_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", default=None)
    ap.add_argument("--sendfile", action="store_true", help="experiment: zero-copy sendfile from a memfd")
    args = ap.parse_args()
    RECORD_DIR = args.record
    global SENDFILE
    SENDFILE = args.sendfile
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", args.port, backlog=4096)
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    sys.exit(asyncio.run(main()))
