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

from typing import Any, ClassVar

import torch

from featsmooth.encoders.hf import SIGLIP_MEAN, SIGLIP_STD
from featsmooth.encoders.image_tokens import TowerProjectorEncoder
from featsmooth.errors import InputError


class PaliGemmaEncoder(TowerProjectorEncoder):
    """A PaliGemma model (``PaliGemmaForConditionalGeneration``) as a pixel-unit encoder."""

    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD
    default_name = "paligemma"
    model_types: ClassVar[dict[str, str]] = {"paligemma": "PaliGemmaForConditionalGeneration"}
    position_offset = 1  # PaliGemma counts positions from 1
    generate_with_encoder_outputs = True  # its generate takes no inputs_embeds

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

    default_name = "gemma3"
    model_types: ClassVar[dict[str, str]] = {"gemma3": "Gemma3ForConditionalGeneration"}
    position_offset = 0

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
    return PaliGemmaEncoder.load(name_or_path, device, dtype, stage=stage)


def load_gemma3(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> Gemma3Encoder:
    """Load a Gemma 3 image-text checkpoint (e.g. ``google/gemma-3-4b-it``)."""
    return Gemma3Encoder.load(name_or_path, device, dtype, stage=stage)
