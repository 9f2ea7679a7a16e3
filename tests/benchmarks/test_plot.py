"""benchmarks/plot.py: the bench's table drawn to a PNG (the real matplotlib, off screen)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import BenchReport
from benchmarks.plot import plot_report


def test_the_table_is_drawn_with_a_bar_per_row(tmp_path: Path) -> None:
    """Ratios and rates become bars, a section a panel; a row with neither is left out; the file is a PNG."""
    pytest.importorskip("matplotlib")
    report = BenchReport("c.jsonl", 500)
    report.add("encoders", "embedfleet run, in-process", 30.1, 3000, ratio=1.0)
    report.add("encoders", "embedfleet run, encoder processes", 31.1, 3000, ratio=0.97)
    report.add("pipeline", "no-op encoder, chunks of 256", 9.5, 100_000)
    report.add("run", "command start to first chunk encoded", 2.9)
    out = plot_report(report, tmp_path / "bench.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_nothing_to_plot_is_said() -> None:
    """A report whose rows have neither ratio nor rate refuses, rather than draw an empty picture."""
    pytest.importorskip("matplotlib")
    report = BenchReport("c.jsonl", 1)
    report.add("run", "start", 1.0)
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_report(report, Path("unused.png"))
