"""``html``: ``report.html``, one self-contained page (figures embedded as PNG data URIs,
no script, no network): a narrow summary, attack tables per definition of success,
figures or the states that replace empty ones, and everything else folded
(``<details>``): all columns, accuracy by method, run settings, the other files."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import struct
from pathlib import Path

from featsmooth.report.registry import register

STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:60rem;"
    "margin:1.5rem auto;padding:0 1rem;color:#222;line-height:1.45}"
    "h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:1.8rem;"
    "border-bottom:1px solid #e3e3e3;padding-bottom:.2rem}"
    "table{border-collapse:collapse;margin:.6rem 0;font-size:.82rem;"
    "font-variant-numeric:tabular-nums}"
    "th,td{border-bottom:1px solid #e3e3e3;padding:3px 7px;text-align:right;white-space:nowrap}"
    "thead th{border-bottom:2px solid #999;font-weight:600;white-space:normal;"
    "vertical-align:bottom;min-width:3.2rem}"
    ".t{text-align:left}td.none{color:#8a5a00;font-style:italic}"
    ".scroll{overflow-x:auto}"
    "figure{margin:1.2rem 0}img{display:block;max-width:100%;height:auto}"
    "figcaption{color:#555;font-size:.85rem}"
    ".state{background:#fff8e5;border-left:4px solid #e0a800;padding:.6rem .9rem;"
    "margin:1rem 0;font-size:.9rem}"
    ".note{color:#555;font-size:.85rem}"
    "details{margin:.6rem 0}summary{cursor:pointer;font-weight:600}"
    "pre{background:#f6f6f6;padding:.7rem;overflow-x:auto;font-size:.78rem}"
    "ul.notes{font-size:.85rem;color:#8a5a00}"
)


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


@register("html", "report.html (self-contained page)", order=90)
def write(ctx, out: Path) -> list[Path]:
    from featsmooth.report.data import asr_groups, asr_text
    from featsmooth.report.text import html_table
    from featsmooth.versions import featsmooth_version

    esc = html.escape
    rows = ctx.summary[1]
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(ctx.title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{esc(ctx.title)}</h1>",
        f'<p class="note">featsmooth {esc(featsmooth_version())}, {esc(when)}. '
        "Radii and ε are in pixel units of [0,1] images. Mean FCSB counts an image without "
        "a certificate as 0; <i>none certified</i>: no image has one at that radius.</p>",
        "<h2>Summary</h2>",
        html_table(ctx.narrow, ctx.headline)
        if ctx.headline
        else '<p class="note">No certification records: these runs hold attacks only.</p>',
    ]
    acc_columns, notes = ctx.accuracy
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    a_columns, a_rows = ctx.attacks
    if a_rows:
        parts.append("<h2>Attacks</h2>")
        keep = [c for c in a_columns if c != "asr_definition"]
        for definition, group in asr_groups(a_rows).items():
            name, meaning = asr_text(definition)
            parts.append(f"<p><b>{esc(name)}</b>: success means {esc(meaning)}.</p>")
            parts.append(html_table(keep, group))
    if ctx.figures:
        parts.append("<h2>Figures</h2>")
    for item in ctx.figures:
        if item.figure is None:
            parts.append(f'<p class="state"><b>{esc(item.title)}</b>: {esc(item.state)}</p>')
            continue
        png = ctx.png(item)
        width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR: no upscaling
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(item.caption)}" width="{width}" height="{height}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(item.caption)}</figcaption></figure>"
        )
    parts.append("<h2>Details</h2>")
    if ctx.headline:
        parts.append(_details("All certificate columns", html_table(ctx.certificate_columns, rows)))
    if acc_columns:
        parts.append(
            _details(
                "Certified accuracy by certificate method and radius",
                html_table(acc_columns, rows),
            )
        )
    for run in ctx.runs:
        text = json.dumps(run.settings, indent=2, ensure_ascii=False, default=str)
        parts.append(_details(f"Settings of {run.label}", f"<pre>{esc(text)}</pre>"))
    files = [p for p in ctx.files() if p.parent == out]
    if files:
        links = "".join(
            f'<li><a href="{esc(os.path.basename(p))}">{esc(p.name)}</a></li>' for p in files
        )
        parts.append(_details("Other files of this report", f"<ul>{links}</ul>"))
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts) + "\n", encoding="utf-8")
    return [out / "report.html"]
