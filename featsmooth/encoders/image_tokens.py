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
:class:`TowerProjectorEncoder` is such a family whose image path is a vision tower and a
projector (PaliGemma, Gemma 3, Idefics3).

Models whose image features are one ``(T_i, D)`` tensor per image, of a length that depends on
the image (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT and LLaVA-OneVision of transformers 5.x), take them
through ``mm_encoder_outputs={"image": BaseModelOutputWithPooling(...)}`` in ``forward`` and
``generate``, in place of ``pixel_values``: the language model then runs exactly as in its own
forward (same placeholder scatter, same position ids, same cache).
:func:`generate_with_outputs` and :func:`loglikelihood_with_outputs` build the prompt ids (one
image token per prompt, expanded to the number of image features) and call the model that way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from featsmooth.encoders import prompts as prompting
from featsmooth.encoders.base import ImageEncoder
from featsmooth.encoders.hf import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    _as_size,
    _check_stage,
    _image_size_of,
    _set_input,
    load_pretrained_encoder,
)
from featsmooth.errors import InputError

ExtraInputs = Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]
#: one prompt (or target) for all images, or one per image
Texts = str | Sequence[str]
Reduction = Literal["sum", "mean"]
MaybeTensor = torch.Tensor | None

#: the former name of :func:`featsmooth.encoders.hf.load_pretrained_encoder`
load_image_token_model = load_pretrained_encoder


