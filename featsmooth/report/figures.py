"""The report's figures, drawn on matplotlib's Agg canvas (``matplotlib.figure.Figure``), so
producing a report never changes the pyplot backend of the calling program.

Every figure is a :class:`FigureItem`: a figure, or a *state* (``"No image certified ..."``)
where a plot would be empty; pages show the state as text and no image file is written.
Runs are told apart by colour **and** marker; near-identical runs get thinner lines drawn
over thicker ones and markers offset along the curve, so no curve hides another. Attack
success rates get one chart per definition of success, with the legend outside the bars.

:func:`save` applies the report style (``svg.fonttype: none``: SVG text stays editable
``<text>``; ``pdf.fonttype: 42``: embedded TrueType) while the file is written.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featsmooth.records import as_float
from featsmooth.report.data import (
    CERTIFICATE_METHODS,
    PALETTE,
    RunData,
    asr_groups,
    asr_text,
    attack_table,
    by_setting,
    certified_accuracy,
    floats,
    per_radius,
    run_radii,
    setting_rank,
)
from featsmooth.report.text import eps_text

SETTING_COLOURS = {"vanilla": "#7f7f7f", "fs": "#1f77b4", "fs+plugin": "#2ca02c"}
METHOD_STYLE = {"margin": "-", "fcsb": "--", "cohen": ":"}
RADIUS_LABEL = "l2 radius (pixel units)"
DPI = 150
RC = {
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
    "font.family": "sans-serif",
    "svg.fonttype": "none",
    "svg.hashsalt": "featsmooth",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


@dataclass
class FigureItem:
    """One figure of the report: ``figure`` is ``None`` when ``state`` says why."""

    name: str
    title: str
    caption: str
    figure: Any = None
    state: str | None = None


def style():
    """A context manager applying the report's matplotlib style (restored afterwards)."""
    import matplotlib

    return matplotlib.rc_context(RC)


def save(fig, target, fmt: str) -> None:
    """``fig.savefig`` in the report style (``svg.fonttype`` etc. must hold at save time)."""
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    with style():
        fig.savefig(target, format=fmt, dpi=DPI, metadata=metadata.get(fmt))


def save_all(figures, out, fmt: str) -> list:
    """Save each drawn figure of ``figures`` (items with ``.name``/``.figure``) as
    ``out/<name>.<fmt>``; returns the paths written."""
    written = []
    for item in figures:
        if item.figure is not None:
            save(item.figure, out / f"{item.name}.{fmt}", fmt)
            written.append(out / f"{item.name}.{fmt}")
    return written


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    save(fig, buf, "png")
    return buf.getvalue()


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _line_width(rank: int) -> float:
    """Later runs draw thinner lines on top of earlier ones: equal curves stay visible."""
    return max(2.6 - 0.45 * rank, 1.0)


def _near_identical(series: Sequence[np.ndarray], tol: float = 0.02) -> bool:
    """Whether two of the (equal-length) curves are within ``tol`` everywhere."""
    for i in range(len(series)):
        for j in range(i):
            a, b = series[i], series[j]
            if a.shape == b.shape and np.nanmax(np.abs(a - b), initial=0.0) <= tol:
                return True
    return False


def _dense_fcsb(
    records: Sequence[dict[str, Any]], grid: np.ndarray, score: str = "score_lower"
) -> np.ndarray | None:
    """Mean of max(FCSB, 0) over images on a fine radius grid, from a score bound and sigma.

    ``None`` unless every record has a finite ``score`` and ``sigma`` (then the stored
    per-radius values are plotted as they are)."""
    s_low = floats(records, score)
    sigma = np.asarray([as_float(r.get("sigma")) for r in records if score in r])
    if s_low.size != len(records) or sigma.size != s_low.size:
        return None
    ok = np.isfinite(s_low) & np.isfinite(sigma) & (sigma > 0)
    if not ok.all():
        return None
    from featsmooth import bounds

    values = bounds.fcsb(np.clip(s_low[:, None], -1, 1), grid[None, :], sigma[:, None])
    return np.nan_to_num(values, nan=0.0).mean(axis=0)


