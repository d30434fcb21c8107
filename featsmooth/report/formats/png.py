"""``png``: every figure as a 150 dpi PNG."""

from __future__ import annotations

from pathlib import Path

from featsmooth.report.registry import register


@register("png", "figures as PNG (150 dpi)", order=30)
def write(ctx, out: Path) -> list[Path]:
    written = []
    for item in ctx.figures:
        if item.figure is not None:
            (out / f"{item.name}.png").write_bytes(ctx.png(item))
            written.append(out / f"{item.name}.png")
    return written
