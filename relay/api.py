"""JSON status, thumbnails, metrics and health endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import logging

from aiohttp import web

from . import keys
from .fanout import CLOSE_KICKED
from .metrics import CONTENT_TYPE
from .stream import Stream
from .thumbnails import Thumbnailer

log = logging.getLogger("relay.api")


def _find(request: web.Request) -> Stream:
    bot_id = request.match_info["bot_id"]
    stream = request.app[keys.REGISTRY].find(bot_id)
    if stream is None:
        raise web.HTTPNotFound(text=f"no stream {bot_id!r}\n")
    return stream


async def list_streams(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.REGISTRY].statuses())


async def get_stream(request: web.Request) -> web.Response:
    return web.json_response(_find(request).status())


async def thumbnail(request: web.Request) -> web.Response:
    """The latest keyframe as a JPEG, made at most every ``thumbnail_interval`` seconds and only when asked."""
    stream = _find(request)
    interval = request.app[keys.SETTINGS].thumbnail_interval
    if stream.thumbnailer is None:
        stream.thumbnailer = Thumbnailer(interval)
    has_video = stream.init is not None and stream.init.info.video_tracks
    start = stream.gop[0].fragment.data if stream.gop and has_video else None
    jpeg = await stream.thumbnailer.get(stream.init.data if has_video else None, start)
    if jpeg is None:
        raise web.HTTPNotFound(text="no keyframe to show yet\n")
    etag = hashlib.blake2b(jpeg, digest_size=8).hexdigest()
    headers = {"Cache-Control": f"max-age={max(1, int(interval))}", "ETag": f'"{etag}"'}
    if request.headers.get("If-None-Match") == f'"{etag}"':
        return web.Response(status=304, headers=headers)
    return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Ready when we can record: the recordings directory is writable and free space is above the floor."""
    storage = request.app[keys.STORAGE]
    writable = await asyncio.to_thread(storage.writable)
    space_ok = await asyncio.to_thread(storage.check_space)
    body = {"ready": writable and space_ok, "recordings_writable": writable} | storage.status()
    return web.json_response(body, status=200 if body["ready"] else 503)


async def end_stream(request: web.Request) -> web.Response:
    """Admin: end a live stream now (its bot is disconnected; viewers get the end message)."""
    stream = request.app[keys.REGISTRY].get(request.match_info["bot_id"])
    if stream is None:
        raise web.HTTPNotFound(text="no live stream by that id\n")
    log.warning("stream ended by an admin bot_id=%s peer=%s", stream.bot_id, request.remote)
    if stream.owner is not None:
        await stream.owner.end_by_admin()
    request.app[keys.REGISTRY].close(stream)
    return web.json_response({"ended": stream.bot_id})


async def kick_viewer(request: web.Request) -> web.Response:
    """Admin: disconnect one viewer (its id is in the stream's ``viewer_list``)."""
    try:
        viewer = request.app[keys.VIEWERS][int(request.match_info["viewer_id"])]
    except (KeyError, ValueError):
        raise web.HTTPNotFound(text="no such viewer\n") from None
    log.warning("viewer kicked by an admin bot_id=%s viewer=%d peer=%s", viewer.bot_id, viewer.id, viewer.peer)
    viewer.close(CLOSE_KICKED, "disconnected by an admin")
    return web.json_response({"kicked": viewer.id})
