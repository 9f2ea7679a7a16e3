"""`embedfleet bench --plot out.png`: the bench's table as a picture, so a reader sees the ratios.

One horizontal bar per row: its ratio to the section's baseline where it has one (the
baseline's own row at 1.0x, a line at 1.0), else its records per second, each section in a
panel of its own. matplotlib (the `bench` extra) draws it off screen (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedfleet.extras import require

from .common import BenchReport


def _value(row: dict[str, Any]) -> tuple[float, str] | None:
    if row.get("ratio") is not None:
        return float(row["ratio"]), "x"
    if row.get("records_per_s") is not None:
        return float(row["records_per_s"]), "rec/s"
    return None


def plot_report(report: BenchReport, out: Path) -> Path:
    """Draw `report` to `out` (PNG); returns the path. Rows with neither a ratio nor a rate
    (a start-up time alone) are left out: the table has them."""
    require("matplotlib", "bench", "bench --plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections: dict[str, list[tuple[str, float, str]]] = {}
    for row in report.rows:
        found = _value(row)
        if found is not None:
            sections.setdefault(row["section"], []).append((row["what"], *found))
    if not sections:
        raise ValueError("nothing to plot: no row has a ratio or a rate")
    heights = [max(1.2, 0.45 * len(rows) + 0.8) for rows in sections.values()]
    figure, axes = plt.subplots(len(sections), 1, figsize=(11, sum(heights)),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, (section, rows) in zip(axes[:, 0], sections.items(), strict=True):
        labels = [what if len(what) <= 70 else what[:67] + "..." for what, _, _ in rows]
        values = [value for _, value, _ in rows]
        unit = rows[0][2] if len({u for _, _, u in rows}) == 1 else ""
        bars = axis.barh(range(len(rows)), values, color="#4c72b0")
        axis.set_yticks(range(len(rows)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(f"{section}" + (" (ratio to the section's baseline)" if unit == "x" else ""), fontsize=10,
                       loc="left")
        if unit == "x":
            axis.axvline(1.0, color="#c44e52", linewidth=1)
        for bar, (_, value, each_unit) in zip(bars, rows, strict=True):
            axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                      f" {value:,.2f}{each_unit}" if each_unit == "x" else f" {value:,.0f} {each_unit}",
                      va="center", fontsize=8)
        axis.margins(x=0.15)
    figure.suptitle(f"embedfleet bench: {report.corpus} ({report.records} records)", fontsize=11)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
