"""The consistency check that must never fail: attacked inputs against their own certificates.

A feature certificate (:class:`featsmooth.Certificate`) of a clean input ``x`` states, with
probability at least ``1 - alpha_cert`` over its noise draws, that for every ``delta`` with
``||delta||_2 <= r``::

    <v, f_hat(x + delta)>    >= B(score_lower, r)         (smoothed reference, direction v)
    <f(x), f_hat(x + delta)> >= B(clean_score_lower, r)   (clean reference)

where ``v`` is ``Certificate.direction`` and ``B`` is :func:`featsmooth.bounds.fcsb`.
These inner products -- not the cosines that follow from them -- are what the theorem
bounds, so they are what this module tests, and no norm argument is needed.

For an attacked input ``x + delta`` (``r`` = the *actual* l2 norm of ``delta``, computed in
float64 from the stored images), :func:`check_consistency` draws ``n`` fresh noise samples
and computes an **upper** confidence bound ``U`` (level ``1 - alpha``) on the mean of
``<u, f(x + delta + eps_i)>`` for each reference ``u``. A violation is reported only when
``U < B(S_low, r) - tolerance``: then, unless the certificate itself failed (probability
``<= alpha_cert``) or the check's own bound failed (probability ``<= alpha``), the
certificate's statement is false. A correct implementation therefore reports a violation
with probability at most ``alpha_cert + alpha`` per input and reference (so at most
``2 (alpha_cert + alpha)`` per input, both references together); a report at a
higher rate is a bug (in the bound, the sampling, the encoder's determinism, or the
attack's projection), which is why violations are logged at error level, warned about and
their tensors saved for inspection.

``tolerance`` (default 1e-6) absorbs the float32 rounding of the unit features (inner
products of float32 unit vectors carry errors of order 1e-7); it is far below any
confidence slack reachable with realistic ``n``.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featsmooth import bounds
from featsmooth.errors import InputError
from featsmooth.seeds import noise_seed

logger = logging.getLogger("featsmooth")

DEFAULT_TOLERANCE = 1e-6
VIOLATIONS_DIR = "violations"


class ConsistencyWarning(UserWarning):
    """An attacked input measured below its certified bound beyond the estimate's error."""


