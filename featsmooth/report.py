"""Tables and plots from run records: Markdown, CSV, PNG, SVG and one self-contained HTML page.

:func:`report` reads one or more run folders (see :mod:`featsmooth.records` for the
folder layout and the record schema) and writes into ``out_dir``:

* ``summary.md`` / ``summary.csv`` — one row per run: model, sigma, n, alpha, bound method,
  number of images, mean n used, mean S (``score_estimate``), mean S_low
  (``score_lower``), mean S_c,low (``clean_score_lower``), mean FCSB and the fraction of
  images with a certificate at each radius, clean accuracy, certified accuracy at each
  radius for each prediction certificate (margin / fcsb / cohen), overall attack success
  rate and seconds per image. Columns that no run has are left out.
* ``attacks.csv`` (and a table in ``summary.md``) — one row per run, setting, attack, norm
  and eps: count, ASR, mean adversarial cosine.
* figures ``certified_cosine``, ``certified_accuracy``, ``score_hist`` and ``asr`` as
  ``.png`` (150 dpi) and ``.svg`` — only those the records have data for.
* ``report.html`` — tables and figures (embedded PNG) in a single file that needs nothing
  else to display.

Conventions. **Mean FCSB counts an image without a certificate at that radius as 0**: FCSB
certifies ``cos >= B`` only when ``B >= 0`` and is stored as null otherwise, so the mean
is the average of ``max(B, 0)``; the column ``certified@r`` gives the fraction of images that
do have a certificate. Certified accuracy at radius r for a certificate method counts an
image when its prediction equals its label and its certified radius (null = abstain) is
at least r. Radii are l2 norms in pixel units of [0,1] images.

Figures are drawn with matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), so
producing a report never changes the pyplot backend of the calling program.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as _dt
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featsmooth.errors import InputError
from featsmooth.records import as_float, read_records, read_settings

FORMATS = ("md", "csv", "png", "svg", "html")
CERTIFICATE_METHODS = ("margin", "fcsb", "cohen")
_PREDICTION_FIELD = {"margin": "prediction", "fcsb": "fcsb_prediction", "cohen": "cohen_prediction"}
_METHOD_STYLE = {"margin": "-", "fcsb": "--", "cohen": ":"}
_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
SETTING_COLOURS = {"vanilla": "#7f7f7f", "fs": "#1f77b4", "fs+plugin": "#2ca02c"}
_SETTING_ORDER = ("vanilla", "fs", "fs+plugin")
RADIUS_LABEL = "l2 radius (pixel units)"
_DPI = 150
_RC = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "svg.fonttype": "none",
}


# --------------------------------------------------------------------------------------
# Loading


@dataclass
class RunData:
    """One run folder: its label, settings, certification and attack records."""

    label: str
    path: Path
    settings: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    colour: str = _PALETTE[0]

    def meta(self, name: str) -> Any:
        """A setting, else the first non-null value of that field in the records."""
        if self.settings.get(name) is not None:
            return self.settings[name]
        for record in (*self.records, *self.attacks):
            if record.get(name) is not None:
                return record[name]
        return None


def _is_attack(record: dict[str, Any]) -> bool:
    return "success" in record or "attack" in record


def load_runs(run_dirs: Iterable[str | os.PathLike[str]], labels: Sequence[str] | None = None):
    """Read run folders into :class:`RunData` (records split into certification/attack).

    Labels default to the settings' ``label`` or the folder name, made unique.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise InputError("give at least one run folder to report on")
    if labels is not None and len(labels) != len(dirs):
        raise InputError(f"got {len(labels)} labels for {len(dirs)} run folders")
    runs: list[RunData] = []
    seen: dict[str, int] = {}
    for i, path in enumerate(dirs):
        settings = read_settings(path)
        records = read_records(path)
        label = labels[i] if labels is not None else str(settings.get("label") or path.name)
        if label in seen:
            seen[label] += 1
            label = f"{label} ({seen[label]})"
        else:
            seen[label] = 1
        runs.append(
            RunData(
                label=label,
                path=path,
                settings=settings,
                records=[r for r in records if not _is_attack(r)],
                attacks=[r for r in records if _is_attack(r)],
                colour=_PALETTE[i % len(_PALETTE)],
            )
        )
    return runs


