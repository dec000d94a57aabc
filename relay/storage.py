"""The recordings disk: free space (recording stops below a floor; the live relay goes on) and retention."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .config import Settings

log = logging.getLogger("relay.storage")


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.recordings)
        self.free: int | None = None
        self.low_space = False
        self.checked_at = 0.0  # monotonic time of the last free-space check
        self.deleted = 0

    def _existing(self) -> Path:
        path = self.root.resolve()
        while not path.exists():
            path = path.parent
        return path

    def check_space(self) -> bool:
        """Refresh ``free`` and ``low_space``; blocking (a statvfs), so call it in a thread."""
        self.free = shutil.disk_usage(self._existing()).free
        self.checked_at = time.monotonic()
        low = self.free < self.settings.min_free_space
        if low != self.low_space:
            if low:
                log.error("free space %d bytes below min_free_space=%d: recording stops, the live relay goes on",
                          self.free, self.settings.min_free_space)
            else:
                log.info("free space %d bytes is above min_free_space again: new recordings may start", self.free)
        self.low_space = low
        return not low

    def space_returned_since(self, moment: float) -> bool:
        """Has a free-space check after ``moment`` found enough space? (A full disk is not retried blindly.)"""
        return self.checked_at > moment and not self.low_space

    def writable(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".readyz-"):
                return True
        except OSError:
            return False

    def apply_retention(self, active: set[Path]) -> list[Path]:
        """Delete recordings (and sidecars) older than ``retention_days``, never one being written."""
        if self.settings.retention_days <= 0 or not self.root.is_dir():
            return []
        cutoff = time.time() - self.settings.retention_days * 86400
        removed = []
        for path in self.root.glob("*/*.mp4"):
            try:
                if path in active or path.stat().st_mtime >= cutoff:
                    continue
                for victim in (path, path.with_suffix(".json"), path.with_suffix(".remux.mp4")):
                    victim.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("retention could not delete path=%s error=%s", path, exc)
                continue
            removed.append(path)
            log.info("retention deleted path=%s (older than %g days)", path, self.settings.retention_days)
        self.deleted += len(removed)
        return removed

    def status(self) -> dict[str, Any]:
        return {"free_bytes": self.free, "min_free_space": self.settings.min_free_space, "low_space": self.low_space,
                "retention_days": self.settings.retention_days, "deleted_by_retention": self.deleted}

    async def watch(self, active_paths: Callable[[], set[Path]]) -> None:
        """Check space and retention every ``storage_check_interval`` seconds, off the event loop."""
        while True:
            try:
                await asyncio.to_thread(self.check_space)
                await asyncio.to_thread(self.apply_retention, active_paths())
            except OSError as exc:
                log.error("storage check failed: %s", exc)
            await asyncio.sleep(self.settings.storage_check_interval)