@dataclass
class ConsistencyResult:
    """Outcome of the consistency check for one attacked input.

    Attributes:
        radius: actual l2 norm of ``adv - x`` (pixel units, float64).
        certified_bound: ``B(score_lower, radius)``, certified lower bound on
            ``<v, f_hat(x + delta)>`` (NaN: no certificate at this radius, nothing to test).
        estimate: Monte-Carlo mean of ``<v, f(x + delta + eps_i)>`` over ``n`` fresh draws.
        upper: upper confidence bound (level ``1 - alpha``) on that mean.
        clean_certified_bound, clean_estimate, clean_upper: the same for the clean reference
            ``u = f(x)`` and ``B(clean_score_lower, radius)``.
        smoothed_cosine: Monte-Carlo estimate of ``cos(f_hat(x), f_hat(x + delta))`` (the
            clean smoothed feature from the same number of fresh draws; context, not tested).
        clean_cosine: Monte-Carlo estimate of ``cos(f(x), f_hat(x + delta))`` (context).
        violation: ``upper < certified_bound - tolerance`` or the same for the clean
            reference.
        n, alpha, method: draws and confidence bound of the check.
        saved: file holding the tensors of a violation (``None`` if none or no run folder).
    """

    radius: float
    certified_bound: float
    estimate: float
    upper: float
    clean_certified_bound: float
    clean_estimate: float
    clean_upper: float
    smoothed_cosine: float
    clean_cosine: float
    violation: bool
    n: int
    alpha: float
    method: str
    key: Any = None
    saved: str | None = None

    def to_dict(self, prefix: str = "consistency_") -> dict[str, Any]:
        """Fields as a flat dict with ``prefix`` (NaN kept; records turn it into null)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items() if k != "key"}


def _feature_certificate(cert: Any) -> Any:
    """A :class:`~featsmooth.certificates.Certificate` from a Certificate or a PredictionCertificate (``.features``)."""
    inner = getattr(cert, "features", None)
    cert = inner if inner is not None else cert
    if getattr(cert, "direction", None) is None or not hasattr(cert, "score_lower"):
        raise InputError(
            "the consistency check needs feature certificates with a direction "
            "(SmoothedEncoder.certify or certify_prediction results)"
        )
    return cert


def _noisy_mean_projection(
    smoothed: Any,
    image: torch.Tensor,
    refs: torch.Tensor,
    n: int,
    generator: torch.Generator,
    chunk: int,
) -> tuple[np.ndarray, torch.Tensor]:
    """Values ``<ref_j, f(image + eps_i)>`` ``(J, n)`` float64 and the sum of the features."""
    values = []
    total = None
    done = 0
    with torch.no_grad():
        while done < n:
            k = min(chunk, n - done)
            feats = smoothed.noisy_features(image.unsqueeze(0), k, generator=generator)[0]
            feats = feats.to(torch.float64)
            values.append((feats @ refs.T).T.cpu().numpy())
            s = feats.sum(0)
            total = s if total is None else total + s
            done += k
    return np.concatenate(values, axis=1), total


def _seed_key(key: Any) -> Any:
    """A record key as a seed key (:func:`featsmooth.seeds.noise_seed`): tuples part-wise."""
    if isinstance(key, (tuple, list)):
        return tuple(k if isinstance(k, (str, bytes, int)) else str(k) for k in key)
    return key if isinstance(key, (str, bytes, int)) else str(key)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def _safe_name(key: Any) -> str:
    text = "-".join(str(k) for k in key) if isinstance(key, (list, tuple)) else str(key)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:120] or "input"


def save_violation(
    run_dir: str | Path,
    key: Any,
    image: torch.Tensor,
    adv_image: torch.Tensor,
    direction: np.ndarray,
    result: ConsistencyResult,
) -> Path:
    """Write the tensors of a violation to ``<run_dir>/violations/<key>.safetensors``.

    Holds ``image``, ``adv_image`` (float32, pixel units) and ``direction`` (float64), with
    the check's numbers as string metadata; reload with ``safetensors.torch.load_file``.
    """
    from safetensors.torch import save_file

    folder = Path(run_dir) / VIOLATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe_name(key)}.safetensors"
    meta = {k: repr(v) for k, v in asdict(result).items() if k != "saved"}
    save_file(
        {
            "image": image.detach().cpu().float().contiguous(),
            "adv_image": adv_image.detach().cpu().float().contiguous(),
            "direction": torch.as_tensor(np.asarray(direction, dtype=np.float64)).contiguous(),
        },
        str(path),
        metadata=meta,
    )
    return path


def check_consistency(
    smoothed: Any,
    images: torch.Tensor,
    adv_images: torch.Tensor,
    certificates: Sequence[Any],
    *,
    n: int = 256,
    alpha: float = 0.001,
    method: str = bounds.DEFAULT_METHOD,
    seed: int | Sequence[int] | None = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    run_dir: str | Path | None = None,
    keys: Sequence[Any] | None = None,
    chunk: int = 64,
    clean_smoothed: torch.Tensor | None = None,
) -> list[ConsistencyResult]:
    """Test every attacked input against the certificate of its clean input.

    Args:
        smoothed: the :class:`featsmooth.SmoothedEncoder` that produced ``certificates``
            (same encoder, plug-in, sigma and centre).
        images: clean images ``(B, C, H, W)`` in [0, 1].
        adv_images: attacked images, same shape; the radius tested is the actual l2 norm
            of the difference, whatever the attack's budget was.
        certificates: one per image, from ``smoothed.certify`` (``Certificate``) or
            ``smoothed.certify_prediction`` (``PredictionCertificate``; its feature
            certificate is used).
        n: fresh noise draws per attacked input (independent of the certification draws).
        alpha: failure probability of the check's upper confidence bound.
        method: confidence bound (``betting``, ``bernstein`` or ``hoeffding``).
        seed: run seed of the check's noise: input ``i`` draws from
            ``featsmooth.seeds.noise_seed(seed, keys[i], "check")`` (its index when no
            ``keys`` are given), independent of the certificate's draws (purpose
            ``certify``); or one seed per input, used as given; ``None``: fresh noise.
        tolerance: rounding allowance (see the module docstring).
        run_dir: where to save the tensors of violations (``None``: not saved).
        keys: record keys naming the inputs in messages and file names.
        chunk: noisy draws per forward pass.
        clean_smoothed: optional ``(B, k)`` Monte-Carlo smoothed features of the clean
            images, used only for the context value ``smoothed_cosine`` (saves ``n`` draws
            per image; default: drawn here).

    Returns:
        One :class:`ConsistencyResult` per image. A violation is logged at error level
        (``"BUG: certificate violated ..."``) and warned about (:class:`ConsistencyWarning`).
    """
    if images.shape != adv_images.shape or images.ndim != 4:
        raise InputError(
            f"images and adv_images must both be (B, C, H, W), got {tuple(images.shape)} "
            f"and {tuple(adv_images.shape)}"
        )
    if len(certificates) != images.shape[0]:
        raise InputError(f"got {len(certificates)} certificates for {images.shape[0]} images")
    if not isinstance(n, int) or n < 2:
        raise InputError(f"n must be an integer >= 2, got {n!r}")
    keys = list(keys) if keys is not None else list(range(images.shape[0]))
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    if isinstance(seed, (int, np.integer)):
        seeds = [noise_seed(int(seed), _seed_key(k), "check") for k in keys]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != images.shape[0]:
            raise InputError(f"got {len(seeds)} seeds for {images.shape[0]} images")
    device = smoothed.device
    x = images.detach().to(device, torch.float32)
    xa = adv_images.detach().to(device, torch.float32)
    radii = (xa.double() - x.double()).flatten(1).norm(dim=1).cpu().numpy()
    with torch.no_grad():
        clean_feats = smoothed.features(x).to(torch.float64)
    results = []
    for i, cert in enumerate(certificates):
        cert = _feature_certificate(cert)
        if abs(float(cert.sigma) - float(smoothed.sigma)) > 1e-12:
            raise InputError(
                f"certificate sigma {cert.sigma} differs from the smoothed encoder's "
                f"{smoothed.sigma}"
            )
        r = float(radii[i])
        v = torch.as_tensor(np.asarray(cert.direction), dtype=torch.float64, device=device)
        u = clean_feats[i]
        gen = torch.Generator(device=device).manual_seed(seeds[i])
        vals, adv_sum = _noisy_mean_projection(smoothed, xa[i], torch.stack([v, u]), n, gen, chunk)
        if clean_smoothed is not None:
            clean_sum = clean_smoothed[i].to(device, torch.float64)
        else:
            _, clean_sum = _noisy_mean_projection(smoothed, x[i], v[None], n, gen, chunk)
        bound = float(cert.fcsb(r, "smoothed"))
        clean_bound = float(cert.fcsb(r, "clean"))
        # n is fixed before sampling, so the bets may be tuned to it
        upper = bounds.mean_upper_bound(vals[0], alpha, method, horizon=n)
        clean_upper = bounds.mean_upper_bound(vals[1], alpha, method, horizon=n)
        violation = bool(
            (not math.isnan(bound) and upper < bound - tolerance)
            or (not math.isnan(clean_bound) and clean_upper < clean_bound - tolerance)
        )
        result = ConsistencyResult(
            radius=r,
            certified_bound=bound,
            estimate=float(vals[0].mean()),
            upper=float(upper),
            clean_certified_bound=clean_bound,
            clean_estimate=float(vals[1].mean()),
            clean_upper=float(clean_upper),
            smoothed_cosine=_cos(clean_sum, adv_sum),
            clean_cosine=_cos(u, adv_sum),
            violation=violation,
            n=n,
            alpha=float(alpha),
            method=method,
            key=keys[i],
        )
        if violation:
            _report_violation(result, run_dir, x[i], xa[i], np.asarray(cert.direction))
        results.append(result)
    return results


def _report_violation(
    result: ConsistencyResult,
    run_dir: str | Path | None,
    image: torch.Tensor,
    adv: torch.Tensor,
    direction: np.ndarray,
) -> None:
    if run_dir is not None:
        result.saved = str(save_violation(run_dir, result.key, image, adv, direction, result))
    message = (
        f"BUG: certificate violated for input {result.key!r} at l2 radius {result.radius:.6g}: "
        f"smoothed reference upper bound {result.upper:.6g} vs certified "
        f"{result.certified_bound:.6g}; clean reference upper bound {result.clean_upper:.6g} "
        f"vs certified {result.clean_certified_bound:.6g} (n={result.n}, alpha={result.alpha})"
        + (f"; tensors saved to {result.saved}" if result.saved else "")
    )
    logger.error(message)
    warnings.warn(message, ConsistencyWarning, stacklevel=3)


def count_violations(results: Sequence[ConsistencyResult]) -> dict[str, int]:
    """``{"checked": inputs with a certificate to test, "violations": ..., "total": ...}``."""
    checked = sum(
        1
        for r in results
        if not (math.isnan(r.certified_bound) and math.isnan(r.clean_certified_bound))
    )
    return {
        "total": len(results),
        "checked": checked,
        "violations": sum(1 for r in results if r.violation),
    }
