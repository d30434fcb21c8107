"""What the evaluation harness writes and returns: its records (one builder per kind), the
summary tables and :class:`EvaluationResult`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from featsmooth.attack_specs import AttackSpec
    from featsmooth.evaluate import _Output, _Setting

SETTINGS = ("vanilla", "fs", "fs+plugin", "robust", "robust+fs")
DEFAULT_SETTINGS = ("vanilla", "fs", "fs+plugin")
PREDICTION_METHODS = ("margin", "fcsb", "cohen")


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1).double(), dim=1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (unit(a) * unit(b)).sum(1).cpu().numpy()


def _nan(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclass
class EvaluationResult:
    """What :func:`featsmooth.evaluate.evaluate` returns.

    Attributes:
        summary: one row per (setting, attack): ``setting``, ``attack``, ``attack_id``,
            ``norm``, ``eps``, ``steps``, ``targeted``, ``images``, ``unattacked_score``
            (the setting's accuracy on the unattacked images, smoothed for smoothed
            settings; 1 for feature-only tasks), ``robust_score`` (accuracy under
            attack; feature-only: mean adversarial cosine), ``asr`` (fraction of images
            on which the attack succeeded; untargeted zero-shot: misclassified after the
            attack, images already wrong when clean included), ``success_rate``
            (mean fraction of fresh draws the attack fools; = asr for vanilla),
            ``adv_cosine``, ``l2_distance`` (mean l2 norm of the perturbations; an linf
            budget's l2 radius grows with the image size), ``certified_cosine`` (mean FCSB at the attack's l2 radius, 0
            where no certificate), ``certified_accuracy`` (margin certificate at that
            radius), ``consistency_checked``, ``consistency_violations``.
        certified: one row per (smoothed setting, radius): ``fcsb`` (mean, 0 = none),
            ``certified_fraction`` and ``certified_accuracy_<method>`` for the three
            prediction certificates.
        records: every record of the run (resumed ones included).
        skipped: settings not run, with the reason.
        run_dir: the run folder (``None`` if records were not written).
    """

    summary: list[dict[str, Any]]
    certified: list[dict[str, Any]]
    records: list[dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None

    @property
    def violations(self) -> int:
        return int(sum(r.get("consistency_violations") or 0 for r in self.summary))


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-(setting, attack) summary table of attack records (see EvaluationResult)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("attack") is None:
            continue
        groups.setdefault((str(r.get("setting")), str(r.get("attack_id"))), []).append(r)

    def mean(items: list[dict[str, Any]], name: str, nan_as: float | None = None) -> float | None:
        vals = []
        for it in items:
            v = it.get(name)
            if v is None:
                if nan_as is None:
                    continue
                v = nan_as
            vals.append(float(v))
        return float(np.mean(vals)) if vals else None

    order = {s: i for i, s in enumerate(SETTINGS)}
    rows = []
    for (setting, attack_id), items in sorted(
        groups.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99), kv[0][0])
    ):
        first = items[0]
        checked = [it for it in items if it.get("consistency_checked")]
        rows.append(
            {
                "setting": setting,
                "attack": first.get("attack"),
                "attack_id": attack_id,
                "norm": first.get("norm"),
                "eps": first.get("eps"),
                "steps": first.get("steps"),
                "targeted": first.get("targeted"),
                "images": len(items),
                "unattacked_score": mean(items, "unattacked_score"),
                "robust_score": mean(items, "robust_score"),
                "asr": mean(items, "success"),
                "success_rate": mean(items, "success_rate"),
                "adv_cosine": mean(items, "adv_cosine"),
                "l2_distance": mean(items, "l2_distance"),
                "certified_cosine": mean(items, "certified_cosine", nan_as=0.0)
                if any("certified_cosine" in it for it in items)
                else None,
                "certified_accuracy": mean(items, "certified_margin")
                if any("certified_margin" in it for it in items)
                else None,
                "consistency_checked": len(checked),
                "consistency_violations": sum(
                    1 for it in checked if it.get("consistency_violation")
                ),
            }
        )
    return rows


def certified_table(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Certified cosine and certified accuracy vs radius per smoothed setting, from the
    certification records (``kind == "certificate"``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "certificate":
            groups.setdefault(str(r.get("setting")), []).append(r)
    rows = []
    for setting, items in groups.items():
        radii = items[0].get("radii") or []
        for j, radius in enumerate(radii):
            fc = [it["fcsb"][j] for it in items if it.get("fcsb") is not None]
            row: dict[str, Any] = {
                "setting": setting,
                "radius": radius,
                "images": len(items),
                "fcsb": float(np.mean([0.0 if v is None else v for v in fc])) if fc else None,
                "certified_fraction": float(np.mean([v is not None for v in fc])) if fc else None,
            }
            for m in PREDICTION_METHODS:
                key = f"certified_{m}"
                vals = [it[key][j] for it in items if it.get(key) is not None]
                row[f"certified_accuracy_{m}"] = float(np.mean(vals)) if vals else None
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# the harness


def record_head(kind: str, key: tuple[str, ...], name: str, setting: _Setting) -> dict[str, Any]:
    """The fields every evaluate record starts with."""
    model = str(getattr(setting.model.encoder, "name", ""))
    return {"key": list(key), "kind": kind, "image": name, "setting": setting.name, "model": model}


def certificate_record(
    key: tuple[str, ...],
    name: str,
    setting: _Setting,
    cert: Any,
    primary: int | None,
    acceptable: frozenset[int],
    radii: np.ndarray,
) -> dict[str, Any]:
    """A certificate record of evaluate: the fields of ``certify``'s records (one builder:
    :meth:`featsmooth.certificates.Certificate.to_record` / :meth:`featsmooth.certificates.PredictionCertificate.to_record`) plus the
    setting and, per radius, whether each prediction certificate holds with the right class
    (``certified_margin`` / ``certified_fcsb`` / ``certified_cohen``)."""
    feat = getattr(cert, "features", None) or cert
    record = {**record_head("certificate", key, name, setting), **feat.to_record(radii.tolist())}
    if hasattr(cert, "prediction"):
        record.update(cert.to_record(None, primary, sorted(acceptable)))
        for m in PREDICTION_METHODS:
            record[f"certified_{m}"] = [
                bool(acceptable) and cert.certified(float(r), m) and cert.predicted(m) in acceptable
                for r in radii
            ]
    return record


def attack_record(
    key: tuple[str, ...],
    name: str,
    setting: _Setting,
    spec: AttackSpec,
    j: int,
    r: int,
    xb: torch.Tensor,
    adv: torch.Tensor,
    result: Any,
    clean: _Output,
    adv_out: _Output,
    classes: torch.Tensor | None,
    primary: int | None,
    acceptable: frozenset[int],
    cert: Any,
    consistency: Any,
    eot_draws: int,
    judge_draws: int,
    cosine_threshold: float,
    target_feats: torch.Tensor | None,
    seconds: float,
) -> dict[str, Any]:
    delta = (adv[r].double() - xb[r].double()).flatten()
    l2 = float(delta.norm())
    cos = float(cosine(clean.features[j : j + 1], adv_out.features[r : r + 1])[0])
    record: dict[str, Any] = {
        **record_head("attack", key, name, setting),
        "attack": spec.name,
        "attack_id": spec.attack_id,
        "norm": spec.norm,
        "eps": spec.eps,
        "steps": spec.steps,
        "targeted": spec.targeted,
        "target": list(spec.target) if spec.target is not None else None,
        "l2_distance": l2,
        "linf_distance": float(delta.abs().max()),
        "objective": float(result.objective[r]),
        "unattacked_objective": float(result.clean_objective[r]),
        "adv_cosine": cos,
        "seconds": seconds,
    }
    if setting.smoothed:
        record.update(sigma=float(setting.model.sigma), eot_draws=eot_draws,
                      judge_draws=judge_draws)  # fmt: skip
        record["adv_cosine_clean"] = float(
            cosine(setting.model.features(xb[r : r + 1]).detach(), adv_out.features[r : r + 1])[0]
        )
    success_draws = None
    if classes is not None:
        clean_pred = int(clean.predictions[j])
        adv_pred = int(adv_out.predictions[r])
        hits = set(spec.target) if spec.target is not None else None
        if hits is not None:
            success = adv_pred in hits
            if adv_out.draw_predictions is not None:
                success_draws = float(np.isin(adv_out.draw_predictions[r], list(hits)).mean())
        elif acceptable:
            success = adv_pred not in acceptable
            if adv_out.draw_predictions is not None:
                success_draws = float(
                    (~np.isin(adv_out.draw_predictions[r], list(acceptable))).mean()
                )
        else:
            success = adv_pred != clean_pred
            if adv_out.draw_predictions is not None:
                success_draws = float((adv_out.draw_predictions[r] != clean_pred).mean())
        record.update(
            label=primary,
            acceptable=sorted(acceptable),
            unattacked_prediction=clean_pred,
            adv_prediction=adv_pred,
            changed=adv_pred != clean_pred,
            unattacked_score=float(clean_pred in acceptable) if acceptable else None,
            robust_score=float(adv_pred in acceptable) if acceptable else None,
        )
    elif target_feats is not None and spec.matches_target_embeddings:
        tf = target_feats[0:1] if target_feats.shape[0] == 1 else target_feats[j : j + 1]
        to_target = float(cosine(tf, adv_out.features[r : r + 1])[0])
        success = to_target > cos
        record.update(target_cosine=to_target, unattacked_score=1.0, robust_score=cos)
    else:
        success = cos < cosine_threshold
        if adv_out.draw_features is not None:
            per_draw = unit(adv_out.draw_features[r]) @ unit(clean.features[j : j + 1]).T
            success_draws = float((per_draw.flatten() < cosine_threshold).double().mean())
        record.update(unattacked_score=1.0, robust_score=cos)
    record["success"] = bool(success)
    record["success_rate"] = success_draws if setting.smoothed else float(success)
    if cert is not None:
        feat = getattr(cert, "features", None) or cert
        record["certified_cosine"] = _nan(float(feat.fcsb(l2)))
        record["certified_cosine_clean"] = _nan(float(feat.fcsb(l2, "clean")))
        record["score_lower"] = feat.score_lower
        if hasattr(cert, "prediction"):
            for m in PREDICTION_METHODS:
                record[f"certified_{m}"] = bool(
                    acceptable and cert.certified(l2, m) and cert.predicted(m) in acceptable
                )
    if consistency is not None:
        record.update(consistency.to_dict())
        record["consistency_checked"] = not (
            math.isnan(consistency.certified_bound)
            and math.isnan(consistency.clean_certified_bound)
        )
    return record
