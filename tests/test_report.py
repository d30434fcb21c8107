"""Reports: tables hold the right numbers, every format renders, figures are consistent,
and the HTML page loads in a real (headless Chromium) browser."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from scipy import stats

from featsmooth import api
from featsmooth.errors import InputError
from featsmooth.records import RunWriter, read_records, read_settings
from featsmooth.report import (
    asr_definition,
    certified_accuracy,
    load_runs,
    make_figures,
    plot_asr,
    plot_certified_accuracy,
    plot_certified_cosine,
    registry,
    report,
)
from featsmooth.report.registry import (
    default_formats,
    format_help,
    format_names,
    parse_formats,
    register,
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
    written = report([run_a, run_b], out, "all")
    names = {f: sorted(p.name for p in paths) for f, paths in written.items()}
    figures = ["asr_feature_cosine", "certified_accuracy", "certified_cosine", "score_hist"]
    assert names == {
        "md": ["summary.md"],
        "csv": ["attacks.csv", "images.csv", "summary.csv"],
        "tsv": ["images.tsv"],
        "tex": ["attacks.tex", "summary.tex"],
        "png": [f"{f}.png" for f in figures],
        "svg": [f"{f}.svg" for f in figures],
        "pdf": [f"{f}.pdf" for f in figures],
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
    assert b["clean_acc"] == ""
    assert "acc_cohen@0" not in a  # no run has that certificate: column left out
    assert "asr" not in a  # ASR only per setting and definition: attacks.csv

    attacks = list(csv.DictReader(open(out / "attacks.csv")))
    assert [(r["setting"], float(r["asr"])) for r in attacks] == [("vanilla", 0.75), ("fs", 0.25)]
    assert float(attacks[1]["adv_cosine"]) == pytest.approx(0.9)

    md = (out / "summary.md").read_text()
    fcsb_text = f"{expected_mean_fcsb(LOWER_A, 0.0, 0.25):.4f}"
    summary = md.split("## Summary")[1].split("##")[0]
    header = next(line for line in summary.splitlines() if line.startswith("| run |"))
    assert header.count("|") - 1 <= 13  # narrow: at most 13 columns
    row_a = next(line for line in summary.splitlines() if line.startswith("| runA | tiny |"))
    assert fcsb_text in row_a and "| 0.25 |" in row_a and "| none certified |" in row_a
    assert row_a.endswith("| 75.0% | 50.0% | 25.0% |")
    assert "| runA | vanilla | apgd | linf | 16/255 | 4 | 75.0% | 0.5000 |" in md
    assert "![" in md and "certified_cosine.png" in md
    assert md.count("<details>") == 2 and "| mean n used |" in md.split("<details>")[1]

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)
    assert "<table>" in page and fcsb_text in page and "runB" in page
    assert "<details><summary>Settings of runA</summary>" in page
    assert '<a href="summary.tex">' in page and '<a href="images.tsv">' in page
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
        "images.csv",
        "summary.csv",
    ]
    assert list(written) == ["csv"]
    with pytest.raises(InputError, match="unknown report format"):
        report(run_a, tmp_path / "x", formats=("docx",))
    with pytest.raises(InputError):
        report([], tmp_path / "x")


def test_dense_curve_agrees_with_stored_values(tmp_path):
    run_a, run_b = make_runs(tmp_path)
    runs = load_runs([run_a, run_b], labels=["A", "B"])
    fig = plot_certified_cosine(runs).figure
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
    attacks = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "rep/attacks.csv"))}
    assert [float(attacks[s]["asr"]) for s in rows] == [1.0, 0.0, 0.0]
    assert {r["run"] for r in rows.values()} == {"ev"}
    for setting, values in lows.items():
        assert rows[setting]["images"] == str(len(values))
        assert float(rows[setting]["S_low"]) == pytest.approx(np.mean(values))
        expected = expected_mean_fcsb(values, 0.5, 0.25)
        assert float(rows[setting]["fcsb@0.5"]) == pytest.approx(expected)
    assert rows["vanilla"]["S_low"] == ""
    assert "| ev | fs+plugin |" in (tmp_path / "rep/summary.md").read_text()
    # figures: one curve per setting, never their average
    (cosine,) = [i for i in make_figures(load_runs([run])) if i.name == "certified_cosine"]
    curves = {ln.get_label(): ln for ln in cosine.figure.axes[0].lines}
    assert sorted(curves) == ["ev · fs", "ev · fs+plugin"]
    for setting, values in lows.items():
        i = int(np.argmin(np.abs(curves[f"ev · {setting}"].get_xdata() - 0.5)))
        expected = expected_mean_fcsb(values, 0.5, 0.25)
        assert curves[f"ev · {setting}"].get_ydata()[i] == pytest.approx(expected)


# --------------------------------------------------------------------------------------
# Formats: the registry, LaTeX, per-image tables, editable SVG/PDF


def test_format_registry_drives_the_cli_and_the_api(tmp_path):
    names = format_names()
    assert {"md", "csv", "tsv", "tex", "png", "svg", "pdf", "html"} <= set(names)
    assert names.index("html") == len(names) - 1  # the page that links the others comes last
    assert parse_formats("md, CSV,.tex,md") == ("md", "csv", "tex")
    assert parse_formats(None) == default_formats()
    assert parse_formats("all") == names
    with pytest.raises(InputError, match=r"unknown report format.*choose from"):
        parse_formats("md,docx")
    with pytest.raises(InputError, match="no report format"):
        parse_formats(" , ")
    help_text = format_help()
    for name in names:
        assert f"{name}: " in help_text

    calls = []

    @register("test-json", "summary.json (test)", order=60, default=False)
    def write_json(ctx, out):
        calls.append(ctx.formats)
        (out / "summary.json").write_text(json.dumps(ctx.summary[1]))
        return [out / "summary.json"]

    try:
        run_a, _ = make_runs(tmp_path)
        assert "test-json" in format_names() and "test-json" not in default_formats()
        written = report(run_a, tmp_path / "rep", "test-json,csv")
        assert list(written) == ["test-json", "csv"] and calls == [("test-json", "csv")]
        assert json.loads((tmp_path / "rep/summary.json").read_text())[0]["run"] == "runA"
    finally:
        registry._REGISTRY.pop("test-json")


def test_cli_help_and_validation_come_from_the_registry(tmp_path):
    from featsmooth import cli

    default, help_text = cli._report_formats()
    assert default == ",".join(default_formats()) and help_text == format_help()
    run_a, _ = make_runs(tmp_path)
    with pytest.raises(InputError, match="docx"):
        api.report([run_a], tmp_path / "x", "md,docx")
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_svg_and_pdf_text_stays_editable(tmp_path):
    run_a, run_b = make_runs(tmp_path)
    written = report([run_a, run_b], tmp_path / "rep", "svg,pdf")
    assert written["svg"] and len(written["svg"]) == len(written["pdf"])
    import matplotlib

    before = matplotlib.rcParams["svg.fonttype"]
    for path in written["svg"]:
        svg = path.read_text()
        assert svg.count("<text") >= 5, path.name  # titles, labels, ticks as text
        assert 'id="DejaVuSans' not in svg  # no glyph outlines
        assert "<dc:date>" not in svg
    assert "l2 radius (pixel units)" in (tmp_path / "rep/certified_cosine.svg").read_text()
    for path in written["pdf"]:
        pdf = path.read_bytes()
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # embedded TrueType
    assert matplotlib.rcParams["svg.fonttype"] == before  # the caller's style is untouched


def latex_rows(text: str) -> list[list[str]]:
    """Body rows of every booktabs tabular in ``text``, cells stripped."""
    rows, inside = [], False
    for line in text.splitlines():
        if line == r"\midrule":
            inside = True
        elif line == r"\bottomrule":
            inside = False
        elif inside:
            rows.append([c.strip() for c in line.removesuffix(r"\\").split("&")])
    return rows


def test_latex_table_holds_the_numbers_of_the_records(tmp_path):
    run_a, run_b = make_runs(tmp_path)
    report([run_a, run_b], tmp_path / "rep", "tex")
    text = (tmp_path / "rep/summary.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){6-7}"):
        assert token in text
    assert text.count(r"\begin{tabular}") == 1
    header = next(line for line in text.splitlines() if line.startswith("run &"))
    assert header.count("&") == 9 and r"$\sigma$" in header
    rows = {row[0]: row for row in latex_rows(text)}
    assert set(rows) == {"runA", "runB"} and {len(row) for row in rows.values()} == {10}
    a, b = rows["runA"], rows["runB"]
    # run, model, sigma, images, S_low, FCSB@0, FCSB@0.5, clean acc, acc margin@0, @0.5
    assert a[:4] == ["runA", "tiny", "0.25", "4"] and b[:4] == ["runB", "tiny", "0.5", "2"]
    assert float(a[4]) == pytest.approx(np.mean(LOWER_A), abs=5e-4)
    assert float(a[5]) == pytest.approx(expected_mean_fcsb(LOWER_A, 0.0, 0.25), abs=5e-4)
    assert a[6] == "n.c."  # no image of run A is certified at r = 0.5
    assert float(b[6]) == pytest.approx(expected_mean_fcsb([0.99, 0.97], 0.5, 0.5), abs=5e-4)
    assert [float(v) for v in a[7:]] == [75.0, 50.0, 25.0]
    assert b[7:] == ["--", "--", "--"]

    attacks = (tmp_path / "rep/attacks.tex").read_text()
    assert "feature cosine" in attacks and r"\usepackage{booktabs}" in attacks
    rows = latex_rows(attacks)
    assert rows == [
        ["vanilla", "apgd", r"$\ell_\infty$", "16/255", "4", "75.0", "0.500"],
        ["fs", "apgd", r"$\ell_\infty$", "16/255", "4", "25.0", "0.900"],
    ]


def test_latex_escapes_names(tmp_path):
    run = tmp_path / "r"
    with RunWriter(run, {"model": "my_model", "label": "50% & $x#"}, environment=False) as w:
        w.write({"key": "i", "score_lower": 0.5, "radii": [0.1], "fcsb": [0.1]})
    report(run, tmp_path / "rep", "tex")
    text = (tmp_path / "rep/summary.tex").read_text()
    assert r"50\% \& \$x\#" in text and r"my\_model" in text


@pytest.mark.parametrize("fmt, sep", [("csv", ","), ("tsv", "\t")])
def test_per_image_table_round_trips_the_records(tmp_path, fmt, sep):
    run_a, run_b = make_runs(tmp_path)
    report([run_a, run_b], tmp_path / "rep", fmt)
    with open(tmp_path / f"rep/images.{fmt}", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=sep))
    header = list(rows[0])
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    records = [r for run in (run_a, run_b) for r in read_records(run) if "attack" not in r]
    assert len(rows) == len(records) == 6
    for row, rec in zip(rows, records):
        assert row["image"] == rec["key"]
        assert float(row["score_lower"]) == rec["score_lower"]  # full precision
        assert float(row["score_estimate"]) == rec["score_estimate"]
        for r, value in zip(rec["radii"], rec["fcsb"]):
            assert row[f"fcsb@{r:g}"] == ("" if value is None else repr(value))
        if "label" in rec:
            assert int(row["label"]) == rec["label"] and int(row["predict"]) == rec["prediction"]
            assert row["radius"] == (
                "" if rec["margin_radius"] is None else repr(rec["margin_radius"])
            )
            assert row["correct"] == str(int(rec["prediction"] == rec["label"]))
            assert row["time"] == "0:00:02" and float(row["seconds"]) == rec["seconds"]
        else:
            assert row["label"] == row["predict"] == row["radius"] == row["correct"] == ""
    assert [int(r["idx"]) for r in rows] == [0, 1, 2, 3, 0, 1]
    # locuslab/smoothing's analysis: certified accuracy = mean(correct & radius >= r)
    labelled = [r for r in rows if r["label"]]
    for radius in (0.0, 0.5):
        locus = np.mean(
            [r["correct"] == "1" and float(r["radius"] or "nan") >= radius for r in labelled]
        )
        ours = certified_accuracy([r for r in records if "label" in r], "margin", [radius])
        assert locus == pytest.approx(ours[0])


def test_summary_csv_round_trips_the_records(tmp_path):
    run_a, run_b = make_runs(tmp_path)
    report([run_a, run_b], tmp_path / "rep", "csv")
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "rep/summary.csv"))}
    for run, (name, lows, sigma) in zip((run_a, run_b), (("runA", LOWER_A, 0.25),
                                                          ("runB", [0.99, 0.97], 0.5))):  # fmt: skip
        records = [r for r in read_records(run) if "attack" not in r]
        row = rows[name]
        assert float(row["S_low"]) == pytest.approx(np.mean([r["score_lower"] for r in records]))
        assert float(row["S"]) == pytest.approx(np.mean([r["score_estimate"] for r in records]))
        for i, r in enumerate(RADII):
            stored = [np.nan_to_num(float(rec["fcsb"][i] or "nan")) for rec in records]
            assert float(row[f"fcsb@{r:g}"]) == pytest.approx(np.mean(stored))
            assert float(row[f"fcsb@{r:g}"]) == pytest.approx(expected_mean_fcsb(lows, r, sigma))


# --------------------------------------------------------------------------------------
# Figures: states instead of empty plots, one ASR definition per chart, distinct curves


def write_uncertified_run(path):
    with RunWriter(path, {"model": "tiny", "sigma": 0.25}, environment=False) as w:
        for i in range(3):
            w.write({"key": f"u{i}", "sigma": 0.25, "score_estimate": 0.01, "score_lower": -0.2,
                     "radii": [0.1, 0.25], "fcsb": [None, None], "label": i, "prediction": -1,
                     "margin_radius": None, "clean_prediction": i})  # fmt: skip
    return path


def test_nothing_certified_is_stated_not_plotted(tmp_path):
    run = write_uncertified_run(tmp_path / "u")
    written = report(run, tmp_path / "rep", "all")
    assert [p.name for p in written["png"]] == ["score_hist.png"]  # no empty plot
    page = (tmp_path / "rep/report.html").read_text()
    md = (tmp_path / "rep/summary.md").read_text()
    for text in (page, md):
        assert "No image certified: none of the 3 image(s) has a feature certificate" in text
        assert "none of the 3 labelled image(s) has a correct prediction" in text
        assert "none certified" in text
    assert page.count('class="state"') == 2
    assert "margin certificate: none certified at r ≥ 0.1" in md
    assert latex_rows((tmp_path / "rep/summary.tex").read_text())[0][5:7] == ["n.c.", "n.c."]


def write_attack_run(path, threshold=0.5):
    settings = {"command": "attack", "model": "tiny", "success_cosine": threshold}
    with RunWriter(path, settings, environment=False) as w:
        for i in range(2):
            for setting, cos in (("vanilla", 0.1), ("fs", 0.9 - 0.5 * i)):
                w.write({"key": f"c{i}/{setting}", "image": f"c{i}", "setting": setting,
                         "attack": "pgd", "objective": "feature-cosine", "norm": "l2",
                         "eps": 0.5, "adv_cosine": cos, "success": cos < threshold})  # fmt: skip
    return path


def write_zero_shot_run(path):
    with RunWriter(path, {"command": "evaluate", "model": "tiny"}, environment=False) as w:
        for i in range(4):
            for setting, changed in (("vanilla", True), ("fs", i == 0)):
                w.write({"key": [f"z{i}", setting, "pgd"], "kind": "attack", "image": f"z{i}",
                         "setting": setting, "attack": "pgd", "norm": "l2", "eps": 0.5,
                         "label": 1, "acceptable": [1], "clean_prediction": 1,
                         "adv_prediction": 2 if changed else 1, "adv_cosine": 0.4,
                         "success": changed})  # fmt: skip
    return path


def test_one_asr_definition_per_chart_and_table(tmp_path):
    cos_run = write_attack_run(tmp_path / "att")
    zs_run = write_zero_shot_run(tmp_path / "ev")
    runs = load_runs([cos_run, zs_run])
    assert [asr_definition(a, runs[0].settings) for a in runs[0].attacks[:1]] == ["cosine:0.5"]
    assert {asr_definition(a) for a in runs[1].attacks} == {"zero-shot"}
    items = plot_asr(runs)
    assert [i.name for i in items] == ["asr_feature_cosine_below_0_5", "asr_zero_shot"]
    for item, run_label, expected in zip(items, ("att", "ev"), ([100, 50], [100, 25])):
        ax = item.figure.axes[0]
        heights = [round(p.get_height()) for p in ax.patches]
        assert heights == expected  # vanilla, fs of that run only
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert all(run_label not in t for t in ticks)  # one run per chart: no run names
        # the legend sits outside the axes: it cannot cover a bar or a bar label
        fig = item.figure
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        assert not legend.overlaps(ax.get_window_extent())
    written = report([cos_run, zs_run], tmp_path / "rep", "csv,png,md")
    assert sorted(p.name for p in written["png"]) == [
        "asr_feature_cosine_below_0_5.png",
        "asr_zero_shot.png",
    ]
    rows = list(csv.DictReader(open(tmp_path / "rep/attacks.csv")))
    assert [(r["run"], r["asr_definition"], r["setting"], float(r["asr"])) for r in rows] == [
        ("att", "cosine:0.5", "vanilla", 1.0),
        ("att", "cosine:0.5", "fs", 0.5),
        ("ev", "zero-shot", "vanilla", 1.0),
        ("ev", "zero-shot", "fs", 0.25),
    ]
    md = (tmp_path / "rep/summary.md").read_text()
    assert "success means the zero-shot prediction leaves the image's label set" in md
    assert "falls below 0.5" in md


def test_near_identical_runs_stay_distinguishable(tmp_path):
    run_a, _ = make_runs(tmp_path)
    twin = tmp_path / "twin"
    with RunWriter(twin, read_settings(run_a), environment=False) as w:
        for rec in read_records(run_a):
            w.write(rec)
    runs = load_runs([run_a, twin], labels=["A", "A'"])
    for item in (plot_certified_cosine(runs), plot_certified_accuracy(runs)):
        lines = [ln for ln in item.figure.axes[0].lines if ln.get_label() in ("A", "A'")]
        assert len(lines) == 2
        first, second = lines
        assert first.get_marker() != second.get_marker()
        assert first.get_color() != second.get_color()
        assert second.get_linewidth() < first.get_linewidth()  # the twin drawn thinner on top
        assert second.get_zorder() > first.get_zorder()


# --------------------------------------------------------------------------------------
# The HTML page in a real browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# On window load: how many images decoded with a size and are laid out visibly.
IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) {
    return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().height > 50;
  });
  var out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = "rendered " + ok.length + " of " + images.length;
  document.body.appendChild(out);
});
</script>"""