def plot_certified_cosine(runs: Sequence[RunData]) -> FigureItem | None:
    """Mean certified cosine (FCSB, uncertified = 0) vs radius; colour and marker = run;
    dashed: the clean-feature reference (``fcsb_clean``). ``None`` without FCSB data."""
    item = FigureItem(
        "certified_cosine",
        "Certified feature cosine vs. radius",
        "Mean certified feature cosine (FCSB) vs. l2 radius; images without a certificate "
        "count as 0.",
    )
    data = [(run, per_radius(run.records, "fcsb")) for run in runs]
    data = [(run, d) for run, d in data if d]
    if not data:
        return None
    if all(not np.isfinite(v).any() for _, d in data for v in d.values()):
        images = sum(len(run.records) for run, _ in data)
        item.state = (
            f"No image certified: none of the {images} image(s) has a feature certificate "
            "(FCSB) at any stored radius: the score bound S_low is too low for these radii. "
            "More samples (n) tighten it; smaller radii may be certified."
        )
        return item
    r_max = max(max(d) for _, d in data)
    stored_radii = sorted({r for _, d in data for r in d})
    grid = np.unique(np.r_[np.linspace(0.0, r_max, 241), stored_radii]) if r_max > 0 else None
    stored = [np.array([np.nan_to_num(v, nan=0.0).mean() for v in d.values()]) for _, d in data]
    close = _near_identical(stored)
    with style():
        fig, ax = _figure()
        any_clean = False
        for rank, ((run, points), means) in enumerate(zip(data, stored)):
            radii = np.array(list(points))
            certified = any(np.isfinite(v).any() for v in points.values())
            label = run.label if certified else f"{run.label} (none certified)"
            lw = _line_width(rank) if close else 1.8
            dense = _dense_fcsb(run.records, grid) if grid is not None else None
            if dense is not None:  # the exact curve, markers at the stored radii
                x, y = grid, dense
                marks = [int(np.argmin(np.abs(grid - r))) for r in radii]
            else:
                x, y, marks = radii, means, list(range(len(radii)))
            ax.plot(x, y, color=run.colour, lw=lw, marker=run.marker, markevery=marks, ms=5,
                    mec="white", mew=0.6, zorder=2 + rank, label=label)  # fmt: skip
            clean = per_radius(run.records, "fcsb_clean")
            if clean:
                any_clean = True
                c_radii = np.array(list(clean))
                c_means = [np.nan_to_num(v, nan=0.0).mean() for v in clean.values()]
                c_dense = (
                    _dense_fcsb(run.records, grid, "clean_score_lower")
                    if grid is not None
                    else None
                )
                if c_dense is not None:
                    x, y = grid, c_dense
                    marks = [int(np.argmin(np.abs(grid - r))) for r in c_radii]
                else:
                    x, y, marks = c_radii, c_means, list(range(len(c_radii)))
                ax.plot(x, y, "--", color=run.colour, lw=1.1, alpha=0.85, marker=run.marker,
                        markevery=marks, ms=4, mfc="white", zorder=2 + rank,
                        label=f"{run.label}, clean-feature reference")  # fmt: skip
        ax.set_xlabel(RADIUS_LABEL)
        ax.set_ylabel("mean certified cosine (FCSB)")
        ax.set_title(item.title)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(left=0.0)
        ax.legend(loc="best", frameon=True)
        note = "images without a certificate count as 0; markers: stored radii"
        if any_clean:
            note = "solid: cos(f̂(x), f̂(x+δ)); dashed: cos(f(x), f̂(x+δ)); " + note
        fig.get_layout_engine().set(h_pad=0.06)
        fig.supxlabel(note, fontsize=7, color="0.4", x=0.01, ha="left")
    item.figure = fig
    return item


