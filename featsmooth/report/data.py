"""Run folders in, numbers out: loading, per-run summaries, attack and per-image tables.

Every number of every report format comes from here, so the formats agree with each other
and with the records (``tests/test_report.py`` reads them back).

Conventions. **Mean FCSB counts an image without a certificate at that radius as 0**: FCSB
certifies ``cos >= B`` only when ``B >= 0`` and is stored as null otherwise, so the mean is
the average of ``max(B, 0)``; the column ``certified@r`` gives the fraction of images that
do have a certificate. Certified accuracy at radius r for a certificate method counts an
image when its prediction equals its label and its certified radius (null = abstain) is at
least r. Radii are l2 norms in pixel units of [0,1] images.

Attack success rates are only comparable under one definition of success, so every attack
record gets one (:func:`asr_definition`): the feature cosine falling below a threshold
(``featsmooth attack``, feature-only ``evaluate``), a zero-shot prediction leaving the
label set, a changed prediction, a targeted class hit, or moving closer to a target
embedding. Tables carry the definition; figures draw one chart per definition.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featsmooth.errors import InputError
from featsmooth.records import as_float, read_records, read_settings

CERTIFICATE_METHODS = ("margin", "fcsb", "cohen")
PREDICTION_FIELD = {"margin": "prediction", "fcsb": "fcsb_prediction", "cohen": "cohen_prediction"}
PALETTE = (
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
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
SETTING_ORDER = ("vanilla", "fs", "fs+plugin")

#: ASR definitions: key -> (short name for file names and titles, what "success" means).
ASR_DEFINITIONS = {
    "cosine": (
        "feature cosine",
        "the adversarial feature's cosine to the clean one falls below {t}",
    ),
    "zero-shot": ("zero-shot", "the zero-shot prediction leaves the image's label set"),
    "changed": ("prediction change", "the zero-shot prediction changes"),
    "targeted-class": ("targeted class", "the zero-shot prediction becomes the target class"),
    "targeted-embedding": (
        "target embedding",
        "the adversarial feature is closer to the target embedding than to the clean one",
    ),
}


# --------------------------------------------------------------------------------------
# Loading


@dataclass
class RunData:
    """One run folder: its label, settings, certification and attack records, and its
    plot style (colour and marker, distinct per run)."""

    label: str
    path: Path
    settings: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    colour: str = PALETTE[0]
    marker: str = MARKERS[0]
    index: int = 0

    def meta(self, name: str) -> Any:
        """A setting, else the first non-null value of that field in the records."""
        if self.settings.get(name) is not None:
            return self.settings[name]
        for record in (*self.records, *self.attacks):
            if record.get(name) is not None:
                return record[name]
        return None


def is_attack(record: dict[str, Any]) -> bool:
    """An attack record (``kind: attack``, or the fields of ``featsmooth attack``)."""
    if record.get("kind") is not None:
        return record["kind"] == "attack"
    return "success" in record or "attack" in record


def load_runs(
    run_dirs: Iterable[str | os.PathLike[str]], labels: Sequence[str] | None = None
) -> list[RunData]:
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
                records=[r for r in records if not is_attack(r)],
                attacks=[r for r in records if is_attack(r)],
                colour=PALETTE[i % len(PALETTE)],
                marker=MARKERS[i % len(MARKERS)],
                index=i,
            )
        )
    return runs


# --------------------------------------------------------------------------------------
# Statistics


def floats(records: Iterable[dict[str, Any]], name: str) -> np.ndarray:
    """The field ``name`` of the records that have it, as float64 (null -> NaN)."""
    values = [as_float(r.get(name)) for r in records if name in r]
    return np.asarray(values, dtype=np.float64)


def mean(values: np.ndarray) -> float | None:
    """Mean of the finite values; ``None`` when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def rkey(radius: float) -> float:
    """A radius as a dictionary key (rounded to 1e-9)."""
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
            out.setdefault(rkey(as_float(r)), []).append(as_float(v))
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
    pred_field = PREDICTION_FIELD[method]
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


def clean_accuracy(records: Sequence[dict[str, Any]]) -> float | None:
    """Accuracy of the base encoder's prediction on the clean input (``clean_prediction``)."""
    rows = [r for r in records if r.get("label") is not None and "clean_prediction" in r]
    if not rows:
        return None
    return float(np.mean([r["clean_prediction"] == r["label"] for r in rows]))


