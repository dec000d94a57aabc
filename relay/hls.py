"""Byte-range HLS playlists over a recording's fragment index, for seeking in recordings.

The recording file itself is the media: `EXT-X-MAP` points at its init segment and each segment is a byte
range of consecutive fragments that starts at a keyframe (fragments that start mid-GOP are merged into the
segment before them, so every segment can be decoded on its own and a seek lands on a picture at once).
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def segments(fragments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group contiguous fragments into segments that each start at a keyframe fragment.

    Streams whose keyframes sit inside fragments (fMP4 cut by duration) start segments at random-access
    fragments instead; a stream with neither is one segment per fragment.
    """
    if not fragments:
        return []
    key = "keyframe" if any(f["keyframe"] for f in fragments[1:]) else "random_access"
    if not any(f.get(key) for f in fragments):
        key = ""
    out: list[dict[str, Any]] = []
    for fragment in fragments:
        starts = not out or not key or fragment.get(key)
        contiguous = out and out[-1]["offset"] + out[-1]["size"] == fragment["offset"]
        if starts or not contiguous:
            out.append({"offset": fragment["offset"], "size": fragment["size"], "duration": fragment["duration"],
                        "independent": bool(fragment.get("keyframe"))})
        else:
            out[-1]["size"] += fragment["size"]
            out[-1]["duration"] += fragment["duration"]
    return out


def playlist(uri: str, inits: list[dict[str, Any]], fragments: list[dict[str, Any]], finished: bool) -> str:
    """An HLS media playlist (version 7) over one recording file at ``uri``.

    A growing recording gets an EVENT playlist without ENDLIST, so players keep reloading it and a viewer can
    rewind a meeting that is still going on.
    """
    lines = ["#EXTM3U", "#EXT-X-VERSION:7"]
    groups = [(init, segments(frags)) for init, frags in _by_init(inits, fragments)]
    if not finished and groups:
        groups[-1][1].pop()  # the newest segment may still grow until the next keyframe: list it once it is whole
    all_segments = [s for _, segs in groups for s in segs]
    target = max([math.ceil(s["duration"]) for s in all_segments] + [1])
    lines += [f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0",
              f"#EXT-X-PLAYLIST-TYPE:{'VOD' if finished else 'EVENT'}"]
    if all_segments and all(s["independent"] for s in all_segments):
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for n, (init, segs) in enumerate(groups):
        if n:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f'#EXT-X-MAP:URI="{uri}",BYTERANGE="{init["size"]}@{init["offset"]}"')
        for segment in segs:
            lines += [f"#EXTINF:{segment['duration']:.6f},", f"#EXT-X-BYTERANGE:{segment['size']}@{segment['offset']}", uri]
    if finished:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _by_init(inits: list[dict[str, Any]], fragments: list[dict[str, Any]]) -> Iterable[tuple[dict, list]]:
    """Fragments grouped under the init segment that precedes them in the file."""
    for n, init in enumerate(inits):
        end = inits[n + 1]["offset"] if n + 1 < len(inits) else math.inf
        group = [f for f in fragments if init["offset"] < f["offset"] < end]
        if group:
            yield init, group
