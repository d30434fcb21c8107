"""Named sanity checks for certification and attack evaluations.

In the spirit of the checks of AutoAttack (Croce & Hein 2020, ``fra31/auto-attack``
``checks.py``): each check looks for one known pitfall that silently produces meaningless
numbers, and reports it as a :class:`SanityWarning` with a stable check id and a hint on
how to fix it. The checks never change a result; they only say when a result should not
be trusted (or when the settings cannot produce a useful one).

Every ``check_*`` function returns a list of :class:`SanityWarning` (empty when all is
well). :func:`run_checks` runs the checks whose inputs are given, emits the warnings with
:func:`warnings.warn` and, with ``strict=True``, raises the first one instead.

Check ids (:data:`CHECKS` holds the descriptions):

=========================  ============================================================
``alpha-loose``            alpha > 0.05: the certificate fails for more than 1 in 20 inputs
``samples-too-few``        even perfectly concentrated samples (all projections = 1) leave
                           a confidence slack above ``max_slack``: the bound can never be
                           useful at this n
``n0-small``               n0 < 16 selection samples: the direction v is noisy, S_low loses
``sigma-large``            sigma > 0.5 (pixel units of [0,1] images) or sigma more than twice
                           the pixel standard deviation: the noise drowns the image
``images-range``           images outside [0,1]: sigma and eps are in pixel units of [0,1]
``zero-gradients``         inputs with an all-zero gradient: gradient masking / dead path
``nonfinite-gradients``    NaN or inf in gradients
``randomized-without-eot`` a randomized defense attacked with one noise draw per step
``attack-budget``          adversarial examples outside the eps ball
``attack-out-of-range``    adversarial images outside [0,1]
``attack-no-perturbation`` every adversarial example equals its clean image
``eps-scale``              an l-inf eps >= 1 (probably 16 instead of 16/255)
``image-size-small``       ``--size`` below the encoder's own input size (features may
                           mean little); raised by the command line's size choice
=========================  ============================================================
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from featsmooth.errors import InputError

#: check id -> (what it detects, how to fix it)
CHECKS: dict[str, tuple[str, str]] = {
    "alpha-loose": (
        "the failure probability alpha is large",
        "use alpha <= 0.05 (0.001 is the usual choice in randomized smoothing)",
    ),
    "samples-too-few": (
        "n is too small for the bound method to ever give a tight lower bound",
        "increase n (the slack falls like 1/sqrt(n))",
    ),
    "n0-small": (
        "too few selection samples for a stable direction v",
        "use n0 >= 16 (64 is the default); a noisy v lowers the certified score",
    ),
    "sigma-large": (
        "sigma is large relative to the pixel values, so noisy images carry little signal",
        "sigma is in pixel units of [0,1] images; typical values are 0.12-0.5",
    ),
    "images-range": (
        "images are not in [0,1] pixel units",
        "pass un-normalised images in [0,1]; resizing and mean/std normalisation belong "
        "inside the encoder",
    ),
    "zero-gradients": (
        "some inputs have an all-zero gradient (gradient masking or a detached graph)",
        "check the attack objective and that no no_grad/detach/argmax sits in the path; "
        "try a gradient-free attack or BPDA for non-differentiable parts",
    ),
    "nonfinite-gradients": (
        "gradients contain NaN or inf",
        "look for log(0), division by a zero norm or overflow in bf16; compute in float32",
    ),
    "randomized-without-eot": (
        "a randomized defense is attacked with a single noise draw per step",
        "use EoT: average gradients over several noise draws (e.g. eot_draws >= 8)",
    ),
    "attack-budget": (
        "adversarial examples leave the eps ball",
        "project onto the ball after every step; norms are in pixel units of [0,1] images",
    ),
    "attack-out-of-range": (
        "adversarial images leave the valid pixel range [0,1]",
        "clamp adversarial images to [0,1] after every step",
    ),
    "attack-no-perturbation": (
        "the attack did not change any input",
        "check that gradients reach the input (requires_grad) and that the step size is > 0",
    ),
    "eps-scale": (
        "an l-inf budget >= 1 covers the whole pixel range",
        "eps is in pixel units of [0,1] images: 16/255 = 0.0627, not 16",
    ),
    "image-size-small": (
        "images are resized below the size the encoder was trained at",
        "leave --size unset to use the encoder's own size",
    ),
}


class SanityWarning(UserWarning):
    """A failed sanity check. ``.check`` is its id (a key of :data:`CHECKS`), ``.hint`` the
    suggested fix; ``str()`` gives ``"[check] message Hint: hint"``."""

    def __init__(self, check: str, message: str, hint: str | None = None) -> None:
        self.check = check
        self.message = message
        self.hint = hint if hint is not None else CHECKS.get(check, ("", ""))[1]
        super().__init__(f"[{check}] {message}" + (f" Hint: {self.hint}." if self.hint else ""))


def _numpy(x: Any) -> np.ndarray:
    """A float64 numpy view of an array or tensor (bf16/fp16 go through float32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "float"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _per_example(x: Any) -> np.ndarray:
    arr = _numpy(x)
    if arr.ndim == 0:
        raise InputError("expected a batch of arrays with a leading batch dimension")
    return arr.reshape(arr.shape[0], -1)


# --------------------------------------------------------------------------------------
# Certification settings


def best_case_slack(alpha: float, n: int, method: str) -> float:
    """The gap ``1 - L`` between the largest possible mean (1) and the lower bound ``L``
    that ``method`` returns when all ``n`` samples equal 1 (perfect concentration).

    No data can give a tighter bound, so this is the floor of the method's slack at ``n``
    (for Hoeffding ``2 sqrt(ln(1/alpha)/(2n))``), computed with
    :func:`featsmooth.bounds.mean_lower_bound` with the bets tuned to ``n``.
    """
    from featsmooth import bounds

    # the slack only falls as n grows: beyond 10**6 samples its value there bounds it
    m = min(int(n), 1_000_000)
    return 1.0 - float(bounds.mean_lower_bound(np.ones(m), alpha, method, horizon=m))


def check_alpha_vs_samples(
    alpha: float,
    n: int,
    method: str = "betting",
    *,
    max_alpha: float = 0.05,
    max_slack: float = 0.1,
) -> list[SanityWarning]:
    """Warn when ``alpha`` is loose or ``n`` is too small for ``method`` to be useful.

    ``samples-too-few`` fires when :func:`best_case_slack` exceeds ``max_slack``: even if
    every projection were 1, the lower bound on S would stay ``max_slack`` below it (for
    Hoeffding: ``2 sqrt(ln(1/alpha)/(2n)) > 0.1``, i.e. n < 1382 at alpha = 0.001).
    """
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if int(n) < 1:
        raise InputError(f"n must be a positive number of samples, got {n}")
    from featsmooth import bounds

    bound = bounds.get_method(method)
    min_samples = bound.min_samples
    out = []
    if alpha > max_alpha:
        out.append(
            SanityWarning(
                "alpha-loose",
                f"alpha = {alpha:g} > {max_alpha:g}: each certificate may be wrong with "
                f"probability {alpha:.0%}.",
            )
        )
    if int(n) < min_samples:
        slack = math.inf
    else:
        slack = best_case_slack(alpha, int(n), method)
    if slack > max_slack:
        out.append(
            SanityWarning(
                "samples-too-few",
                f"with n = {int(n)} and alpha = {alpha:g}, the {method} bound stays at least "
                f"{slack:.3g} below the mean even for perfectly concentrated samples "
                f"(threshold {max_slack:g}).",
                CHECKS["samples-too-few"][1]
                + (
                    ""
                    if bound.variance_adaptive
                    else "; "
                    + " or ".join(
                        repr(m) for m in bounds.METHODS if bounds.get_method(m).variance_adaptive
                    )
                    + " adapt to a small variance and need far fewer samples"
                ),
            )
        )
    return out


def check_n0(n0: int, *, min_n0: int = 16) -> list[SanityWarning]:
    """Warn when ``n0`` (samples that choose the direction v) is below ``min_n0``."""
    if int(n0) < 1:
        raise InputError(f"n0 must be a positive number of samples, got {n0}")
    if int(n0) < min_n0:
        return [
            SanityWarning(
                "n0-small",
                f"n0 = {int(n0)} < {min_n0} selection samples: the direction v is noisy and "
                "<v, f_hat(x)> falls below S, lowering every certificate.",
            )
        ]
    return []


def check_sigma_scale(
    sigma: float,
    images: Any = None,
    *,
    max_sigma: float = 0.5,
    max_ratio: float = 2.0,
) -> list[SanityWarning]:
    """Warn when ``sigma`` is large for images in [0,1], or when ``images`` are not in [0,1].

    Args:
        sigma: noise level in pixel units.
        images: optional batch ``(B, C, H, W)`` (array or tensor) of clean images. When
            given, ``sigma-large`` also fires if ``sigma > max_ratio * std`` of their pixel
            values (the noise would be stronger than the image content), and
            ``images-range`` fires if they are outside [0,1] (0-255 or normalised images).
    """
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise InputError(f"sigma must be a positive finite number, got {sigma}")
    out = []
    reasons = []
    if sigma > max_sigma:
        reasons.append(f"sigma = {sigma:g} > {max_sigma:g} on a [0,1] pixel scale")
    if images is not None:
        pixels = _numpy(images)
        lo, hi = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            scale = "0-255" if hi > 2.0 and lo >= 0.0 else "mean/std-normalised"
            out.append(
                SanityWarning(
                    "images-range",
                    f"image values span [{lo:.3g}, {hi:.3g}], not [0,1] (they look {scale}).",
                )
            )
        std = float(np.nanstd(pixels))
        if std > 0 and sigma > max_ratio * std:
            reasons.append(f"sigma = {sigma:g} is {sigma / std:.1f}x the pixel std {std:.3g}")
    if reasons:
        out.insert(
            0,
            SanityWarning(
                "sigma-large",
                "; ".join(reasons) + ": the noise drowns the image, so S and accuracy drop.",
            ),
        )
    return out


# --------------------------------------------------------------------------------------
# Attacks


def check_zero_gradients(grads: Any, *, max_fraction: float = 0.0) -> list[SanityWarning]:
    """Warn when per-input gradients ``(B, ...)`` are all zero or non-finite.

    ``zero-gradients`` fires when more than ``max_fraction`` of the inputs have an exactly
    zero gradient (AutoAttack's check: such points cannot be moved by gradient attacks,
    which reports robustness that is not there).
    """
    g = _per_example(grads)
    out = []
    bad = ~np.isfinite(g).all(axis=1)
    if bad.any():
        out.append(
            SanityWarning(
                "nonfinite-gradients",
                f"{int(bad.sum())} of {len(g)} inputs have NaN/inf gradients.",
            )
        )
    zero = (np.abs(np.nan_to_num(g, nan=1.0)).sum(axis=1) == 0) & ~bad
    if zero.mean() > max_fraction:
        out.append(
            SanityWarning(
                "zero-gradients",
                f"{int(zero.sum())} of {len(g)} inputs have an all-zero gradient; "
                "gradient-based attacks cannot move them, so robustness is overestimated.",
            )
        )
    return out


def check_randomized_without_eot(
    model_is_randomized: bool, eot_draws: int, *, min_draws: int = 2
) -> list[SanityWarning]:
    """Warn when a randomized model (e.g. a smoothed encoder) is attacked without EoT."""
    if model_is_randomized and int(eot_draws) < min_draws:
        return [
            SanityWarning(
                "randomized-without-eot",
                f"the model is randomized but the attack uses {int(eot_draws)} noise draw(s) "
                "per gradient: single-draw gradients are noisy and underestimate the attack.",
            )
        ]
    return []


def is_randomized(fn: Any, x: Any, *, trials: int = 2, atol: float = 1e-6) -> bool:
    """True if ``fn(x)`` gives different outputs on repeated calls (AutoAttack's test for a
    randomized defense). ``fn`` is any callable returning an array or tensor."""
    first = _numpy(fn(x))
    return any(
        not np.allclose(first, _numpy(fn(x)), atol=atol, rtol=0.0, equal_nan=True)
        for _ in range(max(1, trials - 1))
    )


def _norm_name(norm: Any) -> str:
    text = str(norm).lower().replace("_", "").replace("-", "")
    if text in ("l2", "2"):
        return "l2"
    if text in ("linf", "inf", "li"):
        return "linf"
    raise InputError(f"unknown norm {norm!r}; use 'l2' or 'linf'")


def check_attack_budget(
    adv: Any,
    clean: Any,
    norm: str,
    eps: float,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> list[SanityWarning]:
    """Verify adversarial examples ``adv`` against ``clean`` (both ``(B, ...)`` in [0,1]).

    Fires ``attack-budget`` when some ``||adv - clean||`` exceeds ``eps (1 + rtol) + atol``,
    ``attack-out-of-range`` when ``adv`` leaves [0,1], ``attack-no-perturbation`` when no
    input moved, and ``eps-scale`` for an l-inf ``eps >= 1``.
    """
    kind = _norm_name(norm)
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be a non-negative finite number, got {eps}")
    a, c = _per_example(adv), _per_example(clean)
    if a.shape != c.shape:
        raise InputError(f"adv and clean must have the same shape, got {a.shape} and {c.shape}")
    out = []
    delta = a - c
    size = np.abs(delta).max(axis=1) if kind == "linf" else np.linalg.norm(delta, axis=1)
    over = size > eps * (1.0 + rtol) + atol
    if over.any():
        out.append(
            SanityWarning(
                "attack-budget",
                f"{int(over.sum())} of {len(a)} adversarial examples exceed the {kind} budget "
                f"{eps:g} (largest {float(size.max()):.4g}).",
            )
        )
    if float(a.min()) < -atol or float(a.max()) > 1.0 + atol:
        out.append(
            SanityWarning(
                "attack-out-of-range",
                f"adversarial pixel values span [{float(a.min()):.3g}, {float(a.max()):.3g}].",
            )
        )
    if eps > 0 and np.all(size == 0):
        out.append(
            SanityWarning("attack-no-perturbation", "every adversarial example equals its input.")
        )
    if kind == "linf" and eps >= 1.0:
        out.append(SanityWarning("eps-scale", f"l-inf eps = {eps:g} >= 1 allows any image at all."))
    return out


# --------------------------------------------------------------------------------------


def run_checks(
    *,
    alpha: float | None = None,
    n: int | None = None,
    method: str | None = None,
    n0: int | None = None,
    sigma: float | None = None,
    images: Any = None,
    grads: Any = None,
    model_is_randomized: bool | None = None,
    eot_draws: int | None = None,
    adv: Any = None,
    clean: Any = None,
    norm: str | None = None,
    eps: float | None = None,
    emit: bool = True,
    strict: bool = False,
) -> list[SanityWarning]:
    """Run every check whose inputs are given and collect the warnings.

    ``alpha`` and ``n`` (with ``method``, default "betting") run
    :func:`check_alpha_vs_samples`; ``n0`` :func:`check_n0`; ``sigma`` (with optional
    ``images``) :func:`check_sigma_scale`; ``grads`` :func:`check_zero_gradients`;
    ``model_is_randomized`` and ``eot_draws`` :func:`check_randomized_without_eot`;
    ``adv``, ``clean``, ``norm`` and ``eps`` :func:`check_attack_budget`.

    Args:
        emit: also issue each warning with :func:`warnings.warn`.
        strict: raise the first :class:`SanityWarning` instead of returning.
    """
    found: list[SanityWarning] = []
    if alpha is not None and n is not None:
        found += check_alpha_vs_samples(alpha, n, method or "betting")
    if n0 is not None:
        found += check_n0(n0)
    if sigma is not None:
        found += check_sigma_scale(sigma, images)
    if grads is not None:
        found += check_zero_gradients(grads)
    if model_is_randomized is not None and eot_draws is not None:
        found += check_randomized_without_eot(model_is_randomized, eot_draws)
    if adv is not None and clean is not None and norm is not None and eps is not None:
        found += check_attack_budget(adv, clean, norm, eps)
    if strict and found:
        raise found[0]
    if emit:
        for warning in found:
            warnings.warn(warning, stacklevel=2)
    return found


__all__ = [
    "CHECKS",
    "SanityWarning",
    "best_case_slack",
    "check_alpha_vs_samples",
    "check_attack_budget",
    "check_n0",
    "check_randomized_without_eot",
    "check_sigma_scale",
    "check_zero_gradients",
    "is_randomized",
    "run_checks",
]