# --------------------------------------------------------------------------------------
# Statistics


def _floats(records: Iterable[dict[str, Any]], name: str) -> np.ndarray:
    values = [as_float(r.get(name)) for r in records if name in r]
    return np.asarray(values, dtype=np.float64)


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _rkey(radius: float) -> float:
    return round(float(radius), 9)


def per_radius(records: Iterable[dict[str, Any]], name: str = "fcsb") -> dict[float, np.ndarray]:
    """``{radius: per-image values}`` of a per-radius field (null -> NaN), over the records
    whose ``radii`` list contains that radius."""
    out: dict[float, list[float]] = {}
    for record in records:
        radii, values = record.get("radii"), record.get(name)
        if not isinstance(radii, list) or not isinstance(values, list):
            continue
        for r, v in zip(radii, values):
            out.setdefault(_rkey(as_float(r)), []).append(as_float(v))
    return {r: np.asarray(v, dtype=np.float64) for r, v in sorted(out.items())}


def certified_accuracy(
    records: Sequence[dict[str, Any]], method: str, radii: Iterable[float]
) -> np.ndarray | None:
    """Fraction of labelled records that ``method`` certifies correct at each radius.

    ``None`` when no record carries ``<method>_radius``. A prediction of -1 (abstain) or a
    null radius counts as not certified.
    """
    field_r = f"{method}_radius"
    rows = [r for r in records if field_r in r and r.get("label") is not None]
    if not rows:
        return None
    pred_field = _PREDICTION_FIELD[method]
    correct = np.array(
        [
            (r.get(pred_field, r.get("prediction")) == r["label"])
            and r.get(pred_field, r.get("prediction")) != -1
            for r in rows
        ]
    )
    radius = np.array([as_float(r.get(field_r)) for r in rows])
    radius = np.where(correct & ~np.isnan(radius), radius, -np.inf)
    grid = np.asarray(list(radii), dtype=np.float64)
    return (radius[:, None] >= grid[None, :]).mean(axis=0)


def _clean_accuracy(records: Sequence[dict[str, Any]]) -> float | None:
    rows = [r for r in records if r.get("label") is not None and "clean_prediction" in r]
    if not rows:
        return None
    return float(np.mean([r["clean_prediction"] == r["label"] for r in rows]))


def _radii(run: RunData) -> list[float]:
    found = set(per_radius(run.records))
    if not found and run.settings.get("radii"):
        found = {_rkey(as_float(r)) for r in run.settings["radii"]}
    return sorted(found)


def run_settings(run: RunData) -> list[str | None]:
    """The settings (``vanilla``, ``fs``, ``fs+plugin``, ...) a run's summary is split by.

    ``[None]`` (one row for the whole run) unless its certification records carry a
    ``setting`` field, as those of :func:`featsmooth.evaluate.evaluate` do: then every
    setting of its certification or attack records, in the usual order.
    """
    if not any(r.get("setting") is not None for r in run.records):
        return [None]
    found = {str(r["setting"]) for r in (*run.records, *run.attacks) if r.get("setting")}
    return sorted(found, key=_setting_rank)


