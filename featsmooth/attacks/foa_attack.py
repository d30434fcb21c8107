"""FOA-Attack: global cosine alignment plus local optimal-transport alignment.

Jia, Gao, Li, Cheng, Xu, Cao, "Adversarial Attacks against Closed-Source MLLMs via Feature
Optimal Alignment", 2025 (FOA-Attack). On top of M-Attack's random local crops, the
adversarial image's *local* features (patch tokens, or features of several crops),
optionally summarised by k-means, are aligned with the target's local features by entropic
optimal transport (Sinkhorn), while the global features are aligned by cosine similarity.
Protocol: linf 16/255, 300 steps, step 1/255. With an ensemble, the paper's dynamic
weighting rescales each encoder's term every step by its "learning speed" (see
:meth:`FOAAttack.dynamic_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from featsmooth.attacks.base import ModelFn
from featsmooth.attacks.embedding_match import _as_list
from featsmooth.attacks.m_attack import MAttack, random_resized_crop
from featsmooth.attacks.objectives import Targets
from featsmooth.attacks.registry import register
from featsmooth.errors import InputError


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    reg: float = 0.1,
    iters: int = 20,
) -> torch.Tensor:
    """Entropic optimal-transport plan by log-domain Sinkhorn iterations.

    Solves ``min_P <P, C> - reg * H(P)`` subject to ``P 1 = a`` and ``P^T 1 = b`` (Cuturi
    2013), batched. Each iteration rescales the rows then the columns, so after the last
    iteration the column marginal holds to rounding and the row marginal to the
    convergence of ``iters`` iterations.

    Args:
        cost: ``(B, N, M)`` cost matrices.
        a: ``(B, N)`` row masses (default uniform ``1/N``); each row of ``a`` sums to 1.
        b: ``(B, M)`` column masses (default uniform ``1/M``); each row of ``b`` sums to 1.
        reg: entropic regularisation (> 0), in the units of ``cost``.
        iters: number of (row, column) scaling rounds.

    Returns:
        ``(B, N, M)`` transport plan (float32, or the dtype of ``cost`` if float64).
    """
    if cost.ndim != 3:
        raise InputError(f"cost must be (B, N, M), got {tuple(cost.shape)}")
    if not reg > 0:
        raise InputError(f"reg must be > 0, got {reg!r}")
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    c = cost.to(dtype)
    bsz, n, m = c.shape
    a = torch.full((bsz, n), 1.0 / n, dtype=dtype, device=c.device) if a is None else a.to(c)
    b = torch.full((bsz, m), 1.0 / m, dtype=dtype, device=c.device) if b is None else b.to(c)
    log_a, log_b = torch.log(a.clamp_min(1e-30)), torch.log(b.clamp_min(1e-30))
    f = torch.zeros(bsz, n, dtype=dtype, device=c.device)
    g = torch.zeros(bsz, m, dtype=dtype, device=c.device)
    for _ in range(int(iters)):
        f = reg * (log_a - torch.logsumexp((g[:, None, :] - c) / reg, dim=2))
        g = reg * (log_b - torch.logsumexp((f[:, :, None] - c) / reg, dim=1))
    return torch.exp((f[:, :, None] + g[:, None, :] - c) / reg)


def kmeans(points: torch.Tensor, k: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched hard k-means on ``points`` ``(B, N, D)`` under cosine similarity.

    Deterministic: starts from ``k`` evenly spaced points. The assignments are computed
    without gradient; the centroids (means of their points) stay differentiable with
    respect to ``points``. Returns centroids ``(B, k, D)`` and masses ``(B, k)`` (fraction
    of points per cluster, summing to 1).
    """
    n = points.shape[1]
    k = min(int(k), n)
    if k < 1:
        raise InputError(f"kmeans needs k >= 1, got {k}")
    init = torch.linspace(0, n - 1, k).round().long().to(points.device)
    unit = F.normalize(points.float(), dim=-1)
    with torch.no_grad():
        cent = unit[:, init]
        for _ in range(max(int(iters), 0) + 1):
            assign = torch.einsum("bnd,bkd->bnk", unit, F.normalize(cent, dim=-1)).argmax(-1)
            onehot = F.one_hot(assign, k).float()
            counts = onehot.sum(1)
            new = torch.einsum("bnk,bnd->bkd", onehot, unit) / counts.clamp_min(1)[..., None]
            cent = torch.where(counts[..., None] > 0, new, cent)
    centroids = torch.einsum("bnk,bnd->bkd", onehot, unit) / counts.clamp_min(1)[..., None]
    mass = counts / n
    return centroids, mass


