"""The LLaVA vision tower in pixel units and handing its features back to the model.

* :class:`LlavaVisionTower`: the image tokens ``(B, T, D)`` of a LLaVA-type model, selected
  exactly as the model does (``config.vision_feature_layer``, int or list, and
  ``config.vision_feature_select_strategy``: ``"default"`` drops CLS, ``"full"`` keeps it).
  ``stage="vision"`` (default: the paper smooths the vision encoder) returns vision-tower
  hidden states before the projector; ``stage="projected"`` returns what the language model
  consumes.
* :func:`generate_with_image_features` and :func:`loglikelihood_with_image_features` hand
  (smoothed) features back to the model (:func:`embed_with_image_features` and
  :func:`logits_with_image_features` are the steps they build on;
  :func:`restore_token_features` undoes smoothing's flatten + unit-normalise).

:func:`load_llava_vision_tower` loads the whole model through
:func:`featsmooth.encoders.hf.load_pretrained_encoder`. Every public name here is importable
from :mod:`featsmooth.encoders.hf` as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.encoders.base import ImageEncoder, Preprocess
from featsmooth.encoders.hf import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Stage,
    _as_size,
    _check_stage,
    _image_size_of,
    load_pretrained_encoder,
)
from featsmooth.encoders.prompts import (
    _broadcast_texts,
    _check_reduction,
    _embedding_device,
    _expand_image_tokens,
    _generate_batch,
    _image_token_id,
    _loglikelihood_batch,
    _tokenizer_of,
)
from featsmooth.errors import InputError

Floats = Sequence[float]


def _llava_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, Any]:
    """``(vision_tower, multi_modal_projector, config)`` of a LLaVA-type model (4.x and 5.x)."""
    for holder in (getattr(model, "model", None), model):
        if holder is not None and hasattr(holder, "vision_tower"):
            if hasattr(holder, "multi_modal_projector"):
                return holder.vision_tower, holder.multi_modal_projector, model.config
    raise InputError(
        f"{type(model).__name__} has no vision_tower + multi_modal_projector (LLaVA layout)"
    )


def _image_token_encoder(model: Any) -> bool:
    """Whether ``model`` hands features back to its language model by its own ``generate`` /
    ``loglikelihood`` methods (BLIP-2, PaliGemma, Idefics3, Qwen2-VL, LLaVA any-res, ...):
    encoders that set the class attribute ``hands_back_features = True``."""
    return bool(getattr(model, "hands_back_features", False))


def _feature_selection(
    config: Any, layer: int | Sequence[int] | None, strategy: str | None
) -> tuple[int | list[int], str]:
    """``(vision_feature_layer, vision_feature_select_strategy)`` of a LLaVA-type model: the
    given ones, or the model config's where ``None``; the strategy is checked."""
    layer = config.vision_feature_layer if layer is None else layer
    strategy = strategy or config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise InputError(f"vision_feature_select_strategy must be 'default' or 'full': {strategy}")
    return (layer if isinstance(layer, int) else [int(v) for v in layer]), strategy


def _select_hidden_states(
    tower: nn.Module, pixel_values: torch.Tensor, layers: int | list[int], strategy: str
) -> torch.Tensor:
    """The hidden state(s) ``layers`` of ``tower`` on ``pixel_values`` (a list concatenates
    them along D), without CLS when ``strategy`` is ``"default"``, as LLaVA selects them."""
    out = tower(pixel_values, output_hidden_states=True, return_dict=True)
    idx = [layers] if isinstance(layers, int) else layers
    chosen = [out.hidden_states[i] for i in idx]
    if strategy == "default":
        chosen = [h[:, 1:] for h in chosen]
    return chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)


def _unwrap_llava(model: Any, stage: Stage | None = None) -> tuple[nn.Module, Any, Stage | None]:
    """Accept a LlavaVisionTower or the transformers model: ``(model, tokenizer, stage)``;
    a tower supplies its own tokenizer and, when ``stage`` is None, its own stage."""
    if isinstance(model, LlavaVisionTower):
        return model.model, model.tokenizer, stage or model.stage
    return model, None, stage


