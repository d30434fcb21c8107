"""``tex``: paper-ready LaTeX tables (booktabs): ``summary.tex`` with the headline columns
and ``attacks.tex`` with one table per definition of attack success.

Each file holds complete ``table`` environments (caption and label included) and needs
``\\usepackage{booktabs}``. Numbers are rounded for print (3 decimals, percentages with 1);
``n.c.`` marks a radius at which no image is certified, ``--`` a value a run does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featsmooth.report.registry import register

NOT_CERTIFIED = "n.c."
MISSING = "--"
_HEADERS = {
    "run": "run",
    "setting": "setting",
    "model": "model",
    "sigma": r"$\sigma$",
    "n": "$n$",
    "images": "images",
    "S_low": r"mean $S_{\mathrm{low}}$",
    "clean_acc": r"clean acc.\ (\%)",
    "attack": "attack",
    "norm": "norm",
    "eps": r"$\varepsilon$",
    "count": "count",
    "asr": r"ASR (\%)",
    "adv_cosine": "mean adv.\\ cosine",
}
_NORMS = {"l2": r"$\ell_2$", "linf": r"$\ell_\infty$"}


def number(column: str, value: Any) -> str:
    """A table cell as printed in LaTeX (rounded; fractions as percentages)."""
    import math

    from featsmooth.report.text import latex_text, number_text

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if column == "norm":
        return _NORMS.get(str(value), latex_text(value))
    if isinstance(value, (bool, str)):
        return latex_text(value)
    if isinstance(value, int):
        return str(value)
    return number_text(column, float(value), percent="", digits=3)


def tabular(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    """A booktabs ``tabular``; per-radius columns (``fcsb@r``, ``acc_m@r``) grouped under one
    spanning header with the radii below it."""
    from featsmooth.report.text import TEXT_COLUMNS, latex_text, none_certified

    groups: list[tuple[str | None, list[str]]] = []
    for c in columns:
        stem = c.partition("@")[0] if "@" in c else None
        if stem is not None and groups and groups[-1][0] == stem:
            groups[-1][1].append(c)
        else:
            groups.append((stem, [c]))
    spec = "".join("l" if c in TEXT_COLUMNS else "r" for c in columns)
    top, rules, bottom = [], [], []
    col = 1
    for stem, cols in groups:
        if stem is None:
            top.append("")
            bottom.append(_HEADERS.get(cols[0], latex_text(cols[0])))
        else:
            if stem == "fcsb":
                head = "FCSB at $r$"
            else:
                head = rf"cert.\ acc.\ {latex_text(stem[4:])} (\%) at $r$"
            top.append(rf"\multicolumn{{{len(cols)}}}{{c}}{{{head}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + len(cols) - 1}}}")
            bottom += [c.partition("@")[2] for c in cols]
        col += len(cols)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if rules:
        lines += [" & ".join(top) + r" \\", "".join(rules)]
    lines += [" & ".join(bottom) + r" \\", r"\midrule"]
    for row in rows:
        cells = [
            NOT_CERTIFIED if none_certified(c, row) else number(c, row.get(c)) for c in columns
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def _table(body: list[str], caption: str, label: str) -> list[str]:
    return [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        *body,
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\end{table}",
    ]


@register("tex", "summary.tex, attacks.tex (LaTeX booktabs tables)", order=20)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.data import asr_groups, asr_text, primary_method
    from featsmooth.report.text import latex_text

    head = [
        "% " + " ".join(ctx.title.split()),
        r"% Written by featsmooth report; needs \usepackage{booktabs}.",
    ]
    method = primary_method(ctx.narrow)
    caption = r"Mean certified feature cosine (FCSB; an image without a certificate counts as 0)"
    if method is not None:
        caption += f" and certified accuracy of the {latex_text(method)} certificate"
    caption += (
        r" at $\ell_2$ radius $r$ (pixel units of $[0,1]$ images). "
        rf"{NOT_CERTIFIED}: no image certified; {MISSING}: not available."
    )
    written = []
    if ctx.headline:
        lines = head + _table(tabular(ctx.narrow, ctx.headline), caption, "tab:featsmooth-summary")
        (out / "summary.tex").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(out / "summary.tex")

    a_columns, a_rows = ctx.attacks
    if a_rows:
        single_run = len({r["run"] for r in a_rows}) == 1
        keep = [c for c in a_columns if c != "asr_definition" and not (single_run and c == "run")]
        lines = list(head)
        for i, (definition, group) in enumerate(asr_groups(a_rows).items()):
            name, meaning = asr_text(definition)
            caption = (
                f"Attack success rate ({latex_text(name)}): an attack succeeds when "
                rf"{latex_text(meaning)}. $\varepsilon$ in pixel units of $[0,1]$ images."
            )
            label = f"tab:featsmooth-asr-{i + 1}"
            lines += ["", *_table(tabular(keep, group), caption, label)]
        (out / "attacks.tex").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(out / "attacks.tex")
    return written
