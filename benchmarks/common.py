"""Shared helpers for the benchmark processes: the synthetic fMP4 stream, /proc readings, limits, ports.

The benchmark stream is real fragmented MP4 from the project's own encoder (``relay.testsrc.encode_fmp4``,
H.264 + AAC) whose fragments are replayed in a loop with three things rewritten per fragment:
- the ``mfhd`` sequence number = the fragment's index in the benchmark stream (1, 2, 3, ...): the marker
  the viewer clients read (bytes 20..24 of a fragment that starts with its ``moof``) to match a delivered
  fragment with the bot's send time;
- every ``tfdt`` (base media decode time), shifted by the clip's duration per loop, so the timeline keeps going;
- the ``mdat`` padded with bytes no sample references, up to ``bitrate * fragment / 8`` bytes per fragment.
The relays never decode, so a fragment of the right size with a real ``moof`` is all they can tell apart from a
camera; a browser would play it too (unreferenced ``mdat`` bytes are legal and ignored).
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the relay package, without installing it
    sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it). Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:.0f}s")


# -- /proc ------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status: VmRSS, VmHWM, ..."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return proc_status_kb(pid, "VmRSS")


def hwm_kb(pid: int) -> int:
    return proc_status_kb(pid, "VmHWM")


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (numpy array or list)."""
    n = len(sorted_values)
    if not n:
        return float("nan")
    k = min(n - 1, max(0, int(round(q / 100 * n + 0.5)) - 1))
    return float(sorted_values[k])


# -- the synthetic stream -----------------------------------------------------------------------------
def _children(buf: bytes, start: int, end: int):
    pos = start
    while pos < end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        yield kind, pos, pos + header, pos + size
        pos += size


class SyntheticStream:
    """Init segment + an endless sequence of fragments of ``bitrate * fragment / 8`` bytes each."""

    def __init__(self, bitrate: float, fragment: float, *, fps: int = 20, clip_fragments: int = 6) -> None:
        from relay.media import FragmentAssembler
        from relay.testsrc import encode_fmp4

        gop = round(fps * fragment)
        if gop < 1 or abs(gop - fps * fragment) > 1e-6:
            raise ValueError(f"fragment duration {fragment}s is not a whole number of frames at {fps} fps")
        self.fragment_seconds = fragment
        self.fps = fps
        data = encode_fmp4(seconds=fragment * (clip_fragments + 1), width=320, height=240, fps=fps, gop=gop)
        assembler = FragmentAssembler()
        events = assembler.feed(data)
        self.init = events[0].data
        self.info = events[0].info
        # The first fragment carries the encoder's priming; the loop uses the regular ones after it.
        fragments = [e for e in events[1:] if hasattr(e, "runs")][1:]
        self.target = max(int(bitrate * fragment / 8), max(f.size for f in fragments) + 16)
        self._templates = []
        shift: dict[int, int] = {}
        for f in fragments:
            for run in f.runs:
                shift[run.track_id] = shift.get(run.track_id, 0) + run.duration
        self._loop_shift = shift
        for f in fragments:
            self._templates.append(self._template(f.data))
        self._pad = os.urandom(self.target)

    def _template(self, data: bytes):
        """Positions to patch in one fragment: the mfhd sequence, each traf's tfdt and track id."""
        moof = next(c for c in _children(data, 0, len(data)) if c[0] == b"moof")
        mdat = next(c for c in _children(data, 0, len(data)) if c[0] == b"mdat")
        if moof[1] != 0 or mdat[3] != len(data) or mdat[2] - mdat[1] != 8:
            raise ValueError("expected a fragment of exactly moof + mdat (8-byte header)")
        seq_at, tfdts = None, []
        for kind, _, payload, end in _children(data, moof[2], moof[3]):
            if kind == b"mfhd":
                seq_at = payload + 4
            elif kind == b"traf":
                track_id, tfdt = None, None
                for ck, _, cp, _ in _children(data, payload, end):
                    if ck == b"tfhd":
                        (track_id,) = struct.unpack_from(">I", data, cp + 4)
                    elif ck == b"tfdt":
                        version = data[cp]
                        tfdt = (cp + 4, version)
                tfdts.append((track_id, tfdt))
        if seq_at != 20:
            raise ValueError("mfhd is not the moof's first child")
        decode = []
        for track_id, (at, version) in tfdts:
            fmt = ">Q" if version == 1 else ">I"
            (value,) = struct.unpack_from(fmt, data, at)
            decode.append((at, fmt, value, track_id))
        head = data[: mdat[1]]
        payload = data[mdat[2]:]
        return head, payload, decode

    def fragment(self, index: int) -> bytes:
        """Fragment ``index`` (0-based) of the endless stream; its mfhd sequence number is ``index + 1``."""
        loop, k = divmod(index, len(self._templates))
        head, payload, decode = self._templates[k]
        head = bytearray(head)
        struct.pack_into(">I", head, 20, (index + 1) & 0xFFFFFFFF)
        for at, fmt, value, track_id in decode:
            struct.pack_into(fmt, head, at, value + loop * self._loop_shift[track_id])
        pad = self.target - len(head) - 8 - len(payload)
        return b"".join((head, struct.pack(">I4s", 8 + len(payload) + pad, b"mdat"), payload, self._pad[:pad]))


def fragment_seq(payload_start: bytes) -> int | None:
    """The marker of a benchmark fragment from its first 24 bytes (None for anything else)."""
    if len(payload_start) >= 24 and payload_start[4:8] == b"moof":
        return int.from_bytes(payload_start[20:24], "big")
    return None
