"""What a consumer needs from an init segment: tracks, timescales, trex defaults and the MSE type."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import codecs
from .boxes import MediaError, find_child, iter_children


@dataclass(frozen=True, slots=True)
class TrackDefaults:
    """Sample defaults from a `trex` (or a `tfhd` overriding them)."""

    duration: int = 0
    size: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Track:
    track_id: int
    kind: str  # "video", "audio" or the raw handler type
    timescale: int
    codec: str  # RFC 6381, e.g. "avc1.42C01E"
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    defaults: TrackDefaults = field(default_factory=TrackDefaults)


@dataclass(frozen=True, slots=True)
class InitInfo:
    tracks: tuple[Track, ...]

    @property
    def mime(self) -> str:
        """The full MSE type, e.g. ``video/mp4; codecs="avc1.42C01E,mp4a.40.2"``."""
        kind = "video" if self.video_tracks else "audio"
        return f'{kind}/mp4; codecs="{",".join(t.codec for t in self.tracks)}"'

    @property
    def video_tracks(self) -> tuple[Track, ...]:
        return tuple(t for t in self.tracks if t.kind == "video")

    @property
    def primary(self) -> Track:
        """The track whose clock times the stream: the first video track, else the first track."""
        return (self.video_tracks or self.tracks)[0]

    def track(self, track_id: int) -> Track | None:
        return next((t for t in self.tracks if t.track_id == track_id), None)

    def describe(self) -> dict:
        """JSON-ready summary for status pages and sidecars."""
        out: dict = {"mime": self.mime, "tracks": []}
        for t in self.tracks:
            entry: dict = {"id": t.track_id, "kind": t.kind, "codec": t.codec, "timescale": t.timescale}
            if t.kind == "video":
                entry |= {"width": t.width, "height": t.height}
            elif t.kind == "audio":
                entry |= {"sample_rate": t.sample_rate, "channels": t.channels}
            out["tracks"].append(entry)
        return out


_HANDLERS = {"vide": "video", "soun": "audio"}


def _require(buf: bytes, start: int, end: int, path: str) -> tuple[int, int]:
    for name in path.split("."):
        found = find_child(buf, start, end, name)
        if found is None:
            raise MediaError(f"init segment lacks {path.replace('.', '/')}")
        start, end = found
    return start, end


def _full_box_version(buf: bytes, payload: int) -> int:
    return buf[payload]


def _sample_entry(buf: bytes, stsd: tuple[int, int], kind: str) -> tuple[str, dict]:
    start, end = stsd
    entries = list(iter_children(buf, start + 8, end))  # after the FullBox header and entry_count
    if not entries:
        raise MediaError("track has no sample entry")
    fourcc, payload, entry_end = entries[0]
    if kind not in ("video", "audio"):
        return fourcc, {}
    video = kind == "video" or fourcc in codecs.VIDEO or fourcc == "encv"
    children = codecs.children_start(buf, payload, video)
    if fourcc in ("encv", "enca"):  # encrypted: the original format is in sinf/frma
        frma = _require(buf, children, entry_end, "sinf.frma")
        fourcc = buf[frma[0] : frma[0] + 4].decode("latin-1")
    if video:
        width, height = struct.unpack_from(">HH", buf, payload + 24)
        maker = codecs.VIDEO.get(fourcc, codecs.plain)
        return maker(fourcc, buf, children, entry_end), {"width": width, "height": height}
    channels, _, _, _, rate = struct.unpack_from(">HHHHI", buf, payload + 16)
    maker = codecs.AUDIO.get(fourcc, codecs.plain)
    return maker(fourcc, buf, children, entry_end), {"channels": channels, "sample_rate": rate >> 16}


def _track(buf: bytes, trak: tuple[int, int], defaults: dict[int, TrackDefaults]) -> Track:
    start, end = trak
    tkhd = _require(buf, start, end, "tkhd")
    track_id_at = tkhd[0] + (20 if _full_box_version(buf, tkhd[0]) == 1 else 12)
    (track_id,) = struct.unpack_from(">I", buf, track_id_at)
    mdhd = _require(buf, start, end, "mdia.mdhd")
    timescale_at = mdhd[0] + (20 if _full_box_version(buf, mdhd[0]) == 1 else 12)
    (timescale,) = struct.unpack_from(">I", buf, timescale_at)
    if timescale == 0:
        raise MediaError(f"track {track_id} has a timescale of 0")
    hdlr = _require(buf, start, end, "mdia.hdlr")
    handler = buf[hdlr[0] + 8 : hdlr[0] + 12].decode("latin-1")
    kind = _HANDLERS.get(handler, handler)
    codec, extra = _sample_entry(buf, _require(buf, start, end, "mdia.minf.stbl.stsd"), kind)
    return Track(track_id, kind, timescale, codec, defaults=defaults.get(track_id, TrackDefaults()), **extra)


def parse_init(data: bytes) -> InitInfo:
    """Parse an init segment (``ftyp`` + ``moov`` and whatever sits beside them)."""
    try:
        moov = _require(data, 0, len(data), "moov")
        defaults: dict[int, TrackDefaults] = {}
        mvex = find_child(data, moov[0], moov[1], "mvex")
        if mvex is not None:
            for box_type, payload, _ in iter_children(data, *mvex):
                if box_type == "trex":
                    track_id, _, duration, size, flags = struct.unpack_from(">5I", data, payload + 4)
                    defaults[track_id] = TrackDefaults(duration, size, flags)
        tracks = tuple(
            _track(data, (payload, end), defaults)
            for box_type, payload, end in iter_children(data, *moov)
            if box_type == "trak"
        )
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise MediaError(f"malformed init segment: {exc}") from exc
    tracks = tuple(t for t in tracks if t.kind in ("video", "audio"))
    if not tracks:
        raise MediaError("init segment has no audio or video track")
    return InitInfo(tracks)