def run_radii(run: RunData) -> list[float]:
    """The stored radii of a run (else those of its settings)."""
    found = set(per_radius(run.records))
    if not found and run.settings.get("radii"):
        found = {rkey(as_float(r)) for r in run.settings["radii"]}
    return sorted(found)


def all_radii(runs: Sequence[RunData]) -> list[float]:
    """The union of the runs' radii, sorted."""
    return sorted({r for run in runs for r in run_radii(run)})


def key_radii(radii: Sequence[float], most: int = 3) -> list[float]:
    """At most ``most`` radii spread over ``radii`` (first, middle, last) for narrow tables."""
    radii = sorted(radii)
    if len(radii) <= most:
        return list(radii)
    picks = np.unique(np.round(np.linspace(0, len(radii) - 1, most)).astype(int))
    return [radii[i] for i in picks]


def setting_rank(setting: str) -> tuple[int, str]:
    """Sort key of settings: vanilla, fs, fs+plugin, then the others by name."""
    return (SETTING_ORDER.index(setting), "") if setting in SETTING_ORDER else (99, setting)


def run_settings(run: RunData) -> list[str | None]:
    """The settings (``vanilla``, ``fs``, ``fs+plugin``, ...) a run's summary is split by.

    ``[None]`` (one row for the whole run) unless its certification records carry a
    ``setting`` field, as those of :func:`featsmooth.evaluate.evaluate` do: then every
    setting of its certification or attack records, in the usual order.
    """
    if not any(r.get("setting") is not None for r in run.records):
        return [None]
    found = {str(r["setting"]) for r in (*run.records, *run.attacks) if r.get("setting")}
    return sorted(found, key=setting_rank)


def by_setting(runs: Sequence[RunData]) -> list[RunData]:
    """The runs with those whose records carry a setting split into one :class:`RunData`
    per setting (label ``run · setting``; certification records only), each with its own
    colour and marker: figures never average certificates of different settings."""
    out: list[RunData] = []
    for run in runs:
        for setting in run_settings(run):
            if setting is None:
                out.append(run)
                continue
            records = [r for r in run.records if r.get("setting") == setting]
            if records:
                out.append(dataclasses.replace(run, label=f"{run.label} · {setting}",
                                               records=records, attacks=[]))  # fmt: skip
    return [
        dataclasses.replace(
            run, colour=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)], index=i
        )
        for i, run in enumerate(out)
    ]


def summarize(
    run: RunData, radii: Sequence[float] | None = None, setting: str | None = None
) -> dict[str, Any]:
    """The summary row of one run (column id -> value; ``None`` = not available).

    With ``setting``, only that setting's certification records are counted and the row
    gets a ``setting`` column (certificates of different settings, e.g. ``fs`` and
    ``fs+plugin``, must never be averaged together). Attack success rates are not part of
    the summary: they are only comparable per setting and per definition of success
    (:func:`attack_table`).
    """
    if setting is not None:
        run = dataclasses.replace(
            run,
            records=[r for r in run.records if r.get("setting") == setting],
            attacks=[a for a in run.attacks if a.get("setting") == setting],
        )
    recs = run.records
    radii = list(radii) if radii is not None else run_radii(run)
    n = run.meta("n")
    if n is None and recs:
        n_used = floats(recs, "n_used")
        n = int(np.nanmax(n_used)) if np.isfinite(n_used).any() else None
    row: dict[str, Any] = {"run": run.label}
    if setting is not None:
        row["setting"] = setting
    images = len(recs) if recs else len({str(a.get("image", a.get("key"))) for a in run.attacks})
    row |= {
        "model": run.meta("model"),
        "sigma": run.meta("sigma"),
        "n": n,
        "alpha": run.meta("alpha"),
        "method": run.meta("method"),
        "images": images,
        "n_used": mean(floats(recs, "n_used")),
        "S": mean(floats(recs, "score_estimate")),
        "S_low": mean(floats(recs, "score_lower")),
        "S_clean_low": mean(floats(recs, "clean_score_lower")),
    }
    fcsb = per_radius(recs, "fcsb")
    for r in radii:
        values = fcsb.get(rkey(r))
        row[f"fcsb@{r:g}"] = (
            float(np.nan_to_num(values, nan=0.0).mean()) if values is not None else None
        )
    for r in radii:
        values = fcsb.get(rkey(r))
        row[f"certified@{r:g}"] = float(np.isfinite(values).mean()) if values is not None else None
    row["clean_acc"] = clean_accuracy(recs)
    for method in CERTIFICATE_METHODS:
        acc = certified_accuracy(recs, method, radii)
        for i, r in enumerate(radii):
            row[f"acc_{method}@{r:g}"] = None if acc is None else float(acc[i])
    row["seconds"] = mean(floats(recs, "seconds"))
    return row


