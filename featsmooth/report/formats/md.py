"""``md``: ``summary.md``, a narrow Markdown summary; every other column folded away
(``<details>``), figures linked when PNGs are written, states where a plot would be empty."""

from __future__ import annotations

from pathlib import Path

from featsmooth.report.registry import register

NOTE = (
    "Radii and ε are l2/l∞ norms in pixel units of [0,1] images. Mean FCSB counts images "
    "without a certificate at that radius as 0 (*none certified*: no image has one)."
)


def details(summary: str, body: str) -> list[str]:
    """A folded block (blank lines keep the Markdown inside it rendered)."""
    return ["", f"<details><summary>{summary}</summary>", "", body, "", "</details>"]


@register("md", "summary.md (narrow summary, details folded)", order=80)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.data import asr_groups, asr_text
    from featsmooth.report.text import markdown_table, md_text

    rows = ctx.summary[1]
    lines = [f"# {md_text(ctx.title)}", "", NOTE, "", "## Summary", ""]
    if ctx.headline:
        lines.append(markdown_table(ctx.narrow, ctx.headline))
    else:
        lines.append("No certification records: these runs hold attacks only.")
    acc_columns, notes = ctx.accuracy
    if notes:
        lines += ["", *[f"- {md_text(n)}" for n in notes]]
    a_columns, a_rows = ctx.attacks
    if a_rows:
        lines += ["", "## Attacks"]
        keep = [c for c in a_columns if c != "asr_definition"]
        for definition, group in asr_groups(a_rows).items():
            name, meaning = asr_text(definition)
            lines += ["", f"**{md_text(name)}**: success means {md_text(meaning)}.", ""]
            lines.append(markdown_table(keep, group))
    shown = [i for i in ctx.figures if i.figure is None or "png" in ctx.formats]
    if shown:
        lines += ["", "## Figures", ""]
        for item in shown:
            if item.figure is None:
                lines += [f"> **{md_text(item.title)}**: {md_text(item.state or '')}", ""]
            else:
                lines += [f"![{md_text(item.caption)}]({item.name}.png)", ""]
        lines.pop()
    if ctx.headline:
        lines += details("All certificate columns", markdown_table(ctx.certificate_columns, rows))
    if acc_columns:
        lines += details(
            "Certified accuracy by certificate method and radius",
            markdown_table(acc_columns, rows),
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out / "summary.md"]
