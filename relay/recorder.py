"""Recordings: exactly the bytes a bot sent, in order, one file per ingest connection.

Bytes go to the OS as they arrive (one ``write`` per batch, from a worker thread), so a crash of
the server loses nothing that reached it; the file is a plain fragmented MP4 that stays playable up
to its last complete fragment. A JSON sidecar beside it indexes the fragments; it is rewritten
atomically (temp file + rename), so it is never half-written.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from .config import Settings
from .media import Fragment, InitSegment

log = logging.getLogger("relay.recorder")


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None


class Recording:
    def __init__(
        self,
        root: Path,
        bot_id: str,
        settings: Settings,
        start_message: dict[str, Any] | None,
        peer: str,
        on_error: Callable[[str], None] = lambda message: None,
        metrics: Any = None,
        storage: Any = None,
    ) -> None:
        self.bot_id = bot_id
        self.settings = settings
        self.started = datetime.now(UTC)
        self.directory = root / bot_id
        self.path = self.directory / (self.started.strftime("%Y-%m-%dT%H-%M-%SZ") + ".mp4")
        self.start_message = start_message or {}
        self.peer = peer
        self.on_error = on_error
        self.metrics = metrics
        self.storage = storage
        self.bytes_written = 0
        self.bytes_lost = 0
        self.error: str | None = None
        self.resumable = False  # the error is one that more disk space cures (full disk, file too large)
        self.failed_at = 0.0
        self.shift = 0  # stream offset of this file's first byte, for a file resumed mid-stream
        self.ended: datetime | None = None
        self.end_reason: str | None = None
        self.inits: list[dict[str, Any]] = []
        self.fragments: list[dict[str, Any]] = []
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._file: Any = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._sidecar_dirty = True
        self._sidecar_at = -math.inf  # the first sidecar goes out with the first bytes
        self._task = asyncio.create_task(self._run(), name=f"recorder:{bot_id}")

    @property
    def sidecar_path(self) -> Path:
        return self.path.with_suffix(".json")

    # -- called from the ingest, never blocking on the disk ---------------------------------
    async def write(self, data: bytes) -> None:
        """Queue bytes for the file; waits only while the disk is behind by more than the backlog setting."""
        if self.error is not None:
            self.bytes_lost += len(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._wake.set()
        if self._pending_bytes > self.settings.recorder_backlog:
            self._room.clear()
            await self._room.wait()

    def add_init(self, init: InitSegment, offset: int | None = None) -> None:
        at = init.offset - self.shift if offset is None else offset
        self.inits.append({"offset": at, "size": len(init.data)} | init.info.describe())
        self._sidecar_dirty = True

    def add_fragment(self, fragment: Fragment) -> None:
        self.fragments.append(fragment.index_entry(self.shift))
        self._sidecar_dirty = True

    async def close(self, reason: str) -> None:
        """Write out everything queued, then the final sidecar."""
        self.end_reason = reason
        self.ended = datetime.now(UTC)
        self._closing = True
        self._sidecar_dirty = True
        self._wake.set()
        await self._task
        log.info(
            "recording closed bot_id=%s path=%s bytes=%d fragments=%d reason=%r%s",
            self.bot_id, self.path, self.bytes_written, len(self.fragments), reason,
            f" error={self.error!r} bytes_lost={self.bytes_lost}" if self.error else "",
        )

    # -- the writer task: the only code that touches this recording's files -----------------
    async def _run(self) -> None:
        interval = self.settings.sidecar_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            while self._pending and self.error is None:
                if self.storage is not None and self.storage.low_space:
                    self._fail(OSError(errno.ENOSPC, "free disk space is below the min_free_space setting"))
                    break
                batch, self._pending = self._pending, []
                size = sum(len(b) for b in batch)
                if self.bytes_written + size > self.settings.max_recording_size:
                    self._pending = batch + self._pending
                    self._fail(OSError(errno.EFBIG, "the recording reached the max_recording_size setting"),
                               resumable=False)
                    break
                try:
                    await asyncio.to_thread(self._write_batch, batch)
                    self.bytes_written += size
                    self._pending_bytes -= size
                    if self.metrics is not None:
                        self.metrics.recording_bytes.inc(size)
                except OSError as exc:
                    self._fail(exc)
                if self._pending_bytes <= self.settings.recorder_backlog:
                    self._room.set()
            due = self._closing or time.monotonic() - self._sidecar_at >= interval
            if self._sidecar_dirty and due and self._file is not None:
                self._sidecar_dirty = False
                # jittered, so that a hundred recordings started together do not rewrite in the same tick
                self._sidecar_at = time.monotonic() + random.uniform(-0.2, 0.2) * interval
                try:
                    await asyncio.to_thread(self._write_sidecar, self.sidecar())
                except OSError as exc:
                    self._fail(exc)
            if self._closing and not self._pending:
                await asyncio.to_thread(self._close_file)
                return

    def _fail(self, exc: OSError, resumable: bool = True) -> None:
        """Stop writing this file (the live relay goes on) and say so everywhere."""
        self.resumable = resumable and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        self.failed_at = time.monotonic()
        self.bytes_lost += self._pending_bytes
        self._pending.clear()
        self._pending_bytes = 0
        self._room.set()
        if self.error is None:
            if self.metrics is not None:
                self.metrics.recording_errors.inc()
            self.error = f"{exc.strerror or exc} ({self.path})"
            log.error("recording failed bot_id=%s path=%s error=%r: the live relay continues", self.bot_id, self.path, self.error)
            self.on_error(f"recording: {self.error}")

    def _write_batch(self, batch: list[bytes]) -> None:
        if self._file is None:
            self._file = self._create()
        self._file.writelines(batch)
        self._file.flush()

    def _create(self) -> Any:
        self.directory.mkdir(parents=True, exist_ok=True)
        stem, n = self.path.stem, 1
        while True:
            try:
                handle = open(self.path, "xb")
            except FileExistsError:
                self.path = self.directory / f"{stem}-{n}.mp4"
                n += 1
                continue
            log.info("recording bot_id=%s path=%s", self.bot_id, self.path)
            return handle

    def _close_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc)
        try:
            self._file.close()
        except OSError:
            pass  # a failed write leaves the refused bytes in the buffer: they are already counted as lost
        try:
            self._write_sidecar(self.sidecar())
        except OSError as exc:
            log.error("sidecar not written bot_id=%s path=%s error=%s", self.bot_id, self.sidecar_path, exc)

    def _write_sidecar(self, content: dict[str, Any]) -> None:
        tmp = self.sidecar_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, separators=(",", ":")))
        os.replace(tmp, self.sidecar_path)

    # -- what the sidecar and the status say ------------------------------------------------
    def on_disk(self, index: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The index entries whose bytes are in the file already (the writer thread runs behind the index)."""
        return [entry for entry in index if entry["offset"] + entry["size"] <= self.bytes_written]

    def sidecar(self) -> dict[str, Any]:
        return {
            "bot_id": self.bot_id,
            "file": self.path.name,
            "peer": self.peer,
            "started_at": _iso(self.started),
            "ended_at": _iso(self.ended),
            "end_reason": self.end_reason,
            "start_message": self.start_message,
            "bytes": self.bytes_written,
            "error": self.error,
            "bytes_lost": self.bytes_lost,
            "inits": self.on_disk(self.inits),
            "fragments": self.on_disk(self.fragments),
        }

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self.bytes_written,
            "pending": self._pending_bytes,
            "fragments": len(self.fragments),
            "error": self.error,
            "bytes_lost": self.bytes_lost,
        }
