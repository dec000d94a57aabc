"""One live stream per bot and the registry of them.

A ``Stream`` is fed through a narrow entry point (``set_init``, ``add_fragment``, ``disconnected``,
``end``) so that the ingest today, and a bus reader later, feed it the same way. Consumers are called
synchronously and must never block: they queue and return.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable, Protocol

from .config import Settings
from .media import Fragment, InitSegment
from .wire import WireFragment

log = logging.getLogger("relay.stream")

LIVE, RECONNECTING, ENDED = "live", "reconnecting", "ended"
_BITRATE_WINDOW = 10.0  # seconds of arrivals the bitrate is averaged over


class Consumer(Protocol):
    def on_init(self, init: InitSegment) -> None: ...
    def on_fragment(self, item: WireFragment) -> None: ...
    def on_waiting(self, reason: str) -> None: ...
    def on_end(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


class Stream:
    def __init__(self, bot_id: str, settings: Settings) -> None:
        self.bot_id = bot_id
        self.settings = settings
        self.state = LIVE
        self.meta: dict[str, Any] = {}
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.init: InitSegment | None = None
        self.info: Any = None  # the init's InitInfo, kept for status after the stream ends and drops its media
        self.gop: list[WireFragment] = []  # fragments since the latest random-access fragment
        self._gop_bytes = 0
        self.consumers: set[Consumer] = set()
        self.connections = 0  # ingest connections over the stream's life (reconnects make it grow)
        self.bytes_in = 0
        self.fragments = 0
        self.keyframes = 0
        self.gop_overflows = 0
        self.gop_seconds: float | None = None  # media time between the last two keyframe fragments
        self._last_keyframe_at: float | None = None
        self.media_duration = 0.0
        self.last_fragment_at: float | None = None  # monotonic
        self.one_way_delay_ms: float | None = None
        self.errors: list[str] = []
        self.recording: Any = None  # the current Recording, for status
        self.owner: Any = None  # the ingest session feeding the stream; None while reconnecting
        self.thumbnailer: Any = None  # made on the first thumbnail request: no work for unwatched streams
        self._arrivals: deque[tuple[float, int]] = deque()
        self._grace: asyncio.TimerHandle | None = None
        self._fanout: deque = deque()  # (fragment, consumers still to get it)
        self._fanout_scheduled = False

    # -- the feed ---------------------------------------------------------------------------
    def set_init(self, init: InitSegment) -> None:
        """A new init segment: the cache is void (its fragments need the old one)."""
        self._flush_fanout()
        self.init = init
        self.info = init.info
        self._last_keyframe_at = None  # timestamps may restart with a new init
        self.bytes_in += len(init.data)
        self.gop, self._gop_bytes = [], 0
        log.info("stream init bot_id=%s mime=%r init_bytes=%d", self.bot_id, init.mime, len(init.data))
        for consumer in list(self.consumers):
            consumer.on_init(init)

    def add_fragment(self, fragment: Fragment) -> None:
        now = time.monotonic()
        self.fragments += 1
        self.bytes_in += fragment.size
        self.media_duration += fragment.duration
        self.last_fragment_at = now
        self._arrivals.append((now, fragment.size))
        while self._arrivals and now - self._arrivals[0][0] > _BITRATE_WINDOW:
            self._arrivals.popleft()
        item = WireFragment(fragment)
        self._cache(item)
        self._fanout.append((item, list(self.consumers)))
        if not self._fanout_scheduled:
            self._run_fanout()

    _SLICE = 0.001  # seconds of fan-out work before the event loop gets a turn (pings, other streams)

    def _run_fanout(self, budget: float | None = _SLICE) -> None:
        """Hand queued fragments to their consumers, in order, yielding to the loop every ``budget`` seconds."""
        self._fanout_scheduled = False
        deadline = None if budget is None else time.perf_counter() + budget
        queue = self._fanout
        while queue:
            item, consumers = queue[0]
            while consumers:
                consumers.pop().on_fragment(item)
                if deadline is not None and consumers and time.perf_counter() > deadline:
                    self._fanout_scheduled = True
                    asyncio.get_running_loop().call_soon(self._run_fanout)
                    return
            queue.popleft()

    def _flush_fanout(self) -> None:
        if self._fanout:
            self._run_fanout(None)

    def _cache(self, item: WireFragment) -> None:
        """Keep the fragments a late joiner needs: from the latest keyframe on, within bounds.

        The cache restarts at every fragment holding a keyframe: ideally at its start, but fMP4 cut
        by duration puts keyframes mid-fragment, and MSE decoders drop the frames before the first
        keyframe, so joining there plays cleanly too. Past a bound the cache is dropped rather than
        trimmed at the front (a GOP without its keyframe cannot be decoded): late joiners then wait
        for the next keyframe.
        """
        size = item.fragment.size
        if item.random_access:
            self.keyframes += 1
            at = item.fragment.decode_time
            if self._last_keyframe_at is not None and at > self._last_keyframe_at:
                self.gop_seconds = round(at - self._last_keyframe_at, 3)
            self._last_keyframe_at = at
            self.gop, self._gop_bytes = [item], size
            return
        if not self.gop:
            return
        self.gop.append(item)
        self._gop_bytes += size
        if self._gop_bytes > self.settings.gop_cache_bytes or len(self.gop) > self.settings.gop_cache_fragments:
            self.gop_overflows += 1
            log.warning(
                "gop cache overflow bot_id=%s fragments=%d bytes=%d: late joiners wait for the next keyframe",
                self.bot_id, len(self.gop), self._gop_bytes,
            )
            self.gop, self._gop_bytes = [], 0

    def disconnected(self, on_timeout: Any) -> None:
        """The bot's connection dropped without an end message: wait a while for it to come back."""
        self._flush_fanout()
        self.state = RECONNECTING
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(self.settings.reconnect_grace, on_timeout)
        for consumer in list(self.consumers):
            consumer.on_waiting("the bot is reconnecting")

    def resumed(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.state = LIVE

    def end(self) -> None:
        self._flush_fanout()
        if self.state == ENDED:
            return
        if self._grace is not None:
            self._grace.cancel()
        self.state = ENDED
        self.ended_at = time.time()
        self.init, self.gop, self._gop_bytes, self.thumbnailer = None, [], 0, None  # ended streams stay listed, not their media
        log.info("stream ended bot_id=%s fragments=%d bytes=%d", self.bot_id, self.fragments, self.bytes_in)
        for consumer in list(self.consumers):
            consumer.on_end()

    # -- consumers ----------------------------------------------------------------------------
    def attach(self, consumer: Consumer) -> None:
        """Register a consumer and replay what it needs to start: the init and the cached GOP."""
        self.consumers.add(consumer)
        if self.init is not None:
            consumer.on_init(self.init)
            for item in self.gop:
                consumer.on_fragment(item)

    def detach(self, consumer: Consumer) -> None:
        self.consumers.discard(consumer)

    # -- status -------------------------------------------------------------------------------
    @property
    def bitrate(self) -> float:
        """Bits per second over the recent arrivals."""
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1][0] - self._arrivals[0][0]
        return 8 * sum(size for _, size in list(self._arrivals)[1:]) / span if span > 0 else 0.0

    @property
    def fragment_rate(self) -> float:
        """Fragments per second over the recent arrivals."""
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1][0] - self._arrivals[0][0]
        return (len(self._arrivals) - 1) / span if span > 0 else 0.0

    @property
    def last_fragment_age(self) -> float | None:
        return None if self.last_fragment_at is None else time.monotonic() - self.last_fragment_at

    def status(self) -> dict[str, Any]:
        age = self.last_fragment_age
        info = self.info.describe() if self.info else None
        return {
            "bot_id": self.bot_id,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "uptime": (self.ended_at or time.time()) - self.started_at,
            "meta": self.meta,
            "mime": info["mime"] if info else None,
            "resolution": next((f"{t['width']}x{t['height']}" for t in info["tracks"] if t["kind"] == "video"), None)
            if info else None,
            "tracks": info["tracks"] if info else [],
            "connections": self.connections,
            "bytes_in": self.bytes_in,
            "fragments": self.fragments,
            "keyframes": self.keyframes,
            "bitrate": round(self.bitrate),
            "fragment_rate": round(self.fragment_rate, 3),
            "gop_seconds": self.gop_seconds,
            "media_duration": round(self.media_duration, 3),
            "gop_fragments": len(self.gop),
            "gop_overflows": self.gop_overflows,
            "last_fragment_age": None if age is None else round(age, 3),
            "one_way_delay_ms": self.one_way_delay_ms,
            "viewers": len(self.consumers),
            "viewer_list": [c.status() for c in self.consumers],
            "recording": self.recording.status() if self.recording else None,
            "errors": self.errors[-20:],
        }


