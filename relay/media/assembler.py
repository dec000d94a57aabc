"""Turns a live fMP4 byte stream into init segments and whole media fragments.

A fragment is everything from the end of the previous one up to and including the `mdat`(s) its
`moof` references: optional `styp`/`sidx`/`prft`/`emsg`/`free` boxes, the `moof`, then its data.
Its offsets are stream offsets, which are also offsets into the recording of that connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from .boxes import Box, BoxSplitter, MediaError
from .fragment import MoofInfo, TrackRun, parse_moof
from .init import InitInfo, parse_init

_INIT_START = ("ftyp", "moov")


@dataclass(frozen=True, slots=True)
class InitSegment:
    data: bytes
    info: InitInfo
    offset: int

    @property
    def mime(self) -> str:
        return self.info.mime


@dataclass(frozen=True, slots=True)
class Fragment:
    """A whole media fragment and the metadata consumers index it by (HLS, recordings, GOP cache)."""

    data: bytes
    offset: int
    keyframe: bool  # every video track starts with a sync sample (always true for audio-only)
    random_access: bool  # every video track has a sync sample somewhere: a viewer can join here
    decode_time: float  # seconds, on the primary track's clock
    duration: float  # seconds, on the primary track
    runs: tuple[TrackRun, ...]

    @property
    def size(self) -> int:
        return len(self.data)

    def index_entry(self, shift: int = 0) -> dict:
        """The sidecar's entry; ``shift`` is the stream offset of the recording file's first byte."""
        return {
            "offset": self.offset - shift,
            "size": self.size,
            "decode_time": round(self.decode_time, 6),
            "duration": round(self.duration, 6),
            "keyframe": self.keyframe,
            "random_access": self.random_access,
        }


Event = InitSegment | Fragment


class FragmentAssembler:
    """Feed it chunks in arrival order; it returns the init segments and fragments they complete."""

    def __init__(self, max_box_size: int = 64 * 1024 * 1024) -> None:
        self.splitter = BoxSplitter(max_box_size)
        self.max_pending = max_box_size
        self.init: InitSegment | None = None
        self._init_boxes: list[Box] | None = []  # None once the moov has arrived
        self._init_bytes = 0  # running totals, never re-summed: a stream of tiny boxes stays linear
        self._pending: list[Box] = []
        self._pending_bytes = 0
        self._moof_at: int | None = None  # index in _pending of this fragment's moof
        self._before_moof = 0  # bytes in _pending ahead of the moof (styp, prft, emsg, free...)
        self._moof: MoofInfo | None = None  # this fragment's moof, parsed once
        self._has_mdat = False
        self._next_decode: dict[int, int] = {}

    @property
    def position(self) -> int:
        return self.splitter.position

    def feed(self, chunk: bytes) -> list[Event]:
        """The init segments and fragments this chunk completes. A ``MediaError`` carries, as ``events``, those
        it completed before the bad bytes: a consumer should still take them."""
        events: list[Event] = []
        try:
            try:
                boxes = self.splitter.feed(chunk)
            except MediaError as exc:
                for box in exc.boxes:  # whole boxes ahead of the bad ones (an error among them comes first)
                    self._box(box, events)
                raise
            for box in boxes:
                self._box(box, events)
        except MediaError as exc:
            exc.events = events
            raise
        return events

    def finish(self) -> list[Event]:
        """The stream ended: emit a last complete fragment; a box cut short raises MediaError (with ``events``)."""
        events: list[Event] = []
        try:
            for box in self.splitter.finish():
                self._box(box, events)
            if self._has_mdat:
                events.append(self._complete())
        except MediaError as exc:
            exc.events = events
            raise
        return events

    def _box(self, box: Box, events: list[Event]) -> None:
        if box.type in _INIT_START and self._init_boxes is None:
            if self._has_mdat:
                events.append(self._complete())
            self._init_boxes, self._init_bytes, self._pending, self._pending_bytes, self._moof_at = [], 0, [], 0, None
        if self._init_boxes is not None:
            self._init_box(box, events)
        elif box.type == "moof":
            if self._has_mdat:
                events.append(self._complete())
            elif self._moof_at is not None:
                raise MediaError("moof followed by another moof without media data")
            self._before_moof = self._pending_bytes
            self._add(box)
            self._moof_at = len(self._pending) - 1
            self._moof = parse_moof(box.data, self.init.info, box.offset)
        elif box.type == "mdat":
            if self._moof_at is None:
                raise MediaError("mdat without a moof before it")
            self._add(box)
            self._has_mdat = True
            if self._pending_bytes - self._before_moof >= self._moof.data_end:
                events.append(self._complete())
        else:
            if self._has_mdat:
                events.append(self._complete())
            self._add(box)

    def _init_box(self, box: Box, events: list[Event]) -> None:
        if box.type in ("moof", "mdat"):
            raise MediaError(f"{box.type} before the init segment (no moov yet)")
        self._init_boxes.append(box)
        self._init_bytes += box.size
        if self._init_bytes > self.max_pending:
            raise MediaError("init segment exceeds the box size limit")
        if box.type == "moov":
            data = b"".join(b.data for b in self._init_boxes)
            self.init = InitSegment(data, parse_init(data), self._init_boxes[0].offset)
            self._init_boxes = None
            self._next_decode.clear()
            events.append(self.init)

    def _add(self, box: Box) -> None:
        self._pending.append(box)
        self._pending_bytes += box.size
        if self._pending_bytes > self.max_pending:
            raise MediaError(f"fragment exceeds {self.max_pending} bytes")

    def _complete(self) -> Fragment:
        info = self.init.info
        runs = self._moof.runs
        clock: dict[int, int] = {}  # track id -> decode time after this fragment's runs of it
        for run in runs:
            start = run.decode_time
            if start is None:
                start = clock.get(run.track_id, self._next_decode.get(run.track_id, 0))
            clock[run.track_id] = start + run.duration
        # Only the init's tracks are remembered: trafs of made-up track ids must not grow this without bound.
        known = {t.track_id for t in info.tracks}
        self._next_decode.update((i, end) for i, end in clock.items() if i in known)
        primary_id = info.primary.track_id  # a property that walks the tracks: once, not per run
        primary = next((r for r in runs if r.track_id == primary_id), runs[0])
        track = info.track(primary.track_id)
        timescale = track.timescale if track else info.primary.timescale
        start = clock[primary.track_id] - primary.duration
        video_ids = {t.track_id for t in info.video_tracks}
        video_runs = [r for r in runs if r.track_id in video_ids]
        has_video = bool(video_runs) or not video_ids
        keyframe = has_video and all(r.starts_with_sync for r in video_runs)
        random_access = has_video and all(r.has_sync for r in video_runs)
        fragment = Fragment(
            data=b"".join(b.data for b in self._pending),
            offset=self._pending[0].offset,
            keyframe=keyframe,
            random_access=random_access,
            decode_time=start / timescale,
            duration=primary.duration / timescale,
            runs=runs,
        )
        self._pending, self._pending_bytes, self._moof_at, self._has_mdat = [], 0, None, False
        return fragment