def summarize(
    run: RunData, radii: Sequence[float] | None = None, setting: str | None = None
) -> dict[str, Any]:
    """The summary row of one run (column id -> value; ``None`` = not available).

    With ``setting``, only that setting's certification and attack records are counted and
    the row gets a ``setting`` column (certificates of different settings, e.g. ``fs`` and
    ``fs+plugin``, must never be averaged together).
    """
    if setting is not None:
        run = dataclasses.replace(
            run,
            records=[r for r in run.records if r.get("setting") == setting],
            attacks=[a for a in run.attacks if a.get("setting") == setting],
        )
    recs = run.records
    radii = list(radii) if radii is not None else _radii(run)
    n = run.meta("n")
    if n is None and recs:
        n_used = _floats(recs, "n_used")
        n = int(np.nanmax(n_used)) if np.isfinite(n_used).any() else None
    row: dict[str, Any] = {"run": run.label}
    if setting is not None:
        row["setting"] = setting
    row |= {
        "model": run.meta("model"),
        "sigma": run.meta("sigma"),
        "n": n,
        "alpha": run.meta("alpha"),
        "method": run.meta("method"),
        "images": len(recs)
        if recs
        else len({str(a.get("image", a.get("key"))) for a in run.attacks}),
        "n_used": _mean(_floats(recs, "n_used")),
        "S": _mean(_floats(recs, "score_estimate")),
        "S_low": _mean(_floats(recs, "score_lower")),
        "S_clean_low": _mean(_floats(recs, "clean_score_lower")),
    }
    fcsb = per_radius(recs, "fcsb")
    for r in radii:
        values = fcsb.get(_rkey(r))
        row[f"fcsb@{r:g}"] = (
            float(np.nan_to_num(values, nan=0.0).mean()) if values is not None else None
        )
    for r in radii:
        values = fcsb.get(_rkey(r))
        row[f"certified@{r:g}"] = float(np.isfinite(values).mean()) if values is not None else None
    row["clean_acc"] = _clean_accuracy(recs)
    for method in CERTIFICATE_METHODS:
        acc = certified_accuracy(recs, method, radii)
        for i, r in enumerate(radii):
            row[f"acc_{method}@{r:g}"] = None if acc is None else float(acc[i])
    successes = [bool(a["success"]) for a in run.attacks if a.get("success") is not None]
    row["asr"] = float(np.mean(successes)) if successes else None
    row["seconds"] = _mean(_floats(recs, "seconds"))
    return row


def _all_radii(runs: Sequence[RunData]) -> list[float]:
    return sorted({r for run in runs for r in _radii(run)})


