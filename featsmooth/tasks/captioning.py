"""MLLM captioning and VQA through a LLaVA-type model, with clean or smoothed image features.

Pipeline (Feature-space Smoothing of the vision tower, docs/theory.md): the vision tower
:class:`~featsmooth.encoders.hf.LlavaVisionTower` maps pixel-unit images to token features
``(B, T, D)``; with smoothing, :meth:`featsmooth.smoothing.SmoothedEncoder.predict_feature` returns the Monte-Carlo
smoothed feature ``f_hat(x)`` (flattened, unit norm), :func:`restore_token_features` gives it
back the token layout and the norm of the clean features, and the language model generates
from it (:func:`~featsmooth.encoders.hf.generate_with_image_features`). The certificate is
about the features handed to the language model (their cosine to the clean smoothed
features); the text the model writes is an empirical outcome, scored with CIDEr-D
(captions) or VQA accuracy (answers), see :mod:`featsmooth.tasks.metrics`.

Attacks on the text output use :class:`~featsmooth.attacks.TextLikelihood` with
:func:`loglik_fn`: the differentiable log-likelihood of a text given the images, through the
vision tower (and, for a smoothed tower, through ``noisy_features`` averaged over EoT draws,
so the attack sees the Monte-Carlo smoothed features the model would receive).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featsmooth.attacks import PGD, AttackResult, TextLikelihood
from featsmooth.encoders.hf import (
    LlavaVisionTower,
    generate_with_image_features,
    loglikelihood_with_image_features,
    restore_token_features,
)
from featsmooth.errors import InputError
from featsmooth.tasks.metrics import cider_d, vqa_score

CAPTION_PROMPT = "USER: <image>\nDescribe the image in one sentence. ASSISTANT:"
VQA_PROMPT = "USER: <image>\n{question} Answer with a single word or phrase. ASSISTANT:"


def _tower(model: Any) -> LlavaVisionTower:
    tower = getattr(model, "encoder", model)  # a SmoothedEncoder's wrapped tower
    while not isinstance(tower, LlavaVisionTower) and hasattr(tower, "encoder"):
        tower = tower.encoder  # through a plug-in wrapper
    if not isinstance(tower, LlavaVisionTower):
        raise InputError("captioning needs a LlavaVisionTower (load_encoder of a LLaVA model)")
    return tower


def image_features(
    tower: LlavaVisionTower,
    images: torch.Tensor,
    *,
    smoothed: Any = None,
    n: int = 32,
    seed: int | None = 0,
) -> torch.Tensor:
    """Token features ``(B, T, D)`` to hand to the language model.

    Without ``smoothed``: the tower's clean features. With ``smoothed`` (a
    :class:`featsmooth.SmoothedEncoder` around ``tower``, possibly with a plug-in): the
    Monte-Carlo smoothed feature from ``n`` noise draws, reshaped and rescaled to the norm
    of the clean features (:func:`restore_token_features`).
    """
    with torch.no_grad():
        clean = tower(images)
        if smoothed is None:
            return clean
        flat = smoothed.predict_feature(images, n=n, seed=seed)
        return restore_token_features(flat.to(clean.device), clean)


def _prompts(template: str, items: Sequence[str] | None, b: int) -> list[str]:
    if items is None:
        return [template] * b
    if len(items) != b:
        raise InputError(f"got {len(items)} questions for {b} images")
    return [template.format(question=q) for q in items]


def generate(
    tower: LlavaVisionTower,
    images: torch.Tensor,
    prompts: str | Sequence[str] = CAPTION_PROMPT,
    *,
    smoothed: Any = None,
    n: int = 32,
    seed: int | None = 0,
    max_new_tokens: int = 30,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy text from clean or smoothed features (one string per image)."""
    feats = image_features(tower, images, smoothed=smoothed, n=n, seed=seed)
    generate_kwargs.setdefault("do_sample", False)
    texts = generate_with_image_features(
        tower, None, feats, prompts, return_text=True, max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )  # fmt: skip
    return [t.strip() for t in texts]


@dataclass
class CaptionResult:
    """Captions (or answers) of a batch and their scores.

    Attributes:
        texts: one generated string per image.
        score: corpus CIDEr-D (captions) or mean VQA accuracy (answers); ``None`` without
            references.
        per_item: per-image scores ``(B,)``.
        metric: ``"cider_d"`` or ``"vqa_accuracy"``.
        smoothed: whether the features were smoothed (and with which sigma / draws).
    """

    texts: list[str]
    score: float | None = None
    per_item: np.ndarray | None = field(default=None, repr=False)
    metric: str = "cider_d"
    smoothed: dict[str, Any] | None = None