@register
class FOAAttack(MAttack):
    """FOA-Attack (Jia et al. 2025). Each step maximises, over a fresh random crop ``v`` of
    ``x'``: ``mean_m w_m [cos(f_m(v), f_m(x_t)) - local_weight * OT_m(v, x_t)]`` with
    ``OT_m = <P, C>``, ``C_ij = 1 - cos(l_i, t_j)`` between the local features ``l_i`` of the
    adversarial view and ``t_j`` of the target, ``P`` the Sinkhorn plan of ``C`` (uniform
    marginals, or cluster masses with k-means; the plan is held fixed in the gradient,
    which is the envelope-theorem gradient of the transport cost).

    Threat model: ``||x' - x||_p <= eps`` (default linf 16/255) and ``x'`` in ``[0, 1]``.

    Args:
        model_fns: global encoder(s), ``(B, C, H, W) -> (B, ...)``.
        local_fns: matching local-feature function(s) ``(B, C, H, W) -> (B, N, D)`` (patch
            tokens). ``None``: local features are the global features of
            ``num_local_crops`` random crops (of the adversarial view and of the target).
        local_weight: weight of the OT term (1).
        num_local_crops: crops per image when ``local_fns`` is None (4).
        num_clusters: summarise local features by k-means with this many clusters (None:
            use all local features).
        sinkhorn_reg, sinkhorn_iters: entropic regularisation (0.1) and iterations (20).
        dynamic: dynamic ensemble weighting (True, as in the paper; no effect with one
            encoder); ``temperature`` its softmax temperature (1).
        norm, eps, steps, step_size, crop_scale, crop_ratio, weights, random_start,
        keep_best, **kwargs: see :class:`MAttack`.

    Call: ``attack(images, target_images=...)`` (target images are needed for the local
    features). ``AttackResult.objective`` is the global cosine of the whole adversarial
    image to the whole target (comparable with the other targeted attacks).
    """

    name = "foa"

    def __init__(
        self,
        model_fns: ModelFn | Sequence[ModelFn],
        local_fns: Callable[[torch.Tensor], torch.Tensor]
        | Sequence[Callable[[torch.Tensor], torch.Tensor]]
        | None = None,
        norm: str = "linf",
        eps: float | str = "16/255",
        steps: int = 300,
        step_size: float | str | None = "1/255",
        *,
        local_weight: float = 1.0,
        num_local_crops: int = 4,
        num_clusters: int | None = None,
        sinkhorn_reg: float = 0.1,
        sinkhorn_iters: int = 20,
        dynamic: bool = True,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("crop_target"):
            raise InputError("FOAAttack matches the whole target globally: crop_target is not used")
        super().__init__(model_fns, norm, eps, steps, step_size, **kwargs)
        self.local_fns = None if local_fns is None else _as_list(local_fns)
        if self.local_fns is not None and len(self.local_fns) != len(self.model_fns):
            raise InputError(
                f"need one local_fn per encoder: {len(self.model_fns)} encoders, "
                f"{len(self.local_fns)} local_fns"
            )
        if not math.isfinite(local_weight) or local_weight < 0:
            raise InputError(f"local_weight must be >= 0, got {local_weight!r}")
        if not isinstance(num_local_crops, int) or num_local_crops < 1:
            raise InputError(f"num_local_crops must be an integer >= 1, got {num_local_crops!r}")
        if num_clusters is not None and (not isinstance(num_clusters, int) or num_clusters < 1):
            raise InputError(f"num_clusters must be None or an integer >= 1, got {num_clusters!r}")
        if not sinkhorn_reg > 0 or not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
            raise InputError("sinkhorn_reg must be > 0 and sinkhorn_iters an integer >= 1")
        self.local_weight = float(local_weight)
        self.num_local_crops = num_local_crops
        self.num_clusters = num_clusters
        if not temperature > 0 or not math.isfinite(temperature):
            raise InputError(f"temperature must be > 0, got {temperature!r}")
        self.sinkhorn_reg = float(sinkhorn_reg)
        self.sinkhorn_iters = sinkhorn_iters
        self.dynamic = bool(dynamic)
        self.temperature = float(temperature)
        self._previous: torch.Tensor | None = None
        self._latest: torch.Tensor | None = None
        self._step = -1

    def dynamic_weights(self, values: torch.Tensor, step: int) -> torch.Tensor:
        """FOA's dynamic ensemble weights ``(B, M)`` for per-encoder objectives ``(B, M)``.

        ``M * softmax_m(r_m / T)`` with the learning speed ``r_m = v_m(t) / |v_m(t-1)|`` of
        encoder ``m``'s objective (maximised; the reference code's ratio of consecutive
        steps' values, made sign-safe), computed without gradient. ``v(t-1)`` is the last
        value of the previous step (EoT passes within a step share it). The weights sum to
        ``M``; the first step of every run or restart uses equal weights (1 each).
        """
        v = values.detach()
        if step != self._step:  # a new step: the last step's values become the reference
            self._previous = None if step == 0 else self._latest
            self._step = step
        self._latest = v
        prev = self._previous
        if prev is None or prev.shape != v.shape:
            return torch.ones_like(v)
        ratio = v / prev.abs().clamp_min(1e-8)
        return v.shape[1] * torch.softmax(ratio / self.temperature, dim=1)

    # -------------------------------------------------------------- local features
    def _local(self, m: int, images: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` unit local features of ``images`` for encoder ``m``."""
        if self.local_fns is not None:
            tokens = self._forward(self.local_fns[m], images)
            if tokens.ndim != 3:
                raise InputError(f"local_fn must return (B, N, D), got {tuple(tokens.shape)}")
        else:
            crops = [
                random_resized_crop(
                    images, self.crop_scale, self.crop_ratio, generator=self._generator
                )
                for _ in range(self.num_local_crops)
            ]
            feats = self._forward(self.model_fns[m], torch.cat(crops))
            feats = feats.reshape(self.num_local_crops, images.shape[0], -1)
            tokens = feats.transpose(0, 1)
        return F.normalize(tokens.float(), dim=-1)

    def _summarise(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_clusters is None:
            n = tokens.shape[1]
            return tokens, torch.full(tokens.shape[:2], 1.0 / n, device=tokens.device)
        cent, mass = kmeans(tokens, self.num_clusters)
        return F.normalize(cent, dim=-1), mass

    def ot_cost(
        self,
        local: torch.Tensor,
        mass: torch.Tensor,
        target: torch.Tensor,
        target_mass: torch.Tensor,
    ) -> torch.Tensor:
        """``(B,)`` transport cost ``<P, 1 - cos>`` between two sets of unit features."""
        cost = 1.0 - torch.einsum("bnd,bmd->bnm", local, target)
        with torch.no_grad():
            plan = sinkhorn(
                cost.detach(), mass, target_mass, self.sinkhorn_reg, self.sinkhorn_iters
            )
        return (plan.to(cost.dtype) * cost).sum(dim=(1, 2))

    # -------------------------------------------------------------- attack hooks
    def _prepare_targets(self, x: torch.Tensor, targets: Targets) -> Targets:
        if targets.get("target_images") is None:
            raise InputError("FOAAttack needs target_images= (for the local features)")
        out = super()._prepare_targets(x, targets)
        b = x.shape[0]
        local, masses = [], []
        with torch.no_grad():
            for m in range(len(self.model_fns)):
                tokens = self._local(m, out["target_images"])
                tokens, mass = self._summarise(tokens)
                local.append(tokens.expand(b, *tokens.shape[1:]))
                masses.append(mass.expand(b, *mass.shape[1:]))
        out["target_local"] = local
        out["target_mass"] = masses
        self._previous, self._latest, self._step = None, None, -1
        return out

    def _step_values(self, x_adv: torch.Tensor, targets: Targets, step: int) -> torch.Tensor:
        view = self._view(x_adv, step)
        used = [(m, w) for m, w in enumerate(self.weights) if w > 0]
        values = []
        for m, _ in used:
            value = self._match(m, view, targets, step)
            if self.local_weight > 0:
                tokens, mass = self._summarise(self._local(m, view))
                ot = self.ot_cost(
                    tokens, mass, targets["target_local"][m], targets["target_mass"][m]
                )
                value = value - self.local_weight * ot
            values.append(value)
        stacked = torch.stack(values, dim=1)  # (B, M)
        fixed = torch.tensor([w for _, w in used], device=stacked.device, dtype=stacked.dtype)
        scale = self.dynamic_weights(stacked, step) if self.dynamic and len(used) > 1 else 1.0
        return (stacked * fixed * scale).sum(dim=1)
