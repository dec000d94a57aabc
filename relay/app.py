"""The aiohttp application: routes, shared state, and an orderly shutdown."""

from __future__ import annotations

import logging

from aiohttp import WSCloseCode, web

from . import keys
from .background import Background
from .config import Settings
from .fanout import handle_viewer
from .ingest import handle_ingest
from .stream import Registry

log = logging.getLogger("relay")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def list_streams(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    return web.json_response({
        "streams": [s.status() for s in registry.streams.values()],
        "ended": [s.status() for s in registry.ended],
    })


async def get_stream(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    bot_id = request.match_info["bot_id"]
    stream = registry.get(bot_id) or next((s for s in registry.ended if s.bot_id == bot_id), None)
    if stream is None:
        raise web.HTTPNotFound(text=f"no stream {bot_id!r}\n")
    return web.json_response(stream.status())


async def _close_ingests(app: web.Application) -> None:
    """Tell every bot we are going away; their sessions then finalize recordings before exit."""
    sessions = list(app[keys.INGEST_SESSIONS])
    if sessions:
        log.info("shutting down: closing %d ingest connection(s)", len(sessions))
    for session in sessions:
        session.close_reason = "server shutdown"
        await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


async def _drain(app: web.Application) -> None:
    await app[keys.BACKGROUND].drain()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[keys.SETTINGS] = settings
    app[keys.REGISTRY] = Registry(settings)
    app[keys.BACKGROUND] = Background()
    app[keys.INGEST_SESSIONS] = set()
    app.router.add_get("/ingest", handle_ingest)
    app.router.add_get("/ingest/{token}", handle_ingest)
    app.router.add_get("/ws/watch/{bot_id}", handle_viewer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/{bot_id}", get_stream)
    app.on_shutdown.append(_close_ingests)
    app.on_cleanup.append(_drain)
    return app
