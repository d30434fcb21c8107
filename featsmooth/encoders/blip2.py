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
from typing import Any, ClassVar

import torch
from torch import nn

from featsmooth.encoders.hf import _load_tokenizer
from featsmooth.encoders.image_tokens import ImageTokenEncoder, Texts
from featsmooth.encoders.prompts import (
    _broadcast_texts,
    _embedding_device,
    _left_pad,
    _pad_id,
    _target_ids,
)
from featsmooth.errors import InputError


class Blip2Encoder(ImageTokenEncoder):
    """A BLIP-2 model (``Blip2ForConditionalGeneration``) as a pixel-unit encoder."""

    stages = ("vision", "qformer", "projected")
    default_stage = "qformer"
    default_name = "blip2"
    model_types: ClassVar[dict[str, str]] = {"blip-2": "Blip2ForConditionalGeneration"}

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

    @property
    def generated_offset(self) -> int:  # type: ignore[override]
        """An encoder-decoder's ``generate`` output starts with the decoder start token."""
        return 1 if self.seq2seq else 0

    def score_targets(
        self, tok: Any, seqs: list[list[int]], targets: Texts, feats: torch.Tensor, reduction: str
    ) -> torch.Tensor:
        """As :meth:`ImageTokenEncoder.score_targets`; with an encoder-decoder language
        model the image and prompt are the encoder's input and the target the decoder's."""
        if not self.seq2seq:
            return super().score_targets(tok, seqs, targets, feats, reduction)
        batch = feats.shape[0]
        target_seqs = _target_ids(tok, targets, batch)
        ids, mask = _left_pad(seqs, _pad_id(tok))
        width = max(len(t) for t in target_seqs)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for i, t in enumerate(target_seqs):
            labels[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        device = _embedding_device(self.model)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        embeds = self.scatter(ids, feats)
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
    default_name = "instructblip"
    model_types: ClassVar[dict[str, str]] = {"instructblip": "InstructBlipForConditionalGeneration"}

    def __init__(
        self,
        model: nn.Module,
        *,
        instruction: str = "",
        qformer_tokenizer: Any | None = None,
        **kwargs: Any,
    ) -> None:
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
    def handing_back(self, prompts: str | Sequence[str], batch: int) -> Iterator[None]:
        """The Q-Former reads each prompt as its instruction while features are handed back."""
        self._prompts = _broadcast_texts(prompts, batch, "prompts")
        try:
            yield
        finally:
            self._prompts = None


def load_blip2(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> Blip2Encoder:
    """Load a BLIP-2 checkpoint (hub id, e.g. ``Salesforce/blip2-opt-2.7b``, or a folder)."""
    return Blip2Encoder.load(name_or_path, device, dtype, stage=stage)


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
    qformer_tokenizer = _load_tokenizer(name_or_path, subfolder="qformer_tokenizer")
    return InstructBlipEncoder.load(
        name_or_path,
        device,
        dtype,
        stage=stage,
        instruction=instruction,
        qformer_tokenizer=qformer_tokenizer,
    )
