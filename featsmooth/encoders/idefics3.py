"""Idefics3 and SmolVLM in pixel units: the SigLIP-type vision model's tokens as the feature.

The image path is a SigLIP-type vision transformer, then the ``connector`` (pixel shuffle by
``scale_factor`` and a linear ``modality_projection``) whose tokens the language model reads
at the ``<image>`` positions. The encoders return one stage:

* ``"vision"`` (default, the feature smoothing certifies): the vision model's last hidden
  state ``(B, patches, D_vision)``;
* ``"projected"``: the connector output ``(B, patches / scale_factor**2, D_lm)``, i.e.
  ``get_image_features(...).pooler_output``.

One image, one view, fixed resolution: the image is resized to the vision model's square
input (``vision_config.image_size``, e.g. 384 or 512), the processor's
``do_image_splitting=False`` layout, with no tiles and no aspect-preserving padding; the
prompt's ``<image>`` becomes ``<fake_token_around_image><global-img>`` + the image tokens +
``<fake_token_around_image>`` as the processor writes it for an unsplit image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from featsmooth.encoders.hf import SIGLIP_MEAN, SIGLIP_STD, _as_size, _image_size_of
from featsmooth.encoders.image_tokens import ImageTokenEncoder, load_image_token_model
from featsmooth.errors import InputError

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"


class Idefics3Encoder(ImageTokenEncoder):
    """An Idefics3 / SmolVLM model (``...ForConditionalGeneration``) as a pixel-unit encoder."""

    stages = ("vision", "projected")
    default_stage = "vision"
    generate_with_encoder_outputs = True

    def __init__(
        self,
        model: nn.Module,
        *,
        stage: str | None = None,
        tokenizer: Any | None = None,
        mean: Sequence[float] = SIGLIP_MEAN,
        std: Sequence[float] = SIGLIP_STD,
        image_size: int | Sequence[int] | None = None,
        name: str = "idefics3",
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
        return holder.vision_model, holder.connector

    def vision_dtype(self) -> torch.dtype:
        return next(self._parts()[0].parameters()).dtype

    def encode_pixels(self, pixel_values: torch.Tensor, stage: str) -> torch.Tensor:
        vision, _ = self._parts()
        feats = vision(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return feats if stage == "vision" else self.advance(feats, "vision")

    def advance(self, features: torch.Tensor, stage: str) -> torch.Tensor:
        if stage == "projected":
            return features
        _, connector = self._parts()
        return connector(features.to(self.vision_dtype()))

    def _special(self, tok: Any, token: str) -> int:
        value = tok.convert_tokens_to_ids(token)
        if value is None or value == getattr(tok, "unk_token_id", None):
            raise InputError(f"the tokenizer has no {token} token")
        return int(value)

    def prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        """The prompt's ``<image>`` (or, with none, the start of the prompt after BOS) becomes
        ``<fake_token_around_image><global-img><image>*T<fake_token_around_image>``."""
        image_id = self.image_token_id
        ids = list(tok(prompt)["input_ids"])
        count = ids.count(image_id)
        if count == num_tokens:
            return ids
        if count > 1:
            raise InputError(
                f"the prompt has {count} image tokens; use one (or exactly {num_tokens})"
            )
        if count == 0:
            bos = getattr(tok, "bos_token_id", None)
            at = 1 if ids and bos is not None and ids[0] == bos else 0
            ids = [*ids[:at], image_id, *ids[at:]]
        fake, glob = self._special(tok, FAKE_TOKEN), self._special(tok, GLOBAL_TOKEN)
        at = ids.index(image_id)
        return [*ids[:at], fake, glob, *([image_id] * num_tokens), fake, *ids[at + 1 :]]


def load_idefics3(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> Idefics3Encoder:
    """Load an Idefics3 or SmolVLM checkpoint (e.g. ``HuggingFaceTB/SmolVLM-256M-Instruct``)."""
    return load_image_token_model(
        name_or_path,
        model_types={
            "idefics3": "Idefics3ForConditionalGeneration",
            "smolvlm": "SmolVLMForConditionalGeneration",
        },
        encoder_cls=Idefics3Encoder,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        device=device,
        dtype=dtype,
        stage=stage,
    )
