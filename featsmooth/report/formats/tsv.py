"""``tsv``: ``images.tsv``, one row per certified image, tab-separated in the column style
of locuslab/smoothing (``idx label predict radius correct time``, then featsmooth's
fields), so analysis scripts written for that format read it as they are."""

from __future__ import annotations

from pathlib import Path

from featsmooth.report.registry import register


@register("tsv", "images.tsv (per image, locuslab/smoothing columns)", order=11, default=False)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.text import write_delimited

    columns, rows = ctx.images
    write_delimited(out / "images.tsv", columns, rows, "\t")
    return [out / "images.tsv"]
