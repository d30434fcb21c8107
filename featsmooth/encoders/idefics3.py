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

from typing import Any, ClassVar

import torch

from featsmooth.encoders.hf import SIGLIP_MEAN, SIGLIP_STD
from featsmooth.encoders.image_tokens import TowerProjectorEncoder
from featsmooth.errors import InputError

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"


class Idefics3Encoder(TowerProjectorEncoder):
    """An Idefics3 / SmolVLM model (``...ForConditionalGeneration``) as a pixel-unit encoder."""

    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD
    default_name = "idefics3"
    model_types: ClassVar[dict[str, str]] = {
        "idefics3": "Idefics3ForConditionalGeneration",
        "smolvlm": "SmolVLMForConditionalGeneration",
    }
    tower_attr = "vision_model"
    projector_attr = "connector"
    generate_with_encoder_outputs = True

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
    return Idefics3Encoder.load(name_or_path, device, dtype, stage=stage)
