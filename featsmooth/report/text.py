"""Column titles and cell text shared by the table formats (Markdown, HTML, LaTeX, CSV)."""

from __future__ import annotations

import csv
import html
import math
import os
from collections.abc import Sequence
from typing import Any

NONE_CERTIFIED = "none certified"
MISSING = "–"

_NAMES = {
    "run": "run",
    "model": "model",
    "sigma": "σ",
    "n": "n",
    "alpha": "α",
    "method": "bound",
    "images": "images",
    "n_used": "mean n used",
    "S": "mean S",
    "S_low": "mean S_low",
    "S_clean_low": "mean S_c,low",
    "clean_acc": "clean acc.",
    "asr": "ASR",
    "seconds": "s / image",
    "setting": "setting",
    "attack": "attack",
    "norm": "norm",
    "eps": "ε",
    "count": "count",
    "adv_cosine": "mean adv. cosine",
    "asr_definition": "success means",
}
TEXT_COLUMNS = ("run", "model", "method", "setting", "attack", "norm", "asr_definition")


def title(column: str) -> str:
    """Human column title of a column id (``fcsb@0.25`` -> ``FCSB r=0.25``)."""
    if column in _NAMES:
        return _NAMES[column]
    stem, _, radius = column.partition("@")
    if stem == "fcsb":
        return f"FCSB r={radius}"
    if stem == "certified":
        return f"certified r={radius}"
    if stem.startswith("acc_"):
        return f"cert. acc. {stem[4:]} r={radius}"
    return column


def is_fraction(column: str) -> bool:
    """Columns holding fractions (shown as percentages)."""
    return column in ("clean_acc", "asr") or column.startswith(("acc_", "certified@"))


def eps_text(eps: float) -> str:
    """``16/255`` for multiples of 1/255, else ``%g``."""
    k = eps * 255.0
    if eps > 0 and abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f"{round(k)}/255"
    return f"{eps:g}"


def number_text(column: str, value: float, *, percent: str = "%", digits: int = 4) -> str:
    """A number as every table format prints it: fractions as percentages (followed by
    ``percent``), budgets as ``k/255``, sigma and alpha short, counts and times with one
    decimal, other scores with ``digits`` decimals; NaN as :data:`MISSING`."""
    if math.isnan(value):
        return MISSING
    if is_fraction(column):
        return f"{100.0 * value:.1f}{percent}"
    if column == "eps":
        return eps_text(value)
    if column in ("sigma", "alpha"):
        return f"{value:g}"
    if column in ("n_used", "seconds"):
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return f"{value:.{digits}f}"


def fmt(column: str, value: Any) -> str:
    """Human-readable cell: fractions as percentages, scores with 4 decimals."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, str, int)):
        return str(value)
    return number_text(column, float(value))


def none_certified(column: str, row: dict[str, Any]) -> bool:
    """A mean-FCSB cell of a row in which no image has a certificate at that radius."""
    if not column.startswith("fcsb@"):
        return False
    share = row.get("certified@" + column.partition("@")[2])
    return share is not None and share == 0


def cell(column: str, row: dict[str, Any]) -> str:
    """:func:`fmt` of a row's value, with the explicit ``none certified`` state."""
    if none_certified(column, row):
        return NONE_CERTIFIED
    return fmt(column, row.get(column))


def csv_value(value: Any) -> str:
    """Full-precision CSV cell (empty for null/NaN)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def write_delimited(
    path: str | os.PathLike[str], columns: Sequence[str], rows, delimiter: str = ","
) -> None:
    """Write rows with the column ids as header (full-precision numbers)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_value(row.get(c)) for c in columns])


def write_csv(path: str | os.PathLike[str], columns: Sequence[str], rows) -> None:
    """Write rows as CSV with the column ids as header (full-precision numbers)."""
    write_delimited(path, columns, rows, ",")


def md_text(text: str) -> str:
    """Text for a Markdown table cell: HTML in names (an image or folder called
    ``<img src=x onerror=...>``) shown as text, ``|`` kept inside its cell."""
    return html.escape(text, quote=False).replace("|", "\\|")


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table (text columns left, numbers right)."""
    head = "| " + " | ".join(md_text(title(c)) for c in columns) + " |"
    rule = "|" + "|".join("---" if c in TEXT_COLUMNS else "--:" for c in columns) + "|"
    body = ["| " + " | ".join(md_text(cell(c, row)) for c in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def html_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """An HTML table in a horizontally scrolling box (text columns left, numbers right)."""

    def td(c: str, row: dict[str, Any]) -> str:
        cls = ["t"] if c in TEXT_COLUMNS else []
        if none_certified(c, row):
            cls.append("none")
        attr = f' class="{" ".join(cls)}"' if cls else ""
        return f"<td{attr}>{html.escape(cell(c, row))}</td>"

    head = "".join(
        f"<th{' class=t' if c in TEXT_COLUMNS else ''}>{html.escape(title(c))}</th>"
        for c in columns
    )
    body = "".join("<tr>" + "".join(td(c, row) for c in columns) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "σ": r"$\sigma$",
    "α": r"$\alpha$",
    "ε": r"$\varepsilon$",
    "≥": r"$\geq$",
}


def latex_text(text: str) -> str:
    """Text with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
