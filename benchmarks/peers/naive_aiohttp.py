"""System 3: the relay a user would write from the vendor's reference receiver, on aiohttp.

The receiver loop of the reference (``async for msg in ws``: answer ``video_latency_ping`` with a pong, collect the
binary chunks), plus what is needed to fan out: a naive box splitter (``bytearray``, length-prefixed boxes), the
init segment kept for late joiners, and per complete fragment ``await ws.send_bytes(fragment)`` for each viewer
in turn. Served on uvloop like the relay. With ``--record DIR`` it also writes the bot's bytes to a file
(``f.write`` in the handler, as the reference does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import uvloop
from aiohttp import WSMsgType, web

viewers: dict[str, list[web.WebSocketResponse]] = {}
inits: dict[str, bytes] = {}


async def ingest(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    bot_id = None
    buf = bytearray()
    fragment: list[bytes] = []
    record = None
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data.get("type") == "video_stream_start":
                bot_id = data["bot_id"]
                viewers.setdefault(bot_id, [])
                if request.app["record"]:
                    record = open(os.path.join(request.app["record"], f"{bot_id}.mp4"), "wb")
            elif data.get("type") == "video_latency_ping":
                await ws.send_json({"type": "video_latency_pong", "seq": data.get("seq"),
                                    "sent_at_ms": data.get("sent_at_ms"), "bot_id": data.get("bot_id"),
                                    "server_received_at_ms": int(time.time() * 1000)})
        elif msg.type == WSMsgType.BINARY:
            if record is not None:
                record.write(msg.data)
            buf += msg.data
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
                        for viewer in list(viewers.get(bot_id, [])):
                            await viewer.send_bytes(inits[bot_id])
                elif kind == b"mdat":
                    fragment.append(box)
                    data = b"".join(fragment)
                    fragment = []
                    for viewer in list(viewers.get(bot_id, [])):
                        try:
                            await viewer.send_bytes(data)
                        except ConnectionError:
                            viewers[bot_id].remove(viewer)
                else:
                    fragment.append(box)
    if record is not None:
        record.close()
    return ws


async def watch(request: web.Request) -> web.WebSocketResponse:
    bot_id = request.match_info["bot_id"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    if bot_id in inits:
        await ws.send_bytes(inits[bot_id])
    viewers.setdefault(bot_id, []).append(ws)
    try:
        async for _ in ws:
            pass
    finally:
        if ws in viewers.get(bot_id, []):
            viewers[bot_id].remove(ws)
    return ws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", default=None)
    args = ap.parse_args()
    app = web.Application()
    app["record"] = args.record
    app.router.add_get("/ingest", ingest)
    app.router.add_get("/ws/watch/{bot_id}", watch)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    sys.exit(main())
