"""Zero-shot classification with text prompts: clean predictions and certified accuracy.

Classes are unit text embeddings ``t_c`` (:func:`class_embeddings`, CLIP-style prompt
ensembling). The clean classifier is ``argmax_c <t_c, f(x)/||f(x)||>``
(:func:`zero_shot_predict`). :func:`zero_shot_certify` runs
:meth:`featsmooth.SmoothedEncoder.certify_prediction` per image and records its three
certificates side by side (pairwise margin, FCSB cone, Cohen et al. hard vote; see
:class:`featsmooth.certificates.PredictionCertificate`). :func:`certified_accuracy` is the
standard curve: the fraction of images whose certified prediction is correct *and*
certified at l2 radius ``r`` (radii in pixel units of the images passed in). Each image's
statement holds with probability at least ``1 - alpha``; the curve is an empirical mean of
such statements, not a simultaneous guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featsmooth.errors import InputError
from featsmooth.seeds import noise_seed

METHODS = ("margin", "fcsb", "cohen")


def text_encoder(encoder: Any) -> Any:
    """The object whose ``encode_text`` to use: the encoder, or the first one found down its
    chain of wrapped encoders (``.encoder`` / ``.base``: SmoothedEncoder, plug-ins)."""
    queue, seen = [encoder], set()
    while queue:
        obj = queue.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        fn = getattr(obj, "encode_text", None)
        if callable(fn) and getattr(obj, "supports_text", True):
            return obj
        queue.extend(getattr(obj, name, None) for name in ("encoder", "base"))
    raise InputError(f"{type(encoder).__name__} has no text encoder (encode_text) for prompts")


@torch.no_grad()
def class_embeddings(
    encoder: Any, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
) -> torch.Tensor:
    """Unit class embeddings ``(K, D)`` float32: the mean of the unit embeddings of each
    template filled with the class name, renormalised (prompt ensembling, Radford et al.
    2021). ``encoder`` is a text-image encoder or a wrapper (e.g. SmoothedEncoder) of one.
    """
    if isinstance(class_names, str) or not len(class_names):
        raise InputError("class_names must be a non-empty list of names")
    if isinstance(templates, str):
        templates = (templates,)
    if not templates or any("{}" not in t for t in templates):
        raise InputError("every template must contain '{}' for the class name")
    text = text_encoder(encoder)
    k = len(class_names)
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = text.encode_text(prompts).float()
    emb = F.normalize(emb, dim=-1).view(k, len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def _check_classes(class_emb: torch.Tensor) -> torch.Tensor:
    if not isinstance(class_emb, torch.Tensor) or class_emb.ndim != 2 or class_emb.shape[0] < 2:
        raise InputError("class embeddings must be a (K, D) tensor with K >= 2")
    return class_emb


@torch.no_grad()
def zero_shot_predict(
    encoder: Any, images: torch.Tensor, class_emb: torch.Tensor, *, batch_size: int = 64
) -> torch.Tensor:
    """Clean zero-shot predictions ``(B,)`` int64: ``argmax_c <t_c, f(x)/||f(x)||>``.

    ``encoder`` is an image encoder (features flattened and normalised here) or a
    SmoothedEncoder (its noise-free ``features``, centred if it was given a centre).
    """
    class_emb = _check_classes(class_emb)
    feats_fn = getattr(encoder, "features", None)
    use_sm = callable(feats_fn) and hasattr(encoder, "certify_prediction")
    preds = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        if use_sm:
            f = feats_fn(x)
        else:
            dev = getattr(encoder, "device", None)
            f = encoder(x.to(dev) if isinstance(dev, torch.device) else x)
        f = F.normalize(f.flatten(1).float(), dim=-1)
        if f.shape[1] != class_emb.shape[1]:
            raise InputError(
                f"features have dimension {f.shape[1]}, class embeddings {class_emb.shape[1]}"
            )
        preds.append((f @ class_emb.to(f.device, torch.float32).T).argmax(dim=-1).cpu())
    return torch.cat(preds)


def _label_set(label: int | Iterable[int] | None) -> frozenset[int]:
    if label is None:
        return frozenset()
    if isinstance(label, (int, np.integer)):
        return frozenset({int(label)})
    if isinstance(label, torch.Tensor) and label.ndim == 0:
        return frozenset({int(label)})
    return frozenset(int(v) for v in label)


@dataclass
class ZeroShotRecord:
    """One image's zero-shot certification.

    Attributes:
        index, name: position in the batch and an optional name.
        label: the acceptable class indices (several when classes overlap; empty: none).
        clean_prediction: prediction of the base (unsmoothed) encoder.
        prediction: smoothed prediction certified by the margin method (-1: abstain).
        fcsb_prediction, cohen_prediction: the predictions the other two certify.
        margin_radius, fcsb_radius, cohen_radius: certified l2 radii (NaN: abstain).
        certificate: the PredictionCertificate (``None`` after a JSON round trip).
    """

    index: int
    name: str | None
    label: frozenset[int]
    clean_prediction: int
    prediction: int
    fcsb_prediction: int
    cohen_prediction: int
    margin_radius: float
    fcsb_radius: float
    cohen_radius: float
    certificate: Any = field(default=None, repr=False, compare=False)

    def predicted(self, method: str = "margin") -> int:
        _check_method(method)
        return self.prediction if method == "margin" else getattr(self, f"{method}_prediction")

    def radius(self, method: str = "margin") -> float:
        _check_method(method)
        return float(getattr(self, f"{method}_radius"))

    def correct(self, method: str = "margin") -> bool:
        """The certified prediction of ``method`` is an acceptable label (abstain: False)."""
        return self.predicted(method) in self.label

    @property
    def clean_correct(self) -> bool:
        return self.clean_prediction in self.label

    def certified(self, radius: float, method: str = "margin") -> bool:
        """Correct and certified at l2 ``radius`` (strictly inside the certified radius;
        radius 0 needs only a non-abstaining certificate), as in PredictionCertificate."""
        r = self.radius(method)
        if math.isnan(r) or not (radius < r or radius == 0.0):
            return False
        return self.correct(method)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "name": self.name,
            "label": sorted(self.label),
            "clean_prediction": self.clean_prediction,
            "clean_correct": self.clean_correct,
        }
        for m in METHODS:
            r = self.radius(m)
            out[f"{m}_prediction"] = self.predicted(m)
            out[f"{m}_radius"] = None if math.isnan(r) else r
            out[f"{m}_correct"] = self.correct(m)
        if self.certificate is not None and hasattr(self.certificate, "to_dict"):
            out["certificate"] = self.certificate.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZeroShotRecord:
        def rad(key: str) -> float:
            v = data.get(key)
            return float("nan") if v is None else float(v)

        return cls(
            index=int(data["index"]),
            name=data.get("name"),
            label=frozenset(int(v) for v in data["label"]),
            clean_prediction=int(data["clean_prediction"]),
            prediction=int(data["margin_prediction"]),
            fcsb_prediction=int(data["fcsb_prediction"]),
            cohen_prediction=int(data["cohen_prediction"]),
            margin_radius=rad("margin_radius"),
            fcsb_radius=rad("fcsb_radius"),
            cohen_radius=rad("cohen_radius"),
        )


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")


def zero_shot_certify(
    smoothed: Any,
    images: torch.Tensor,
    labels: Sequence[int | Iterable[int] | None] | torch.Tensor,
    class_emb: torch.Tensor,
    radii: Sequence[float] | None = None,
    n0: int = 64,
    n: int = 10_000,
    alpha: float = 0.001,
    *,
    method: str = "betting",
    seed: int = 0,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> list[ZeroShotRecord]:
    """Certify the zero-shot prediction of every image with ``smoothed.certify_prediction``.

    Args:
        smoothed: a :class:`featsmooth.SmoothedEncoder`.
        images: ``(B, C, H, W)`` in pixel units.
        labels: per image a class index, a set of acceptable indices, or None (unlabelled).
        class_emb: ``(K, D)`` unit class embeddings (e.g. from :func:`class_embeddings`).
        radii: if given, checked to be non-negative finite numbers (use them with
            :func:`certified_accuracy`); the certificates themselves do not depend on them.
        n0, n, alpha, method: passed to ``certify_prediction`` (selection samples,
            certification samples, failure probability per image, confidence bound).
        seed: base seed; each image gets its own independent noise stream derived from it
            (the same whatever ``batch_size`` is).
        names: optional image names stored in the records.
        batch_size: images per ``certify_prediction`` call (None: all at once).

    Returns:
        One :class:`ZeroShotRecord` per image, in order.
    """
    if not hasattr(smoothed, "certify_prediction"):
        raise InputError("zero_shot_certify needs a SmoothedEncoder (certify_prediction)")
    if images.ndim != 4:
        raise InputError(f"expected images (B, C, H, W), got {tuple(images.shape)}")
    b = images.shape[0]
    label_list = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(label_list) != b:
        raise InputError(f"got {len(label_list)} labels for {b} images")
    if names is not None and len(names) != b:
        raise InputError(f"got {len(names)} names for {b} images")
    if radii is not None:
        _check_radii(radii)
    class_emb = _check_classes(class_emb)
    clean = zero_shot_predict(smoothed, images, class_emb)
    step = b if batch_size is None else max(1, int(batch_size))
    # image i gets the seed one certify_prediction(images, seed=seed) call gives it
    # (featsmooth.seeds, key i), so results do not depend on batch_size
    seeds = [noise_seed(seed, i, "certify") for i in range(b)]
    certs = []
    for start in range(0, b, step):
        certs.extend(
            smoothed.certify_prediction(
                images[start : start + step], class_emb, n0=n0, n=n, alpha=alpha,
                method=method, seed=seeds[start : start + step],
            )
        )  # fmt: skip
    records = []
    for i, cert in enumerate(certs):
        records.append(
            ZeroShotRecord(
                index=i,
                name=None if names is None else str(names[i]),
                label=_label_set(label_list[i]),
                clean_prediction=int(clean[i]),
                prediction=int(cert.prediction),
                fcsb_prediction=int(cert.fcsb_prediction),
                cohen_prediction=int(cert.cohen_prediction),
                margin_radius=float(cert.margin_radius),
                fcsb_radius=float(cert.fcsb_radius),
                cohen_radius=float(cert.cohen_radius),
                certificate=cert,
            )
        )
    return records


def _check_radii(radii: Sequence[float]) -> np.ndarray:
    r = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InputError("radii must be non-negative finite numbers")
    return r


def certified_accuracy(
    records: Sequence[ZeroShotRecord | dict[str, Any]],
    radii: Sequence[float] | float,
    method: str = "margin",
) -> np.ndarray:
    """Fraction of labelled records whose ``method`` prediction is correct and certified at
    each radius; ``(len(radii),)`` float64. Unlabelled records (empty label) are skipped.
    """
    _check_method(method)
    r = _check_radii(radii if not isinstance(radii, (int, float)) else [radii])
    recs = [ZeroShotRecord.from_dict(x) if isinstance(x, dict) else x for x in records]
    recs = [x for x in recs if x.label]
    if not recs:
        raise InputError("no labelled records to score")
    return np.array([np.mean([x.certified(float(ri), method) for x in recs]) for ri in r])


def clean_accuracy(records: Sequence[ZeroShotRecord]) -> float:
    """Fraction of labelled records whose clean (base-encoder) prediction is correct."""
    recs = [x for x in records if x.label]
    if not recs:
        raise InputError("no labelled records to score")
    return float(np.mean([x.clean_correct for x in recs]))
