"""Certificates of a finished run recomputed offline, at another ``alpha`` or bound method,
from the per-sample projections the run stored (``certify --keep-samples``)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from featsmooth import bounds
from featsmooth.errors import RecordError
from featsmooth.records import (
    RecordWarning,
    RunWriter,
    as_float,
    load_samples,
    read_records,
    read_settings,
    sample_path,
    to_jsonable,
)

__all__ = ["recompute_certificates"]

#: Record fields that depend on alpha/method and are dropped when only the smoothed-reference
#: certificate can be recomputed (see :func:`recompute_certificates`).
_ALPHA_DEPENDENT = (
    "clean_score_lower",
    "fcsb_clean",
    "prediction",
    "fcsb_prediction",
    "cohen_prediction",
    "margin_radius",
    "fcsb_radius",
    "cohen_radius",
)

#: ``stop_reason`` values of :meth:`featsmooth.SmoothedEncoder.certify` that mean the sample
#: size was chosen by looking at the data (sequential mode).
_SEQUENTIAL_STOPS = frozenset({"tolerance", "target_reached", "target_unreachable"})


def recompute_certificates(
    run_dir: str | os.PathLike[str],
    alpha: float,
    method: str,
    *,
    radii: Iterable[float] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Recompute the certificates of a run at another ``alpha`` / bound ``method``.

    Reads the stored per-sample projections ``samples/<key>.npy`` (values in [-1, 1] whose
    mean lower-bounds S) and recomputes ``score_lower`` with
    :func:`featsmooth.bounds.mean_lower_bound`, ``fcsb`` at each radius with
    :func:`featsmooth.bounds.fcsb` and ``certified_radius_cos50``. If clean-reference
    samples (``samples/clean/<key>.npy``) exist, ``clean_score_lower`` and ``fcsb_clean``
    are recomputed too; otherwise, and for the prediction certificates, the stale
    alpha-dependent fields are removed from the returned records. Records without stored
    samples are skipped (one :class:`RecordWarning` says how many).

    Validity. Each recomputed certificate holds at level ``1 - alpha`` on its own, but
    trying several alphas/methods and reporting the best is multiple testing: choose them
    before looking. Where sampling stopped early (``n_used < n``) only ``"betting"`` is
    valid (anytime-valid); Hoeffding/Bernstein on an optionally stopped sample are not,
    and a warning says so. The betting bound uses the bet schedule of
    :meth:`featsmooth.SmoothedEncoder.certify`: tuned to the run's ``n`` for fixed-size
    runs, the anytime schedule for sequential ones (``tolerance``/``target`` set, or a
    sequential ``stop_reason``), so recomputing at the run's own alpha and method
    reproduces its ``score_lower``.

    Args:
        run_dir: run folder written with sample storage.
        alpha: new failure probability; method: ``"betting"|"bernstein"|"hoeffding"``.
        radii: radii to certify (default: each record's ``radii``, else the settings').
        out_dir: if given, also write the recomputed records as a new run folder there
            (settings updated with the new alpha/method and ``recomputed_from``).

    Returns:
        The recomputed records (JSON-safe dicts), in file order.
    """

    settings = read_settings(run_dir)
    records = read_records(run_dir)
    sequential = settings.get("tolerance") is not None or settings.get("target") is not None
    n_setting = as_float(settings.get("n"))
    n_max = int(n_setting) if math.isfinite(n_setting) else 0
    fixed_radii = None if radii is None else [float(r) for r in radii]
    out: list[dict[str, Any]] = []
    missing = stopped = 0
    for record in records:
        key = record.get("key")
        if key is None or not sample_path(run_dir, key).exists():
            missing += 1
            continue
        values = np.asarray(load_samples(run_dir, key), dtype=np.float64).ravel()
        sigma = as_float(record.get("sigma", settings.get("sigma")))
        if not math.isfinite(sigma) or sigma <= 0:
            raise RecordError(f"record {key!r}: no valid sigma in the record or the settings")
        r = fixed_radii if fixed_radii is not None else record.get("radii", settings.get("radii"))
        r = [float(x) for x in (r or [])]
        early = bool(n_max) and values.size < n_max
        stopped += early
        seq = sequential or early or record.get("stop_reason") in _SEQUENTIAL_STOPS
        # the bet schedule the original run used: anytime after a data-chosen stop, else
        # tuned to the n fixed before sampling (ignored by the fixed-n methods)
        kwargs: dict[str, Any] = {"horizon": None if seq else max(n_max, values.size)}
        s_low = float(bounds.mean_lower_bound(values, alpha, method, **kwargs))
        new = {k: v for k, v in record.items() if k not in _ALPHA_DEPENDENT}
        new.update(alpha=float(alpha), method=method, n_used=int(values.size))
        new["score_lower"] = s_low
        new["radii"] = r
        new["fcsb"] = np.asarray(bounds.fcsb(s_low, r, sigma), dtype=np.float64).tolist()
        new["certified_radius_cos50"] = float(bounds.certified_radius(s_low, 0.5, sigma))
        clean_path = sample_path(run_dir, key, "clean")
        if clean_path.exists():
            clean = np.asarray(load_samples(run_dir, key, "clean"), dtype=np.float64).ravel()
            c_low = float(bounds.mean_lower_bound(clean, alpha, method, **kwargs))
            new["clean_score_lower"] = c_low
            new["fcsb_clean"] = np.asarray(bounds.fcsb(c_low, r, sigma)).tolist()
        new["recomputed"] = True
        out.append(to_jsonable(new))
    if records and missing == len(records):
        error = RecordError(f"{run_dir}: no record has stored samples, nothing to recompute")
        error.hint = "certify with --keep-samples (keep_samples=True) to store them"  # type: ignore[attr-defined]
        raise error
    if missing:
        warnings.warn(
            f"{run_dir}: {missing} of {len(records)} records have no stored samples "
            "and were not recomputed",
            RecordWarning,
            stacklevel=2,
        )
    if stopped and not bounds.get_method(method).anytime_valid:
        warnings.warn(
            f"{run_dir}: {stopped} records stopped sampling early (n_used < n); a {method} "
            "bound is not valid after optional stopping: use method="
            + " or ".join(repr(m) for m in bounds.anytime_methods()),
            RecordWarning,
            stacklevel=2,
        )
    if out_dir is not None:
        new_settings = dict(settings)
        for key in ("environment", "created", "resumed"):
            new_settings.pop(key, None)
        new_settings.update(
            alpha=float(alpha),
            method=method,
            recomputed_from={
                "run": str(run_dir),
                "alpha": settings.get("alpha"),
                "method": settings.get("method"),
            },
        )
        if fixed_radii is not None:
            new_settings["radii"] = fixed_radii
        with RunWriter(out_dir, new_settings) as writer:
            for record in out:
                if record["key"] not in writer:
                    writer.write(record)
    return out