class Registry:
    """The live streams by bot id, plus recently ended ones for status pages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams: dict[str, Stream] = {}
        self.ended: deque[Stream] = deque(maxlen=settings.ended_streams_kept)
        self._watchers: dict[str, list[Callable[[Stream], None]]] = {}

    def get(self, bot_id: str) -> Stream | None:
        return self.streams.get(bot_id)

    def open(self, bot_id: str) -> Stream:
        """The live stream for ``bot_id``, created if there is none (a reconnect continues the old one)."""
        stream = self.streams.get(bot_id)
        if stream is None:
            stream = self.streams[bot_id] = Stream(bot_id, self.settings)
            log.info("stream started bot_id=%s", bot_id)
            for callback in self._watchers.pop(bot_id, ()):
                callback(stream)
        return stream

    def close(self, stream: Stream) -> None:
        stream.end()
        if self.streams.get(stream.bot_id) is stream:
            del self.streams[stream.bot_id]
            self.ended.appendleft(stream)

    def find(self, bot_id: str) -> Stream | None:
        """The live stream, else the most recently ended one, of ``bot_id``."""
        return self.streams.get(bot_id) or next((s for s in self.ended if s.bot_id == bot_id), None)

    def statuses(self) -> dict[str, list[dict[str, Any]]]:
        return {"streams": [s.status() for s in self.streams.values()], "ended": [s.status() for s in self.ended]}

    def live_recordings(self) -> dict[Any, Any]:
        """The recordings still being written, by path (retention skips them, pages and playlists treat them
        as growing)."""
        return {s.recording.path: s.recording for s in self.streams.values()
                if s.recording is not None and s.recording.ended is None}

    def watch(self, bot_id: str, callback: Callable[[Stream], None]) -> Callable[[], None]:
        """Call ``callback`` synchronously when ``bot_id`` opens, before any media reaches the stream,
        so an early viewer misses nothing. Returns a function that cancels the watch."""
        watchers = self._watchers.setdefault(bot_id, [])
        watchers.append(callback)

        def cancel() -> None:
            if callback in watchers:
                watchers.remove(callback)
            if not watchers and self._watchers.get(bot_id) is watchers:
                del self._watchers[bot_id]

        return cancel
