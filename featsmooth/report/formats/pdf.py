"""``pdf``: every figure as a vector PDF with embedded TrueType text (``pdf.fonttype: 42``),
editable in Illustrator or Inkscape."""

from __future__ import annotations

from pathlib import Path

from featsmooth.report.registry import register


@register("pdf", "figures as PDF (editable text)", order=32, default=False)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.figures import save_all

    return save_all(ctx.figures, out, "pdf")
