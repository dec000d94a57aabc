"""Pure fragmented-MP4 logic: no I/O, so every piece can be tested on bytes directly."""

from .assembler import Event, Fragment, FragmentAssembler, InitSegment
from .boxes import Box, BoxSplitter, MediaError
from .init import InitInfo, Track, parse_init

__all__ = [
    "Box",
    "BoxSplitter",
    "Event",
    "Fragment",
    "FragmentAssembler",
    "InitInfo",
    "InitSegment",
    "MediaError",
    "Track",
    "parse_init",
]