def plot_certified_accuracy(runs: Sequence[RunData]) -> FigureItem | None:
    """Certified accuracy (%) vs radius: colour and marker = run, line style = certificate
    method. A state instead of a plot when nothing is certified."""
    item = FigureItem(
        "certified_accuracy",
        "Certified accuracy vs. radius",
        "Certified zero-shot accuracy vs. l2 radius.",
    )
    curves = []
    r_max = 0.0
    for run in runs:
        labelled = [r for r in run.records if r.get("label") is not None]
        for method in CERTIFICATE_METHODS:
            radius = floats(labelled, f"{method}_radius")
            if radius.size:
                finite = radius[np.isfinite(radius)]
                r_max = max(r_max, float(finite.max()) if finite.size else 0.0)
                curves.append((run, method, len(labelled)))
    if not curves:
        return None
    for run in runs:
        r_max = max(r_max, *(run_radii(run) or [0.0]))
    r_max = r_max * 1.05 if r_max > 0 else 1.0
    grid = np.linspace(0.0, r_max, 401)
    accs = [certified_accuracy(run.records, method, grid) for run, method, _ in curves]
    methods = sorted({m for _, m, _ in curves}, key=CERTIFICATE_METHODS.index)
    if all(not np.any(a) for a in accs):
        images = sum(n for _, m, n in curves if m == methods[0])
        item.state = (
            f"No image certified: none of the {images} labelled image(s) has a correct "
            f"prediction certified by the {', '.join(methods)} certificate(s) at any radius, "
            "so certified accuracy is 0% everywhere."
        )
        return item
    close = _near_identical([100.0 * a for a in accs], tol=1.0)
    many_runs = len({run.label for run, _, _ in curves}) > 1
    step = len(grid) // 8
    with style():
        fig, ax = _figure()
        for rank, ((run, method, _), acc) in enumerate(zip(curves, accs)):
            if len(methods) == 1:
                label = run.label
            else:
                label = f"{run.label} · {method}" if many_runs else f"{method} certificate"
            if not np.any(acc):
                label += " (none certified)"
            # markers tell runs apart: spread along the curve, a different phase per curve,
            # only where the curve is above 0
            phase = 1 + (rank * step) // len(curves)
            marks = [i for i in range(phase, len(grid), step) if acc[i] > 0] if many_runs else []
            ax.plot(grid, 100.0 * acc, METHOD_STYLE[method], color=run.colour,
                    lw=_line_width(rank) if close else 1.8,
                    marker=run.marker if many_runs else None, ms=5,
                    markevery=marks, mec="white", mew=0.6, label=label,
                    zorder=2 + rank)  # fmt: skip
        ax.set_xlabel(RADIUS_LABEL)
        ax.set_ylabel("certified accuracy (%)")
        title = item.title
        if len(methods) == 1:
            title += f" ({methods[0]} certificate)"
        ax.set_title(title)
        ax.set_ylim(0.0, 102.0)
        ax.set_xlim(0.0, r_max)
        ax.legend(loc="best", frameon=True)
    item.figure = fig
    return item


