"""Reports: tables hold the right numbers, every format renders, figures are consistent."""

from __future__ import annotations

import csv
import math
import struct

import numpy as np
import pytest
from scipy import stats

from featsmooth.errors import InputError
from featsmooth.records import RunWriter
from featsmooth.report import (
    certified_accuracy,
    load_runs,
    plot_certified_cosine,
    report,
)

RADII = [0.0, 0.5]
LOWER_A = [0.95, 0.9, 0.6, 0.3]


def fcsb_formula(s_low: float, radius: float, sigma: float) -> float:
    """B(S, r) = 2 Phi(Phi^-1((1+S)/2) - r/sigma) - 1, NaN when negative (no certificate)."""
    b = 2 * stats.norm.cdf(stats.norm.ppf((1 + s_low) / 2) - radius / sigma) - 1
    return b if b >= 0 else math.nan


def make_runs(tmp_path):
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    settings = {"model": "tiny", "n": 1000, "alpha": 0.001, "method": "betting", "radii": RADII}
    with RunWriter(run_a, {**settings, "sigma": 0.25}, environment=False) as run:
        for i, low in enumerate(LOWER_A):
            run.write(
                {
                    "key": f"a{i}",
                    "sigma": 0.25,
                    "n_used": 500 + 100 * i,
                    "score_estimate": low + 0.02,
                    "score_lower": low,
                    "radii": RADII,
                    "fcsb": [fcsb_formula(low, r, 0.25) for r in RADII],
                    "label": i,
                    "prediction": [0, 1, -1, 5][i],
                    "clean_prediction": [0, 1, 2, 0][i],
                    "margin_radius": [0.6, 0.2, None, 1.0][i],
                    "seconds": 2.0,
                }
            )
        for i in range(4):
            for setting, success in (("vanilla", i < 3), ("fs", i < 1)):
                run.write(
                    {
                        "key": f"a{i}/{setting}",
                        "setting": setting,
                        "attack": "apgd",
                        "norm": "linf",
                        "eps": 16 / 255,
                        "success": success,
                        "adv_cosine": 0.5 if setting == "vanilla" else 0.9,
                    }
                )
    with RunWriter(run_b, {**settings, "sigma": 0.5}, environment=False) as run:
        for i, low in enumerate([0.99, 0.97]):
            run.write(
                {
                    "key": f"b{i}",
                    "sigma": 0.5,
                    "score_estimate": low,
                    "score_lower": low,
                    "radii": RADII,
                    "fcsb": [fcsb_formula(low, r, 0.5) for r in RADII],
                }
            )
    return run_a, run_b


def expected_mean_fcsb(lows, radius, sigma):
    return float(np.mean([np.nan_to_num(fcsb_formula(s, radius, sigma)) for s in lows]))


