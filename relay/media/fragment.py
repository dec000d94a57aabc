"""Timing and random-access facts of one media fragment, read from its `moof`.

Keyframes are found the way the spec layers sample flags: a `trun`'s per-sample flags, else its
`first_sample_flags`, else the `tfhd` default, else the `trex` default from the init segment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .boxes import MediaError, find_child, iter_children
from .init import InitInfo, TrackDefaults

# tfhd flags
_BASE_DATA_OFFSET = 0x01
_SAMPLE_DESCRIPTION = 0x02
_DEFAULT_DURATION = 0x08
_DEFAULT_SIZE = 0x10
_DEFAULT_FLAGS = 0x20
_BASE_IS_MOOF = 0x20000
# trun flags
_DATA_OFFSET = 0x01
_FIRST_FLAGS = 0x04
_SAMPLE_DURATION = 0x100
_SAMPLE_SIZE = 0x200
_SAMPLE_FLAGS = 0x400
_SAMPLE_CTO = 0x800

_NON_SYNC = 0x10000


def is_sync(sample_flags: int) -> bool:
    """A sample is a random access point unless sample_is_non_sync_sample is set."""
    return not sample_flags & _NON_SYNC


@dataclass(frozen=True, slots=True)
class TrackRun:
    """One track's part of a fragment."""

    track_id: int
    decode_time: int | None  # from tfdt, in the track's timescale
    duration: int
    samples: int
    starts_with_sync: bool
    has_sync: bool  # a sync sample anywhere in the run: a decoder can join here, dropping what precedes it


@dataclass(frozen=True, slots=True)
class MoofInfo:
    runs: tuple[TrackRun, ...]
    data_end: int  # bytes from the moof's first byte to the end of the last sample it references


def _trun(buf: bytes, payload: int, defaults: TrackDefaults) -> tuple[int, int, int, bool, bool, int | None]:
    """(sample count, duration, data bytes, first sample is sync, any sample is sync, data offset or None)."""
    (version_flags, count) = struct.unpack_from(">II", buf, payload)
    flags = version_flags & 0xFFFFFF
    pos = payload + 8
    data_offset = None
    if flags & _DATA_OFFSET:
        (data_offset,) = struct.unpack_from(">i", buf, pos)
        pos += 4
    first_flags = None
    if flags & _FIRST_FLAGS:
        (first_flags,) = struct.unpack_from(">I", buf, pos)
        pos += 4
    fields = [f for f in (_SAMPLE_DURATION, _SAMPLE_SIZE, _SAMPLE_FLAGS, _SAMPLE_CTO) if flags & f]
    stride = 4 * len(fields)
    if pos + stride * count > len(buf):
        raise MediaError(f"trun declares {count} samples but is too short for them")
    duration = defaults.duration * count
    size = defaults.size * count
    table = struct.unpack_from(f">{len(fields) * count}I", buf, pos) if fields else ()
    if _SAMPLE_DURATION in fields:
        duration = sum(table[fields.index(_SAMPLE_DURATION) :: len(fields)])
    if _SAMPLE_SIZE in fields:
        size = sum(table[fields.index(_SAMPLE_SIZE) :: len(fields)])
    if _SAMPLE_FLAGS in fields:
        flags_column = table[fields.index(_SAMPLE_FLAGS) :: len(fields)]
        first_sync = bool(count) and is_sync(flags_column[0])
        any_sync = any(is_sync(f) for f in flags_column)
    else:
        first_sync = count > 0 and is_sync(defaults.flags if first_flags is None else first_flags)
        any_sync = first_sync or (count > 1 and is_sync(defaults.flags))
    return count, duration, size, first_sync, any_sync, data_offset


def parse_moof(moof: bytes, init: InitInfo, moof_offset: int = 0) -> MoofInfo:
    """Read a whole `moof` box (header included); ``moof_offset`` resolves absolute base_data_offsets."""
    try:
        return _parse_moof(moof, init, moof_offset)
    except (struct.error, IndexError) as exc:
        raise MediaError(f"malformed moof: {exc}") from exc


def _parse_moof(moof: bytes, init: InitInfo, moof_offset: int) -> MoofInfo:
    runs: list[TrackRun] = []
    data_end = 0
    previous_traf_end = 0  # where the previous traf's data ended (the implicit base of the next one)
    header = 16 if struct.unpack_from(">I", moof)[0] == 1 else 8
    tracks = {t.track_id: t for t in init.tracks}  # not init.track(): a moof may hold a great many trafs
    for box_type, payload, end in iter_children(moof, header, len(moof)):
        if box_type != "traf":
            continue
        tfhd = find_child(moof, payload, end, "tfhd")
        if tfhd is None:
            raise MediaError("traf without tfhd")
        (version_flags, track_id) = struct.unpack_from(">II", moof, tfhd[0])
        flags = version_flags & 0xFFFFFF
        track = tracks.get(track_id)
        trex = track.defaults if track else TrackDefaults()
        pos = tfhd[0] + 8
        base = None
        if flags & _BASE_DATA_OFFSET:
            (absolute,) = struct.unpack_from(">Q", moof, pos)
            base = absolute - moof_offset
            pos += 8
        if flags & _SAMPLE_DESCRIPTION:
            pos += 4
        values = {}
        for flag, name in ((_DEFAULT_DURATION, "duration"), (_DEFAULT_SIZE, "size"), (_DEFAULT_FLAGS, "flags")):
            if flags & flag:
                (values[name],) = struct.unpack_from(">I", moof, pos)
                pos += 4
        defaults = TrackDefaults(
            values.get("duration", trex.duration), values.get("size", trex.size), values.get("flags", trex.flags)
        )
        if base is None:
            base = 0 if flags & _BASE_IS_MOOF or not runs else previous_traf_end
        decode_time = None
        tfdt = find_child(moof, payload, end, "tfdt")
        if tfdt is not None:
            fmt = ">Q" if moof[tfdt[0]] == 1 else ">I"
            (decode_time,) = struct.unpack_from(fmt, moof, tfdt[0] + 4)
        samples = duration = 0
        first_sync: bool | None = None
        any_sync = False
        cursor = base
        for run_type, run_payload, _ in iter_children(moof, payload, end):
            if run_type != "trun":
                continue
            count, run_duration, run_size, sync, has_sync, data_offset = _trun(moof, run_payload, defaults)
            if data_offset is not None:
                cursor = base + data_offset
            cursor += run_size
            data_end = max(data_end, cursor)
            if first_sync is None and count:
                first_sync = sync
            any_sync = any_sync or has_sync
            samples += count
            duration += run_duration
        previous_traf_end = cursor
        runs.append(TrackRun(track_id, decode_time, duration, samples, bool(first_sync), any_sync))
    if not runs:
        raise MediaError("moof has no traf")
    return MoofInfo(tuple(runs), data_end)
