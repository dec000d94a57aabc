"""The MeetStream side: one WebSocket connection carries one bot's session.

Messages are handled strictly in arrival order, so bytes reach the recorder and the parser in the
order the bot sent them. A ping is answered as soon as it is read; nothing is queued ahead of it
but the media that arrived before it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from . import keys
from .ids import bot_id_problem, connection_name
from .limits import RateLimit, refuse_request
from .media import Fragment, FragmentAssembler, InitSegment, MediaError
from .recorder import Recording
from .remux import remux
from .stream import ENDED, Stream

log = logging.getLogger("relay.ingest")

# WebSocket close codes (RFC 6455)
INVALID_DATA = 1007
POLICY = 1008
INTERNAL_ERROR = 1011


def token_ok(request: web.Request, token: str) -> bool:
    """Constant-time check of ``?token=`` or ``/ingest/<token>`` (the bot's URL is all we control)."""
    given = request.match_info.get("token") or request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def handle_ingest(request: web.Request) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    peer = request.remote or "?"
    metrics = request.app[keys.METRICS]
    if settings.ingest_token and not token_ok(request, settings.ingest_token):
        refuse_request(request, web.HTTPUnauthorized, "invalid or missing ingest token", "ingest_token")
    if len(request.app[keys.INGEST_SESSIONS]) >= settings.max_ingest_connections:
        refuse_request(request, web.HTTPServiceUnavailable,
                       f"too many ingest connections (max_ingest_connections={settings.max_ingest_connections})",
                       "max_ingest_connections")
    clients = request.app[keys.CLIENTS]
    if not clients.acquire(peer):
        refuse_request(request, web.HTTPTooManyRequests, "too many connections from this address "
                       f"(max_connections_per_client={settings.max_connections_per_client})", "max_connections_per_client")
    try:
        ws = web.WebSocketResponse(max_msg_size=settings.max_frame_size, autoping=True,
                                   receive_timeout=settings.ingest_idle_timeout)
        await ws.prepare(request)
        session = IngestSession(request.app, ws, peer)
        request.app[keys.INGEST_SESSIONS].add(session)
        metrics.ingest_connections.inc()
        metrics.ingest_open.inc()
        log.info("ingest connected peer=%s", peer)
        await session.run()  # the session leaves INGEST_SESSIONS once its outputs are finalized
    finally:
        clients.release(peer)
    return ws


def _delay_ms(sent: Any, received_ms: float) -> float | None:
    """The ping's one-way delay, or None for a ``sent_at_ms`` that is not a finite number (JSON allows 1e400)."""
    if isinstance(sent, bool) or not isinstance(sent, (int, float)):
        return None
    try:
        delay = received_ms - float(sent)
    except OverflowError:
        return None
    return delay if math.isfinite(delay) else None


class IngestSession:
    def __init__(self, app: web.Application, ws: web.WebSocketResponse, peer: str) -> None:
        self.app = app
        self.ws = ws
        self.peer = peer
        self.settings = app[keys.SETTINGS]
        self.registry = app[keys.REGISTRY]
        self.metrics = app[keys.METRICS]
        self.stream: Stream | None = None
        self.recording: Recording | None = None
        self.assembler: FragmentAssembler | None = None
        self.prestart: list[bytes] = []
        self.rate = RateLimit(self.settings.max_ingest_rate)
        self.fragment_rate = RateLimit(self.settings.max_fragment_rate)
        self.prestart_bytes = 0
        self.close_reason = "disconnected"

    @property
    def bot_id(self) -> str | None:
        return self.stream.bot_id if self.stream else None

    @property
    def owns_stream(self) -> bool:
        return self.stream is not None and self.stream.owner is self

    async def run(self) -> None:
        try:
            await self.read()
        except TimeoutError:
            await self.refuse(POLICY, f"nothing received for {self.settings.ingest_idle_timeout:g}s", "idle_timeout")
        finally:
            # In a task of its own, shielded: when the handler is cancelled (aiohttp does that when the
            # client's connection drops if handler_cancellation is on, as in its TestServer, and at the
            # end of a shutdown's grace period) the recording is still written out and the stream
            # still finalized, instead of the cancellation cutting through the recorder's writer task.
            finishing = self.app[keys.BACKGROUND].spawn(self.finish())
            finishing.add_done_callback(lambda _: self.app[keys.INGEST_SESSIONS].discard(self))
            await asyncio.shield(finishing)

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                await self.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.on_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                self.close_reason = f"connection error: {self.ws.exception()}"
                log.warning("ingest error peer=%s bot_id=%s error=%s", self.peer, self.bot_id, self.ws.exception())
                self.metrics.refused.labels("frame_error").inc()
                if self.stream is not None:
                    self.stream.errors.append(self.close_reason)

    # -- text ---------------------------------------------------------------------------------
    async def on_text(self, text: str) -> None:
        received_ms = time.time() * 1000
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return await self.refuse(INVALID_DATA, "text frame is not JSON", "invalid_json")
        if not isinstance(msg, dict):
            return await self.refuse(INVALID_DATA, "text frame is not a JSON object", "invalid_json")
        kind = msg.get("type")
        if kind == "video_latency_ping":
            await self.pong(msg, received_ms)
        elif kind == "video_stream_start":
            await self.on_start(msg)
        elif kind == "video_stream_end":
            await self.on_end(msg)
        else:
            log.info("ignoring message peer=%s bot_id=%s type=%r", self.peer, self.bot_id, kind)

    async def pong(self, ping: dict[str, Any], received_ms: float) -> None:
        reply = {key: ping[key] for key in ("seq", "sent_at_ms", "bot_id") if key in ping}
        if len(reply) < 3:
            log.warning("ping lacks fields peer=%s bot_id=%s missing=%s", self.peer, self.bot_id,
                        sorted({"seq", "sent_at_ms", "bot_id"} - reply.keys()))
        reply = {"type": "video_latency_pong", **reply, "server_received_at_ms": int(received_ms)}
        try:
            await self.ws.send_str(json.dumps(reply))
        except ConnectionError:
            log.info("pong not sent bot_id=%s: the connection is gone", self.bot_id)
        delay = _delay_ms(ping.get("sent_at_ms"), received_ms)
        if delay is not None:
            self.metrics.ping_delay.observe(max(0.0, delay / 1000))
            if self.stream is not None:
                self.stream.one_way_delay_ms = round(delay, 1)

    async def on_start(self, msg: dict[str, Any]) -> None:
        bot_id = msg.get("bot_id")
        problem = bot_id_problem(bot_id)
        if problem:
            return await self.refuse(POLICY, f"invalid bot_id: {problem}", "invalid_bot_id")
        if self.stream is None:
            return await self.begin(bot_id, msg)
        if bot_id == self.stream.bot_id:
            self.stream.meta = msg
            log.info("repeated start bot_id=%s: metadata updated", bot_id)
        else:
            log.warning(
                "start for bot_id=%s ignored: this connection already streams as %s", bot_id, self.stream.bot_id
            )

    async def on_end(self, msg: dict[str, Any]) -> None:
        log.info("end message bot_id=%s duration_seconds=%s", self.bot_id, msg.get("duration_seconds"))
        self.close_reason = "video_stream_end"
        await self.close_outputs(ended=True)

    # -- media --------------------------------------------------------------------------------
    async def on_binary(self, data: bytes) -> None:
        self.metrics.bytes_in.inc(len(data))
        if not self.rate.take(len(data)):
            limit = self.settings.max_ingest_rate
            return await self.refuse(POLICY, f"sending faster than max_ingest_rate ({limit} bytes/s)", "ingest_rate")
        if self.stream is not None:
            return await self.media(data)
        self.prestart.append(data)
        self.prestart_bytes += len(data)
        if self.prestart_bytes > self.settings.max_prestart_bytes:
            name = connection_name()
            log.warning(
                "no video_stream_start after %d bytes peer=%s: recording as bot_id=%s",
                self.prestart_bytes, self.peer, name,
            )
            await self.begin(name, {})

    async def begin(self, bot_id: str, start: dict[str, Any]) -> None:
        streams = self.registry.streams
        if bot_id not in streams and len(streams) >= self.settings.max_streams:
            return await self.refuse(POLICY, f"too many live streams (max_streams={self.settings.max_streams})",
                                     "max_streams")
        stream = self.registry.open(bot_id)
        previous = stream.owner
        if previous is not None and previous is not self:
            log.warning("bot_id=%s connected again peer=%s: the newer connection replaces the one from %s",
                        bot_id, self.peer, previous.peer)
            previous.superseded()
        stream.resumed()
        stream.owner = self
        stream.connections += 1
        stream.meta = start
        self.stream = stream
        self.assembler = FragmentAssembler(self.settings.max_box_size)
        self.recording = self._new_recording(stream, start)
        log.info("stream start bot_id=%s peer=%s connection=%d meta=%s", bot_id, self.peer, stream.connections,
                 json.dumps(start)[:500])
        chunks, self.prestart, self.prestart_bytes = self.prestart, [], 0
        for chunk in chunks:
            await self.media(chunk)

    def _new_recording(self, stream: Stream, start: dict[str, Any]) -> Recording:
        stream.recording = Recording(Path(self.settings.recordings), stream.bot_id, self.settings, start, self.peer,
                                     stream.errors.append, self.metrics, self.app[keys.STORAGE])
        return stream.recording

    async def media(self, data: bytes) -> None:
        await self.recording.write(data)
        if self.assembler is None:
            return
        try:
            events = self.assembler.feed(data)
        except MediaError as exc:
            self.dispatch(exc.events)  # whole fragments ahead of the bad bytes still count
            self.assembler = None
            return await self.refuse(INVALID_DATA, f"invalid fMP4: {exc}", "invalid_media")
        except Exception:  # a parser bug must cost this connection only, never the server or another stream
            log.exception("parser failure bot_id=%s peer=%s", self.bot_id, self.peer)
            self.assembler = None
            return await self.refuse(INTERNAL_ERROR, "internal error while parsing the stream", "internal_error")
        fragments = sum(1 for e in events if not isinstance(e, InitSegment))
        if fragments and not self.fragment_rate.take(fragments):
            self.dispatch(events)
            self.assembler = None
            limit = self.settings.max_fragment_rate
            return await self.refuse(POLICY, f"more than max_fragment_rate ({limit:g} fragments/s)", "fragment_rate")
        resume = next((i for i, e in enumerate(events) if self._can_resume_at(e)), None)
        if resume is None:
            return self.dispatch(events)
        self.dispatch(events[:resume])
        await self._resume_recording(events[resume], data)
        self.dispatch(events[resume:])

    def _can_resume_at(self, event: InitSegment | Fragment) -> bool:
        recording = self.recording
        return (recording.resumable and isinstance(event, Fragment) and event.random_access
                and self.assembler.init is not None
                and self.app[keys.STORAGE].space_returned_since(recording.failed_at))

    async def _resume_recording(self, fragment: Fragment, chunk: bytes) -> None:
        """After a disk error that more space cured: a new file, self-contained from a keyframe on
        (the init segment, then the stream from that fragment)."""
        failed, init = self.recording, self.assembler.init
        await failed.close(f"stopped by a disk error: {failed.error}; continued in a new file")
        self.recording = self._new_recording(self.stream, failed.start_message)
        self.recording.shift = fragment.offset - len(init.data)
        self.recording.add_init(init, offset=0)
        chunk_start = self.assembler.position - len(chunk)
        await self.recording.write(init.data)
        await self.recording.write(fragment.data[: max(0, chunk_start - fragment.offset)])
        await self.recording.write(chunk[max(0, fragment.offset - chunk_start) :])
        log.info("recording resumed bot_id=%s path=%s after %s", self.bot_id, self.recording.path, failed.error)

    def dispatch(self, events: list) -> None:
        for event in events:
            if isinstance(event, InitSegment):
                self.recording.add_init(event)
                if self.owns_stream:
                    self.stream.set_init(event)
            else:
                self.recording.add_fragment(event)
                self.metrics.fragments.inc()
                if event.random_access:
                    self.metrics.keyframes.inc()
                if self.owns_stream:
                    self.stream.add_fragment(event)

    # -- endings ------------------------------------------------------------------------------
    async def refuse(self, code: int, reason: str, label: str) -> None:
        """Close this connection only, saying why; other streams are untouched."""
        self.metrics.refused.labels(label).inc()
        log.warning("ingest refused peer=%s bot_id=%s reason=%r", self.peer, self.bot_id, reason)
        self.close_reason = reason
        if self.stream is not None:
            self.stream.errors.append(reason)
        await self.ws.close(code=code, message=reason.encode()[:123])

    async def end_by_admin(self) -> None:
        """An admin ended the stream: finish the recording as if the bot had said so, then hang up."""
        self.close_reason = "ended by an admin"
        await self.close_outputs(ended=True)
        await self.ws.close(code=1000, message=b"stream ended by an admin")

    def superseded(self) -> None:
        """A newer connection took over our bot id: stop feeding the stream, keep our recording whole."""
        self.close_reason = "replaced by a newer connection"
        self.app[keys.BACKGROUND].spawn(
            self.ws.close(code=POLICY, message=b"replaced by a newer connection for this bot_id")
        )

    async def close_outputs(self, ended: bool) -> None:
        """Finish the recording; end the stream (``ended``) or let it wait for a reconnect."""
        if self.stream is None:
            return
        stream, recording, assembler = self.stream, self.recording, self.assembler
        if assembler is not None:
            try:
                self.dispatch(assembler.finish())
            except MediaError as exc:
                self.dispatch(exc.events)
                log.info("bot_id=%s: %s; the recording keeps those bytes", stream.bot_id, exc)
        try:
            await recording.close(self.close_reason)
        finally:
            self._release(stream, ended)
            self.stream = self.recording = self.assembler = None
        if self.settings.remux_on_end and recording.bytes_written and recording.error is None:
            self.app[keys.BACKGROUND].spawn(asyncio.to_thread(remux, recording.path))

    def _release(self, stream: Stream, ended: bool) -> None:
        """Let the stream go: end it, or let it wait for the bot to reconnect."""
        if stream.owner is self:
            stream.owner = None
            if ended:
                self.registry.close(stream)
            elif stream.state != ENDED:
                log.info("bot_id=%s disconnected; waiting %.0fs for it to reconnect", stream.bot_id,
                         self.settings.reconnect_grace)
                stream.disconnected(lambda: self.registry.close(stream) if stream.owner is None else None)

    async def finish(self) -> None:
        if self.stream is None and self.prestart:
            name = connection_name()
            log.warning("connection closed before video_stream_start peer=%s: recording %d bytes as bot_id=%s",
                        self.peer, self.prestart_bytes, name)
            await self.begin(name, {})
        await self.close_outputs(ended=False)
        self.metrics.ingest_open.dec()
        log.info("ingest closed peer=%s reason=%r", self.peer, self.close_reason)