def _smooth_info(smoothed: Any, n: int) -> dict[str, Any] | None:
    return None if smoothed is None else {"sigma": float(smoothed.sigma), "draws": int(n)}


def caption(
    tower: LlavaVisionTower,
    images: torch.Tensor,
    references: Sequence[Sequence[str]] | None = None,
    *,
    prompt: str = CAPTION_PROMPT,
    smoothed: Any = None,
    n: int = 32,
    seed: int | None = 0,
    max_new_tokens: int = 30,
) -> CaptionResult:
    """Caption ``images`` (optionally from smoothed features) and score with CIDEr-D."""
    texts = generate(tower, images, prompt, smoothed=smoothed, n=n, seed=seed,
                     max_new_tokens=max_new_tokens)  # fmt: skip
    return _scored(texts, "cider_d", cider_d, references, smoothed, n)


def _scored(
    texts: list[str],
    metric: str,
    score: Callable[..., tuple[float, list[float]]],
    truth: Any,
    smoothed: Any,
    n: int,
) -> CaptionResult:
    """The result of generated ``texts``, scored by ``score(texts, truth)`` when given."""
    result = CaptionResult(texts, metric=metric, smoothed=_smooth_info(smoothed, n))
    if truth is not None:
        result.score, result.per_item = score(texts, truth)
    return result


def answer(
    tower: LlavaVisionTower,
    images: torch.Tensor,
    questions: Sequence[str],
    human_answers: Sequence[Sequence[str]] | None = None,
    *,
    template: str = VQA_PROMPT,
    smoothed: Any = None,
    n: int = 32,
    seed: int | None = 0,
    max_new_tokens: int = 10,
) -> CaptionResult:
    """Answer one question per image (optionally from smoothed features); VQA accuracy."""
    prompts = _prompts(template, questions, images.shape[0])
    texts = generate(tower, images, prompts, smoothed=smoothed, n=n, seed=seed,
                     max_new_tokens=max_new_tokens)  # fmt: skip
    return _scored(texts, "vqa_accuracy", vqa_score, human_answers, smoothed, n)


def loglik_fn(
    tower: LlavaVisionTower,
    prompts: str | Sequence[str],
    *,
    smoothed: Any = None,
    eot_draws: int = 4,
    reduction: str = "mean",
) -> Callable[[torch.Tensor, list[str]], torch.Tensor]:
    """``(images, texts) -> (B,)`` differentiable log-likelihood of ``texts`` given images.

    For :class:`~featsmooth.attacks.TextLikelihood` (with ``model_fn=None``). With
    ``smoothed``, the features are the mean of ``eot_draws`` unit noisy features (fresh
    noise per call; through the plug-in if the smoothed encoder has one), restored to the
    norm of the clean features: the attack targets what the model receives under FS.
    """

    def fn(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        clean = tower(images)
        if smoothed is None:
            feats = clean
        else:
            flat = smoothed.noisy_features(images, eot_draws).mean(dim=1)
            feats = restore_token_features(flat, clean.detach())
        return loglikelihood_with_image_features(
            tower, None, feats, prompts, texts, reduction=reduction
        )

    return fn


def text_attack(
    tower: LlavaVisionTower,
    images: torch.Tensor,
    text: str | Sequence[str],
    *,
    prompt: str | Sequence[str] = CAPTION_PROMPT,
    targeted: bool = True,
    smoothed: Any = None,
    eot_draws: int = 4,
    norm: str = "linf",
    eps: float | str = "8/255",
    steps: int = 10,
    seed: int | None = 0,
    **attack_kwargs: Any,
) -> AttackResult:
    """PGD on the text likelihood: make the model say ``text`` (``targeted``) or move it off
    ``text`` (e.g. its clean caption). Threat model: ``norm`` ball of radius ``eps`` in
    pixel units, intersected with [0, 1]; white-box through the tower (and the smoothing
    noise with EoT when ``smoothed`` is given)."""
    objective = TextLikelihood(
        loglik_fn(tower, prompt, smoothed=smoothed, eot_draws=eot_draws), text, targeted
    )
    attack = PGD(None, objective, norm, eps, steps, seed=seed, **attack_kwargs)
    return attack(images)
