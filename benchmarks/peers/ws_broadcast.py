"""System 4: the same obvious relay on the ``websockets`` library, fanning out with its ``broadcast()``.

``broadcast()`` writes synchronously to every open connection, with no backpressure (slow viewers' messages pile up
in their write buffers) and frames the message once per connection. Served on uvloop like the relay; library
defaults otherwise (keepalive pings every 20 s, which the viewer clients answer). ``--record DIR`` as for system 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import uvloop
from websockets.asyncio.server import broadcast, serve

viewers: dict[str, set] = {}
inits: dict[str, bytes] = {}
RECORD: str | None = None


async def ingest(ws) -> None:
    bot_id = None
    buf = bytearray()
    fragment: list[bytes] = []
    record = None
    async for message in ws:
        if isinstance(message, str):
            data = json.loads(message)
            if data.get("type") == "video_stream_start":
                bot_id = data["bot_id"]
                viewers.setdefault(bot_id, set())
                if RECORD:
                    record = open(os.path.join(RECORD, f"{bot_id}.mp4"), "wb")
            elif data.get("type") == "video_latency_ping":
                await ws.send(json.dumps({"type": "video_latency_pong", "seq": data.get("seq"),
                                          "sent_at_ms": data.get("sent_at_ms"), "bot_id": data.get("bot_id"),
                                          "server_received_at_ms": int(time.time() * 1000)}))
            continue
        if record is not None:
            record.write(message)
        buf += message
        while len(buf) >= 8:
            size = int.from_bytes(buf[0:4], "big")
            if len(buf) < size:
                break
            box = bytes(buf[:size])
            del buf[:size]
            kind = box[4:8]
            if kind in (b"ftyp", b"moov"):
                inits[bot_id] = inits.get(bot_id, b"") + box if kind == b"moov" else box
                if kind == b"moov":
                    broadcast(viewers.get(bot_id, ()), inits[bot_id])
            elif kind == b"mdat":
                fragment.append(box)
                broadcast(viewers.get(bot_id, ()), b"".join(fragment))
                fragment = []
            else:
                fragment.append(box)
    if record is not None:
        record.close()


async def watch(ws, bot_id: str) -> None:
    if bot_id in inits:
        await ws.send(inits[bot_id])
    viewers.setdefault(bot_id, set()).add(ws)
    try:
        await ws.wait_closed()
    finally:
        viewers[bot_id].discard(ws)


async def handler(ws) -> None:
    path = ws.request.path
    if path.startswith("/ingest"):
        await ingest(ws)
    elif path.startswith("/ws/watch/"):
        await watch(ws, path[len("/ws/watch/"):])


async def main() -> None:
    global RECORD
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", default=None)
    args = ap.parse_args()
    RECORD = args.record
    async with serve(handler, "127.0.0.1", args.port, max_size=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    sys.exit(asyncio.run(main()))
