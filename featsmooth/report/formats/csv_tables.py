"""``csv``: the summary, attack and per-image tables as CSV (full-precision numbers)."""

from __future__ import annotations

from pathlib import Path

from featsmooth.report.registry import register


@register("csv", "summary.csv, attacks.csv, images.csv (per image)", order=10)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.text import write_csv

    written = []
    tables = {"summary": ctx.summary, "attacks": ctx.attacks, "images": ctx.images}
    for name, (columns, rows) in tables.items():
        if name != "summary" and not rows:
            continue
        write_csv(out / f"{name}.csv", columns, rows)
        written.append(out / f"{name}.csv")
    return written
