"""Perturbation budgets: l2 and linf balls in pixel units, intersected with the box [0, 1].

Threat model. For a clean image ``x`` in ``[0, 1]^d`` (shape ``(C, H, W)``) the attacker may
choose any ``x'`` with ``||x' - x||_p <= eps`` (p = 2 or inf, measured in pixel units,
*before* any mean/std normalisation) and ``0 <= x' <= 1``. :meth:`ThreatModel.project`
maps any point onto that set, so every iterate of every attack in this package is a valid
adversarial image; the result is checked in the arithmetic of the tensor (float32), not
only on paper (see :meth:`ThreatModel.project`).

``eps`` is a float in pixel units; linf budgets may also be written as the string
``"k/255"`` (e.g. ``"16/255"``), the usual way of quoting them in 8-bit units.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch

from featsmooth.errors import InputError

NormName = Literal["linf", "l2"]

_NORM_ALIASES = {
    "linf": "linf",
    "l_inf": "linf",
    "inf": "linf",
    "li": "linf",
    "l2": "l2",
    "l_2": "l2",
    "2": "l2",
}
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")

# Relative margin kept inside the l2 ball so that ``||x' - x||`` recomputed in float32 from
# the stored images never exceeds ``eps`` through rounding.
_L2_SAFETY = 1e-6


def parse_norm(norm: str) -> NormName:
    """Return ``"linf"`` or ``"l2"`` for the usual spellings (``"Linf"``, ``"inf"``, ``"L2"``)."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise InputError(f"unknown norm {norm!r}: use 'linf' or 'l2'")
    return _NORM_ALIASES[key]  # type: ignore[return-value]


