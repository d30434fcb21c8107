"""PaliGemma and Gemma 3 in pixel units: the SigLIP tower's tokens as the certified feature.

Both models encode an image with a SigLIP vision tower and a ``multi_modal_projector``
(PaliGemma: one linear layer; Gemma 3: average pooling to ``mm_tokens_per_image`` tokens, an
RMS norm and a linear map) and write the result at the image-token positions of a Gemma
language model. The encoders return one stage:

* ``"vision"`` (default, the feature smoothing certifies): the SigLIP tower's last hidden
  state ``(B, patches, D_vision)``, before the projector;
* ``"projected"``: the language-model embeddings, i.e. ``get_image_features(...).pooler_output``
  (PaliGemma ``(B, patches, D_lm)``, Gemma 3 ``(B, mm_tokens_per_image, D_lm)``).

The image is resized to the tower's square input (PaliGemma 224/448/896, Gemma 3 896): no
pan-and-scan crops. Prompts are laid out as the processors do: PaliGemma puts the image
tokens first, then BOS, the prompt and a newline, with the whole prefix attending
bidirectionally (``token_type_ids`` 0) and the answer causally (1); Gemma 3 expands each
``<start_of_image>`` in the prompt to ``"\\n\\n" <start_of_image> image tokens <end_of_image>
"\\n\\n"`` with bidirectional attention inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from featsmooth.encoders.hf import SIGLIP_MEAN, SIGLIP_STD, _as_size, _image_size_of
from featsmooth.encoders.image_tokens import ImageTokenEncoder, load_image_token_model
from featsmooth.errors import InputError


class PaliGemmaEncoder(ImageTokenEncoder):
    """A PaliGemma model (``PaliGemmaForConditionalGeneration``) as a pixel-unit encoder."""

    stages = ("vision", "projected")
    default_stage = "vision"
    position_offset = 1  # PaliGemma counts positions from 1
    generate_with_encoder_outputs = True  # its generate takes no inputs_embeds

    def __init__(
        self,
        model: nn.Module,
        *,
        stage: str | None = None,
        tokenizer: Any | None = None,
        mean: Sequence[float] = SIGLIP_MEAN,
        std: Sequence[float] = SIGLIP_STD,
        image_size: int | Sequence[int] | None = None,
        name: str = "paligemma",
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

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        holder = getattr(self.model, "model", self.model)
        return holder.vision_tower, holder.multi_modal_projector

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

    def prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        """``<image> * T + <bos> + prompt + "\\n"``, as PaliGemmaProcessor builds it; a prompt
        holding the image token has it expanded there (BOS and newline are then its own)."""
        image_id = self.image_token_id
        text_ids = list(tok(prompt + "\n", add_special_tokens=False)["input_ids"])
        bos = getattr(tok, "bos_token_id", None)
        bos_ids = [int(bos)] if bos is not None else []
        if image_id not in text_ids:
            return [image_id] * num_tokens + bos_ids + text_ids
        ids = self.expand_image_tokens(text_ids, num_tokens)
        end = len(ids) - ids[::-1].index(image_id)  # BOS after the image, as the processor
        return ids[:end] + bos_ids + ids[end:]

    def extra_inputs(
        self, input_ids: torch.Tensor, mask: torch.Tensor, target_lengths: list[int] | None
    ) -> dict[str, torch.Tensor]:
        """``token_type_ids``: 0 on the prefix (image + prompt, bidirectional), 1 on the
        answer being scored (causal), as the processor marks a ``suffix``."""
        types = torch.zeros_like(input_ids)
        for i, n in enumerate(target_lengths or []):
            types[i, input_ids.shape[1] - n :] = 1
        return {"token_type_ids": types}


class Gemma3Encoder(PaliGemmaEncoder):
    """A Gemma 3 model (``Gemma3ForConditionalGeneration``) as a pixel-unit encoder."""

    position_offset = 0

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        kwargs.setdefault("name", "gemma3")
        super().__init__(model, **kwargs)

    def _marker(self, key: str) -> int:
        value = getattr(self.model.config, key, None)
        if value is None:
            raise InputError(f"the Gemma 3 config has no {key}")
        return int(value)

    def prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        """Each ``<start_of_image>`` becomes ``"\\n\\n" <start_of_image> <image>*T
        <end_of_image> "\\n\\n"`` (Gemma3Processor's layout); a prompt holding none gets the
        image first, after BOS."""
        boi, eoi = self._marker("boi_token_index"), self._marker("eoi_token_index")
        ids = list(tok(prompt)["input_ids"])
        if self.image_token_id in ids:
            return self.expand_image_tokens(ids, num_tokens)
        if ids.count(boi) > 1:
            raise InputError("the prompt has several <start_of_image>; use one image per prompt")
        if boi not in ids:
            bos = getattr(tok, "bos_token_id", None)
            at = 1 if ids and bos is not None and ids[0] == bos else 0
            ids = [*ids[:at], boi, *ids[at:]]
        gap = list(tok("\n\n", add_special_tokens=False)["input_ids"])
        at = ids.index(boi)
        block = gap + [boi] + [self.image_token_id] * num_tokens + [eoi] + gap
        return ids[:at] + block + ids[at + 1 :]

    def extra_inputs(
        self, input_ids: torch.Tensor, mask: torch.Tensor, target_lengths: list[int] | None
    ) -> dict[str, torch.Tensor]:
        """``token_type_ids``: 1 on image tokens (attending bidirectionally within the image)."""
        return {"token_type_ids": (input_ids == self.image_token_id).long()}


def load_paligemma(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> PaliGemmaEncoder:
    """Load a PaliGemma / PaliGemma 2 checkpoint (e.g. ``google/paligemma2-3b-mix-224``)."""
    return load_image_token_model(
        name_or_path,
        model_types={"paligemma": "PaliGemmaForConditionalGeneration"},
        encoder_cls=PaliGemmaEncoder,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        device=device,
        dtype=dtype,
        stage=stage,
    )


def load_gemma3(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> Gemma3Encoder:
    """Load a Gemma 3 image-text checkpoint (e.g. ``google/gemma-3-4b-it``)."""
    return load_image_token_model(
        name_or_path,
        model_types={"gemma3": "Gemma3ForConditionalGeneration"},
        encoder_cls=Gemma3Encoder,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        device=device,
        dtype=dtype,
        stage=stage,
    )
