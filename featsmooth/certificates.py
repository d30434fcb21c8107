"""Result objects of certification: what was certified, at which level, from how many samples.

Each object names the quantity it certifies, so that a number can never be read as a
statement it does not make:

* smoothed reference (``reference="smoothed"``): ``cos(f_hat(x), f_hat(x + delta))`` and,
  with the same samples, ``<v, f_hat(x + delta)>`` for the recorded unit direction ``v``;
* clean reference (``reference="clean"``): ``cos(f(x), f_hat(x + delta))``.

Every lower bound holds with probability at least ``1 - alpha`` over the noise draws of
the certification run (each reference is a separate statement at that level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featsmooth import bounds
from featsmooth.errors import InputError

ABSTAIN = -1
REFERENCES = ("smoothed", "clean")

QUANTITY = {
    "smoothed": "cos(f_hat(x), f_hat(x+delta))",
    "clean": "cos(f(x), f_hat(x+delta))",
}


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class Certificate:
    """Feature-space certificate of one image.

    Attributes:
        sigma: noise level in pixel units.
        alpha: each lower bound fails with probability at most ``alpha``.
        method: confidence bound used (``betting``, ``bernstein`` or ``hoeffding``).
        n0: samples used to choose the direction ``v``.
        n_used: fresh samples behind the bounds (fewer than requested if stopped early).
        score_estimate: estimate of ``S = ||f_hat(x)||`` from all ``n0 + n_used`` samples
            (square root of the unbiased estimate of ``S^2``); not a certified value.
        score_lower: ``S_low``, a lower confidence bound on ``<v, f_hat(x)> <= S``.
        clean_score_estimate: mean of ``<f(x), f(x + eps_i)>``, estimates ``S_c``.
        clean_score_lower: lower confidence bound on ``S_c = <f(x), f_hat(x)>``.
        clean_smoothed_cosine: cosine between ``f(x)`` and the Monte-Carlo smoothed
            feature, for context (how far smoothing moved the feature); not certified.
        stop_reason: ``max_samples``, ``tolerance``, ``target_reached`` or
            ``target_unreachable`` (sequential mode).
        seed: the seed of this image's noise stream.
        samples: with ``keep_samples=True``, the per-sample values ``<v, f(x + eps_i)>``
            (smoothed reference) and ``<f(x), f(x + eps_i)>`` (clean), shape ``(2, n_used)``,
            so certificates can be recomputed at another alpha or method without the
            encoder (``bounds.mean_lower_bound(samples[0], alpha, method)``).
    """

    sigma: float
    alpha: float
    method: str
    n0: int
    n_used: int
    score_estimate: float
    score_lower: float
    clean_score_estimate: float
    clean_score_lower: float
    clean_smoothed_cosine: float
    stop_reason: str = "max_samples"
    seed: int | None = None
    direction: np.ndarray | None = field(default=None, repr=False, compare=False)
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)

    def lower(self, reference: str = "smoothed") -> float:
        """The certified score for ``reference``: ``S_low`` or the clean ``S_c`` bound."""
        if reference == "smoothed":
            return self.score_lower
        if reference == "clean":
            return self.clean_score_lower
        raise InputError(f"reference must be one of {REFERENCES}, got {reference!r}")

    def fcsb(self, radius: float | np.ndarray, reference: str = "smoothed") -> np.ndarray:
        """Certified cosine at each l2 radius (NaN: no certificate). See ``QUANTITY``."""
        return bounds.fcsb(self.lower(reference), bounds.as_radii(radius), self.sigma)

    def certified_radius(self, cosine: float, reference: str = "smoothed") -> float:
        """Radius within which the cosine of ``reference`` stays >= ``cosine`` (NaN: none)."""
        return float(bounds.certified_radius(self.lower(reference), cosine, self.sigma))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN becomes None; direction and samples are left out)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("direction", "samples")}
        return {k: _nan_to_none(v) for k, v in data.items()}

    def to_record(self, radii: Sequence[float]) -> dict[str, Any]:
        """The record fields of this certificate (:meth:`to_dict`) plus, at each l2 radius of
        ``radii``, the certified cosine of both references (``fcsb``, ``fcsb_clean``; None:
        no certificate) and the radius that keeps the smoothed cosine at 0.5
        (``certified_radius_cos50``)."""
        radii = [float(r) for r in radii]
        return {
            **self.to_dict(),
            "radii": radii,
            "fcsb": [_nan_to_none(float(v)) for v in self.fcsb(radii)] if radii else [],
            "fcsb_clean": (
                [_nan_to_none(float(v)) for v in self.fcsb(radii, "clean")] if radii else []
            ),
            "certified_radius_cos50": _nan_to_none(self.certified_radius(0.5)),
        }


@dataclass
class PredictionCertificate:
    """Certified zero-shot prediction of one image, three ways side by side.

    For the smoothed classifier ``g(x) = argmax_c <t_c, f_hat(x)>``:

    * ``margin``: pairwise-margin certificate; ``g(x + delta) = prediction`` for all
      ``||delta|| < margin_radius`` (one failure probability ``alpha`` for all the rival
      classes together, with no union bound: docs/theory.md, Proposition 5).
    * ``fcsb``: implied by the FCSB alone (the cone of features within the certified cosine
      of the direction ``v`` stays in the class's region); ``g(x + delta) = fcsb_prediction``
      for ``||delta|| < fcsb_radius``.
    * ``cohen``: Cohen et al. (2019) hard-vote certificate of the argmax classifier
      ``h(x) = argmax_c P[argmax_k <t_k, f(x + eps)> = c]``; a different smoothed classifier.

    A NaN radius means abstain (the matching prediction is then ``ABSTAIN``). Each of the
    three statements holds with probability at least ``1 - alpha``. ``features`` is the
    feature certificate (:class:`Certificate`) computed from the same samples.
    """

    sigma: float
    alpha: float
    method: str
    n0: int
    n_used: int
    estimate: int
    prediction: int
    margin_radius: float
    fcsb_prediction: int
    fcsb_radius: float
    cohen_prediction: int
    cohen_radius: float
    clean_prediction: int
    score_lower: float
    seed: int | None = None
    features: Certificate | None = field(default=None, repr=False, compare=False)

    def radius(self, method: str = "margin") -> float:
        """Certified radius of ``method`` (``margin``, ``fcsb`` or ``cohen``); NaN: abstain."""
        if method not in ("margin", "fcsb", "cohen"):
            raise InputError(f"method must be margin, fcsb or cohen, got {method!r}")
        return getattr(self, f"{method}_radius")

    def predicted(self, method: str = "margin") -> int:
        """The certified class of ``method`` (``ABSTAIN`` if it abstains)."""
        return self.prediction if method == "margin" else getattr(self, f"{method}_prediction")

    def certified(self, radius: float, method: str = "margin", label: int | None = None) -> bool:
        """Whether ``method`` certifies its prediction (and, if given, that it is ``label``)
        at l2 radius ``radius``. A zero radius certifies only the un-attacked input.
        """
        r = self.radius(method)
        if math.isnan(r) or not (radius < r or radius == 0.0):
            return False
        return label is None or self.predicted(method) == label

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN becomes None; the feature certificate is left out)."""
        data = {k: v for k, v in asdict(self).items() if k != "features"}
        return {k: _nan_to_none(v) for k, v in data.items()}

    def to_record(
        self,
        names: Sequence[str] | None,
        label: int | None,
        acceptable: Sequence[int] = (),
    ) -> dict[str, Any]:
        """The prediction fields of a certificate record: the image's ``label`` and the
        ``acceptable`` classes (counted as correct), the ``smoothed_prediction`` (the
        Monte-Carlo estimate, uncertified), the certified ``prediction`` of each method
        with its radius (None: abstain), the ``clean_prediction`` of the unsmoothed encoder
        on the clean image; with class ``names``, a ``*_name`` field beside each class
        index; ``correct`` and ``clean_correct`` where ``acceptable`` is known."""
        classes = {
            "label": label,
            "smoothed_prediction": self.estimate,
            "prediction": self.prediction,
            "clean_prediction": self.clean_prediction,
        }
        out: dict[str, Any] = {}
        for field_name, index in classes.items():
            out[field_name] = index
            if names is not None:
                known = index is not None and 0 <= index < len(names)
                out[f"{field_name}_name"] = names[index] if known else None
        out.update(
            acceptable=list(acceptable),
            fcsb_prediction=self.fcsb_prediction,
            cohen_prediction=self.cohen_prediction,
            margin_radius=_nan_to_none(self.margin_radius),
            fcsb_radius=_nan_to_none(self.fcsb_radius),
            cohen_radius=_nan_to_none(self.cohen_radius),
        )
        if acceptable:
            out["correct"] = self.prediction in acceptable
            out["clean_correct"] = self.clean_prediction in acceptable
        return out
