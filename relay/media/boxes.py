"""ISO BMFF box framing: an incremental splitter for live byte streams and a reader for nested boxes.

Network chunks never respect box boundaries, so the splitter keeps only the incomplete tail and
hands out whole top-level boxes as soon as their last byte arrives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

_HEADER = struct.Struct(">I4s")
_LARGE = struct.Struct(">Q")


class MediaError(ValueError):
    """The byte stream is not the fragmented MP4 we can relay; the message says why.

    Raised by a ``feed``, it also carries what that call completed before the bad bytes (``boxes`` from a
    ``BoxSplitter``, ``events`` from a ``FragmentAssembler``), so a chunk holding a whole fragment and then
    garbage loses no whole fragment.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.boxes: list[Box] = []
        self.events: list = []


@dataclass(frozen=True, slots=True)
class Box:
    """A whole top-level box: its type, all of its bytes (header included) and its stream offset."""

    type: str
    data: bytes
    offset: int

    @property
    def size(self) -> int:
        return len(self.data)


def _box_type(raw: bytes) -> str:
    """A box type is four printable ASCII characters (the (c) of iTunes atoms aside); anything else is garbage."""
    if not all(32 <= b < 127 or b == 0xA9 for b in raw):
        raise MediaError(f"not an MP4 box: type bytes {raw.hex()}")
    return raw.decode("latin-1")


def parse_header(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[str, int, int] | None:
    """Read the box header at ``pos``: (type, header size, box size), or None when the header is not all there.

    A box size of 0 ("to the end") is returned as 0 for the caller to resolve.
    """
    if end - pos < 8:
        return None
    size, raw_type = _HEADER.unpack_from(buf, pos)
    box_type = _box_type(raw_type)
    header = 8
    if size == 1:
        if end - pos < 16:
            return None
        (size,) = _LARGE.unpack_from(buf, pos + 8)
        header = 16
        if size < header:
            raise MediaError(f"box {box_type!r}: impossible 64-bit size {size}")
    elif size != 0 and size < 8:
        raise MediaError(f"box {box_type!r}: impossible size {size}")
    return box_type, header, size


def iter_children(buf: bytes, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    """Walk the boxes packed in ``buf[start:end]``, yielding (type, payload start, box end)."""
    pos = start
    while pos < end:
        head = parse_header(buf, pos, end)
        if head is None:
            raise MediaError(f"truncated box header at offset {pos}")
        box_type, header, size = head
        box_end = end if size == 0 else pos + size
        if box_end > end:
            raise MediaError(f"box {box_type!r} at offset {pos} overruns its parent ({size} bytes)")
        yield box_type, pos + header, box_end
        pos = box_end


def find_child(buf: bytes, start: int, end: int, box_type: str) -> tuple[int, int] | None:
    """(payload start, end) of the first child of the given type, or None."""
    for child, payload, box_end in iter_children(buf, start, end):
        if child == box_type:
            return payload, box_end
    return None


class BoxSplitter:
    """Turns arbitrary chunks of a live fMP4 stream into whole top-level boxes.

    Memory is bounded by ``max_box_size``: a box announcing (or growing to) more than that is an error,
    so a hostile or broken sender cannot make us buffer without bound.
    """

    def __init__(self, max_box_size: int = 64 * 1024 * 1024) -> None:
        self.max_box_size = max_box_size
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._open_ended: str | None = None  # type of a size-0 box that runs to the end of the stream

    @property
    def buffered(self) -> int:
        """Bytes held for a box that is not complete yet."""
        return len(self._buf)

    @property
    def position(self) -> int:
        """Total bytes fed so far."""
        return self._offset + len(self._buf)

    def feed(self, chunk: bytes) -> list[Box]:
        """Add the next bytes of the stream; return the boxes they complete, in order."""
        self._buf += chunk
        if self._open_ended is not None:
            self._check_size(self._open_ended, len(self._buf))
            return []
        boxes: list[Box] = []
        buf = self._buf
        pos = 0
        try:
            while True:
                head = parse_header(buf, pos, len(buf))
                if head is None:
                    break
                box_type, _, size = head
                if size == 0:
                    self._open_ended = box_type
                    self._check_size(box_type, len(buf) - pos)
                    break
                self._check_size(box_type, size)
                if len(buf) - pos < size:
                    break
                boxes.append(Box(box_type, bytes(buf[pos : pos + size]), self._offset + pos))
                pos += size
        except MediaError as exc:
            exc.boxes = boxes
            raise
        finally:
            if pos:
                del buf[:pos]
                self._offset += pos
        return boxes

    def finish(self) -> list[Box]:
        """The stream ended: return a box that ran to its end; raise if a box was cut short."""
        if self._open_ended is not None:
            box = Box(self._open_ended, bytes(self._buf), self._offset)
            self._offset += len(self._buf)
            self._buf.clear()
            self._open_ended = None
            return [box]
        if self._buf:
            raise MediaError(f"stream ended inside a box ({len(self._buf)} bytes of it)")
        return []

    def _check_size(self, box_type: str, size: int) -> None:
        if size > self.max_box_size:
            raise MediaError(f"box {box_type!r} of {size} bytes exceeds the limit of {self.max_box_size}")
