"""Prompt and target token ids for handing image features back to a language model.

The text side every multimodal family shares (the LLaVA tower of
:mod:`featsmooth.encoders.llava` and the
:class:`~featsmooth.encoders.image_tokens.ImageTokenEncoder` families): the model's image
token expanded to the number of image features, one prompt or target per image, left-padded
batches, and batched ``generate`` / log-likelihood around a model-specific call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from featsmooth.errors import InputError


def _image_token_id(config: Any) -> int:
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise InputError("the model config names no image token (image_token_id/image_token_index)")


def _tokenizer_of(processor_or_tokenizer: Any) -> Any:
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    if tok is None or not callable(tok):
        raise InputError("pass the model's processor or tokenizer to hand features back")
    return tok


def _expand_image_tokens(ids: list[int], image_id: int, num_tokens: int) -> list[int]:
    count = sum(1 for t in ids if t == image_id)
    if count == num_tokens:
        return ids
    if count == 1:
        at = ids.index(image_id)
        return ids[:at] + [image_id] * num_tokens + ids[at + 1 :]
    if count == 0:
        raise InputError(
            "the prompt has no image token (e.g. '<image>'); put one where the image goes"
        )
    raise InputError(f"the prompt has {count} image tokens; use one (or exactly {num_tokens})")


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def _broadcast_texts(texts: str | Sequence[str], batch: int, what: str) -> list[str]:
    if isinstance(texts, str):
        return [texts] * batch
    texts = list(texts)
    if len(texts) == 1:
        return texts * batch
    if len(texts) != batch:
        raise InputError(f"got {len(texts)} {what} for {batch} images; pass one or one per image")
    return texts


def _pad_id(tok: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0


def _embedding_device(model: Any) -> torch.device:
    """Where the model's token embeddings (and so its input ids) live."""
    return model.get_input_embeddings().weight.device


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _target_ids(tok: Any, targets: str | Sequence[str], batch: int) -> list[list[int]]:
    """Token ids (no special tokens) of one target text per image; none may be empty."""
    goals = _broadcast_texts(targets, batch, "targets")
    seqs = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in goals]
    if any(len(t) == 0 for t in seqs):
        raise InputError("every target text must have at least one token")
    return seqs


def _generate_batch(
    tok: Any,
    seqs: list[list[int]],
    device: torch.device,
    generate: Callable[..., torch.Tensor],
    return_text: bool,
    **generate_kwargs: Any,
) -> torch.Tensor | list[str]:
    """``generate(ids, mask, **generate_kwargs)`` without gradients on the prompt ids
    ``seqs``, left-padded and on ``device`` (``pad_token_id`` defaults to the tokenizer's);
    returns its new token ids ``(B, L_new)`` or, with ``return_text``, their decoded text."""
    ids, mask = _left_pad(seqs, _pad_id(tok))
    ids, mask = ids.to(device), mask.to(device)
    generate_kwargs.setdefault("pad_token_id", _pad_id(tok))
    with torch.no_grad():
        new_ids = generate(ids, mask, **generate_kwargs)
    if return_text:
        return tok.batch_decode(new_ids, skip_special_tokens=True)
    return new_ids


def _loglikelihood_batch(
    tok: Any,
    prompt_seqs: list[list[int]],
    targets: str | Sequence[str],
    logits: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor],
    reduction: Literal["sum", "mean"],
) -> torch.Tensor:
    """Log-likelihood ``(B,)`` of the ``targets`` (one per prompt) appended to the prompt ids
    ``prompt_seqs``: ``logits(ids, mask, target_lengths)`` gives the next-token logits
    ``(B, L, V)`` of the left-padded batch; the log-probabilities of the target tokens are
    summed, or averaged with ``reduction="mean"``."""
    target_seqs = _target_ids(tok, targets, len(prompt_seqs))
    ids, mask = _left_pad([p + t for p, t in zip(prompt_seqs, target_seqs)], _pad_id(tok))
    lengths = [len(t) for t in target_seqs]
    logp = torch.log_softmax(logits(ids, mask, lengths)[:, :-1].float(), dim=-1)
    next_ids = ids[:, 1:].to(logp.device)
    token_logp = logp.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
    width = ids.shape[1]
    is_target = torch.zeros_like(token_logp, dtype=torch.bool)
    for i, n in enumerate(lengths):
        is_target[i, width - 1 - n :] = True  # position j predicts token j + 1
    total = (token_logp * is_target).sum(dim=1)
    if reduction == "mean":
        total = total / is_target.sum(dim=1)
    return total