class LlavaTowerBase(ImageEncoder):
    """What the LLaVA towers share: the model, its tokenizer, the stage and the selection of
    vision-tower hidden states (``vision_feature_layer`` / ``vision_feature_select_strategy``,
    by default the model config's, checked); a tower sets up its input in :meth:`_setup`.

    Args (keyword-only after ``model``): ``stage``, ``vision_feature_layer``,
    ``vision_feature_select_strategy``, ``tokenizer``, ``mean``, ``std`` (CLIP's by
    default), ``image_size`` (the tower's square input; default the vision config's) and
    ``name`` (default the class's ``default_name``).
    """

    default_name: str = "llava"

    def __init__(
        self,
        model: nn.Module,
        *,
        stage: Stage = "vision",
        vision_feature_layer: int | Sequence[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        tokenizer: Any | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        image_size: int | Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        _check_stage(stage)
        self._setup(model, _as_size(image_size), mean, std)  # checks the model's layout
        self.model = model
        self.tokenizer = tokenizer
        self.stage = stage
        self.vision_feature_layer, self.vision_feature_select_strategy = _feature_selection(
            model.config, vision_feature_layer, vision_feature_select_strategy
        )
        self.name = self.default_name if name is None else name

    def _setup(
        self, model: nn.Module, size: tuple[int, int] | None, mean: Floats, std: Floats
    ) -> None:
        """Check ``model``'s layout; set ``image_size`` (``size`` given or ``None``) and the
        normalisation."""
        raise NotImplementedError


class LlavaVisionTower(LlavaTowerBase):
    """The image tokens of a LLaVA-type model, in pixel units; output ``(B, T, D)``.

    Features are selected exactly as the model selects them: hidden state(s)
    ``vision_feature_layer`` of the vision tower (a list concatenates layers along D) and
    ``vision_feature_select_strategy`` (``"default"`` drops the CLS token, ``"full"`` keeps it);
    both default to the model config and may be overridden.

    Args:
        model: ``LlavaForConditionalGeneration`` (or a model with the same
            ``vision_tower`` + ``multi_modal_projector`` layout). For LLaVA-NeXT only the
            base-resolution view is encoded (no any-res tiles); ``load_encoder`` loads
            LLaVA-NeXT / OneVision checkpoints with their tiles as
            :class:`featsmooth.encoders.llava_next.LlavaAnyResTower`.
        stage: ``"vision"`` (default) returns vision-tower hidden states before the projector
            (what the paper smooths; hand them back with :meth:`project` or the
            ``*_with_image_features`` functions); ``"projected"`` returns the output of
            ``multi_modal_projector``, the embeddings the language model consumes.
        tokenizer: the model's tokenizer or processor (for :meth:`generate`/:meth:`loglikelihood`).
    """

    default_name = "llava"

    def _setup(
        self, model: nn.Module, size: tuple[int, int] | None, mean: Floats, std: Floats
    ) -> None:
        tower, projector, config = _llava_parts(model)
        self.image_size = size or _image_size_of(config.vision_config)
        self.preprocess = Preprocess(self.image_size, mean=mean, std=std)
        self._tower = [tower]  # plain lists: already registered through self.model
        self._projector = [projector]

    @property
    def vision_tower(self) -> nn.Module:
        return self._tower[0]

    @property
    def projector(self) -> nn.Module:
        return self._projector[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel-unit images ``(B, 3, H, W)`` -> normalised model input, vision-tower dtype."""
        if not torch.is_floating_point(images) or images.ndim != 4:
            raise InputError(f"expected float images (B, C, H, W), got {tuple(images.shape)}")
        x = self.preprocess(images.to(device=self.device, dtype=torch.float32))
        return x.to(self.dtype)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Selected vision-tower hidden states ``(B, T, D_vision * n_layers)`` (no projector)."""
        return _select_hidden_states(
            self.vision_tower,
            pixel_values,
            self.vision_feature_layer,
            self.vision_feature_select_strategy,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.vision_features(self.pixel_values(images))
        return self.projector(feats) if self.stage == "projected" else feats

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Vision-stage features ``(B, T, D_vis)`` -> language-model embeddings ``(B, T, D_lm)``."""
        return self.projector(features.to(self.dtype))

    def generate(
        self, image_features: torch.Tensor, prompts: str | Sequence[str], **kwargs: Any
    ) -> Any:
        """:func:`generate_with_image_features` with this tower's model, tokenizer and stage."""
        kwargs.setdefault("stage", self.stage)
        return generate_with_image_features(self, self.tokenizer, image_features, prompts, **kwargs)

    def loglikelihood(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        targets: str | Sequence[str],
        **kwargs: Any,
    ) -> torch.Tensor:
        """:func:`loglikelihood_with_image_features` with this tower's model and tokenizer."""
        kwargs.setdefault("stage", self.stage)
        return loglikelihood_with_image_features(
            self, self.tokenizer, image_features, prompts, targets, **kwargs
        )


def restore_token_features(flat: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Undo smoothing's flatten + unit-normalise: ``(B, T*D)`` -> ``(B, T, D)`` at the norm of
    ``reference`` ``(B, T, D)`` (e.g. the clean features), so the model gets its usual scale."""
    if flat.ndim != 2 or flat.shape[0] != reference.shape[0]:
        raise InputError(
            f"expected flat (B, T*D) for B={reference.shape[0]}, got {tuple(flat.shape)}"
        )
    if flat.shape[1] != reference[0].numel():
        raise InputError(f"{flat.shape[1]} features cannot take shape {tuple(reference.shape[1:])}")
    ref_norm = reference.flatten(1).float().norm(dim=1, keepdim=True)
    unit = F.normalize(flat.float(), dim=1)
    return (unit * ref_norm).view_as(reference).to(reference.dtype)


def _as_projected(model: nn.Module, feats: torch.Tensor, stage: Stage | None) -> torch.Tensor:
    """Image features of either stage -> the embeddings the language model consumes."""
    if feats.ndim != 3:
        raise InputError(f"image_features must be (B, T, D), got {tuple(feats.shape)}")
    _, projector, config = _llava_parts(model)
    d_lm = config.text_config.hidden_size
    layers = config.vision_feature_layer
    d_vis = config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
    if stage is None:
        if d_lm == d_vis:
            raise InputError(f"cannot tell the stage of {feats.shape[-1]}-d features; pass stage=")
        stage = "projected" if feats.shape[-1] == d_lm else "vision"
    _check_stage(stage)
    want = d_lm if stage == "projected" else d_vis
    if feats.shape[-1] != want:
        raise InputError(f"{stage}-stage features must have D={want}, got {feats.shape[-1]}")
    if stage == "vision":
        feats = projector(feats.to(next(projector.parameters()).dtype))
    return feats


def embed_with_image_features(
    model: Any,
    input_ids: torch.Tensor,
    image_features: torch.Tensor,
    *,
    stage: Stage | None = None,
) -> torch.Tensor:
    """Token embeddings of ``input_ids`` ``(B, L)`` with the image-token positions replaced,
    in order, by the (projected) ``image_features`` ``(B, T, D)``; differentiable in them.

    This is what LLaVA's own forward does with ``pixel_values`` (``masked_scatter`` into the
    positions of ``config.image_token_id``), with features you supply instead.
    """
    model, _, stage = _unwrap_llava(model, stage)
    _, _, config = _llava_parts(model)
    image_id = _image_token_id(config)
    embeds = model.get_input_embeddings()(input_ids)
    feats = _as_projected(model, image_features, stage).to(embeds.device, embeds.dtype)
    mask = input_ids == image_id
    if mask.sum(dim=1).ne(feats.shape[1]).any() or feats.shape[0] != input_ids.shape[0]:
        raise InputError(
            f"image tokens per prompt {mask.sum(dim=1).tolist()} do not match the "
            f"{feats.shape[1]} image features of each of {feats.shape[0]} images"
        )
    return embeds.masked_scatter(mask.unsqueeze(-1).to(embeds.device), feats)


def logits_with_image_features(
    model: Any,
    input_ids: torch.Tensor,
    image_features: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    stage: Stage | None = None,
) -> torch.Tensor:
    """Next-token logits ``(B, L, V)`` of the model on ``input_ids`` (image tokens already
    expanded to T per prompt) with ``image_features`` in place of the image."""
    model, _, stage = _unwrap_llava(model, stage)
    device = _embedding_device(model)
    input_ids = input_ids.to(device)
    embeds = embed_with_image_features(model, input_ids, image_features, stage=stage)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits


def _llava_prompts(
    model: Any,
    image_features: torch.Tensor,
    prompts: str | Sequence[str],
    *,
    processor_or_tokenizer: Any,
    stage: Stage | None,
) -> tuple[nn.Module, Any, Stage | None, list[list[int]]]:
    """``(model, tokenizer, stage, prompt ids)`` for handing ``image_features`` ``(B, T, D)``
    back to a LLaVA-type model (or :class:`LlavaVisionTower`, which supplies its own
    tokenizer and stage): each prompt's image token expanded to ``T`` tokens."""
    model, own_tok, stage = _unwrap_llava(model, stage)
    tok = _tokenizer_of(processor_or_tokenizer if processor_or_tokenizer is not None else own_tok)
    texts = _broadcast_texts(prompts, image_features.shape[0], "prompts")
    image_id = _image_token_id(_llava_parts(model)[2])
    num_tokens = image_features.shape[1]
    seqs = [_expand_image_tokens(list(tok(p)["input_ids"]), image_id, num_tokens) for p in texts]
    return model, tok, stage, seqs


def generate_with_image_features(
    model: Any,
    processor_or_tokenizer: Any,
    image_features: torch.Tensor,
    prompts: str | Sequence[str],
    *,
    stage: Stage | None = None,
    return_text: bool = False,
    **generate_kwargs: Any,
) -> torch.Tensor | list[str]:
    """Generate text from a LLaVA-type model with ``image_features`` in place of the image.

    Args:
        model: ``LlavaForConditionalGeneration`` (or a :class:`LlavaVisionTower` around one).
            Any :class:`~featsmooth.encoders.image_tokens.ImageTokenEncoder` (BLIP-2,
            PaliGemma, Idefics3, ...) is handed its own ``generate``/``loglikelihood``.
        processor_or_tokenizer: the model's processor or tokenizer (``None`` takes the
            tower's own tokenizer when ``model`` is a LlavaVisionTower).
        image_features: ``(B, T, D)``, vision-stage (projected here) or projected features;
            ``stage=None`` infers which from D.
        prompts: one prompt for all images or one per image, each with one image token
            (e.g. ``"USER: <image>\\nWhat is shown? ASSISTANT:"``), expanded to T tokens here.
        return_text: decode the new tokens (``skip_special_tokens=True``).
        generate_kwargs: passed to ``model.generate`` (e.g. ``max_new_tokens``, ``do_sample``).

    Returns:
        The newly generated token ids ``(B, L_new)`` (the prompt is not repeated), or their
        decoded strings when ``return_text``.
    """
    own = {"processor_or_tokenizer": processor_or_tokenizer, "stage": stage}
    if _image_token_encoder(model):  # BLIP-2, PaliGemma, Idefics3, ...: the encoder knows how
        return model.generate(
            image_features, prompts, return_text=return_text, **own, **generate_kwargs
        )
    model, tok, stage, seqs = _llava_prompts(model, image_features, prompts, **own)

    def generate(ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        embeds = embed_with_image_features(model, ids, image_features, stage=stage)
        return model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    device = _embedding_device(model)
    return _generate_batch(tok, seqs, device, generate, return_text, **generate_kwargs)


def loglikelihood_with_image_features(
    model: Any,
    processor_or_tokenizer: Any,
    image_features: torch.Tensor,
    prompts: str | Sequence[str],
    targets: str | Sequence[str],
    *,
    stage: Stage | None = None,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Log-likelihood ``(B,)`` of ``targets`` following ``prompts`` given ``image_features``.

    Differentiable w.r.t. ``image_features`` (and through them w.r.t. the images), for
    targeted text attacks. The target's tokens are ``tokenizer(target,
    add_special_tokens=False)``, appended to the prompt's; ``reduction="mean"`` averages
    over target tokens. Arguments as in :func:`generate_with_image_features`.
    """
    _check_reduction(reduction)
    own = {"processor_or_tokenizer": processor_or_tokenizer, "stage": stage}
    if _image_token_encoder(model):
        return model.loglikelihood(image_features, prompts, targets, reduction=reduction, **own)
    model, tok, stage, prompt_seqs = _llava_prompts(model, image_features, prompts, **own)

    def logits(ids: torch.Tensor, mask: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        return logits_with_image_features(model, ids, image_features, mask, stage=stage)

    return _loglikelihood_batch(tok, prompt_seqs, targets, logits, reduction)


def load_llava_vision_tower(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: Stage = "vision",
) -> LlavaVisionTower:
    """Load a LLaVA-type checkpoint (whole model: the tower hands features back to it)."""
    classes = {
        "llava": "LlavaForConditionalGeneration",
        "llava_next": "LlavaNextForConditionalGeneration",
    }
    return load_pretrained_encoder(
        name_or_path,
        model_types=classes,
        encoder_cls=LlavaVisionTower,
        device=device,
        dtype=dtype,
        family="the LLaVA tower",
        stage=stage,
    )