def test_report_renders_every_format_with_the_right_numbers(tmp_path):
    run_a, run_b = make_runs(tmp_path)
    out = tmp_path / "report"
    written = report([run_a, run_b], out)
    names = {f: sorted(p.name for p in paths) for f, paths in written.items()}
    figures = ["asr", "certified_accuracy", "certified_cosine", "score_hist"]
    assert names == {
        "md": ["summary.md"],
        "csv": ["attacks.csv", "summary.csv"],
        "png": [f"{f}.png" for f in figures],
        "svg": [f"{f}.svg" for f in figures],
        "html": ["report.html"],
    }
    for paths in written.values():
        for path in paths:
            assert path.stat().st_size > 0

    rows = {row["run"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    a, b = rows["runA"], rows["runB"]
    assert a["images"] == "4" and b["images"] == "2"
    assert float(a["sigma"]) == 0.25 and a["method"] == "betting"
    assert float(a["S_low"]) == pytest.approx(np.mean(LOWER_A))
    assert float(a["S"]) == pytest.approx(np.mean(LOWER_A) + 0.02)
    assert float(a["n_used"]) == pytest.approx(650.0)
    for r in RADII:
        assert float(a[f"fcsb@{r:g}"]) == pytest.approx(expected_mean_fcsb(LOWER_A, r, 0.25))
        assert float(b[f"fcsb@{r:g}"]) == pytest.approx(expected_mean_fcsb([0.99, 0.97], r, 0.5))
    certified = np.mean([not math.isnan(fcsb_formula(s, 0.5, 0.25)) for s in LOWER_A])
    assert float(a["certified@0.5"]) == pytest.approx(certified)
    assert float(a["clean_acc"]) == pytest.approx(0.75)
    assert float(a["acc_margin@0"]) == pytest.approx(0.5)  # a0, a1 correct; a2 abstains
    assert float(a["acc_margin@0.5"]) == pytest.approx(0.25)  # only a0 has radius >= 0.5
    assert float(a["asr"]) == pytest.approx(4 / 8)
    assert b["asr"] == "" and b["clean_acc"] == ""
    assert "acc_cohen@0" not in a  # no run has that certificate: column left out

    attacks = list(csv.DictReader(open(out / "attacks.csv")))
    assert [(r["setting"], float(r["asr"])) for r in attacks] == [("vanilla", 0.75), ("fs", 0.25)]
    assert float(attacks[1]["adv_cosine"]) == pytest.approx(0.9)

    md = (out / "summary.md").read_text()
    fcsb_text = f"{expected_mean_fcsb(LOWER_A, 0.5, 0.25):.4f}"
    row_a = next(line for line in md.splitlines() if line.startswith("| runA | tiny |"))
    assert fcsb_text in row_a and "| 0.25 |" in row_a
    assert "| runA | 75.0% | 50.0% | 25.0% |" in md
    assert "| runA | vanilla | apgd | linf | 16/255 | 4 | 75.0% | 0.5000 |" in md
    assert "![" in md and "certified_cosine.png" in md

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)
    assert "<table>" in page and fcsb_text in page and "runB" in page
    assert "http://" not in page and "https://" not in page  # self-contained

    png = (out / "certified_cosine.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 900 and height >= 600  # 150 dpi
    svg = (out / "certified_accuracy.svg").read_text()
    assert "<svg" in svg and "l2 radius (pixel units)" in svg and "certified accuracy (%)" in svg


def test_formats_subset_and_errors(tmp_path):
    run_a, _ = make_runs(tmp_path)
    written = report(run_a, tmp_path / "only-csv", formats=("csv",))
    assert sorted(p.name for p in (tmp_path / "only-csv").iterdir()) == [
        "attacks.csv",
        "summary.csv",
    ]
    assert list(written) == ["csv"]
    with pytest.raises(InputError, match="unknown report format"):
        report(run_a, tmp_path / "x", formats=("pdf",))
    with pytest.raises(InputError):
        report([], tmp_path / "x")


def test_dense_curve_agrees_with_stored_values(tmp_path):
    run_a, run_b = make_runs(tmp_path)
    runs = load_runs([run_a, run_b], labels=["A", "B"])
    fig = plot_certified_cosine(runs)
    ax = fig.axes[0]
    curves = [line for line in ax.lines if line.get_label() in ("A", "B")]
    assert [c.get_label() for c in curves] == ["A", "B"]
    for curve, lows, sigma in zip(curves, (LOWER_A, [0.99, 0.97]), (0.25, 0.5)):
        x, y = curve.get_xdata(), curve.get_ydata()
        for r in RADII:
            i = int(np.argmin(np.abs(x - r)))
            assert x[i] == pytest.approx(r)
            assert y[i] == pytest.approx(expected_mean_fcsb(lows, r, sigma))
        assert np.all(np.diff(y) <= 1e-12)  # certified cosine never grows with the radius


def test_certified_accuracy_counts_abstain_and_wrong_predictions():
    records = [
        {
            "label": 1,
            "prediction": 1,
            "cohen_prediction": 1,
            "cohen_radius": 0.4,
            "margin_radius": 0.9,
        },
        {
            "label": 2,
            "prediction": 2,
            "cohen_prediction": 3,
            "cohen_radius": 0.9,
            "margin_radius": None,
        },
        {
            "label": 3,
            "prediction": -1,
            "cohen_prediction": -1,
            "cohen_radius": None,
            "margin_radius": None,
        },
        {
            "label": 4,
            "prediction": 4,
            "cohen_prediction": 4,
            "cohen_radius": "inf",
            "margin_radius": 0.1,
        },
    ]
    np.testing.assert_allclose(
        certified_accuracy(records, "cohen", [0, 0.4, 0.5, 100]), [0.5, 0.5, 0.25, 0.25]
    )
    np.testing.assert_allclose(
        certified_accuracy(records, "margin", [0, 0.1, 0.5]), [0.5, 0.5, 0.25]
    )
    assert certified_accuracy(records, "fcsb", [0]) is None


def test_summary_has_one_row_per_setting_of_an_evaluation_run(tmp_path):
    """featsmooth.evaluate writes certificates of several settings into one run folder:
    their numbers must not be averaged together."""
    run = tmp_path / "ev"
    lows = {"fs": [0.6, 0.4], "fs+plugin": [0.95, 0.9, 0.85]}
    with RunWriter(run, {"model": "tiny", "sigma": 0.25}, environment=False) as writer:
        for setting, values in lows.items():
            for i, low in enumerate(values):
                writer.write(
                    {
                        "key": [f"img{i}", setting, "certificate"],
                        "kind": "certificate",
                        "image": f"img{i}",
                        "setting": setting,
                        "sigma": 0.25,
                        "score_lower": low,
                        "radii": RADII,
                        "fcsb": [fcsb_formula(low, r, 0.25) for r in RADII],
                    }
                )
        for setting, success in (("vanilla", True), ("fs", False), ("fs+plugin", False)):
            writer.write(
                {
                    "key": ["img0", setting, "pgd"],
                    "kind": "attack",
                    "image": "img0",
                    "setting": setting,
                    "attack": "pgd",
                    "norm": "l2",
                    "eps": 0.5,
                    "success": success,
                    "adv_cosine": 0.3 if success else 0.9,
                }
            )
    report(run, tmp_path / "rep", formats=("csv", "md"))
    rows = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "rep/summary.csv"))}
    assert list(rows) == ["vanilla", "fs", "fs+plugin"]
    assert {r["run"] for r in rows.values()} == {"ev"}
    for setting, values in lows.items():
        assert rows[setting]["images"] == str(len(values))
        assert float(rows[setting]["S_low"]) == pytest.approx(np.mean(values))
        expected = expected_mean_fcsb(values, 0.5, 0.25)
        assert float(rows[setting]["fcsb@0.5"]) == pytest.approx(expected)
    assert rows["vanilla"]["S_low"] == "" and float(rows["vanilla"]["asr"]) == 1.0
    assert float(rows["fs"]["asr"]) == 0.0
    assert "| ev | fs+plugin |" in (tmp_path / "rep/summary.md").read_text()
