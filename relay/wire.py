"""WebSocket frames built once and written to many sockets.

Server-to-client frames are unmasked and our viewer sockets use no compression, so a frame's bytes
are the same for every viewer: framing a fragment once turns a broadcast into plain socket writes.
"""

from __future__ import annotations

import struct

from .media import Fragment

TEXT, BINARY = 0x1, 0x2


def frame(payload: bytes, opcode: int = BINARY) -> bytes:
    """A final, unmasked frame (RFC 6455 section 5.2) holding ``payload``."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


def text_frame(text: str) -> bytes:
    return frame(text.encode(), TEXT)


class WireFragment:
    """A fragment and, once a viewer needs it, its WebSocket frame (built once for all viewers)."""

    __slots__ = ("fragment", "_frame")

    def __init__(self, fragment: Fragment) -> None:
        self.fragment = fragment
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = frame(self.fragment.data)
        return self._frame

    @property
    def random_access(self) -> bool:
        return self.fragment.random_access
