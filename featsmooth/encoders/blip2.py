"""BLIP-2 and InstructBLIP in pixel units: the Q-Former output as the certified feature.

The image path of BLIP-2 is ViT -> Q-Former (``num_query_tokens`` learned queries
cross-attending to the ViT tokens) -> ``language_projection`` -> the language model, which
reads the projected queries at the positions of the image token. :class:`Blip2Encoder`
returns the features of one stage:

* ``"qformer"`` (default, the feature smoothing certifies): the Q-Former's last hidden state
  ``(B, num_query_tokens, D_qformer)``, i.e. ``get_image_features(...).qformer_outputs``;
* ``"vision"``: the ViT's last hidden state ``(B, 1 + patches, D_vision)`` (what enters the
  Q-Former);
* ``"projected"``: the language-model embeddings ``(B, num_query_tokens, D_lm)``, i.e.
  ``get_image_features(...).pooler_output``.

InstructBLIP (:class:`InstructBlipEncoder`) conditions the Q-Former on the instruction as
well, so its Q-Former output depends on the text: the default stage is ``"vision"`` (the ViT
tokens, text-independent) and handing them back runs the Q-Former with each prompt as the
instruction, as the model does; ``stage="qformer"`` certifies the Q-Former output for one
fixed ``instruction`` given when the encoder is made.

Prompts are plain text (``"Question: what is shown? Answer:"``): the image tokens go first,
before the tokenizer's own BOS, as the BLIP-2 processor puts them. Decoder-only language
models (OPT, Vicuna, ...) read the image and the prompt as one sequence; encoder-decoder ones
(Flan-T5) read them in the encoder and the answer in the decoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from featsmooth.encoders.hf import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    _as_size,
    _broadcast_texts,
    _image_size_of,
    _left_pad,
    _load_tokenizer,
    _pad_id,
)
from featsmooth.encoders.image_tokens import ImageTokenEncoder, load_image_token_model
from featsmooth.errors import InputError


class Blip2Encoder(ImageTokenEncoder):
    """A BLIP-2 model (``Blip2ForConditionalGeneration``) as a pixel-unit encoder."""

    stages = ("vision", "qformer", "projected")
    default_stage = "qformer"

    def __init__(
        self,
        model: nn.Module,
        *,
        stage: str | None = None,
        tokenizer: Any | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        image_size: int | Sequence[int] | None = None,
        name: str = "blip2",
    ) -> None:
        size = _as_size(image_size) or _image_size_of(model.config.vision_config)
        super().__init__(
            model,
            stage=stage,
            tokenizer=tokenizer,
            mean=mean,
            std=std,
            image_size=size,
            name=name,
        )

    def vision_dtype(self) -> torch.dtype:
        return next(self.model.vision_model.parameters()).dtype

    def _qformer(self, vision: torch.Tensor, **text: Any) -> torch.Tensor:
        """ViT tokens -> Q-Former query outputs (what ``get_image_features`` computes)."""
        vision = vision.to(self.vision_dtype())
        mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device)
        queries = self.model.query_tokens.expand(vision.shape[0], -1, -1)
        out = self.model.qformer(
            query_embeds=queries,
            encoder_hidden_states=vision,
            encoder_attention_mask=mask,
            return_dict=True,
            **text,
        )
        return out.last_hidden_state[:, : queries.shape[1]].to(vision.dtype)

    def _project(self, queries: torch.Tensor) -> torch.Tensor:
        proj = self.model.language_projection
        return proj(queries.to(proj.weight.dtype))

    def encode_pixels(self, pixel_values: torch.Tensor, stage: str) -> torch.Tensor:
        vision = self.model.vision_model(pixel_values=pixel_values, return_dict=True)
        feats = vision.last_hidden_state
        if stage == "vision":
            return feats
        queries = self._qformer(feats)
        return queries if stage == "qformer" else self._project(queries)

    def advance(self, features: torch.Tensor, stage: str) -> torch.Tensor:
        if stage == "vision":
            features = self._qformer(features)
        return features if stage == "projected" else self._project(features)

    def default_prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        return [self.image_token_id] * num_tokens + list(tok(prompt)["input_ids"])

    @property
    def image_token_id(self) -> int:
        value = getattr(self.model.config, "image_token_id", None)
        if value is None:
            raise InputError(
                "this BLIP-2 checkpoint names no image token (config.image_token_index); "
                "use a checkpoint saved by transformers >= 4.47"
            )
        return int(value)

    @property
    def seq2seq(self) -> bool:
        """Whether the language model is encoder-decoder (Flan-T5 variants)."""
        return not getattr(self.model.config, "use_decoder_only_language_model", True)

    def language_model(self) -> nn.Module:
        return self.model.language_model

    def generate_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor,
        stage: str | None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        if not self.seq2seq:
            return super().generate_ids(
                input_ids, attention_mask, image_features, stage, **generate_kwargs
            )
        embeds = self.embed(input_ids, image_features, stage)  # the encoder's input
        out = self.language_model().generate(
            inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )
        return out[:, 1:]  # without the decoder start token

    def loglikelihood(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        targets: str | Sequence[str],
        **kwargs: Any,
    ) -> torch.Tensor:
        """As :meth:`ImageTokenEncoder.loglikelihood`; with an encoder-decoder language
        model the image and prompt are the encoder's input and the target the decoder's."""
        if not self.seq2seq:
            return super().loglikelihood(image_features, prompts, targets, **kwargs)
        reduction = kwargs.pop("reduction", "sum")
        if reduction not in ("sum", "mean"):
            raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        stage = kwargs.pop("stage", None)
        tok = self._tok(kwargs.pop("processor_or_tokenizer", None))
        if kwargs:
            raise InputError(f"unexpected arguments {sorted(kwargs)}")
        batch = image_features.shape[0]
        seqs = self._batch(tok, image_features, prompts, stage)
        goals = _broadcast_texts(targets, batch, "targets")
        target_seqs = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in goals]
        if any(len(t) == 0 for t in target_seqs):
            raise InputError("every target text must have at least one token")
        ids, mask = _left_pad(seqs, _pad_id(tok))
        width = max(len(t) for t in target_seqs)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for i, t in enumerate(target_seqs):
            labels[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        device = self.model.get_input_embeddings().weight.device
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        embeds = self.embed(ids, image_features, stage)
        out = self.language_model()(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        known = labels != -100
        token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total = (token_logp * known).sum(dim=1)
        return total / known.sum(dim=1) if reduction == "mean" else total


class InstructBlipEncoder(Blip2Encoder):
    """An InstructBLIP model (``InstructBlipForConditionalGeneration``) as an encoder.

    Its Q-Former reads the instruction as well as the image, so the ``"qformer"`` and
    ``"projected"`` stages depend on text: ``forward`` uses the fixed ``instruction``.
    Handing features back runs the rest of the image path with each prompt as the
    instruction, as the model does with its own prompt: exact for ``"vision"`` features (the
    default, text-independent, so the certified feature serves every prompt), and for
    ``"qformer"`` / ``"projected"`` features the prompt only reaches the language model.

    Args:
        instruction: the Q-Former's text for ``forward`` at the ``"qformer"`` and
            ``"projected"`` stages (default ``""``).
        qformer_tokenizer: the Q-Former's tokenizer (the processor's ``qformer_tokenizer``).
    """

    default_stage = "vision"

    def __init__(
        self,
        model: nn.Module,
        *,
        instruction: str = "",
        qformer_tokenizer: Any | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "instructblip")
        super().__init__(model, **kwargs)
        self.instruction = instruction
        self.qformer_tokenizer = qformer_tokenizer
        self._prompts: list[str] | None = None  # the prompts while handing back

    def _qformer(self, vision: torch.Tensor, **text: Any) -> torch.Tensor:
        batch = vision.shape[0]
        texts = self._prompts[:batch] if self._prompts is not None else [self.instruction] * batch
        if self.qformer_tokenizer is None:
            raise InputError(f"{self.name}: the Q-Former needs its tokenizer (qformer_tokenizer=)")
        enc = self.qformer_tokenizer(list(texts), return_tensors="pt", padding=True)
        queries = self.model.query_tokens
        query_mask = torch.ones(batch, queries.shape[1], dtype=torch.long)
        return super()._qformer(
            vision,
            input_ids=enc["input_ids"].to(vision.device),
            attention_mask=torch.cat([query_mask, enc["attention_mask"]], dim=1).to(vision.device),
        )

    @contextlib.contextmanager
    def _instructions(self, prompts: str | Sequence[str], batch: int) -> Iterator[None]:
        self._prompts = _broadcast_texts(prompts, batch, "prompts")
        try:
            yield
        finally:
            self._prompts = None

    def generate(
        self, image_features: torch.Tensor, prompts: str | Sequence[str], **kwargs: Any
    ) -> torch.Tensor | list[str]:
        with self._instructions(prompts, image_features.shape[0]):
            return super().generate(image_features, prompts, **kwargs)

    def loglikelihood(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        targets: str | Sequence[str],
        **kwargs: Any,
    ) -> torch.Tensor:
        with self._instructions(prompts, image_features.shape[0]):
            return super().loglikelihood(image_features, prompts, targets, **kwargs)


def load_blip2(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> Blip2Encoder:
    """Load a BLIP-2 checkpoint (hub id, e.g. ``Salesforce/blip2-opt-2.7b``, or a folder)."""
    return load_image_token_model(
        name_or_path,
        model_types={"blip-2": "Blip2ForConditionalGeneration"},
        encoder_cls=Blip2Encoder,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        device=device,
        dtype=dtype,
        stage=stage,
    )


def load_instructblip(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
    instruction: str = "",
) -> InstructBlipEncoder:
    """Load an InstructBLIP checkpoint (e.g. ``Salesforce/instructblip-vicuna-7b``), with the
    Q-Former tokenizer from its ``qformer_tokenizer`` subfolder."""
    return load_image_token_model(
        name_or_path,
        model_types={"instructblip": "InstructBlipForConditionalGeneration"},
        encoder_cls=InstructBlipEncoder,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        device=device,
        dtype=dtype,
        stage=stage,
        instruction=instruction,
        qformer_tokenizer=_load_tokenizer(name_or_path, subfolder="qformer_tokenizer"),
    )