def summary_table(runs: Sequence[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """Column ids (those with a value in some row) and one row per run, or per (run, setting)
    for runs whose records carry a setting (see :func:`run_settings`)."""
    radii = all_radii(runs)
    rows = [summarize(run, radii, setting) for run in runs for setting in run_settings(run)]
    names = list(dict.fromkeys(c for row in rows for c in row))
    columns = [c for c in names if c == "run" or any(row.get(c) is not None for row in rows)]
    return columns, rows


def primary_method(columns: Sequence[str]) -> str | None:
    """The first certificate method (margin, fcsb, cohen) with accuracy columns."""
    for method in CERTIFICATE_METHODS:
        if any(c.startswith(f"acc_{method}@") for c in columns):
            return method
    return None


#: The summary columns that say which run a row is about (not what it found).
WHO_COLUMNS = ("run", "setting", "model", "sigma", "images")


def narrow_columns(columns: Sequence[str]) -> list[str]:
    """The summary's headline columns: who (run, setting, model, sigma, images), the score
    bound, FCSB and certified accuracy (first certificate method) at <= 3 radii."""
    radii = [float(c.partition("@")[2]) for c in columns if c.startswith("fcsb@")]
    acc_radii = [float(c.partition("@")[2]) for c in columns if c.startswith("acc_")]
    keep = {f"{r:g}" for r in key_radii(sorted(set(radii) | set(acc_radii)))}
    method = primary_method(columns)
    wanted = [*WHO_COLUMNS, "S_low"]
    wanted += [f"fcsb@{r}" for r in sorted(keep, key=float)]
    wanted += ["clean_acc"]
    if method is not None:
        wanted += [f"acc_{method}@{r}" for r in sorted(keep, key=float)]
    return [c for c in wanted if c in columns]


def accuracy_columns(
    columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """Accuracy columns of every certificate method, with the radii past the first one at
    which no row certifies anything left out (certified accuracy never grows with the
    radius), and one note per method saying from which radius none is certified."""
    kept = [
        "run",
        *[c for c in columns if c == "setting"],
        *[c for c in columns if c == "clean_acc"],
    ]
    notes: list[str] = []
    for method in CERTIFICATE_METHODS:
        cols = [c for c in columns if c.startswith(f"acc_{method}@")]
        for c in cols:
            kept.append(c)
            if all(not row.get(c) for row in rows):
                notes.append(f"{method} certificate: none certified at r ≥ {c.partition('@')[2]}")
                break
    return kept, notes


# --------------------------------------------------------------------------------------
# Attacks


def asr_definition(record: dict[str, Any], settings: dict[str, Any] | None = None) -> str:
    """The definition of success of an attack record, as ``key`` or ``key:threshold``
    (keys of :data:`ASR_DEFINITIONS`)."""
    if "adv_prediction" in record:
        if record.get("targeted") and record.get("target") is not None:
            return "targeted-class"
        return "zero-shot" if record.get("acceptable") else "changed"
    if "target_cosine" in record:
        return "targeted-embedding"
    settings = settings or {}
    threshold = settings.get("success_cosine", settings.get("cosine_threshold"))
    return f"cosine:{as_float(threshold):g}" if threshold is not None else "cosine"


def asr_text(definition: str) -> tuple[str, str]:
    """(short name, what success means) of a definition from :func:`asr_definition`."""
    key, _, threshold = definition.partition(":")
    name, meaning = ASR_DEFINITIONS.get(key, (key, key))
    if threshold:
        name += f" below {threshold}"
    return name, meaning.replace("{t}", threshold or "the run's threshold")


def attack_table(runs: Sequence[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per (run, definition of success, setting, attack, norm, eps): count, ASR,
    mean adversarial cosine. Rows are sorted by definition first."""
    rows = []
    for run in runs:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for a in run.attacks:
            key = (
                asr_definition(a, run.settings),
                str(a.get("setting", "?")),
                str(a.get("attack", "?")),
                str(a.get("norm", "")),
                as_float(a.get("eps")),
            )
            groups.setdefault(key, []).append(a)
        for (definition, setting, attack, norm, eps), items in groups.items():
            succ = [bool(a["success"]) for a in items if a.get("success") is not None]
            rows.append(
                {
                    "run": run.label,
                    "asr_definition": definition,
                    "setting": setting,
                    "attack": attack,
                    "norm": norm,
                    "eps": None if math.isnan(eps) else eps,
                    "count": len(items),
                    "asr": float(np.mean(succ)) if succ else None,
                    "adv_cosine": mean(floats(items, "adv_cosine")),
                }
            )
    order = {run.label: i for i, run in enumerate(runs)}
    rows.sort(
        key=lambda r: (
            r["asr_definition"],
            order[r["run"]],
            r["attack"],
            r["norm"],
            -1.0 if r["eps"] is None else r["eps"],
            setting_rank(r["setting"]),
        )
    )
    columns = [
        "run",
        "asr_definition",
        "setting",
        "attack",
        "norm",
        "eps",
        "count",
        "asr",
        "adv_cosine",
    ]
    return columns, rows


def asr_groups(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Attack rows split by definition of success, in table order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["asr_definition"], []).append(row)
    return out


# --------------------------------------------------------------------------------------
# Per image

#: The columns of locuslab/smoothing's certification output, then ours.
LOCUSLAB_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
_IMAGE_FIELDS = (
    "sigma",
    "n_used",
    "score_estimate",
    "score_lower",
    "clean_score_lower",
    "clean_smoothed_cosine",
    "certified_radius_cos50",
    "clean_prediction",
    "fcsb_prediction",
    "fcsb_radius",
    "cohen_prediction",
    "cohen_radius",
    "seconds",
)


def _time_text(seconds: float) -> str | None:
    if not math.isfinite(seconds):
        return None
    return str(_dt.timedelta(seconds=float(seconds)))


def image_table(runs: Sequence[RunData]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per certification record, in the column style of locuslab/smoothing.

    ``idx`` (position of the image in its run), ``label``, ``predict`` (the smoothed
    prediction, -1 = abstain), ``radius`` (its certified l2 radius by the margin
    certificate; empty = abstain; ``inf`` when S = 1), ``correct`` (1 when ``predict`` is
    the label, 0 otherwise, empty without a label) and ``time`` (``H:MM:SS.ffffff``), then
    ``run``, ``setting``, ``image``, the record's own fields under their record names, and
    ``fcsb@r`` / ``fcsb_clean@r`` per stored radius. Feature-only runs leave the first five
    empty except ``idx``. Columns that no row has are left out (the first six never are).
    """
    radii = all_radii(runs)
    rows: list[dict[str, Any]] = []
    present: set[str] = set()
    for run in runs:
        index: dict[str, int] = {}
        for record in run.records:
            image = str(record.get("image", record.get("key")))
            idx = index.setdefault(image, len(index))
            label, predict = record.get("label"), record.get("prediction")
            correct = None
            if label is not None and predict is not None:
                correct = int(predict == label and predict != -1)
            row: dict[str, Any] = {
                "idx": idx,
                "label": label,
                "predict": predict,
                "radius": record.get("margin_radius"),
                "correct": correct,
                "time": _time_text(as_float(record.get("seconds"))),
                "run": run.label,
                "setting": record.get("setting"),
                "image": image,
            }
            for name in _IMAGE_FIELDS:
                row[name] = record.get(name)
                if name in record:
                    present.add(name)
            for name in ("fcsb", "fcsb_clean"):
                if not isinstance(record.get(name), list):
                    continue
                values = dict(zip(map(rkey, map(as_float, record.get("radii") or [])),
                                  record[name]))  # fmt: skip
                for r in radii:
                    row[f"{name}@{r:g}"] = values.get(rkey(r))
                    if rkey(r) in values:
                        present.add(f"{name}@{r:g}")
            rows.append(row)
    names = list(dict.fromkeys(c for row in rows for c in row))
    # a field that some record has is a column, even where all its values are null (an
    # uncertified radius), so that a column's absence means the records lack that field
    columns = [
        c
        for c in names
        if c in LOCUSLAB_COLUMNS
        or c in present
        or (c in ("run", "setting", "image") and any(row.get(c) is not None for row in rows))
    ]
    return columns or list(LOCUSLAB_COLUMNS), rows
