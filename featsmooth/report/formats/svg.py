"""``svg``: every figure as SVG with editable ``<text>`` (``svg.fonttype: none``)."""

from __future__ import annotations

from pathlib import Path

from featsmooth.report.registry import register


@register("svg", "figures as SVG (editable text)", order=31)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.figures import save_all

    return save_all(ctx.figures, out, "svg")
