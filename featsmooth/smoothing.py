"""Feature-space smoothing of an image encoder: the noise, the sampling and the certificates.

:class:`SmoothedEncoder` owns the Gaussian noise draw, so a user cannot get it wrong: noise
is added in pixel units, before any resize or normalisation (which live inside the
encoder), fresh for every forward pass, from a per-image seeded stream. Sampling packs
several images and many draws into one forward pass.

Certification protocol (docs/theory.md, Sections 3-5):

1. draw ``n0`` noisy features of ``x`` and take ``v = normalise(mean)``;
2. draw ``n`` *fresh* noisy features; the values ``<v, f(x + eps_i)>`` are i.i.d. in
   [-1, 1] with mean ``<v, f_hat(x)> <= ||f_hat(x)|| = S``, and a confidence bound on
   that mean is ``S_low`` with ``P[S_low > S] <= alpha``;
3. the same ``n`` samples give ``<f(x), f(x + eps_i)>``, whose mean is ``S_c``.

With ``method="betting"`` step 2 may stop early (``tolerance`` / ``target``): the betting
bound is a confidence sequence, valid at data-dependent stopping times.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featsmooth import bounds
from featsmooth.certificates import ABSTAIN, Certificate, PredictionCertificate
from featsmooth.encoders.base import as_encoder
from featsmooth.errors import FeatureError, InputError
from featsmooth.progress import Bar
from featsmooth.seeds import noise_seed

# Inputs may exceed [0, 1] by rounding of upstream float conversions, not more.
_RANGE_SLACK = 1e-4
# A feature whose norm is below this is treated as zero (direction undefined).
_MIN_FEATURE_NORM = 1e-12


def _seed_for(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index`` of a call seeded with ``seed`` (its index is its
    key: :func:`featsmooth.seeds.noise_seed` with purpose ``certify``)."""
    return noise_seed(seed, index, "certify")


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SmoothedEncoder(nn.Module):
    """Gaussian feature-space smoothing ``f_hat(x) = E f(x + eps)``, ``eps ~ N(0, sigma^2 I)``.

    ``f`` is the wrapped encoder's output flattened per image, optionally centred
    (``center`` subtracted), and scaled to unit l2 norm in float64.

    It is an ``nn.Module``: calling it (:meth:`forward`) returns a differentiable
    Monte-Carlo estimate of ``f_hat(x)``, so attack libraries can take it as a (randomized)
    model. Certificates come only from :meth:`certify` / :meth:`certify_prediction`.

    Args:
        encoder: an :class:`~featsmooth.encoders.base.ImageEncoder`, any ``nn.Module`` or a
            callable mapping pixel-unit images ``(B, C, H, W)`` to features ``(B, ...)``.
        sigma: noise standard deviation in pixel units of the images passed in (> 0).
        device: where noise is drawn and the encoder runs (default: the encoder's device).
        input_dtype: dtype of the noisy images fed to the encoder (e.g. ``torch.bfloat16``
            for a bf16 model); noise is drawn in float32 and rounded to it.
        center: optional mean feature (flattened shape ``(k,)``) subtracted before
            normalisation; certificates are then about the centred features.
        batch_size: noisy images per forward pass (images and draws are packed together).
        plugin: optional plug-in with ``.wrap(encoder, sigma)`` (purifier -> encoder ->
            mapper), or the folder of a saved plug-in; the wrapped module becomes the base
            encoder ``f``.
        compile: run the encoder through ``torch.compile`` (dynamic shapes). The first
            passes pay the compilation; worth it for long certification runs on GPU.
        forward_draws: noise draws averaged by :meth:`forward` (per call, fresh noise).
    """

    def __init__(
        self,
        encoder: Callable[[torch.Tensor], torch.Tensor],
        sigma: float,
        *,
        device: str | torch.device | None = None,
        input_dtype: torch.dtype = torch.float32,
        center: torch.Tensor | np.ndarray | None = None,
        batch_size: int = 256,
        plugin: Any = None,
        compile: bool = False,
        forward_draws: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise InputError(f"sigma must be a positive number (pixel units), got {sigma!r}")
        self.sigma = float(sigma)
        base = as_encoder(encoder)
        if isinstance(plugin, (str, Path)):
            from featsmooth.loading import load_plugin

            plugin = load_plugin(plugin)
        if plugin is not None:
            base = plugin.wrap(base, self.sigma)
        self.encoder = base
        if device is None:
            device = getattr(base, "device", None) or torch.device("cpu")
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.input_dtype = input_dtype
        self.batch_size = _check_count("batch_size", batch_size)
        self.forward_draws = _check_count("forward_draws", forward_draws)
        self.center = None
        if center is not None:
            center_t = torch.as_tensor(np.asarray(center), dtype=torch.float64)
            self.center = center_t.flatten().to(self.device)
        self.feature_shape: tuple[int, ...] | None = None
        self._run_encoder = torch.compile(self.encoder, dynamic=True) if compile else self.encoder

    # ------------------------------------------------------------------ features

    def _validate_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(np.asarray(images))
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise InputError(
                f"images must have shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise InputError("images must be floating point in [0, 1] pixel units")
        if images.shape[0] == 0:
            raise InputError("got an empty batch of images")
        values = images.detach()  # checks only: no autograd warning, no graph
        if not torch.isfinite(values).all():
            raise InputError("images contain NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if lo < -_RANGE_SLACK or hi > 1.0 + _RANGE_SLACK:
            raise InputError(
                f"images must be in [0, 1] pixel units (got values in [{lo:.3g}, {hi:.3g}]); "
                "pass them before any mean/std normalisation"
            )
        return images.to(self.device, torch.float32)

    def _unit(self, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Flatten, centre and normalise raw encoder outputs; checks they are usable."""
        if raw.ndim < 2:
            raise FeatureError(f"the encoder must return (B, ...) features, got {tuple(raw.shape)}")
        if self.feature_shape is None:
            self.feature_shape = tuple(raw.shape[1:])
        flat = raw.flatten(1).to(dtype)
        if self.center is not None:
            if self.center.numel() != flat.shape[1]:
                raise InputError(
                    f"center has {self.center.numel()} entries but features have {flat.shape[1]}"
                )
            flat = flat - self.center.to(dtype)
        if not torch.isfinite(flat).all():
            raise FeatureError("the encoder returned NaN or infinite features")
        norms = flat.norm(dim=1, keepdim=True)
        if bool((norms < _MIN_FEATURE_NORM).any()):
            raise FeatureError(
                "the encoder returned an all-zero feature; its direction is undefined"
            )
        return flat / norms

    def _forward(self, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._unit(self._run_encoder(batch.to(self.input_dtype)), dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit features ``f(x)`` of clean images, ``(B, k)`` float32, differentiable."""
        return self._forward(self._validate_images(images), torch.float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable estimate of ``f_hat(x)``: the mean of ``forward_draws`` unit noisy
        features, ``(B, k)`` float32, fresh noise per call.

        What an attack library sees when it takes this module as a model: a randomized
        model whose gradients it should average over calls (EoT). Its norm is biased upward
        as in :meth:`predict_feature`; it is an estimate, not a certified quantity.
        """
        return self.noisy_features(self._validate_images(images), self.forward_draws).mean(1)

    def noisy_features(
        self,
        images: torch.Tensor,
        num_draws: int,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Unit features of ``num_draws`` noisy copies per image, ``(B, num_draws, k)``.

        Differentiable with respect to ``images`` (for EoT attacks); fresh noise per call.
        """
        num_draws = _check_count("num_draws", num_draws)
        b = images.shape[0]
        noise = torch.randn(
            (b, num_draws, *images.shape[1:]),
            generator=generator,
            device=images.device,
            dtype=torch.float32,
        )
        noisy = (images.unsqueeze(1) + self.sigma * noise).flatten(0, 1)
        return self._forward(noisy, torch.float32).view(b, num_draws, -1)

    # ------------------------------------------------------------------ sampling engine

    def _generators(self, count: int, seed: int | Sequence[int] | None) -> tuple[list, list]:
        if seed is None:
            base = int(np.random.SeedSequence().entropy % (1 << 63))
            seeds = [_seed_for(base, i) for i in range(count)]
        elif isinstance(seed, (int, np.integer)):
            seeds = [_seed_for(int(seed), i) for i in range(count)]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != count:
                raise InputError(f"got {len(seeds)} seeds for {count} images")
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        return gens, seeds

    @torch.inference_mode()
    def _sample(
        self,
        images: torch.Tensor,
        counts: Sequence[int],
        generators: Sequence[torch.Generator],
        batch_size: int,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(image index, unit float64 features (k_i, dim))`` covering ``counts``.

        Draws of several images are packed into forward passes of ``batch_size``; each
        image's noise comes from its own generator, so results do not depend on batching.
        """
        pending = [(i, c) for i, c in enumerate(counts) if c > 0]
        shape = images.shape[1:]
        while pending:
            pieces: list[tuple[int, int]] = []
            room = batch_size
            while pending and room > 0:
                i, c = pending[0]
                take = min(c, room)
                pieces.append((i, take))
                room -= take
                if take == c:
                    pending.pop(0)
                else:
                    pending[0] = (i, c - take)
            # one buffer per forward pass, filled in place: no per-piece allocations
            noisy = torch.empty((sum(k for _, k in pieces), *shape), device=self.device)
            start = 0
            for i, k in pieces:
                part = noisy[start : start + k]
                torch.randn((k, *shape), generator=generators[i], device=self.device, out=part)
                part.mul_(self.sigma).add_(images[i])
                start += k
            feats = self._forward(noisy, torch.float64)
            start = 0
            for i, k in pieces:
                yield i, feats[start : start + k]
                start += k

    # ------------------------------------------------------------------ prediction

    def predict_feature(
        self,
        images: torch.Tensor,
        n: int = 64,
        *,
        seed: int | Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Monte-Carlo estimate of the smoothed feature ``f_hat(x)``, ``(B, k)`` float32.

        The mean of ``n`` unit noisy features; its norm estimates ``S`` (biased upwards by
        about ``(1 - S^2) / (2 n S)``). Reshape with :meth:`unflatten` for token features.
        """
        images = self._validate_images(images)
        n = _check_count("n", n)
        gens, _ = self._generators(images.shape[0], seed)
        sums: dict[int, torch.Tensor] = {}
        for i, feats in self._sample(
            images, [n] * images.shape[0], gens, self._batch_size(batch_size)
        ):
            sums[i] = sums.get(i, 0) + feats.sum(0)
        return torch.stack([sums[i] / n for i in range(images.shape[0])]).float()

    def _batch_size(self, batch_size: int | None) -> int:
        return self.batch_size if batch_size is None else _check_count("batch_size", batch_size)

    def unflatten(self, features: torch.Tensor) -> torch.Tensor:
        """Reshape flat ``(B, k)`` features to the encoder's ``(B, *feature_shape)``."""
        if self.feature_shape is None:
            raise InputError("run the encoder once before unflattening")
        return features.view(features.shape[0], *self.feature_shape)

    # ------------------------------------------------------------------ certification

    def _validate_run(self, n0: int, n: int, alpha: float, method: str) -> None:
        _check_count("n0", n0)
        _check_count("n", n, bounds.get_method(method).min_samples)
        if not 0.0 < alpha < 1.0:
            raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")

    def certify(
        self,
        images: torch.Tensor,
        n0: int = 64,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        method: str = bounds.DEFAULT_METHOD,
        batch_size: int | None = None,
        seed: int | Sequence[int] | None = 0,
        tolerance: float | None = None,
        target: tuple[float, float] | None = None,
        progress: bool | Bar = False,
        keep_samples: bool = False,
    ) -> list[Certificate]:
        """Certify the feature cosine of each image (see the module docstring).

        Args:
            images: ``(B, C, H, W)`` in [0, 1] pixel units.
            n0: samples that choose the direction ``v``.
            n: fresh samples for the bound (the maximum, in sequential mode).
            alpha: each returned lower bound fails with probability at most ``alpha``.
            method: ``betting`` (default), ``bernstein`` or ``hoeffding``.
            batch_size: noisy images per forward pass (default: the encoder's).
            seed: run seed (image ``i`` of the call gets the stream of
                ``featsmooth.seeds.noise_seed(seed, i, "certify")``) or one seed per image;
                ``None`` draws fresh entropy. Recorded in each result.
            tolerance: sequential mode: stop an image once ``estimate - S_low <= tolerance``
                (mean of the projections minus the bound).
            target: sequential mode: ``(cosine, radius)``; stop once the smoothed-reference
                certificate reaches ``cosine`` at ``radius``, or once an upper confidence
                bound shows it no longer can.
            progress: show a progress bar (a :class:`~featsmooth.progress.Bar`: as a line
                under it).
            keep_samples: attach the per-sample projections to each result (``samples``).

        Returns:
            One :class:`Certificate` per image. Guarantee: for each image, with probability
            at least ``1 - alpha`` over this call's noise, ``score_lower <= <v, f_hat(x)>
            <= ||f_hat(x)||``; and, separately, ``clean_score_lower <= <f(x), f_hat(x)>``.
            Both hold under sequential stopping because the betting bound is anytime valid.
        """
        self._validate_run(n0, n, alpha, method)
        sequential = tolerance is not None or target is not None
        if sequential and not bounds.get_method(method).anytime_valid:
            raise InputError(
                "sequential stopping needs an anytime-valid bound: use method="
                + " or ".join(repr(m) for m in bounds.anytime_methods())
            )
        if tolerance is not None and not tolerance > 0:
            raise InputError("tolerance must be positive")
        needed = None
        if target is not None:
            cosine, radius = target
            needed = float(bounds.required_score(cosine, radius, self.sigma))
        images = self._validate_images(images)
        batch_size = self._batch_size(batch_size)
        b = images.shape[0]
        gens, seeds = self._generators(b, seed)
        bar = Bar(progress, b * (n0 + n), "certify", unit="samples")

        with torch.inference_mode():
            clean = self._forward(images, torch.float64)  # (B, k)
        totals, directions = self._direction_stage(images, n0, gens, batch_size, bar)
        proj_dev = torch.zeros((2, b, n), dtype=torch.float64, device=self.device)
        counts = np.zeros(b, dtype=np.int64)
        active = np.ones(b, dtype=bool)
        stop_reason = ["max_samples"] * b
        # In sequential mode, sample in rounds and test the stopping rules between rounds.
        # Rounds grow by a quarter of the samples so far: the stopping tests cost O(n log n)
        # and stop at most ~25% later than a test after every sample would. The round size
        # does not depend on batch_size, so neither do sequential results.
        chunk = 32 if sequential else n
        while active.any():
            wants = [
                min(max(chunk, int(counts[i]) // 4), n - int(counts[i])) if active[i] else 0
                for i in range(b)
            ]
            self._projection_stage(
                images, wants, gens, batch_size, bar, directions, clean, proj_dev, counts, totals
            )
            proj, proj_clean = proj_dev.cpu().numpy()
            done = counts >= n
            if sequential:
                done |= self._should_stop(
                    proj, counts, active, alpha, n, tolerance, needed, stop_reason
                )
            if (done & active).any():
                bar.shrink(int(sum(n - counts[i] for i in np.flatnonzero(done & active))))
            active &= ~done
        bar.close()

        return [
            self._certificate(
                proj[i, : counts[i]],
                proj_clean[i, : counts[i]],
                totals[i],
                clean[i],
                directions[i],
                alpha=alpha,
                method=method,
                n0=n0,
                # Sequential runs stop at a data-dependent time: only the anytime schedule
                # (not one tuned to that time) keeps the bound valid there.
                horizon=None if sequential else n,
                stop_reason=stop_reason[i],
                seed=seeds[i],
                keep_samples=keep_samples,
            )
            for i in range(b)
        ]

    def _direction_stage(
        self,
        images: torch.Tensor,
        n0: int,
        gens: list,
        batch_size: int,
        bar: Bar,
        observe: Callable[[int, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage one of certification: ``n0`` draws per image choose the unit direction
        ``v`` (the normalised mean of the unit noisy features). Returns ``(sums,
        directions)``, both ``(B, k)`` float64; ``observe(i, feats)`` sees every batch of
        image ``i``'s features."""
        sums: torch.Tensor | None = None
        for i, feats in self._sample(images, [n0] * images.shape[0], gens, batch_size):
            if sums is None:
                sums = torch.zeros((images.shape[0], feats.shape[1]), dtype=feats.dtype,
                                   device=feats.device)  # fmt: skip
            sums[i] += feats.sum(0)
            if observe is not None:
                observe(i, feats)
            bar.advance(len(feats))
        assert sums is not None
        return sums, sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def _projection_stage(
        self,
        images: torch.Tensor,
        wants: Sequence[int],
        gens: list,
        batch_size: int,
        bar: Bar,
        directions: torch.Tensor,
        clean: torch.Tensor,
        proj: torch.Tensor,
        counts: np.ndarray,
        totals: torch.Tensor,
        observe: Callable[[int, torch.Tensor, int], None] | None = None,
    ) -> None:
        """Stage two (one round of it): ``wants[i]`` fresh draws of image ``i``, stored as
        projections ``proj[0, i] = <v, f(x+eps)>`` and ``proj[1, i] = <f(x), f(x+eps)>``
        after the ``counts[i]`` already drawn, and added to ``totals[i]`` (for ``S`` and
        context); ``observe(i, feats, start)`` sees each batch and where it starts. The
        projections stay on the device (no host sync per forward pass)."""
        for i, feats in self._sample(images, wants, gens, batch_size):
            k, c = len(feats), int(counts[i])
            proj[:, i, c : c + k] = torch.stack([directions[i], clean[i]]) @ feats.T
            totals[i] += feats.sum(0)
            if observe is not None:
                observe(i, feats, c)
            counts[i] += k
            bar.advance(k)

    def _certificate(
        self,
        proj: np.ndarray,
        proj_clean: np.ndarray,
        total_feature: torch.Tensor,
        clean: torch.Tensor,
        direction: torch.Tensor,
        *,
        alpha: float,
        method: str,
        n0: int,
        horizon: int | None,
        stop_reason: str,
        seed: int,
        keep_samples: bool,
    ) -> Certificate:
        """Build one image's certificate from its projections and the sum of its features."""
        c = len(proj)
        low, clean_low = self._lower_bounds(proj, proj_clean, alpha, method, horizon)
        total = n0 + c
        s2 = (float(total_feature.square().sum()) - total) / (total * (total - 1))
        mean_feature = total_feature / total
        return Certificate(
            sigma=self.sigma,
            alpha=alpha,
            method=method,
            n0=n0,
            n_used=c,
            score_estimate=math.sqrt(min(max(s2, 0.0), 1.0)),
            score_lower=low,
            clean_score_estimate=float(proj_clean.mean()),
            clean_score_lower=clean_low,
            clean_smoothed_cosine=float(
                (mean_feature @ clean) / mean_feature.norm().clamp_min(1e-300)
            ),
            stop_reason=stop_reason,
            seed=seed,
            direction=direction.cpu().numpy(),
            samples=np.stack([proj, proj_clean]) if keep_samples else None,
        )

    @staticmethod
    def _lower_bounds(
        values: np.ndarray,
        clean_values: np.ndarray,
        alpha: float,
        method: str,
        horizon: int | None,
    ) -> tuple[float, float]:
        """Bounds for both references; ``horizon=None``: the sample size was data-chosen."""
        return (
            bounds.mean_lower_bound(values, alpha, method, horizon=horizon),
            bounds.mean_lower_bound(clean_values, alpha, method, horizon=horizon),
        )

    @staticmethod
    def _should_stop(
        proj: np.ndarray,
        counts: np.ndarray,
        active: np.ndarray,
        alpha: float,
        horizon: int,
        tolerance: float | None,
        needed: float | None,
        stop_reason: list[str],
    ) -> np.ndarray:
        """Sequential stopping rules, evaluated on the betting confidence sequence."""
        stop = np.zeros(len(counts), dtype=bool)
        rows = np.flatnonzero(active & (counts < horizon))
        if rows.size == 0:
            return stop
        width = int(counts[rows].max())
        values = proj[rows, :width]
        lower = bounds.betting_lower_bounds(values, alpha, None, counts[rows])
        means = np.array([proj[r, : counts[r]].mean() for r in rows])
        for j, r in enumerate(rows):
            if tolerance is not None and means[j] - lower[j] <= tolerance:
                stop[r], stop_reason[r] = True, "tolerance"
            elif needed is not None and lower[j] >= needed:
                stop[r], stop_reason[r] = True, "target_reached"
        if needed is not None:
            upper = -bounds.betting_lower_bounds(-values, alpha, None, counts[rows])
            for j, r in enumerate(rows):
                if not stop[r] and upper[j] < needed:
                    stop[r], stop_reason[r] = True, "target_unreachable"
        return stop

    # ------------------------------------------------------------------ predictions

    def certify_prediction(
        self,
        images: torch.Tensor,
        class_embeddings: torch.Tensor | np.ndarray,
        n0: int = 64,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        method: str = bounds.DEFAULT_METHOD,
        batch_size: int | None = None,
        seed: int | Sequence[int] | None = 0,
        progress: bool | Bar = False,
        keep_samples: bool = False,
    ) -> list[PredictionCertificate]:
        """Certified zero-shot predictions with unit class embeddings ``(K, k)``, K >= 2.

        The smoothed prediction ``A = argmax_c <t_c, f_hat(x)>`` is chosen from the ``n0``
        samples; ``n`` fresh samples then give, each at level ``1 - alpha``:

        * margin: for every rival ``B``, a lower bound ``p_B,low`` at level ``1 - alpha`` on
          ``p_B = E (1 + <w_B, f(x+eps)>)/2``, ``w_B = (t_A - t_B)/||t_A - t_B||``;
          radius ``sigma * Phi^-1(min_B p_B,low)`` (abstain if ``min_B p_B,low <= 1/2``).
          No split of ``alpha`` over the ``K - 1`` rivals is needed: the radius is wrong
          only if ``min_B p_B,low > min_B p_B``, which implies that the bound of the rival
          with the smallest true ``p_B`` (fixed once the ``n0`` samples fix ``A``) fails
          (docs/theory.md, Proposition 5). The individual ``p_B,low`` are not
          simultaneously valid and are not reported;
        * fcsb: the FCSB of the direction ``v`` reaching the cosine ``max_B sin(angle(v,
          t_A - t_B))`` that keeps every feature of the certified cone in class ``A``;
        * cohen: Clopper-Pearson bound on the vote share of the top class of the ``n0``
          votes; radius ``sigma * Phi^-1(p_low)`` (abstain if ``p_low <= 1/2``).

        The same samples also give each image's feature :class:`Certificate` (``.features``),
        exactly as :meth:`certify` would with the same seed, so one pass serves both
        (``progress`` and ``keep_samples`` as there).
        """
        self._validate_run(n0, n, alpha, method)
        images = self._validate_images(images)
        batch_size = self._batch_size(batch_size)
        emb = torch.as_tensor(np.asarray(class_embeddings), dtype=torch.float64).to(self.device)
        if emb.ndim != 2 or emb.shape[0] < 2:
            raise InputError("class_embeddings must have shape (K, k) with K >= 2 classes")
        if not torch.isfinite(emb).all():
            raise InputError("class_embeddings contain NaN or infinite values")
        emb_norms = emb.norm(dim=1)
        if bool((emb_norms < _MIN_FEATURE_NORM).any()):
            raise InputError("a class embedding is all zeros")
        if bool(((emb_norms - 1).abs() > 1e-3).any()):
            warnings.warn("class embeddings were not unit-norm; normalising them", stacklevel=2)
        emb = emb / emb_norms[:, None]
        b, num_classes = images.shape[0], emb.shape[0]
        gens, seeds = self._generators(b, seed)
        bar = Bar(progress, b * (n0 + n), "certify prediction", unit="samples")

        with torch.inference_mode():
            clean = self._forward(images, torch.float64)
        if clean.shape[1] != emb.shape[1]:
            raise InputError(
                f"class embeddings have dimension {emb.shape[1]} but features have {clean.shape[1]}"
            )
        clean_pred = (clean @ emb.T).argmax(1).cpu().numpy()
        votes0 = torch.zeros((b, num_classes), dtype=torch.int64, device=self.device)

        def vote(i: int, feats: torch.Tensor) -> None:
            votes0[i] += torch.bincount((feats @ emb.T).argmax(1), minlength=num_classes)

        totals, directions = self._direction_stage(images, n0, gens, batch_size, bar, vote)
        top = (directions @ emb.T).argmax(1)  # smoothed prediction A per image
        top_cohen = votes0.argmax(1)

        # margins[i]: (n, K-1) values <w_B, f> over the rivals B of A, kept only until the
        # image's n samples are complete (then reduced to p_low); proj[i]: <v, f>
        margins: dict[int, torch.Tensor] = {}
        p_low = np.zeros(b)
        proj_dev = torch.zeros((2, b, n), dtype=torch.float64, device=self.device)
        votes_dev = torch.zeros(b, dtype=torch.int64, device=self.device)
        filled = np.zeros(b, dtype=np.int64)
        diff_norm = [(emb[top[i]] - emb).norm(dim=1).clamp_min(1e-300) for i in range(b)]

        def margin(i: int, feats: torch.Tensor, c: int) -> None:
            k = len(feats)
            scores = feats @ emb.T  # (k, K)
            w_vals = (scores[:, top[i]].unsqueeze(1) - scores) / diff_norm[i]
            rivals = torch.arange(num_classes, device=self.device) != top[i]
            if i not in margins:
                margins[i] = torch.zeros(
                    (n, num_classes - 1), dtype=torch.float64, device=self.device
                )
            margins[i][c : c + k] = w_vals[:, rivals].clamp(-1.0, 1.0)
            votes_dev[i] += (scores.argmax(1) == top_cohen[i]).sum()
            if c + k == n:
                values = margins.pop(i).cpu().numpy()
                # P[min_B p_B,low > min_B p_B] <= alpha, no split (Proposition 5)
                p_low[i] = (1.0 + bounds.min_lower_bound(values.T, alpha, method, n)) / 2.0

        self._projection_stage(
            images, [n] * b, gens, batch_size, bar, directions, clean, proj_dev, filled, totals,
            margin,
        )  # fmt: skip
        bar.close()
        proj, proj_clean = proj_dev.cpu().numpy()
        votes = votes_dev.cpu().numpy()

        results = []
        for i in range(b):
            a = int(top[i])
            margin_radius = float(bounds.probability_radius(p_low[i], self.sigma))
            feature_cert = self._certificate(
                proj[i],
                proj_clean[i],
                totals[i],
                clean[i],
                directions[i],
                alpha=alpha,
                method=method,
                n0=n0,
                horizon=n,
                stop_reason="max_samples",
                seed=seeds[i],
                keep_samples=keep_samples,
            )
            score_low = feature_cert.score_lower
            needed_cos = _cone_cosine(directions[i], emb, a)
            fcsb_radius = (
                float(bounds.certified_radius(score_low, needed_cos, self.sigma))
                if needed_cos is not None
                else math.nan
            )
            p_cohen = float(bounds.clopper_pearson_lower(votes[i], n, alpha))
            cohen_radius = float(bounds.probability_radius(p_cohen, self.sigma))
            results.append(
                PredictionCertificate(
                    sigma=self.sigma,
                    alpha=alpha,
                    method=method,
                    n0=n0,
                    n_used=n,
                    estimate=a,
                    prediction=a if not math.isnan(margin_radius) else ABSTAIN,
                    margin_radius=margin_radius,
                    fcsb_prediction=a if not math.isnan(fcsb_radius) else ABSTAIN,
                    fcsb_radius=fcsb_radius,
                    cohen_prediction=int(top_cohen[i]) if not math.isnan(cohen_radius) else ABSTAIN,
                    cohen_radius=cohen_radius,
                    clean_prediction=int(clean_pred[i]),
                    score_lower=score_low,
                    seed=seeds[i],
                    features=feature_cert,
                )
            )
        return results


def _cone_cosine(direction: torch.Tensor, emb: torch.Tensor, a: int) -> float | None:
    """Cosine with ``direction`` that keeps every feature of the cone in class ``a``.

    A vector ``y`` with ``||y|| <= 1`` and ``<v, y> >= b`` has ``<t_a - t_c, y> > 0`` for
    every rival ``c`` iff ``b > sin(angle(v, t_a - t_c))`` for all ``c`` (docs/theory.md,
    Proposition 6). Returns that maximal sine, or None if ``v`` is not strictly in class a.
    """
    diffs = emb[a].unsqueeze(0) - emb
    keep = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
    keep[a] = False
    diffs = diffs[keep]
    cos = (diffs @ direction) / diffs.norm(dim=1).clamp_min(1e-300)
    if bool((cos <= 0).any()):
        return None
    sines = torch.sqrt((1.0 - cos.clamp(max=1.0) ** 2).clamp_min(0.0))
    return float(sines.max())
