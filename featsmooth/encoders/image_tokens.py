"""Shared machinery of multimodal LLMs whose image enters the language model as tokens.

BLIP-2, InstructBLIP, PaliGemma, Gemma 3 and Idefics3 / SmolVLM (like LLaVA, see
:mod:`featsmooth.encoders.hf`) encode an image into ``T`` vectors and write them, in order,
into the token embeddings at the positions of ``config.image_token_id`` before running the
language model. :class:`ImageTokenEncoder` is the pixel-unit featsmooth encoder of such a model
(its ``forward`` returns the features at one *stage* of the image path) and hands features of
any stage back to the language model: :meth:`~ImageTokenEncoder.generate` and
:meth:`~ImageTokenEncoder.loglikelihood` (also reached through
:func:`featsmooth.encoders.hf.generate_with_image_features` and
:func:`featsmooth.encoders.hf.loglikelihood_with_image_features`).

A family subclass supplies: its stages (``stages``, first to last),
:meth:`ImageTokenEncoder.encode_pixels` (normalised pixels -> features of a stage),
:meth:`ImageTokenEncoder.advance` (features of one stage -> the embeddings the language model
consumes), how a prompt becomes token ids with the image tokens in place
(:meth:`ImageTokenEncoder.prompt_ids`), and, where the model needs them, extra inputs of the
language model (PaliGemma's ``token_type_ids``), its position offset, and whether its
``generate`` takes pre-computed image outputs instead of ``inputs_embeds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from featsmooth.encoders.base import ImageEncoder, Preprocess
from featsmooth.encoders.hf import (
    _broadcast_texts,
    _expand_image_tokens,
    _finish,
    _image_token_id,
    _left_pad,
    _load_tokenizer,
    _load_weights,
    _normalisation,
    _pad_id,
    _read_preprocessor_config,
    _resolve_dtype,
    _tokenizer_of,
    read_model_config,
)
from featsmooth.errors import InputError, ModelUnavailableError


class ImageTokenEncoder(ImageEncoder):
    """Pixel-unit encoder of a multimodal LLM; ``forward`` returns ``(B, T, D)`` at ``stage``.

    Args:
        model: the transformers ``...ForConditionalGeneration`` model (frozen by the loaders).
        stage: which feature ``forward`` returns (and smoothing certifies); one of ``stages``.
        tokenizer: the model's tokenizer or processor (for :meth:`generate` /
            :meth:`loglikelihood`).
        mean, std: the model's normalisation; image_size: its square input ``(H, W)``.
    """

    #: :func:`featsmooth.encoders.hf.generate_with_image_features` calls our own methods
    hands_back_features = True

    stages: tuple[str, ...] = ("vision", "projected")
    default_stage: str = "vision"

    def __init__(
        self,
        model: nn.Module,
        *,
        stage: str | None = None,
        tokenizer: Any | None = None,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: tuple[int, int],
        name: str,
    ) -> None:
        super().__init__()
        stage = stage or self.default_stage
        self._check_stage(stage)
        self.model = model
        self.tokenizer = tokenizer
        self.stage = stage
        self.image_size = image_size
        self.preprocess = Preprocess(image_size, mean=mean, std=std)
        self.name = name

    # ------------------------------------------------------------------ family hooks

    def encode_pixels(self, pixel_values: torch.Tensor, stage: str) -> torch.Tensor:
        """Normalised model-size pixels -> features ``(B, T, D)`` at ``stage``."""
        raise NotImplementedError

    def advance(self, features: torch.Tensor, stage: str) -> torch.Tensor:
        """Features at ``stage`` -> the embeddings the language model consumes ``(B, T, D)``."""
        raise NotImplementedError

    def default_prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        """Token ids of a prompt written without an image token (the family's own layout)."""
        raise InputError(
            "the prompt has no image token (e.g. '<image>'); put one where the image goes"
        )

    def extra_inputs(
        self, input_ids: torch.Tensor, mask: torch.Tensor, target_lengths: list[int] | None
    ) -> dict[str, torch.Tensor]:
        """Extra keyword inputs of the language model for left-padded ``input_ids`` ``(B, L)``
        whose last ``target_lengths`` tokens are an answer being scored (``None``: none)."""
        return {}

    position_offset: int = 0  # PaliGemma counts positions from 1
    generate_with_encoder_outputs: bool = False  # see generate_ids

    def language_model(self) -> nn.Module:
        """The module that runs on ``inputs_embeds`` (forward and ``generate``)."""
        return self.model

    # ------------------------------------------------------------------ encoder

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise InputError(f"stage must be one of {self.stages}, got {stage!r}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_dtype()

    def vision_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_token_id(self) -> int:
        return _image_token_id(self.model.config)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel-unit images ``(B, 3, H, W)`` -> normalised model input in the model dtype."""
        if not torch.is_floating_point(images) or images.ndim != 4:
            raise InputError(f"expected float images (B, C, H, W), got {tuple(images.shape)}")
        if images.shape[1] != self.preprocess.mean.shape[1]:
            raise InputError(
                f"expected {self.preprocess.mean.shape[1]} channels, got {images.shape[1]}"
            )
        x = self.preprocess(images.to(device=self.device, dtype=torch.float32))
        return x.to(self.vision_dtype())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.pixel_values(images), self.stage)

    def to_language(self, features: torch.Tensor, stage: str | None = None) -> torch.Tensor:
        """Features ``(B, T, D)`` at ``stage`` (default: this encoder's) -> language-model
        embeddings; differentiable in ``features``."""
        stage = stage or self.stage
        self._check_stage(stage)
        if features.ndim != 3:
            raise InputError(f"image_features must be (B, T, D), got {tuple(features.shape)}")
        return self.advance(features, stage)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`to_language` from this encoder's stage (as LlavaVisionTower)."""
        return self.to_language(features)

    # ------------------------------------------------------------------ handing back

    def prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        """Token ids of ``prompt`` with ``num_tokens`` image tokens in place: a prompt holding
        one image token (e.g. ``'<image>'``) has it expanded where it stands, one holding
        none gets the family's own layout (BLIP-2 and PaliGemma put the image first)."""
        image_id = self.image_token_id
        ids = list(tok(prompt)["input_ids"])
        if image_id not in ids:
            return self.default_prompt_ids(tok, prompt, num_tokens)
        return self.expand_image_tokens(ids, num_tokens)

    def expand_image_tokens(self, ids: list[int], num_tokens: int) -> list[int]:
        return _expand_image_tokens(ids, self.image_token_id, num_tokens)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor, stage: str | None):
        """Token embeddings of ``input_ids`` with the image positions replaced, in order, by
        ``image_features`` at ``stage``, as the model's own forward does with pixels."""
        feats = self.to_language(image_features, stage)
        table = self.model.get_input_embeddings()
        image_id = self.image_token_id
        mask = input_ids == image_id
        safe = input_ids.masked_fill(mask, 0) if image_id >= table.num_embeddings else input_ids
        embeds = table(safe)
        feats = feats.to(embeds.device, embeds.dtype)
        if mask.sum(dim=1).ne(feats.shape[1]).any() or feats.shape[0] != input_ids.shape[0]:
            raise InputError(
                f"image tokens per prompt {mask.sum(dim=1).tolist()} do not match the "
                f"{feats.shape[1]} image features of each of {feats.shape[0]} images"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), feats)

    def _batch(self, tok: Any, features: torch.Tensor, prompts: Any, stage: str | None):
        stage = stage or self.stage
        num_tokens = self.to_language(features[:1].detach(), stage).shape[1]
        texts = _broadcast_texts(prompts, features.shape[0], "prompts")
        return [self.prompt_ids(tok, p, num_tokens) for p in texts]

    def _tok(self, processor_or_tokenizer: Any) -> Any:
        given = processor_or_tokenizer if processor_or_tokenizer is not None else self.tokenizer
        return _tokenizer_of(given)

    def logits(
        self,
        input_ids: torch.Tensor,
        image_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        stage: str | None = None,
        target_lengths: list[int] | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(B, L, V)`` on ``input_ids`` (image tokens already expanded)
        with ``image_features`` in place of the image; ``target_lengths`` marks trailing
        answer tokens for models that treat the prompt and the answer differently."""
        device = self.model.get_input_embeddings().weight.device
        input_ids = input_ids.to(device)
        embeds = self.embed(input_ids, image_features, stage)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(device)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + self.position_offset
        out = self.language_model()(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **self.extra_inputs(input_ids, attention_mask, target_lengths),
        )
        return out.logits

    def generate_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor,
        stage: str | None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New token ids ``(B, L_new)`` of the language model's ``generate`` on the embeddings
        of ``input_ids`` with the image features written in; or, for models whose
        ``generate`` takes no ``inputs_embeds`` (``generate_with_encoder_outputs``), on the
        token ids with the projected features passed as pre-computed image outputs
        (``mm_encoder_outputs``), which the model's forward writes at the image tokens
        exactly as it does its own."""
        embeds = self.embed(input_ids, image_features, stage)  # also checks the token count
        if self.generate_with_encoder_outputs:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            feats = self.to_language(image_features, stage)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=feats)},
                **self.extra_inputs(input_ids, attention_mask, None),
                **generate_kwargs,
            )
            return out[:, input_ids.shape[1] :]
        return self.language_model().generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            **self.extra_inputs(input_ids, attention_mask, None),
            **generate_kwargs,
        )

    def generate(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        *,
        processor_or_tokenizer: Any | None = None,
        stage: str | None = None,
        return_text: bool = False,
        **generate_kwargs: Any,
    ) -> torch.Tensor | list[str]:
        """Generate from the model with ``image_features`` ``(B, T, D)`` (at ``stage``,
        default this encoder's) in place of the image; returns the new token ids
        ``(B, L_new)`` or, with ``return_text``, their decoded strings."""
        tok = self._tok(processor_or_tokenizer)
        seqs = self._batch(tok, image_features, prompts, stage)
        ids, mask = _left_pad(seqs, _pad_id(tok))
        device = self.model.get_input_embeddings().weight.device
        ids, mask = ids.to(device), mask.to(device)
        generate_kwargs.setdefault("pad_token_id", _pad_id(tok))
        with torch.no_grad():
            new_ids = self.generate_ids(ids, mask, image_features, stage, **generate_kwargs)
        if return_text:
            return tok.batch_decode(new_ids, skip_special_tokens=True)
        return new_ids

    def loglikelihood(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        targets: str | Sequence[str],
        *,
        processor_or_tokenizer: Any | None = None,
        stage: str | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> torch.Tensor:
        """Log-likelihood ``(B,)`` of ``targets`` after ``prompts`` given ``image_features``;
        differentiable in the features (and through them in the images)."""
        if reduction not in ("sum", "mean"):
            raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        tok = self._tok(processor_or_tokenizer)
        batch = image_features.shape[0]
        prompt_seqs = self._batch(tok, image_features, prompts, stage)
        goals = _broadcast_texts(targets, batch, "targets")
        target_seqs = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in goals]
        if any(len(t) == 0 for t in target_seqs):
            raise InputError("every target text must have at least one token")
        ids, mask = _left_pad([p + t for p, t in zip(prompt_seqs, target_seqs)], _pad_id(tok))
        lengths = [len(t) for t in target_seqs]
        logits = self.logits(ids, image_features, mask, stage=stage, target_lengths=lengths)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
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


