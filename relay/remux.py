"""Fragmented recording -> regular MP4 (``moov`` first), without re-encoding, for tools that handle fMP4 poorly."""

from __future__ import annotations

import logging
from pathlib import Path

import av

log = logging.getLogger("relay.remux")


def remux(source: Path, target: Path | None = None) -> Path:
    """Copy every audio and video packet of ``source`` into ``target`` (default: ``<name>.remux.mp4``).

    A recording cut short by a crash ends in a partial fragment; the demuxer stops at its last whole sample,
    which is what we keep.
    """
    target = target or source.with_suffix(".remux.mp4")
    tmp = target.with_suffix(".tmp.mp4")
    packets = 0
    with av.open(str(source)) as inp, av.open(str(tmp), "w", format="mp4", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is None or not packet.size:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
            packets += 1
    tmp.replace(target)
    log.info("remuxed source=%s target=%s packets=%d", source, target, packets)
    return target