def headless_chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` (console messages go to stderr)."""
    exe = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    command = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        "--hide-scrollbars", "--virtual-time-budget=10000", *args, url,
    ]  # fmt: skip
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish within 180 s")


class ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_html_report_loads_and_renders_in_headless_chromium(tmp_path):
    from matplotlib.image import imread

    run_a, run_b = make_runs(tmp_path)
    runs = [run_a, run_b, write_uncertified_run(tmp_path / "none"),
            write_attack_run(tmp_path / "att"), write_zero_shot_run(tmp_path / "ev")]  # fmt: skip
    out = tmp_path / "rep"
    report(runs, out)
    page = out / "report.html"

    parser = ImageSources()
    parser.feed(page.read_text())
    # cosine, accuracy, histogram, three ASR charts: cosine below 0.5, below an unknown
    # threshold (run A), zero-shot
    assert len(parser.sources) == 6
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.partition(",")[2])[:8] == b"\x89PNG\r\n\x1a\n"

    shot = tmp_path / "screenshot.png"
    done = headless_chromium(
        tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1280,5200"
    )
    assert shot.exists(), done.stderr[-2000:]
    assert not console_errors(done.stderr)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (5200, 1280)
    inked = (pixels.min(axis=2) < 0.9).any(axis=1)  # rows with anything drawn on them
    assert inked[:200].any() and inked.mean() > 0.3  # the page is not blank
    assert (pixels[:, 1150:].min(axis=2) > 0.9).all()  # narrow: nothing spills to the right

    probe = out / "probe.html"
    probe.write_text(page.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    done = headless_chromium(tmp_path, probe.as_uri(), "--dump-dom")
    assert not console_errors(done.stderr)
    match = re.search(r'<pre id="image-probe">rendered (\d+) of (\d+)</pre>', done.stdout)
    assert match, done.stdout[-2000:]
    assert match.groups() == ("6", "6")
    assert "none certified" in done.stdout and "<details>" in done.stdout
