"""Viewer WebSockets: the init, the cached GOP, then live fragments, to any number of browsers.

The ingest hands each fragment to every viewer synchronously and never waits for one: a viewer
writes the shared pre-built frame straight into its socket's transport. Its unsent bytes are the
transport's write buffer, so memory per viewer is bounded by ``viewer_queue_bytes``. A viewer over
that bound skips whole fragments until the next keyframe fragment (its picture never breaks), and
one that stays behind for ``viewer_max_behind`` seconds is disconnected with a reason.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from . import keys
from .ids import bot_id_problem
from .limits import refuse_request
from .media import InitSegment
from .stream import Stream
from .wire import WireFragment, frame, text_frame

log = logging.getLogger("relay.fanout")

CLOSE_UNKNOWN_STREAM = 4404
CLOSE_TOO_SLOW = 4408
CLOSE_KICKED = 4403
_CLIENT_STATS = ("latency", "buffered", "dropped", "decoded", "reconnects", "width", "height")
_CLOSE_TIMEOUT = 2.0
_DISCONNECT_REASONS = {1000: "stream_ended", 1001: "shutdown", CLOSE_UNKNOWN_STREAM: "unknown_stream",
                       CLOSE_TOO_SLOW: "too_slow", CLOSE_KICKED: "kicked"}


class Viewer:
    _ids = itertools.count(1)

    def __init__(self, app: web.Application, ws: web.WebSocketResponse, transport: Any, bot_id: str, peer: str) -> None:
        self.id = next(self._ids)
        self.app = app
        self.ws = ws
        self.transport = transport
        self.bot_id = bot_id
        self.peer = peer
        self.settings = app[keys.SETTINGS]
        self.stream: Stream | None = None
        self.connected_at = time.time()
        self.need_keyframe = True
        self.behind_since: float | None = None
        self._behind_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.bytes_sent = 0
        self.fragments_sent = 0
        self.skipped = 0
        self.client: dict[str, Any] = {}

    # -- writes: whole frames, straight to the transport ----------------------------------------
    def write(self, data: bytes) -> None:
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        self.bytes_sent += len(data)

    def send_json(self, message: dict[str, Any]) -> None:
        self.write(text_frame(json.dumps(message)))

    # -- Consumer --------------------------------------------------------------------------------
    def on_init(self, init: InitSegment) -> None:
        described = init.info.describe()
        meta = self.stream.meta if self.stream else {}
        self.send_json({"type": "init", "mime": init.mime, "bot_id": self.bot_id,
                        "tracks": described["tracks"], "meta": meta})
        self.write(frame(init.data))
        self.need_keyframe = True

    def on_fragment(self, item: WireFragment) -> None:
        if self.closing:
            return
        if self.need_keyframe and not item.random_access:
            if self.behind_since is not None:
                self.skipped += 1
                self._check_behind()
            return
        data = item.frame
        unsent = self.transport.get_write_buffer_size()
        if unsent and unsent + len(data) > self.settings.viewer_queue_bytes:
            self.skipped += 1
            self.need_keyframe = True
            if self.behind_since is None:
                self._fell_behind(unsent)
            self._check_behind()
            return
        if self.behind_since is not None:
            self._caught_up()
        self.need_keyframe = False
        self.write(data)
        self.fragments_sent += 1

    def on_waiting(self, reason: str) -> None:
        self.send_json({"type": "waiting", "reason": reason})

    def on_end(self) -> None:
        self.send_json({"type": "end"})
        self.close(1000, "stream ended")

    def _fell_behind(self, unsent: int) -> None:
        log.info("viewer behind bot_id=%s peer=%s unsent=%d: skipping to the next keyframe",
                 self.bot_id, self.peer, unsent)
        self.behind_since = time.monotonic()
        loop = asyncio.get_running_loop()
        self._behind_timer = loop.call_later(self.settings.viewer_max_behind, self._behind_deadline)

    def _caught_up(self) -> None:
        log.info("viewer caught up bot_id=%s peer=%s after %.1fs skipped=%d", self.bot_id, self.peer,
                 time.monotonic() - self.behind_since, self.skipped)
        self.behind_since = None
        if self._behind_timer is not None:
            self._behind_timer.cancel()
            self._behind_timer = None

    def _behind_deadline(self) -> None:
        """Still behind when the deadline passes? A socket that drained is just waiting for a keyframe."""
        self._behind_timer = None
        if self.behind_since is None or self.closing:
            return
        if self.transport.get_write_buffer_size() == 0:
            self._caught_up()
        else:
            self._check_behind()

    def _check_behind(self) -> None:
        behind = time.monotonic() - self.behind_since
        if behind >= self.settings.viewer_max_behind:
            self.close(CLOSE_TOO_SLOW, f"too far behind the live stream for {behind:.0f}s")

    def close(self, code: int, reason: str) -> None:
        """Close in the background; a socket too clogged to take the close frame is aborted."""
        if self.closing:
            return
        log.info("viewer closing bot_id=%s peer=%s code=%d reason=%r", self.bot_id, self.peer, code, reason)
        self.app[keys.BACKGROUND].spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:123]), _CLOSE_TIMEOUT)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()
        finally:
            self.closing = True

    def join(self, stream: Stream) -> None:
        self.stream = stream
        stream.attach(self)

    def give_up(self, waited: float) -> None:
        if self.stream is None:
            self.close(CLOSE_UNKNOWN_STREAM, f"no stream {self.bot_id!r} appeared within {waited:.0f}s")

    def left(self) -> None:
        """The socket is gone: stop writing, stop timers, leave the stream."""
        self.closing = True
        if self._behind_timer is not None:
            self._behind_timer.cancel()
        if self.stream is not None:
            self.stream.detach(self)

    # -- what the browser tells us ----------------------------------------------------------------
    def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            return
        if isinstance(message, dict) and message.get("type") == "stats":
            self.client = {k: message[k] for k in _CLIENT_STATS if isinstance(message.get(k), (int, float))}
            self.client["at"] = time.time()

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "connected_for": round(time.time() - self.connected_at, 1),
            "bytes_sent": self.bytes_sent,
            "fragments_sent": self.fragments_sent,
            "skipped": self.skipped,
            "unsent": self.transport.get_write_buffer_size() if self.transport else 0,
            "client": self.client,
        }


def _check_limits(request: web.Request, bot_id: str) -> None:
    settings = request.app[keys.SETTINGS]
    if len(request.app[keys.VIEWERS]) >= settings.max_viewers:
        refuse_request(request, web.HTTPServiceUnavailable, f"too many viewers (max_viewers={settings.max_viewers})",
                       "max_viewers")
    stream = request.app[keys.REGISTRY].get(bot_id)
    if stream is not None and len(stream.consumers) >= settings.max_viewers_per_stream:
        refuse_request(request, web.HTTPServiceUnavailable, "too many viewers of this stream "
                       f"(max_viewers_per_stream={settings.max_viewers_per_stream})", "max_viewers_per_stream")


async def handle_viewer(request: web.Request) -> web.StreamResponse:
    bot_id = request.match_info["bot_id"]
    peer = request.remote or "?"
    _check_limits(request, bot_id)
    clients = request.app[keys.CLIENTS]
    if not clients.acquire(peer):
        refuse_request(request, web.HTTPTooManyRequests, "too many connections from this address", "max_connections_per_client")
    try:
        return await _serve_viewer(request, bot_id, peer)
    finally:
        clients.release(peer)


async def _serve_viewer(request: web.Request, bot_id: str, peer: str) -> web.StreamResponse:
    heartbeat = request.app[keys.SETTINGS].viewer_heartbeat
    ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 16, heartbeat=heartbeat or None)
    await ws.prepare(request)
    problem = bot_id_problem(bot_id)
    if problem:
        await ws.close(code=1008, message=problem.encode()[:123])
        return ws
    viewer = Viewer(request.app, ws, request.transport, bot_id, peer)
    viewers = request.app[keys.VIEWERS]
    viewers[viewer.id] = viewer
    registry = request.app[keys.REGISTRY]
    stream = registry.get(bot_id)
    unwatch, timer = None, None
    log.info("viewer connected bot_id=%s peer=%s", bot_id, peer)
    metrics = request.app[keys.METRICS]
    metrics.viewers_total.inc()
    if stream is not None:
        viewer.join(stream)
    else:
        viewer.send_json({"type": "waiting", "reason": "the stream has not started yet"})
        unwatch = registry.watch(bot_id, viewer.join)
        timeout = viewer.settings.viewer_wait_timeout
        timer = asyncio.get_running_loop().call_later(timeout, viewer.give_up, timeout)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                viewer.on_text(msg.data)
    finally:
        viewers.pop(viewer.id, None)
        if unwatch is not None:
            unwatch()
            timer.cancel()
        viewer.left()
        metrics.viewer_left(viewer, _DISCONNECT_REASONS.get(ws.close_code, "client"))
        log.info("viewer left bot_id=%s peer=%s fragments=%d bytes=%d skipped=%d close_code=%s",
                 bot_id, peer, viewer.fragments_sent, viewer.bytes_sent, viewer.skipped, ws.close_code)
    return ws
