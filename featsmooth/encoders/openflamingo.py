"""OpenFlamingo in pixel units: Perceiver-resampled CLIP features as the certified feature.

OpenFlamingo encodes an image with CLIP ViT-L/14 (its patch tokens after the final layer
norm, no CLS), resamples them with a Perceiver into ``num_latents`` (64) latents, and lets the
language model attend to those latents through gated cross-attention blocks inserted before
every ``cross_attn_every_n_layers``-th decoder layer; the ``<image>`` token in the text only
marks where the image stands (each text token attends to the latest image before it).

:class:`OpenFlamingoEncoder` returns one stage:

* ``"perceiver"`` (default, the feature smoothing certifies): the Perceiver's latents
  ``(B, num_latents, D_vision)``, exactly what the cross-attention layers read;
* ``"vision"``: the CLIP patch tokens ``(B, patches, D_vision)`` that enter the Perceiver.

:meth:`~OpenFlamingoEncoder.generate` and :meth:`~OpenFlamingoEncoder.loglikelihood` hand
(smoothed) features back: the cross-attention layers read them in place of the image.

The ``open-flamingo`` package pins torch 2.0.1 and needs open_clip (and through it
torchvision), so it is not used: :class:`Flamingo` re-implements its model with the same
module and parameter names (``perceiver.*``, ``lang_encoder.<decoder layers>.<i>.
gated_cross_attn_layer.*``), so the released ``checkpoint.pt`` files load as they are. The
vision encoder of every released checkpoint is open_clip's ``ViT-L-14`` / ``openai``, i.e. the
weights of ``openai/clip-vit-large-patch14``, loaded here through transformers. The language
model is any transformers causal LM whose decoder layers are found by
``decoder_layers_attr_name`` (known: Llama, MPT, GPT-NeoX, OPT, GPT-J); checkpoints whose
language model exists only as remote code (MPT-1B RedPajama) need that code to load in the
installed transformers.

A model folder holds ``openflamingo.json`` (``vision_encoder`` and ``lang_encoder``: hub ids or
subfolders, ``cross_attn_every_n_layers``, optionally ``decoder_layers_attr_name``,
``perceiver`` and ``cross_attention`` sizes) and ``checkpoint.pt``; the released hub
checkpoints (``openflamingo/OpenFlamingo-*``) are known by name.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from featsmooth.encoders.hf import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    _finish,
    _normalisation,
    _pretrained,
    _read_preprocessor_config,
    _resolve_dtype,
    unavailable_error,
)
from featsmooth.encoders.image_tokens import ImageTokenEncoder, MaybeTensor
from featsmooth.encoders.prompts import _embedding_device
from featsmooth.errors import InputError, ModelUnavailableError

MEDIA_TOKEN = "<image>"
EOC_TOKEN = "<|endofchunk|>"
CONFIG_NAME = "openflamingo.json"
CHECKPOINT_NAME = "checkpoint.pt"

# decoder-layer list of each language-model family (as open_flamingo's factory knows them)
DECODER_LAYERS = {
    "opt": "model.decoder.layers",
    "gptj": "transformer.h",
    "gpt-j": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "llama": "model.layers",
    "mpt": "transformer.blocks",
    "mosaic_gpt": "transformer.blocks",
}

_CLIP_L14 = "openai/clip-vit-large-patch14"
# the released checkpoints: language model and cross-attention interval
KNOWN_CHECKPOINTS = {
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b": ("anas-awadalla/mpt-1b-redpajama-200b", 1),
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct": (
        "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        1,
    ),
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b": ("togethercomputer/RedPajama-INCITE-Base-3B-v1", 2),
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct": (
        "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
        2,
    ),
    "openflamingo/OpenFlamingo-9B-vitl-mpt7b": ("anas-awadalla/mpt-7b", 4),
}


# --------------------------------------------------------------------------- modules


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(..., n, h*d)`` -> ``(batch, h, ..., n, d)`` (head axis second)."""
    *lead, n, hd = x.shape
    x = x.reshape(*lead, n, heads, hd // heads)
    return x.movedim(-2, 1)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_heads`: ``(batch, h, ..., n, d)`` -> ``(batch, ..., n, h*d)``."""
    x = x.movedim(1, -2)
    return x.reshape(*x.shape[:-2], -1)


class PerceiverAttention(nn.Module):
    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``x`` ``(b, T, n1, D)`` media, ``latents`` ``(b, T, n2, D)``."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (_heads(t, self.heads) for t in (q, k, v))
        sim = (q * self.scale) @ k.transpose(-1, -2)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        return self.to_out(_merge(sim.softmax(dim=-1) @ v))


class PerceiverResampler(nn.Module):
    """OpenFlamingo's Perceiver: ``(b, T, F, v, D)`` media -> ``(b, T, num_latents, D)``."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 6,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 64,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads),
                    _feed_forward(dim, ff_mult),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f, v, d = x.shape
        x = x.reshape(b, t, f * v, d)
        latents = self.latents.to(x.dtype).expand(b, t, *self.latents.shape)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    def __init__(self, *, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        media: torch.Tensor,
        media_locations: torch.Tensor,
        use_cached_media: bool = False,
    ) -> torch.Tensor:
        """Text ``x`` ``(B, L, D)`` attends to the latest image before each token (media
        ``(B, T_img, n, D_vis)``; ``media_locations`` ``(B, L)`` marks the image tokens; with
        ``use_cached_media`` every token comes after all the images marked so far)."""
        length = x.shape[1]
        _, t_img, n = media.shape[:3]
        q = _heads(self.to_q(self.norm(x)), self.heads)
        k, v = self.to_kv(media.reshape(media.shape[0], t_img * n, -1)).chunk(2, dim=-1)
        k, v = _heads(k, self.heads), _heads(v, self.heads)
        sim = (q * self.scale) @ k.transpose(-1, -2)
        if use_cached_media:
            text_time = torch.count_nonzero(media_locations, dim=1)[:, None].expand(-1, length)
        else:
            text_time = media_locations.long().cumsum(dim=-1)
        media_time = torch.arange(t_img, device=x.device).repeat_interleave(n) + 1
        allowed = text_time[:, None, :, None] == media_time[None, None, None, :]
        sim = sim.masked_fill(~allowed, -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)
        return self.to_out(_merge(attn @ v))


class GatedCrossAttentionBlock(nn.Module):
    def __init__(
        self, *, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4
    ) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(
            dim=dim, dim_visual=dim_visual, dim_head=dim_head, heads=heads
        )
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = _feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x, media, media_locations, use_cached_media=False):
        x = self.attn(x, media, media_locations, use_cached_media) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x


class _Media:
    """What the cross-attention layers read during one forward or ``generate``."""

    def __init__(self) -> None:
        self.features: torch.Tensor | None = None  # (B, T_img, n, D_vis)
        self.locations: torch.Tensor | None = None  # (B, L) bool
        self.cached = False  # generating: tokens without <image> follow the cached images
        self.use_cached = False


class FlamingoLayer(nn.Module):
    """A decoder layer with OpenFlamingo's gated cross-attention block in front of it."""

    def __init__(
        self, gated_cross_attn_layer: nn.Module | None, decoder_layer: nn.Module, media: _Media
    ) -> None:
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self._media = media

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("decoder_layer", "gated_cross_attn_layer", "_media"):
                raise
            return getattr(self.decoder_layer, name)  # e.g. attention_type, read by the LM

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        media = self._media
        if self.gated_cross_attn_layer is not None:
            if media.features is None or media.locations is None:
                raise InputError("the Flamingo layers were run without an image")
            features = media.features
            if features.shape[0] != hidden_states.shape[0]:  # beams / returned sequences
                features = features.repeat_interleave(
                    hidden_states.shape[0] // features.shape[0], 0
                )
            hidden_states = self.gated_cross_attn_layer(
                hidden_states,
                features.to(hidden_states.dtype),
                media.locations.to(hidden_states.device),
                media.use_cached,
            )
        return self.decoder_layer(hidden_states, *args, **kwargs)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_path(obj: Any, path: str, value: Any) -> None:
    head, _, last = path.rpartition(".")
    setattr(_get_path(obj, head) if head else obj, last, value)


class Flamingo(nn.Module):
    """OpenFlamingo's model: CLIP vision encoder, Perceiver, gated cross-attention LM.

    Args:
        vision_encoder: a transformers ``CLIPVisionModel``; its patch tokens after
            ``post_layernorm`` (no CLS) are open_clip's ``output_tokens`` of the same weights.
        lang_encoder: a transformers causal LM (its decoder layers are wrapped in place).
        media_token_id, eoc_token_id: ids of ``<image>`` and ``<|endofchunk|>``.
        cross_attn_every_n_layers: a cross-attention block before every n-th decoder layer.
        decoder_layers_attr_name: where the decoder layers are (default: by model type).
        perceiver, cross_attention: keyword sizes (defaults: OpenFlamingo's).
    """

    def __init__(
        self,
        vision_encoder: nn.Module,
        lang_encoder: nn.Module,
        *,
        media_token_id: int,
        eoc_token_id: int,
        cross_attn_every_n_layers: int = 1,
        decoder_layers_attr_name: str | None = None,
        perceiver: dict[str, int] | None = None,
        cross_attention: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.lang_encoder = lang_encoder
        self.media_token_id = int(media_token_id)
        self.eoc_token_id = int(eoc_token_id)
        vis_dim = vision_encoder.config.hidden_size
        config = lang_encoder.config
        lang_dim = getattr(config, "d_model", None) or config.hidden_size
        self.perceiver = PerceiverResampler(dim=vis_dim, **(perceiver or {}))
        path = decoder_layers_attr_name or DECODER_LAYERS.get(config.model_type)
        if path is None:
            raise InputError(
                f"cannot tell where the decoder layers of a {config.model_type!r} model are; "
                "pass decoder_layers_attr_name"
            )
        self.decoder_layers_attr_name = path
        self._media = _Media()
        layers = _get_path(lang_encoder, path)
        wrapped = [
            FlamingoLayer(
                GatedCrossAttentionBlock(
                    dim=lang_dim, dim_visual=vis_dim, **(cross_attention or {})
                )
                if (i + 1) % cross_attn_every_n_layers == 0
                else None,
                layer,
                self._media,
            )
            for i, layer in enumerate(layers)
        ]
        _set_path(lang_encoder, path, nn.ModuleList(wrapped))
        lang_encoder.register_forward_pre_hook(self._locate_media, with_kwargs=True)

    def _locate_media(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before each LM forward: where the images are in its ``input_ids`` (or, while
        generating past the prompt, the images cached from it)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        media = self._media
        if ids is None:
            raise InputError("Flamingo's language model needs input_ids (not inputs_embeds)")
        locations = ids == self.media_token_id
        media.use_cached = media.cached and media.locations is not None and not locations.any()
        if not media.use_cached:
            media.locations = locations

    def get_input_embeddings(self) -> nn.Module:
        return self.lang_encoder.get_input_embeddings()

    def encode_vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``(B, 3, H, W)`` -> CLIP patch tokens ``(B, patches, D)``."""
        out = self.vision_encoder(pixel_values=pixel_values, return_dict=True)
        tower = getattr(self.vision_encoder, "vision_model", self.vision_encoder)  # 4.x / 5.x
        return tower.post_layernorm(out.last_hidden_state)[:, 1:]

    def resample(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, patches, D)`` -> Perceiver latents ``(B, num_latents, D)``."""
        dtype = self.perceiver.latents.dtype
        return self.perceiver(tokens.to(dtype)[:, None, None])[:, 0]

    @contextlib.contextmanager
    def conditioned(self, latents: torch.Tensor, cached: bool = False) -> Iterator[None]:
        """Run the language model with ``latents`` ``(B, num_latents, D)`` as the image."""
        media = self._media
        media.features, media.cached, media.locations = latents[:, None], cached, None
        try:
            yield
        finally:
            media.features, media.locations, media.cached, media.use_cached = (
                None,
                None,
                False,
                False,
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The model's own forward on one image per sequence (normalised pixels)."""
        with self.conditioned(self.resample(self.encode_vision(pixel_values))):
            return self.lang_encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The model's own ``generate`` (prompt + new ids, ``<|endofchunk|>`` ends)."""
        latents = self.resample(self.encode_vision(pixel_values))
        return self.generate_with_latents(latents, input_ids, attention_mask, **kwargs)

    def generate_with_latents(
        self,
        latents: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        kwargs.setdefault("eos_token_id", self.eoc_token_id)
        with torch.no_grad(), self.conditioned(latents, cached=True):
            return self.lang_encoder.generate(
                input_ids=input_ids, attention_mask=attention_mask, **kwargs
            )


# --------------------------------------------------------------------------- encoder


class OpenFlamingoEncoder(ImageTokenEncoder):
    """An OpenFlamingo :class:`Flamingo` model as a pixel-unit encoder (see the module doc).

    Prompts hold one ``<image>`` where the image stands (``"<image>An image of"``); a prompt
    without one gets it first. Generation stops at ``<|endofchunk|>`` unless told otherwise.
    """

    stages = ("vision", "perceiver")
    default_stage = "perceiver"
    default_name = "openflamingo"

    @staticmethod
    def vision_config(model: nn.Module) -> Any:
        return model.vision_encoder.config

    def vision_dtype(self) -> torch.dtype:
        return next(self.model.vision_encoder.parameters()).dtype

    @property
    def image_token_id(self) -> int:
        return self.model.media_token_id

    def encode_pixels(self, pixel_values: torch.Tensor, stage: str) -> torch.Tensor:
        tokens = self.model.encode_vision(pixel_values)
        return tokens if stage == "vision" else self.model.resample(tokens)

    def advance(self, features: torch.Tensor, stage: str) -> torch.Tensor:
        return self.model.resample(features) if stage == "vision" else features

    def prompt_ids(self, tok: Any, prompt: str, num_tokens: int) -> list[int]:
        ids = list(tok(prompt)["input_ids"])
        count = ids.count(self.image_token_id)
        if count > 1:
            raise InputError(f"the prompt has {count} {MEDIA_TOKEN} tokens; use one")
        if count == 0:
            bos = getattr(tok, "bos_token_id", None)
            at = 1 if ids and bos is not None and ids[0] == bos else 0
            ids = [*ids[:at], self.image_token_id, *ids[at:]]
        return ids

    def language_model(self) -> nn.Module:
        return self.model.lang_encoder

    def _latents(self, feats: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Perceiver latents ``feats`` (one image per prompt of ``input_ids``) on the device
        of ``input_ids``."""
        if feats.shape[0] != input_ids.shape[0]:
            raise InputError(f"{feats.shape[0]} images for {input_ids.shape[0]} prompts")
        return feats.to(input_ids.device)

    def language_logits(
        self, ids: torch.Tensor, feats: torch.Tensor, mask: MaybeTensor, lengths: list[int] | None
    ) -> torch.Tensor:
        """Next-token logits with the perceiver latents ``feats`` read by the cross-attention
        layers."""
        lm = self.language_model()
        ids = ids.to(_embedding_device(lm))
        latents = self._latents(feats, ids)
        mask = (torch.ones_like(ids) if mask is None else mask).to(ids.device)
        kwargs: dict[str, Any] = {}
        if "position_ids" in inspect.signature(lm.forward).parameters:  # not MPT (ALiBi)
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        with self.model.conditioned(latents):
            out = lm(input_ids=ids, attention_mask=mask, **kwargs)
        return out.logits

    def language_generate(
        self, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        out = self.model.generate_with_latents(self._latents(feats, ids), ids, mask, **kwargs)
        return out[:, ids.shape[1] :]


# --------------------------------------------------------------------------- loading


def _read_settings(name_or_path: str) -> tuple[dict[str, Any], str | None]:
    """``(settings, folder)``: the folder's openflamingo.json, or a known hub checkpoint's."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ModelUnavailableError(f"'{name_or_path}' has no {CONFIG_NAME}")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), name_or_path
    if name_or_path not in KNOWN_CHECKPOINTS:
        known = ", ".join(sorted(KNOWN_CHECKPOINTS))
        raise ModelUnavailableError(
            f"unknown OpenFlamingo checkpoint '{name_or_path}'; known: {known}"
        )
    lang, every = KNOWN_CHECKPOINTS[name_or_path]
    settings = {
        "vision_encoder": _CLIP_L14,
        "lang_encoder": lang,
        "cross_attn_every_n_layers": every,
    }
    return settings, None


def _resolve(ref: str, folder: str | None) -> str:
    """A subfolder of the model folder when it exists there, else a hub id."""
    if folder is not None and os.path.isdir(os.path.join(folder, ref)):
        return os.path.join(folder, ref)
    return ref


def _checkpoint(name_or_path: str, folder: str | None) -> dict[str, torch.Tensor]:
    if folder is not None:
        path = os.path.join(folder, CHECKPOINT_NAME)
        if not os.path.isfile(path):
            raise ModelUnavailableError(f"'{folder}' has no {CHECKPOINT_NAME}")
    else:
        from transformers.utils import cached_file

        path = _pretrained(cached_file, name_or_path, filename=CHECKPOINT_NAME)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model_state_dict", state)


def load_openflamingo(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: str | None = None,
) -> OpenFlamingoEncoder:
    """Load an OpenFlamingo checkpoint: a released hub name
    (``openflamingo/OpenFlamingo-9B-vitl-mpt7b``, ...) or a folder (see the module doc)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

    name = str(name_or_path)
    settings, folder = _read_settings(name)
    try:  # first: a folder without its checkpoint fails before any download
        state = _checkpoint(name, folder)
    except OSError as exc:
        raise unavailable_error(name, exc) from exc
    torch_dtype = _resolve_dtype(dtype)
    vision_ref = _resolve(settings.get("vision_encoder", _CLIP_L14), folder)
    lang_ref = _resolve(settings["lang_encoder"], folder)
    vision = _pretrained(CLIPVisionModel.from_pretrained, vision_ref, dtype=torch_dtype)
    tokenizer = _pretrained(AutoTokenizer.from_pretrained, lang_ref)
    tokenizer.add_special_tokens({"additional_special_tokens": [EOC_TOKEN, MEDIA_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    try:
        lang = _pretrained(AutoModelForCausalLM.from_pretrained, lang_ref, dtype=torch_dtype)
    except (ValueError, KeyError, ImportError) as exc:  # e.g. a remote-code-only model
        raise ModelUnavailableError(
            f"cannot load the language model '{lang_ref}' of '{name}' with the installed "
            f"transformers: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    lang.resize_token_embeddings(len(tokenizer))
    model = Flamingo(
        vision,
        lang,
        media_token_id=tokenizer.convert_tokens_to_ids(MEDIA_TOKEN),
        eoc_token_id=tokenizer.convert_tokens_to_ids(EOC_TOKEN),
        cross_attn_every_n_layers=int(settings.get("cross_attn_every_n_layers", 1)),
        decoder_layers_attr_name=settings.get("decoder_layers_attr_name"),
        perceiver=settings.get("perceiver"),
        cross_attention=settings.get("cross_attention"),
    )
    result = model.load_state_dict(state, strict=False)
    trained = [k for k in model.state_dict() if "perceiver." in k or "gated_cross_attn" in k]
    missing = [k for k in result.missing_keys if k in trained]
    if missing or result.unexpected_keys:
        raise ModelUnavailableError(
            f"'{name}': {CHECKPOINT_NAME} does not fit the model "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model = model.to(torch_dtype)
    mean, std = _normalisation(
        _read_preprocessor_config(vision_ref), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    )
    encoder = OpenFlamingoEncoder(
        _finish(model, None), stage=stage, tokenizer=tokenizer, mean=mean, std=std, name=name
    )
    return _finish(encoder, device)


def save_openflamingo(model: Flamingo, folder: str | os.PathLike, tokenizer: Any) -> str:
    """Save ``model`` as a folder :func:`load_openflamingo` reads: the vision encoder and the
    language model (without the cross-attention blocks) in subfolders ``vision`` and
    ``lang``, the tokenizer with the language model, and the trained parts (Perceiver,
    cross-attention blocks, embeddings) in ``checkpoint.pt``, as OpenFlamingo saves them."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    model.vision_encoder.save_pretrained(os.path.join(folder, "vision"))
    path = model.decoder_layers_attr_name
    lang = model.lang_encoder
    wrapped = _get_path(lang, path)
    _set_path(lang, path, nn.ModuleList(layer.decoder_layer for layer in wrapped))
    try:
        lang.save_pretrained(os.path.join(folder, "lang"))
    finally:
        _set_path(lang, path, wrapped)
    tokenizer.save_pretrained(os.path.join(folder, "lang"))
    state = {
        k: v
        for k, v in model.state_dict().items()
        if "perceiver." in k or "gated_cross_attn_layer." in k or "embed" in k or "wte" in k
    }
    torch.save(state, os.path.join(folder, CHECKPOINT_NAME))
    settings = {
        "vision_encoder": "vision",
        "lang_encoder": "lang",
        "cross_attn_every_n_layers": _every(model),
        "decoder_layers_attr_name": path,
        "perceiver": _perceiver_sizes(model.perceiver),
        "cross_attention": _cross_attention_sizes(model),
    }
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=2)
    return folder


def _every(model: Flamingo) -> int:
    layers = list(_get_path(model.lang_encoder, model.decoder_layers_attr_name))
    for i, layer in enumerate(layers):
        if layer.gated_cross_attn_layer is not None:
            return i + 1
    raise InputError("the model has no cross-attention block")


def _perceiver_sizes(perceiver: PerceiverResampler) -> dict[str, int]:
    attn, ff = perceiver.layers[0]
    return {
        "depth": len(perceiver.layers),
        "dim_head": attn.to_q.out_features // attn.heads,
        "heads": attn.heads,
        "num_latents": perceiver.latents.shape[0],
        "ff_mult": ff[1].out_features // ff[1].in_features,
    }


def _cross_attention_sizes(model: Flamingo) -> dict[str, int]:
    layers = _get_path(model.lang_encoder, model.decoder_layers_attr_name)
    block = next(lay.gated_cross_attn_layer for lay in layers if lay.gated_cross_attn_layer)
    return {
        "dim_head": block.attn.to_q.out_features // block.attn.heads,
        "heads": block.attn.heads,
        "ff_mult": block.ff[1].out_features // block.ff[1].in_features,
    }
