"""The benchmark runs from a clean checkout and measures what it says (numbers belong to its report, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_fanout_benchmark_delivers_every_fragment_to_every_viewer(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/fanout.py", "--quick", "--scenario", "a", "--systems", "relay,floor",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| relay" in run.stdout and "| floor" in run.stdout, run.stdout
    results = json.loads(out.read_text())["scenarios"]["a"]
    for system in ("relay", "floor"):
        [result] = results[system]
        assert result["errors"] == [], result["errors"]
        assert result["connected"] == result["viewers"] > 0
        assert result["sustained"] == result["viewers"], f"{system}: every viewer got every fragment in time"
        assert result["pongs"] == result["pings"] > 0
        assert result["delay_samples"] > 0  # CPU may round to 0 clock ticks in a run this small