def parse_eps(eps: float | int | str, norm: str = "linf") -> float:
    """Budget as a float in pixel units.

    Accepts a number, a numeric string (``"0.5"``) or, for ``linf`` only, a fraction
    ``"k/255"`` (any positive denominator is read the same way, e.g. ``"4/255"`` -> 4/255).
    """
    norm = parse_norm(norm)
    if isinstance(eps, bool):
        raise InputError(f"eps must be a number or 'k/255', got {eps!r}")
    if isinstance(eps, str):
        match = _FRACTION.match(eps)
        if match:
            if norm != "linf":
                raise InputError(
                    f"eps {eps!r}: the 'k/255' form is for linf budgets; give l2 eps as a float"
                )
            num, den = float(match.group(1)), float(match.group(2))
            if den == 0:
                raise InputError(f"eps {eps!r} divides by zero")
            value = num / den
        else:
            try:
                value = float(eps)
            except ValueError:
                raise InputError(
                    f"cannot read eps {eps!r}: give a float (pixel units) or 'k/255'"
                ) from None
    elif isinstance(eps, int | float):
        value = float(eps)
    else:
        raise InputError(f"eps must be a number or 'k/255', got {type(eps).__name__}")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def flat_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of ``delta`` ``(B, ...)`` -> ``(B,)`` (computed in float32 or wider)."""
    norm = parse_norm(norm)
    flat = delta.reshape(delta.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=2, dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """An ``lp`` ball of radius ``eps`` (pixel units) around each image, inside ``[0, 1]``.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: radius in pixel units (float), or ``"k/255"`` for linf.

    All methods take batches ``(B, C, H, W)`` (any ``(B, ...)`` works) and treat each image
    separately.
    """

    norm: NormName
    eps: float

    def __init__(self, norm: str, eps: float | int | str) -> None:
        n = parse_norm(norm)
        object.__setattr__(self, "norm", n)
        object.__setattr__(self, "eps", parse_eps(eps, n))

    # ---------------------------------------------------------------- geometry
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``||x_adv - x||_p`` per image, ``(B,)``."""
        return flat_norm(x_adv - x, self.norm)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
        """``(B,)`` bool: ``x_adv`` is within ``eps + atol`` of ``x`` and inside ``[0, 1]``."""
        flat = x_adv.reshape(x_adv.shape[0], -1)
        in_box = (flat >= 0).all(dim=1) & (flat <= 1).all(dim=1)
        return in_box & (self.distance(x_adv, x) <= self.eps + atol)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``x_adv`` onto ``{x' : ||x' - x|| <= eps, 0 <= x' <= 1}``.

        linf: the set is a box, the projection is a clamp (exact).
        l2: the projection of ``v = x_adv - x`` is ``clamp(v / (1 + lam), -x, 1 - x)`` with the
        smallest ``lam >= 0`` giving norm ``<= eps`` (KKT conditions of the intersection; the
        norm decreases in ``lam``; found by an active-set iteration, see :meth:`_scale`). A final rescaling (towards ``x``,
        which stays in the box) guarantees ``||x' - x|| <= eps`` as recomputed from the
        returned tensor, whatever the rounding.

        Args:
            x_adv: ``(B, ...)`` points to project.
            x: ``(B, ...)`` clean images in ``[0, 1]`` (the centres).

        Returns:
            ``(B, ...)`` tensor of the dtype of ``x_adv``.
        """
        if x_adv.shape != x.shape:
            raise InputError(f"shapes differ: {tuple(x_adv.shape)} vs {tuple(x.shape)}")
        if self.norm == "linf":
            out = torch.maximum(torch.minimum(x_adv, x + self.eps), x - self.eps)
            return out.clamp(0.0, 1.0)
        return self._project_l2(x_adv, x)

    def _project_l2(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dtype = x_adv.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        xw = x.to(work)
        v = x_adv.to(work) - xw
        eps = self.eps * (1.0 - _L2_SAFETY)
        d = torch.minimum(torch.maximum(v, -xw), 1.0 - xw)
        need = flat_norm(d, "l2") > eps
        if bool(need.any()):
            rows = torch.nonzero(need).flatten()
            s = self._scale(v[rows], xw[rows], eps)
            d[rows] = torch.minimum(
                torch.maximum(v[rows] * _bcast(s, v), -xw[rows]), 1.0 - xw[rows]
            )
        out = (xw + d).clamp(0.0, 1.0).to(dtype)
        return self._enforce_l2(out, x)

    @staticmethod
    def _scale(v: torch.Tensor, x: torch.Tensor, eps: float, max_iter: int = 100) -> torch.Tensor:
        """Largest ``s = 1/(1 + lam)`` in ``(0, 1]`` with ``||clamp(s v, -x, 1 - x)|| <= eps``.

        ``phi(s) = ||clamp(s v, -x, 1 - x)||^2`` is increasing and equals ``s^2 A + C`` on each
        piece (``A``: sum of ``v_i^2`` over unsaturated coordinates, ``C``: sum of the squared
        bounds of saturated ones). Starting from the feasible ``s = eps / ||v||``, the
        active-set iteration ``s <- sqrt((eps^2 - C) / A)`` solves the current piece exactly;
        saturation only slows ``phi`` down, so every iterate stays feasible and the sequence
        increases to the solution (in 1-3 iterations on natural images, it stops when ``s``
        no longer moves).
        """
        flat_v = v.reshape(v.shape[0], -1)
        flat_x = x.reshape(x.shape[0], -1)
        bound = torch.where(flat_v > 0, 1.0 - flat_x, flat_x)  # |clamp| limit per coordinate
        av, v2, b2 = flat_v.abs(), flat_v * flat_v, bound * bound
        tol = 8 * torch.finfo(v.dtype).eps
        s = (eps / flat_v.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
        for _ in range(max_iter):
            sat = s[:, None] * av >= bound
            a = torch.where(sat, 0.0, v2).sum(dim=1)
            c = torch.where(sat, b2, 0.0).sum(dim=1)
            new = torch.sqrt(torch.clamp(eps * eps - c, min=0.0) / a.clamp_min(1e-30))
            new = torch.minimum(torch.maximum(new, s), torch.ones_like(s))
            moved = bool((new > s * (1.0 + tol)).any())
            s = new
            if not moved:
                break
        return s

    def _enforce_l2(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shrink towards ``x`` any image whose *stored* perturbation exceeds ``eps``."""
        for _ in range(8):
            nrm = flat_norm(out - x, "l2")
            over = nrm > self.eps
            if not bool(over.any()):
                return out
            scale = torch.where(over, self.eps * (1.0 - 4 * _L2_SAFETY) / nrm.clamp_min(1e-30), 1.0)
            shrunk = x.double() + (out.double() - x.double()) * _bcast(scale.double(), out)
            out = torch.where(_bcast(over, out), shrunk.clamp(0.0, 1.0).to(out.dtype), out)
        return torch.where(_bcast(flat_norm(out - x, "l2") > self.eps, out), x, out)

    # ---------------------------------------------------------------- steps
    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit ``lp`` norm: ``sign(g)`` (linf), ``g/||g||`` (l2)."""
        if self.norm == "linf":
            return grad.sign()
        nrm = flat_norm(grad, "l2")
        return grad / _bcast(nrm.clamp_min(1e-12), grad).to(grad.dtype)

    def random_start(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A random point of the ball around ``x``, projected into the box.

        linf: ``delta`` uniform in ``[-eps, eps]^d``. l2: uniform direction on the sphere and
        radius ``eps * U^(1/d)`` (uniform in the ball). Random numbers are drawn on the CPU
        with ``generator``, so the start is the same on every device for a given seed.
        """
        shape = tuple(x.shape)
        if self.norm == "linf":
            delta = (torch.rand(shape, generator=generator) * 2.0 - 1.0) * self.eps
        else:
            g = torch.randn(shape, generator=generator, dtype=torch.float64)
            g = g / flat_norm(g, "l2").clamp_min(1e-30).view(-1, *([1] * (len(shape) - 1)))
            dim = max(int(g[0].numel()), 1)
            u = torch.rand(shape[0], generator=generator, dtype=torch.float64)
            radius = self.eps * u.pow(1.0 / dim)
            delta = g * radius.view(-1, *([1] * (len(shape) - 1)))
        delta = delta.to(device=x.device, dtype=torch.float64)
        return self.project((x.double() + delta).to(x.dtype), x)