def load_image_token_model(
    name_or_path: str,
    *,
    model_types: dict[str, str],
    encoder_cls: type[ImageTokenEncoder],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    stage: str | None = None,
    **encoder_kwargs: Any,
) -> Any:
    """Load a whole multimodal checkpoint (hub id or local folder) as ``encoder_cls``.

    ``model_types`` maps the accepted ``config.json`` ``model_type`` values to transformers
    class names; normalisation comes from ``preprocessor_config.json`` (``mean``/``std``
    when it has none); the tokenizer is loaded beside the model.
    """
    import transformers as tf

    kind = read_model_config(name_or_path).get("model_type")
    if kind not in model_types:
        raise ModelUnavailableError(
            f"'{name_or_path}' is a {kind!r} model; {encoder_cls.__name__} supports "
            f"{sorted(model_types)}"
        )
    cls = getattr(tf, model_types[kind])
    model = _load_weights(cls, name_or_path, dtype=_resolve_dtype(dtype))
    pre = _read_preprocessor_config(name_or_path)
    mean, std = _normalisation(pre, mean, std)
    encoder = encoder_cls(
        _finish(model, None),
        stage=stage,
        tokenizer=_load_tokenizer(name_or_path),
        mean=mean,
        std=std,
        name=str(name_or_path),
        **encoder_kwargs,
    )
    return _finish(encoder, device)
