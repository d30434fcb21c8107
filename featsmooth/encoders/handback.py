"""Handing (smoothed) image features back to a multimodal model of transformers 5.x.

The models of Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT and LLaVA-OneVision accept pre-computed
image features through ``mm_encoder_outputs={"image": BaseModelOutputWithPooling(...)}`` in
``forward`` and ``generate``, in place of ``pixel_values``: the language model then runs
exactly as in its own forward (same placeholder scatter, same position ids, same cache).
The functions here build the prompt ids (one image token per prompt, expanded to the number
of image features) and call the model that way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from featsmooth.encoders.hf import (
    _broadcast_texts,
    _expand_image_tokens,
    _left_pad,
    _pad_id,
    _tokenizer_of,
)
from featsmooth.errors import InputError

ExtraInputs = Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]


def encoder_outputs(features: Sequence[torch.Tensor]) -> dict[str, Any]:
    """``{"image": BaseModelOutputWithPooling(pooler_output=(f_1, ..., f_B))}``, one ``(T_i, D)``
    tensor per image, as the models' ``mm_encoder_outputs`` argument expects."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    feats = tuple(features)
    if any(f.ndim != 2 for f in feats):
        raise InputError("image features must be one (T, D) tensor per image")
    return {"image": BaseModelOutputWithPooling(pooler_output=feats)}


def image_token_id(config: Any) -> int:
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise InputError("the model config names no image token (image_token_id/image_token_index)")


def prompt_ids(
    tokenizer: Any,
    prompts: str | Sequence[str],
    token_counts: Sequence[int],
    image_id: int,
    targets: str | Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-padded ids ``(B, L)`` and mask of ``prompts`` (one image token each, expanded to
    ``token_counts[i]`` tokens), with ``targets`` appended when given; and the target ids."""
    tok = _tokenizer_of(tokenizer)
    batch = len(token_counts)
    texts = _broadcast_texts(prompts, batch, "prompts")
    seqs = [
        _expand_image_tokens(list(tok(p)["input_ids"]), image_id, n)
        for p, n in zip(texts, token_counts)
    ]
    goals: list[list[int]] = []
    if targets is not None:
        goal_texts = _broadcast_texts(targets, batch, "targets")
        goals = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in goal_texts]
        if any(len(g) == 0 for g in goals):
            raise InputError("every target text must have at least one token")
        seqs = [s + g for s, g in zip(seqs, goals)]
    ids, mask = _left_pad(seqs, _pad_id(tok))
    return ids, mask, goals


def _device_of(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


def generate(
    model: Any,
    tokenizer: Any,
    features: Sequence[torch.Tensor],
    prompts: str | Sequence[str],
    *,
    extra: ExtraInputs | None = None,
    return_text: bool = False,
    **generate_kwargs: Any,
) -> torch.Tensor | list[str]:
    """Greedy/sampled generation with ``features`` (one ``(T_i, D)`` per image) as the image.

    ``extra(ids, mask)`` returns the model's other image inputs (``image_grid_thw``,
    ``image_sizes``, ``mm_token_type_ids``...). Returns the new token ids ``(B, L_new)``.
    """
    tok = _tokenizer_of(tokenizer)
    feats = list(features)
    ids, mask, _ = prompt_ids(
        tok, prompts, [f.shape[0] for f in feats], image_token_id(model.config)
    )
    device = _device_of(model)
    ids, mask = ids.to(device), mask.to(device)
    kwargs = dict(extra(ids, mask)) if extra is not None else {}
    generate_kwargs.setdefault("pad_token_id", _pad_id(tok))
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            mm_encoder_outputs=encoder_outputs(f.to(device) for f in feats),
            **kwargs,
            **generate_kwargs,
        )
    new_ids = out[:, ids.shape[1] :]
    if return_text:
        return tok.batch_decode(new_ids, skip_special_tokens=True)
    return new_ids


def loglikelihood(
    model: Any,
    tokenizer: Any,
    features: Sequence[torch.Tensor],
    prompts: str | Sequence[str],
    targets: str | Sequence[str],
    *,
    extra: ExtraInputs | None = None,
    position_ids_from_mask: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Log-likelihood ``(B,)`` of ``targets`` after ``prompts`` given ``features``;
    differentiable with respect to the features (and through them the images)."""
    if reduction not in ("sum", "mean"):
        raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    tok = _tokenizer_of(tokenizer)
    feats = list(features)
    counts = [f.shape[0] for f in feats]
    ids, mask, goals = prompt_ids(tok, prompts, counts, image_token_id(model.config), targets)
    device = _device_of(model)
    ids, mask = ids.to(device), mask.to(device)
    kwargs = dict(extra(ids, mask)) if extra is not None else {}
    if position_ids_from_mask:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        mm_encoder_outputs=encoder_outputs(f.to(device) for f in feats),
        **kwargs,
    )
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    width = ids.shape[1]
    is_target = torch.zeros_like(token_logp, dtype=torch.bool)
    for i, g in enumerate(goals):
        is_target[i, width - 1 - len(g) :] = True  # position j predicts token j + 1
    total = (token_logp * is_target).sum(dim=1)
    if reduction == "mean":
        total = total / is_target.sum(dim=1)
    return total