class ImageTokenEncoder(ImageEncoder):
    """Pixel-unit encoder of a multimodal LLM; ``forward`` returns ``(B, T, D)`` at ``stage``.

    Args:
        model: the transformers ``...ForConditionalGeneration`` model (frozen by the loaders).
        stage: which feature ``forward`` returns (and smoothing certifies); one of ``stages``
            (default ``default_stage``).
        tokenizer: the model's tokenizer or processor (for :meth:`generate` /
            :meth:`loglikelihood`).
        mean, std: the model's normalisation (default: the family's ``default_mean`` /
            ``default_std``).
        image_size: its square input ``(H, W)`` (default: the vision config's image size).
        name: default the family's ``default_name``.
    """

    #: :func:`featsmooth.encoders.hf.generate_with_image_features` calls our own methods
    hands_back_features = True

    stages: tuple[str, ...] = ("vision", "projected")
    default_stage: str = "vision"
    default_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    default_std: tuple[float, ...] = OPENAI_CLIP_STD
    default_name: str = "image_tokens"
    #: ``config.json`` ``model_type`` -> transformers class name, for :meth:`load`
    model_types: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        model: nn.Module,
        *,
        stage: str | None = None,
        tokenizer: Any | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_size: int | Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        size = _as_size(image_size) or _image_size_of(self.vision_config(model))
        super().__init__()
        stage = stage or self.default_stage
        self._check_stage(stage)
        self.model = model
        self.tokenizer = tokenizer
        self.stage = stage
        _set_input(self, size, mean, std, name)

    @classmethod
    def load(
        cls,
        name_or_path: str,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        **encoder_kwargs: Any,
    ) -> Any:
        """Load a checkpoint of one of :attr:`model_types` (hub id or folder) as this class,
        with the family's normalisation as the fallback (see
        :func:`~featsmooth.encoders.hf.load_pretrained_encoder`)."""
        return load_pretrained_encoder(
            name_or_path,
            model_types=cls.model_types,
            encoder_cls=cls,
            mean=cls.default_mean,
            std=cls.default_std,
            device=device,
            dtype=dtype,
            **encoder_kwargs,
        )

    @staticmethod
    def vision_config(model: nn.Module) -> Any:
        """The config whose ``image_size`` is the model's input size."""
        return model.config.vision_config

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
    #: leading tokens of the language model's ``generate`` output that are not new (an
    #: encoder-decoder's decoder start token)
    generated_offset: int = 0

    def handing_back(
        self, prompts: str | Sequence[str], batch: int
    ) -> contextlib.AbstractContextManager[None]:
        """The context in which features of ``batch`` images are handed back with ``prompts``
        (InstructBLIP's Q-Former reads them); by default none."""
        return contextlib.nullcontext()

    def language_model(self) -> nn.Module:
        """The module that runs on ``inputs_embeds`` (forward and ``generate``)."""
        return self.model

    # ------------------------------------------------------------------ encoder

    def _check_stage(self, stage: str) -> None:
        _check_stage(stage, self.stages)

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
        return prompting._image_token_id(self.model.config)

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
        return prompting._expand_image_tokens(ids, self.image_token_id, num_tokens)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor, stage: str | None):
        """Token embeddings of ``input_ids`` with the image positions replaced, in order, by
        ``image_features`` at ``stage``, as the model's own forward does with pixels."""
        return self.scatter(input_ids, self.to_language(image_features, stage))

    def scatter(self, input_ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``input_ids`` with the image positions replaced, in order, by
        the language-model embeddings ``feats`` ``(B, T, D)``; the token count is checked."""
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
        texts = prompting._broadcast_texts(prompts, features.shape[0], "prompts")
        return [self.prompt_ids(tok, p, num_tokens) for p in texts]

    def _tok(self, processor_or_tokenizer: Any) -> Any:
        given = processor_or_tokenizer if processor_or_tokenizer is not None else self.tokenizer
        return prompting._tokenizer_of(given)

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
        feats = self.to_language(image_features, stage)
        return self.language_logits(input_ids, feats, attention_mask, target_lengths)

    # The two hooks below take the language-model embeddings of the image (``to_language``
    # of the features): a family that feeds the language model differently (OpenFlamingo's
    # cross-attention) overrides them, and ``logits`` / ``generate_ids`` /
    # ``score_targets`` stay the base class's.

    def language_logits(
        self, ids: torch.Tensor, feats: torch.Tensor, mask: MaybeTensor, lengths: list[int] | None
    ) -> torch.Tensor:
        """:meth:`logits` given the language-model embeddings ``feats`` of the image;
        ``mask`` ``None`` attends to every token."""
        device = prompting._embedding_device(self.model)
        ids = ids.to(device)
        embeds = self.scatter(ids, feats)
        mask = (torch.ones_like(ids) if mask is None else mask).to(device)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0) + self.position_offset
        out = self.language_model()(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            **self.extra_inputs(ids, mask, lengths),
        )
        return out.logits

    def language_generate(
        self, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """:meth:`generate_ids` given the language-model embeddings ``feats`` of the image."""
        embeds = self.scatter(ids, feats)  # also checks the token count
        if self.generate_with_encoder_outputs:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=feats)},
                **self.extra_inputs(ids, mask, None),
                **kwargs,
            )
            return out[:, ids.shape[1] :]
        out = self.language_model().generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            **self.extra_inputs(ids, mask, None),
            **kwargs,
        )
        return out[:, self.generated_offset :]

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
        feats = self.to_language(image_features, stage)
        return self.language_generate(input_ids, attention_mask, feats, **generate_kwargs)

    def generate(
        self,
        image_features: torch.Tensor,
        prompts: Texts,
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

        def generate(ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return self.generate_ids(ids, mask, image_features, stage, **kwargs)

        with self.handing_back(prompts, image_features.shape[0]):
            seqs = self._batch(tok, image_features, prompts, stage)
            device = prompting._embedding_device(self.model)
            return prompting._generate_batch(
                tok, seqs, device, generate, return_text, **generate_kwargs
            )

    def loglikelihood(
        self,
        image_features: torch.Tensor,
        prompts: Texts,
        targets: Texts,
        *,
        processor_or_tokenizer: Any | None = None,
        stage: str | None = None,
        reduction: Reduction = "sum",
    ) -> torch.Tensor:
        """Log-likelihood ``(B,)`` of ``targets`` after ``prompts`` given ``image_features``;
        differentiable in the features (and through them in the images)."""
        prompting._check_reduction(reduction)
        tok = self._tok(processor_or_tokenizer)
        with self.handing_back(prompts, image_features.shape[0]):
            prompt_seqs = self._batch(tok, image_features, prompts, stage)
            feats = self.to_language(image_features, stage)
            return self.score_targets(tok, prompt_seqs, targets, feats, reduction)

    def score_targets(
        self, tok: Any, seqs: list[list[int]], targets: Texts, feats: torch.Tensor, reduction: str
    ) -> torch.Tensor:
        """Log-likelihood ``(B,)`` of ``targets`` after the prompt ids ``seqs`` (image
        tokens expanded) given the language-model embeddings ``feats`` of the images;
        differentiable in them."""

        def logits(ids: torch.Tensor, mask: torch.Tensor, lengths: list[int]) -> torch.Tensor:
            return self.language_logits(ids, feats, mask, lengths)

        return prompting._loglikelihood_batch(tok, seqs, targets, logits, reduction)


class TowerProjectorEncoder(ImageTokenEncoder):
    """An image-token model whose image path is a vision tower, then a projector, both held
    by the model (or its inner ``model``) as :attr:`tower_attr` and :attr:`projector_attr`.

    Stages: ``"vision"`` (default), the tower's last hidden state; ``"projected"``, the
    projector's output, which the language model reads.
    """

    stages = ("vision", "projected")
    default_stage = "vision"
    tower_attr: str = "vision_tower"
    projector_attr: str = "multi_modal_projector"

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        holder = getattr(self.model, "model", self.model)
        return getattr(holder, self.tower_attr), getattr(holder, self.projector_attr)

    def vision_dtype(self) -> torch.dtype:
        return next(self._parts()[0].parameters()).dtype

    def encode_pixels(self, pixel_values: torch.Tensor, stage: str) -> torch.Tensor:
        tower, _ = self._parts()
        feats = tower(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return feats if stage == "vision" else self.advance(feats, "vision")

    def advance(self, features: torch.Tensor, stage: str) -> torch.Tensor:
        if stage == "projected":
            return features
        _, projector = self._parts()
        return projector(features.to(self.vision_dtype()))


# --------------------------------------------------------------------------- mm_encoder_outputs


def encoder_outputs(features: Sequence[torch.Tensor]) -> dict[str, Any]:
    """``{"image": BaseModelOutputWithPooling(pooler_output=(f_1, ..., f_B))}``, one ``(T_i, D)``
    tensor per image, as the models' ``mm_encoder_outputs`` argument expects."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    feats = tuple(features)
    if any(f.ndim != 2 for f in feats):
        raise InputError("image features must be one (T, D) tensor per image")
    return {"image": BaseModelOutputWithPooling(pooler_output=feats)}


def _expanded_prompts(
    tok: Any, prompts: str | Sequence[str], features: list[torch.Tensor], image_id: int
) -> list[list[int]]:
    """Token ids of ``prompts`` (one or one per image), each with its one image token
    expanded to the ``T_i`` features of its image."""
    texts = prompting._broadcast_texts(prompts, len(features), "prompts")
    return [
        prompting._expand_image_tokens(list(tok(p)["input_ids"]), image_id, f.shape[0])
        for p, f in zip(texts, features)
    ]


def generate_with_outputs(
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
    ``image_sizes``, ``mm_token_type_ids``...). Returns the new token ids ``(B, L_new)`` or,
    with ``return_text``, their decoded text.
    """
    tok = prompting._tokenizer_of(tokenizer)
    feats = list(features)
    seqs = _expanded_prompts(tok, prompts, feats, prompting._image_token_id(model.config))

    def generate(ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            mm_encoder_outputs=encoder_outputs(f.to(ids.device) for f in feats),
            **(dict(extra(ids, mask)) if extra is not None else {}),
            **kwargs,
        )
        return out[:, ids.shape[1] :]

    device = prompting._embedding_device(model)
    return prompting._generate_batch(tok, seqs, device, generate, return_text, **generate_kwargs)


def loglikelihood_with_outputs(
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
    prompting._check_reduction(reduction)
    tok = prompting._tokenizer_of(tokenizer)
    feats = list(features)
    seqs = _expanded_prompts(tok, prompts, feats, prompting._image_token_id(model.config))
    device = prompting._embedding_device(model)

    def logits(ids: torch.Tensor, mask: torch.Tensor, lengths: list[int]) -> torch.Tensor:
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
        return out.logits

    return prompting._loglikelihood_batch(tok, seqs, targets, logits, reduction)