def plot_score_hist(runs: Sequence[RunData]) -> FigureItem | None:
    """Histogram of the estimated robustness score S per run (means as dashed lines)."""
    data = [(run, floats(run.records, "score_estimate")) for run in runs]
    data = [(run, v[np.isfinite(v)]) for run, v in data]
    data = [(run, v) for run, v in data if v.size]
    if not data:
        return None
    from matplotlib.ticker import MaxNLocator

    lo = min(float(v.min()) for _, v in data)
    hi = max(float(v.max()) for _, v in data)
    pad = max(0.02 * (hi - lo), 0.005)
    bins = np.linspace(max(lo - pad, -1.0), min(hi + pad, 1.0), 31)
    hatches = ("", "//", "\\\\", "..", "xx", "oo")
    with style():
        fig, ax = _figure()
        for rank, (run, values) in enumerate(data):
            ax.hist(values, bins=bins, color=run.colour, alpha=0.2,
                    hatch=hatches[rank % len(hatches)])  # fmt: skip
            ax.hist(values, bins=bins, color=run.colour, histtype="step",
                    lw=_line_width(rank), label=run.label)  # fmt: skip
            ax.axvline(float(values.mean()), color=run.colour, ls="--", lw=1.0)
        ax.set_xlabel("Gaussian robustness score S = ‖f̂(x)‖ (unitless)")
        ax.set_ylabel("images")
        ax.set_ylim(0.0, ax.get_ylim()[1] * 1.1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Distribution of the robustness score S (dashed: mean)")
        ax.legend(loc="best", frameon=True)
    return FigureItem(
        "score_hist",
        "Robustness score S",
        "Histogram of the Gaussian robustness score S.",
        figure=fig,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def plot_asr(runs: Sequence[RunData]) -> list[FigureItem]:
    """Attack success rate (%) per attack configuration, one chart per definition of
    success, one bar per setting (vanilla / FS / FS+plug-in, consistent colours)."""
    _, rows = attack_table(runs)
    rows = [r for r in rows if r["asr"] is not None]
    items: list[FigureItem] = []
    for definition, group in asr_groups(rows).items():
        name, meaning = asr_text(definition)
        slug = _slug(name)
        while any(i.name == f"asr_{slug}" for i in items):
            slug += "_"
        item = FigureItem(
            f"asr_{slug}",
            f"Attack success rate ({name})",
            "Attack success rate per setting (one chart per definition of success).",
            figure=_asr_chart(group, name, meaning),
        )
        items.append(item)
    return items


def _asr_chart(rows: Sequence[dict[str, Any]], name: str, meaning: str):
    many_runs = len({r["run"] for r in rows}) > 1
    groups: list[tuple[Any, ...]] = []
    for r in rows:
        g = (r["run"], r["attack"], r["norm"], r["eps"])
        if g not in groups:
            groups.append(g)
    settings = sorted({r["setting"] for r in rows}, key=setting_rank)
    extra = iter(c for c in PALETTE if c not in SETTING_COLOURS.values())
    colours = {s: SETTING_COLOURS.get(s) or next(extra, "#333333") for s in settings}
    width = min(0.8 / len(settings), 0.3)
    with style():
        fig, ax = _figure(max(5.2, 1.2 * len(groups) + 2.8), 4.2)
        for j, setting in enumerate(settings):
            xs, ys = [], []
            for i, g in enumerate(groups):
                for r in rows:
                    if (r["run"], r["attack"], r["norm"], r["eps"]) == g and (
                        r["setting"] == setting
                    ):
                        xs.append(i + (j - (len(settings) - 1) / 2) * width)
                        ys.append(100.0 * r["asr"])
            bars = ax.bar(xs, ys, width * 0.92, color=colours[setting], label=setting)
            texts = [f"{y:.0f}%" if abs(y - round(y)) < 0.05 else f"{y:.1f}%" for y in ys]
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
        labels = []
        for run_label, attack, norm, eps in groups:
            text = f"{attack}\n{norm} ε={eps_text(eps) if eps is not None else '?'}"
            labels.append(f"{text}\n{run_label}" if many_runs else text)
        ax.set_xticks(range(len(groups)), labels)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel("attack success rate (%)")
        ax.set_xlabel("attack (budget in pixel units)")
        ax.set_title(f"Attack success rate ({name})")
        ax.set_ylim(0.0, 108.0)
        ax.grid(axis="x", visible=False)
        # outside the axes: a legend never covers a bar or its label
        fig.legend(title="setting", loc="outside right upper", frameon=False)
        fig.supxlabel(f"success: {meaning}", fontsize=7, color="0.4", x=0.01, ha="left")
    return fig


def make_figures(runs: Sequence[RunData]) -> list[FigureItem]:
    """Every figure the records have data for, in report order."""
    curves = by_setting(runs)
    items = [
        plot_certified_cosine(curves),
        plot_certified_accuracy(curves),
        plot_score_hist(curves),
        *plot_asr(runs),
    ]
    return [item for item in items if item is not None]
