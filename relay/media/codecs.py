"""RFC 6381 codec strings from MP4 sample entries, so MSE gets the exact type before the first append."""

from __future__ import annotations

import struct

from .boxes import MediaError, find_child, iter_children

VISUAL_FIELDS = 78  # SampleEntry (8) + VisualSampleEntry (70) bytes before the child boxes
AUDIO_FIELDS = 28  # SampleEntry (8) + AudioSampleEntry (20)
_QT_AUDIO_EXTRA = {1: 16, 2: 36}  # QuickTime sound description versions 1 and 2 add fields


def children_start(buf: bytes, payload: int, video: bool) -> int:
    """Where the child boxes of a sample entry begin (QuickTime v1/v2 audio entries are longer)."""
    if video:
        return payload + VISUAL_FIELDS
    (version,) = struct.unpack_from(">H", buf, payload + 8)
    return payload + AUDIO_FIELDS + _QT_AUDIO_EXTRA.get(version, 0)


def _child(buf: bytes, start: int, end: int, box_type: str, need: int = 0) -> tuple[int, int]:
    """(payload start, end) of a configuration box holding at least ``need`` payload bytes."""
    found = find_child(buf, start, end, box_type)
    if found is None:
        raise MediaError(f"sample entry lacks its {box_type!r} configuration box")
    if found[1] - found[0] < need:
        raise MediaError(f"{box_type!r} configuration box too short ({found[1] - found[0]} bytes)")
    return found


def avc(fourcc: str, buf: bytes, children: int, end: int) -> str:
    payload, _ = _child(buf, children, end, "avcC", 4)
    profile, compat, level = buf[payload + 1 : payload + 4]
    return f"{fourcc}.{profile:02X}{compat:02X}{level:02X}"


def hevc(fourcc: str, buf: bytes, children: int, end: int) -> str:
    payload, _ = _child(buf, children, end, "hvcC", 13)
    first = buf[payload + 1]
    space = "", "A", "B", "C"
    profile_idc = first & 0x1F
    tier = "H" if first & 0x20 else "L"
    (compat,) = struct.unpack_from(">I", buf, payload + 2)
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = bytearray(buf[payload + 6 : payload + 12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    level = buf[payload + 12]
    parts = [fourcc, f"{space[first >> 6]}{profile_idc}", f"{reversed_compat:X}", f"{tier}{level}"]
    parts += [f"{b:X}" for b in constraints]
    return ".".join(parts)


def vp9(fourcc: str, buf: bytes, children: int, end: int) -> str:
    payload, _ = _child(buf, children, end, "vpcC", 10)
    p = payload + 4  # FullBox version and flags
    profile, level, packed, primaries, transfer, matrix = buf[p : p + 6]
    depth, chroma, full_range = packed >> 4, (packed >> 1) & 0x7, packed & 0x1
    fields = (profile, level, depth, chroma, primaries, transfer, matrix, full_range)
    return fourcc + "".join(f".{v:02d}" for v in fields)


def av1(fourcc: str, buf: bytes, children: int, end: int) -> str:
    payload, _ = _child(buf, children, end, "av1C", 3)
    b1, b2 = buf[payload + 1], buf[payload + 2]
    profile, level = b1 >> 5, b1 & 0x1F
    tier = "H" if b2 & 0x80 else "M"
    depth = (12 if b2 & 0x20 else 10) if b2 & 0x40 else 8
    return f"{fourcc}.{profile}.{level:02d}{tier}.{depth:02d}"


def _descriptor(buf: bytes, pos: int) -> tuple[int, int, int]:
    """An MPEG-4 descriptor at pos: (tag, payload start, payload end)."""
    tag = buf[pos]
    pos += 1
    size = 0
    for _ in range(4):
        byte = buf[pos]
        pos += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, pos, pos + size


def mp4a(fourcc: str, buf: bytes, children: int, end: int) -> str:
    payload, box_end = _child(buf, children, end, "esds")
    tag, pos, _ = _descriptor(buf, payload + 4)
    if tag != 0x03:
        raise MediaError("esds lacks its ES descriptor")
    flags = buf[pos + 2]
    pos += 3
    if flags & 0x80:
        pos += 2
    if flags & 0x40:
        pos += 1 + buf[pos]
    if flags & 0x20:
        pos += 2
    tag, pos, config_end = _descriptor(buf, pos)
    if tag != 0x04:
        raise MediaError("esds lacks its decoder config descriptor")
    object_type = buf[pos]
    if object_type != 0x40:
        return f"{fourcc}.{object_type:02X}"
    pos += 13
    if pos >= min(config_end, box_end):
        return f"{fourcc}.40.2"  # no AudioSpecificConfig: AAC-LC is what decoders assume
    tag, pos, _ = _descriptor(buf, pos)
    audio_object_type = buf[pos] >> 3
    if audio_object_type == 31:
        audio_object_type = 32 + (((buf[pos] & 0x07) << 3) | (buf[pos + 1] >> 5))
    return f"{fourcc}.40.{audio_object_type}"


def plain(fourcc: str, buf: bytes, children: int, end: int) -> str:
    return {"Opus": "opus", "fLaC": "flac"}.get(fourcc, fourcc)


VIDEO = {"avc1": avc, "avc3": avc, "hvc1": hevc, "hev1": hevc, "vp09": vp9, "av01": av1}
AUDIO = {"mp4a": mp4a, "Opus": plain, "fLaC": plain, "ac-3": plain, "ec-3": plain}