def summary_table(runs: Sequence[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """Column ids (those with a value in some row) and one row per run, or per (run, setting)
    for runs whose records carry a setting (see :func:`run_settings`)."""
    radii = _all_radii(runs)
    rows = [summarize(run, radii, setting) for run in runs for setting in run_settings(run)]
    names = list(dict.fromkeys(c for row in rows for c in row))
    columns = [c for c in names if c == "run" or any(row.get(c) is not None for row in rows)]
    return columns, rows


def _setting_rank(setting: str) -> tuple[int, str]:
    return (_SETTING_ORDER.index(setting), "") if setting in _SETTING_ORDER else (99, setting)


def attack_table(runs: Sequence[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per (run, setting, attack, norm, eps): count, ASR, mean adversarial cosine."""
    rows = []
    for run in runs:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for a in run.attacks:
            key = (
                str(a.get("setting", "?")),
                str(a.get("attack", "?")),
                str(a.get("norm", "")),
                as_float(a.get("eps")),
            )
            groups.setdefault(key, []).append(a)
        for (setting, attack, norm, eps), items in sorted(
            groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], _setting_rank(kv[0][0]))
        ):
            succ = [bool(a["success"]) for a in items if a.get("success") is not None]
            rows.append(
                {
                    "run": run.label,
                    "setting": setting,
                    "attack": attack,
                    "norm": norm,
                    "eps": None if math.isnan(eps) else eps,
                    "count": len(items),
                    "asr": float(np.mean(succ)) if succ else None,
                    "adv_cosine": _mean(_floats(items, "adv_cosine")),
                }
            )
    columns = ["run", "setting", "attack", "norm", "eps", "count", "asr", "adv_cosine"]
    return columns, rows


# --------------------------------------------------------------------------------------
# Formatting


def _title(column: str) -> str:
    names = {
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
    }
    if column in names:
        return names[column]
    stem, _, radius = column.partition("@")
    if stem == "fcsb":
        return f"FCSB r={radius}"
    if stem == "certified":
        return f"certified r={radius}"
    if stem.startswith("acc_"):
        return f"cert. acc. {stem[4:]} r={radius}"
    return column


def _is_fraction(column: str) -> bool:
    return column in ("clean_acc", "asr") or column.startswith(("acc_", "certified@"))


def _fmt(column: str, value: Any) -> str:
    """Human-readable cell: fractions as percentages, scores with 4 decimals."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "–"
    if _is_fraction(column):
        return f"{100.0 * value:.1f}%"
    if column == "eps":
        return _eps_text(value)
    if column in ("sigma", "alpha"):
        return f"{value:g}"
    if column in ("n_used", "seconds"):
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return f"{value:.4f}"


def _eps_text(eps: float) -> str:
    k = eps * 255.0
    if eps > 0 and abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


_TEXT_COLUMNS = ("run", "model", "method", "setting", "attack", "norm")


def _markdown(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    head = "| " + " | ".join(_title(c) for c in columns) + " |"
    rule = "|" + "|".join("---" if c in _TEXT_COLUMNS else "--:" for c in columns) + "|"
    body = [
        "| " + " | ".join(_fmt(c, row.get(c)).replace("|", "\\|") for c in columns) + " |"
        for row in rows
    ]
    return "\n".join([head, rule, *body])


def _html_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(_title(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c, row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def write_csv(path: str | os.PathLike[str], columns: Sequence[str], rows) -> None:
    """Write rows as CSV with the column ids as header (full-precision numbers)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in columns])


# --------------------------------------------------------------------------------------
# Figures


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _dense_fcsb(
    records: Sequence[dict[str, Any]], grid: np.ndarray, score: str = "score_lower"
) -> np.ndarray | None:
    """Mean of max(FCSB, 0) over images on a fine radius grid, from a score bound and sigma.

    ``None`` unless every record has a finite ``score`` and ``sigma`` (then the stored
    per-radius values are plotted as they are)."""
    s_low = _floats(records, score)
    sigma = np.asarray([as_float(r.get("sigma")) for r in records if score in r])
    ok = np.isfinite(s_low) & np.isfinite(sigma) & (sigma > 0)
    if not ok.any() or ok.sum() < len(records):
        return None
    try:
        from featsmooth import bounds
    except ImportError:  # pragma: no cover - bounds is part of the package
        return None
    values = bounds.fcsb(np.clip(s_low[ok, None], -1, 1), grid[None, :], sigma[ok, None])
    return np.nan_to_num(values, nan=0.0).mean(axis=0)


def plot_certified_cosine(runs: Sequence[RunData]):
    """Mean certified cosine (FCSB, uncertified = 0) vs radius, one colour per run;
    dashed: the clean-feature reference (``fcsb_clean``). ``None`` without FCSB data."""
    data = [(run, per_radius(run.records, "fcsb")) for run in runs]
    if not any(d for _, d in data):
        return None
    with _rc():
        fig, ax = _figure()
        any_clean = False
        r_max = max(max(d) for _, d in data if d)
        grid = np.linspace(0.0, r_max, 241) if r_max > 0 else None
        for run, points in data:
            if not points:
                continue
            radii = np.array(list(points))
            means = np.array([np.nan_to_num(v, nan=0.0).mean() for v in points.values()])
            dense = _dense_fcsb(run.records, grid) if grid is not None else None
            if dense is not None:
                ax.plot(grid, dense, color=run.colour, lw=1.8, label=f"{run.label}")
                ax.plot(radii, means, "o", color=run.colour, ms=4)
            else:
                ax.plot(radii, means, "o-", color=run.colour, lw=1.8, ms=4, label=run.label)
            clean = per_radius(run.records, "fcsb_clean")
            if clean:
                any_clean = True
                c_radii = list(clean)
                c_means = [np.nan_to_num(v, nan=0.0).mean() for v in clean.values()]
                c_dense = (
                    _dense_fcsb(run.records, grid, "clean_score_lower")
                    if grid is not None
                    else None
                )
                label = f"{run.label}, clean-feature reference"
                if c_dense is not None:
                    ax.plot(grid, c_dense, "--", color=run.colour, lw=1.2, alpha=0.8, label=label)
                    ax.plot(c_radii, c_means, "s", color=run.colour, ms=3, alpha=0.8)
                else:
                    ax.plot(
                        c_radii,
                        c_means,
                        "s--",
                        color=run.colour,
                        lw=1.2,
                        ms=3,
                        alpha=0.8,
                        label=label,
                    )
        ax.set_xlabel(RADIUS_LABEL)
        ax.set_ylabel("mean certified cosine (FCSB)")
        ax.set_title("Certified feature cosine vs. radius")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(left=0.0)
        ax.legend(loc="upper right", frameon=True)
        note = "images without a certificate count as 0; markers: stored radii"
        if any_clean:
            note = "solid: cos(f̂(x), f̂(x+δ)); dashed: cos(f(x), f̂(x+δ)); " + note
        fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def plot_certified_accuracy(runs: Sequence[RunData]):
    """Certified accuracy (%) vs radius: colour = run, line style = certificate method."""
    curves = []
    r_max = 0.0
    for run in runs:
        for method in CERTIFICATE_METHODS:
            radius = _floats(
                [r for r in run.records if r.get("label") is not None], f"{method}_radius"
            )
            if radius.size:
                finite = radius[np.isfinite(radius)]
                r_max = max(r_max, float(finite.max()) if finite.size else 0.0)
                curves.append((run, method))
    if not curves:
        return None
    for run in runs:
        r_max = max(r_max, *(_radii(run) or [0.0]))
    r_max = r_max * 1.05 if r_max > 0 else 1.0
    grid = np.linspace(0.0, r_max, 401)
    methods = sorted({m for _, m in curves}, key=CERTIFICATE_METHODS.index)
    with _rc():
        fig, ax = _figure()
        for run, method in curves:
            acc = certified_accuracy(run.records, method, grid)
            label = run.label if len(methods) == 1 else f"{run.label} · {method}"
            ax.plot(grid, 100.0 * acc, _METHOD_STYLE[method], color=run.colour, lw=1.8, label=label)
        ax.set_xlabel(RADIUS_LABEL)
        ax.set_ylabel("certified accuracy (%)")
        title = "Certified accuracy vs. radius"
        if len(methods) == 1:
            title += f" ({methods[0]} certificate)"
        ax.set_title(title)
        ax.set_ylim(0.0, 102.0)
        ax.set_xlim(0.0, r_max)
        ax.legend(loc="upper right", frameon=True)
        fig.tight_layout()
    return fig


def plot_score_hist(runs: Sequence[RunData]):
    """Histogram of the estimated robustness score S per run (means as dashed lines)."""
    data = [(run, _floats(run.records, "score_estimate")) for run in runs]
    data = [(run, v[np.isfinite(v)]) for run, v in data]
    data = [(run, v) for run, v in data if v.size]
    if not data:
        return None
    from matplotlib.ticker import MaxNLocator

    lo = min(float(v.min()) for _, v in data)
    hi = max(float(v.max()) for _, v in data)
    pad = max(0.02 * (hi - lo), 0.005)
    bins = np.linspace(max(lo - pad, -1.0), min(hi + pad, 1.0), 31)
    with _rc():
        fig, ax = _figure()
        for run, values in data:
            ax.hist(values, bins=bins, color=run.colour, alpha=0.25)
            ax.hist(values, bins=bins, color=run.colour, histtype="step", lw=1.5, label=run.label)
            ax.axvline(float(values.mean()), color=run.colour, ls="--", lw=1.0)
        ax.set_xlabel("Gaussian robustness score S = ‖f̂(x)‖ (unitless)")
        ax.set_ylabel("images")
        ax.set_ylim(0.0, ax.get_ylim()[1] * 1.1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Distribution of the robustness score S (dashed: mean)")
        ax.legend(loc="best", frameon=True)
        fig.tight_layout()
    return fig


def plot_asr(runs: Sequence[RunData]):
    """Attack success rate (%) per attack configuration, one bar per setting
    (vanilla / FS / FS+plug-in, consistent colours)."""
    _, rows = attack_table(runs)
    rows = [r for r in rows if r["asr"] is not None]
    if not rows:
        return None
    many_runs = len({r["run"] for r in rows}) > 1
    groups: list[tuple[Any, ...]] = []
    for r in rows:
        g = (r["run"], r["attack"], r["norm"], r["eps"])
        if g not in groups:
            groups.append(g)
    settings = sorted({r["setting"] for r in rows}, key=_setting_rank)
    extra = iter(c for c in _PALETTE if c not in SETTING_COLOURS.values())
    colours = {s: SETTING_COLOURS.get(s) or next(extra, "#333333") for s in settings}
    width = 0.8 / len(settings)
    with _rc():
        fig, ax = _figure(max(6.4, 1.3 * len(groups) + 2.5), 4.2)
        for j, setting in enumerate(settings):
            xs, ys = [], []
            for i, g in enumerate(groups):
                for r in rows:
                    if (r["run"], r["attack"], r["norm"], r["eps"]) == g and r[
                        "setting"
                    ] == setting:
                        xs.append(i + (j - (len(settings) - 1) / 2) * width)
                        ys.append(100.0 * r["asr"])
            bars = ax.bar(xs, ys, width * 0.92, color=colours[setting], label=setting)
            texts = [f"{y:.0f}%" if abs(y - round(y)) < 0.05 else f"{y:.1f}%" for y in ys]
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
        labels = []
        for run_label, attack, norm, eps in groups:
            text = f"{attack}\n{norm} ε={_eps_text(eps) if eps is not None else '?'}"
            labels.append(f"{text}\n{run_label}" if many_runs else text)
        ax.set_xticks(range(len(groups)), labels)
        ax.set_ylabel("attack success rate (%)")
        ax.set_xlabel("attack (budget in pixel units)")
        ax.set_title("Attack success rate: vanilla vs. feature-space smoothing")
        ax.set_ylim(0.0, 110.0)
        ax.grid(axis="x", visible=False)
        ax.legend(title="setting", loc="upper right", frameon=True)
        fig.tight_layout()
    return fig


class _rc:
    """Context manager applying the report's matplotlib style (restored afterwards)."""

    def __enter__(self) -> None:
        import matplotlib

        self._ctx = matplotlib.rc_context(_RC)
        self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


FIGURES = {
    "certified_cosine": (
        plot_certified_cosine,
        "Mean certified feature cosine (FCSB) vs. l2 radius.",
    ),
    "certified_accuracy": (plot_certified_accuracy, "Certified zero-shot accuracy vs. l2 radius."),
    "score_hist": (plot_score_hist, "Histogram of the Gaussian robustness score S."),
    "asr": (plot_asr, "Attack success rate per setting."),
}


# --------------------------------------------------------------------------------------
# The report


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _html_page(
    title: str,
    runs: Sequence[RunData],
    tables: Sequence[tuple[str, str]],
    figures: Sequence[tuple[str, str, bytes]],
) -> str:
    from featsmooth.versions import featsmooth_version

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>"
        "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;"
        "margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "figure{margin:1.5em 0}img{max-width:100%;height:auto}"
        "figcaption{color:#555;font-size:0.9em}pre{background:#f7f7f7;padding:0.8em;"
        "overflow-x:auto;font-size:0.8em}.note{color:#555;font-size:0.9em}"
        ".scroll{overflow-x:auto}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">featsmooth {html.escape(featsmooth_version())}, generated '
        f"{html.escape(_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}. "
        "Radii and ε are in pixel units of [0,1] images. Mean FCSB counts images without a "
        "certificate as 0.</p>",
    ]
    for heading, table in tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", table]
    if figures:
        parts.append("<h2>Figures</h2>")
    for _, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Run settings</h2>")
    for run in runs:
        text = json.dumps(run.settings, indent=2, ensure_ascii=False)
        parts.append(
            f"<details><summary>{html.escape(run.label)}</summary>"
            f"<pre>{html.escape(text)}</pre></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def report(
    run_dirs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] = FORMATS,
    *,
    labels: Sequence[str] | None = None,
    title: str = "featsmooth report",
) -> dict[str, list[Path]]:
    """Write summary tables, figures and an HTML page for one or more run folders.

    Args:
        run_dirs: run folder(s) written by :class:`featsmooth.records.RunWriter`.
        out_dir: output folder (created).
        formats: any of ``"md", "csv", "png", "svg", "html"``.
        labels: legend/table names of the runs (default: settings ``label`` or folder name).
        title: heading of the Markdown and HTML pages.

    Returns:
        ``{format: [written files]}``. Figures without data (e.g. no attack records) are
        skipped.

    Raises:
        InputError: unknown format or no run folder; RecordError: unreadable run folder.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise InputError(f"unknown report format(s) {unknown}; choose from {', '.join(FORMATS)}")
    runs = load_runs(run_dirs, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {f: [] for f in formats}

    columns, rows = summary_table(runs)
    a_columns, a_rows = attack_table(runs)
    cert_cols = [c for c in columns if not c.startswith("acc_") and c not in ("clean_acc", "asr")]
    acc_cols = ["run", *[c for c in columns if c == "setting"]]
    acc_cols += [c for c in columns if c.startswith("acc_") or c == "clean_acc"]
    tables_md: list[tuple[str, str]] = [("Certified feature cosine", _markdown(cert_cols, rows))]
    tables_html = [("Certified feature cosine", _html_table(cert_cols, rows))]
    if any(c.startswith("acc_") or c == "clean_acc" for c in acc_cols):
        tables_md.append(("Accuracy", _markdown(acc_cols, rows)))
        tables_html.append(("Accuracy", _html_table(acc_cols, rows)))
    if a_rows:
        tables_md.append(("Attacks", _markdown(a_columns, a_rows)))
        tables_html.append(("Attacks", _html_table(a_columns, a_rows)))

    if "csv" in formats:
        write_csv(out / "summary.csv", columns, rows)
        written["csv"].append(out / "summary.csv")
        if a_rows:
            write_csv(out / "attacks.csv", a_columns, a_rows)
            written["csv"].append(out / "attacks.csv")

    figures: list[tuple[str, str, bytes]] = []
    need_png = "png" in formats or "html" in formats
    for name, (plot, caption) in FIGURES.items():
        fig = plot(runs)
        if fig is None:
            continue
        if need_png:
            png = _png_bytes(fig)
            figures.append((name, caption, png))
            if "png" in formats:
                (out / f"{name}.png").write_bytes(png)
                written["png"].append(out / f"{name}.png")
        if "svg" in formats:
            fig.savefig(out / f"{name}.svg", format="svg", metadata={"Date": None})
            written["svg"].append(out / f"{name}.svg")

    if "md" in formats:
        lines = [f"# {title}", ""]
        lines.append(
            "Radii and ε are l2/l∞ norms in pixel units of [0,1] images. Mean FCSB counts "
            "images without a certificate at that radius as 0; `certified` is the fraction "
            "that has one."
        )
        for heading, table in tables_md:
            lines += ["", f"## {heading}", "", table]
        if "png" in formats and figures:
            lines += ["", "## Figures", ""]
            lines += [f"![{caption}]({name}.png)" for name, caption, _ in figures]
        (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written["md"].append(out / "summary.md")
    if "html" in formats:
        page = _html_page(title, runs, tables_html, figures)
        (out / "report.html").write_text(page, encoding="utf-8")
        written["html"].append(out / "report.html")
    return written


__all__ = [
    "CERTIFICATE_METHODS",
    "FIGURES",
    "FORMATS",
    "RunData",
    "attack_table",
    "certified_accuracy",
    "load_runs",
    "per_radius",
    "plot_asr",
    "plot_certified_accuracy",
    "plot_certified_cosine",
    "plot_score_hist",
    "report",
    "run_settings",
    "summarize",
    "summary_table",
    "write_csv",
]
