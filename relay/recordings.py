"""Recordings on disk: listing, download (HTTP Range), byte-range HLS for seeking, and deletion.

Every path comes from a validated bot id and a file name matched against what is really in that folder,
so no request can name a file outside the recordings directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from . import hls, keys
from .ids import bot_id_problem

log = logging.getLogger("relay.recordings")

_NAME = re.compile(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ(-\d+)?")


def recording_path(root: Path, bot_id: str, name: str) -> Path:
    """The recording ``name`` (without extension) of ``bot_id``; 404 for anything malformed or missing."""
    if bot_id_problem(bot_id) or not _NAME.fullmatch(name):
        raise web.HTTPNotFound(text="no such recording\n")
    path = root / bot_id / f"{name}.mp4"
    if not path.is_file():
        raise web.HTTPNotFound(text="no such recording\n")
    return path


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def describe(path: Path, sidecar: dict[str, Any]) -> dict[str, Any]:
    inits = sidecar.get("inits") or [{}]
    fragments = sidecar.get("fragments") or []
    bot_id, name = path.parent.name, path.stem
    return {
        "bot_id": bot_id,
        "name": name,
        "started_at": sidecar.get("started_at"),
        "ended_at": sidecar.get("ended_at"),
        "duration": round(sum(f["duration"] for f in fragments), 3),
        "size": path.stat().st_size,
        "mime": inits[0].get("mime"),
        "error": sidecar.get("error"),
        "download": f"/recordings/{bot_id}/{name}.mp4",
        "playlist": f"/recordings/{bot_id}/{name}.m3u8",
        "play": f"/recordings/{bot_id}/{name}",
    }


def list_recordings(root: Path, limit: int = 500) -> list[dict[str, Any]]:
    """Newest first. Blocking: call it in a thread."""
    if not root.is_dir():
        return []
    files = [p for p in root.glob("*/*.mp4") if _NAME.fullmatch(p.stem)]
    files.sort(key=lambda p: p.stem, reverse=True)
    out = []
    for path in files[:limit]:
        try:
            out.append(describe(path, read_sidecar(path)))
        except OSError:
            continue  # deleted while we looked
    return out


def _root(request: web.Request) -> Path:
    return Path(request.app[keys.SETTINGS].recordings)


def _live_recording(request: web.Request, path: Path) -> Any:
    """The Recording still being written to ``path``, if any."""
    return request.app[keys.REGISTRY].live_recordings().get(path)


async def api_list(request: web.Request) -> web.Response:
    return web.json_response({"recordings": await asyncio.to_thread(list_recordings, _root(request))})


async def download(request: web.Request) -> web.StreamResponse:
    """The file, with HTTP Range. A file still growing must not be cached: browsers would clip later
    ranges to the length they saw first."""
    path = recording_path(_root(request), request.match_info["bot_id"], request.match_info["name"])
    growing = _live_recording(request, path) is not None
    return web.FileResponse(path, headers={"Content-Type": "video/mp4",
                                           "Cache-Control": "no-store" if growing else "no-cache"})


async def playlist(request: web.Request) -> web.Response:
    path = recording_path(_root(request), request.match_info["bot_id"], request.match_info["name"])
    live = _live_recording(request, path)
    if live is not None:
        inits, fragments, finished = live.on_disk(live.inits), live.on_disk(live.fragments), False
    else:
        sidecar = await asyncio.to_thread(read_sidecar, path)
        inits, fragments, finished = sidecar.get("inits", []), sidecar.get("fragments", []), True
    text = hls.playlist(path.name, inits, fragments, finished)
    return web.Response(text=text, content_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"})


async def delete(request: web.Request) -> web.Response:
    path = recording_path(_root(request), request.match_info["bot_id"], request.match_info["name"])
    if _live_recording(request, path) is not None:
        raise web.HTTPConflict(text="the recording is still being written\n")
    await asyncio.to_thread(_unlink, path)
    log.info("recording deleted path=%s peer=%s", path, request.remote)
    return web.json_response({"deleted": path.name})


def _unlink(path: Path) -> None:
    for victim in (path, path.with_suffix(".json"), path.with_suffix(".remux.mp4")):
        victim.unlink(missing_ok=True)
