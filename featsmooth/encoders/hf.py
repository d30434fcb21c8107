"""Hugging Face encoders in pixel units: CLIP, SigLIP and LLaVA-type vision towers.

Every encoder here follows :mod:`featsmooth.encoders.base`: ``forward`` takes images
``(B, C, H, W)`` in pixel units (values in [0, 1] when clean, any value when noisy) and of
any size; a bilinear, differentiable resize to the model's input size and the model's own
mean/std normalisation happen *inside* the encoder, so the smoothing ``sigma`` is always in
pixel units. The resize maps the whole image to the model's square input (no centre crop):
crop beforehand if you want the processor's crop.

* :class:`CLIPEncoder` / :class:`SiglipEncoder`: image features ``(B, D)`` are the projected
  image embeddings (the space where zero-shot classification compares with text), and
  :meth:`CLIPEncoder.encode_text` returns unit-norm text embeddings ``(K, D)`` in the same space.
* :class:`LlavaVisionTower`: the image tokens ``(B, T, D)`` of a LLaVA-type model, selected
  exactly as the model does (``config.vision_feature_layer``, int or list, and
  ``config.vision_feature_select_strategy``: ``"default"`` drops CLS, ``"full"`` keeps it).
  ``stage="vision"`` (default: the paper smooths the vision encoder) returns vision-tower
  hidden states before the projector; ``stage="projected"`` returns what the language model
  consumes. :func:`generate_with_image_features` and
  :func:`loglikelihood_with_image_features` hand (smoothed) features back to the model.
* :func:`wrap_open_clip_model` adapts an already-loaded open_clip-style model object
  (``encode_image`` / ``encode_text``) without importing open_clip.

Loaders (:func:`load_clip`, :func:`load_siglip`, :func:`load_llava_vision_tower`) take a hub
name or a local folder, load in float32 unless told otherwise, freeze the parameters
(gradients still flow to the images) and raise :class:`ModelUnavailableError` with one line
when the weights cannot be had (hub unreachable, name unknown). ``HF_HUB_OFFLINE`` set in the
environment means ``local_files_only=True``; otherwise :mod:`featsmooth.encoders.hub` probes
the hub once and, when it is unreachable, reads the cache only or fails at once with the
command that downloads the model.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.encoders.base import ImageEncoder, Preprocess
from featsmooth.errors import InputError, ModelUnavailableError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

Stage = Literal["vision", "projected"]
_STAGES = ("vision", "projected")
OFFLINE_HINT = 'use the offline default instead (`featsmooth models`, name "default")'


# --------------------------------------------------------------------------- loading helpers


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value in the environment (read each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError

        errors += [HfHubHTTPError, HFValidationError]
    except ImportError:  # pragma: no cover - very old huggingface_hub
        pass
    for mod, attr in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(mod), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def unavailable_error(name: str, exc: BaseException | None = None) -> ModelUnavailableError:
    """One-line :class:`ModelUnavailableError` for a model that could not be loaded."""
    if os.path.isdir(str(name)):
        detail = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
        reason = f"cannot read the model folder ({detail})" if detail else "cannot read it"
        return ModelUnavailableError(f"cannot load model '{name}': {reason}; {OFFLINE_HINT}")
    if hub_offline():
        reason = "it is not in the local cache and HF_HUB_OFFLINE is set"
    else:
        reason = "the model hub is unreachable or the name is unknown"
    return ModelUnavailableError(f"cannot load model '{name}': {reason}; {OFFLINE_HINT}")


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype):
        raise InputError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    return resolved


def _pretrained(loader: Callable[..., Any], name: str, **kwargs: Any) -> Any:
    """``loader(name, **kwargs)`` with offline handling and errors turned into one line."""
    from featsmooth.encoders.hub import local_files_only

    if "local_files_only" not in kwargs:
        kwargs["local_files_only"] = local_files_only(str(name))  # probes the hub once
    try:
        return loader(str(name), **kwargs)
    except _network_errors() as exc:
        raise unavailable_error(name, exc) from exc


def _load_weights(cls: Any, name_or_path: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` of a model, safetensors first.

    A local folder holding ``*.safetensors`` files is read from them only
    (``use_safetensors=True``), never from a ``pytorch_model.bin`` beside them. A pickled
    ``.bin`` is read by torch's weights-only unpickler, which refuses anything but
    tensors: such a file is reported (exit code 4), its contents never run.
    """
    import pickle

    folder = str(name_or_path)
    if os.path.isdir(folder) and any(f.endswith(".safetensors") for f in os.listdir(folder)):
        kwargs["use_safetensors"] = True
    try:
        return _pretrained(cls.from_pretrained, folder, **kwargs)
    except pickle.UnpicklingError:
        error = ModelUnavailableError(
            f"cannot load model '{folder}': its pickled weights (pytorch_model.bin) hold "
            "objects other than tensors, which featsmooth does not load"
        )
        error.hint = (  # type: ignore[attr-defined]
            "use a copy of the model saved as safetensors (model.safetensors)"
        )
        raise error from None


def read_model_config(name_or_path: str) -> dict[str, Any]:
    """The ``config.json`` of a local folder or hub model as a dict (no weights are loaded)."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "config.json")
        if not os.path.isfile(path):
            raise ModelUnavailableError(f"'{name_or_path}' has no config.json; {OFFLINE_HINT}")
    else:
        from transformers.utils import cached_file

        path = _pretrained(cached_file, name_or_path, filename="config.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _local_only_quiet(name: str) -> bool:
    """:func:`featsmooth.encoders.hub.local_files_only`, ``True`` where it would raise."""
    from featsmooth.encoders.hub import local_files_only

    try:
        return local_files_only(name)
    except ModelUnavailableError:
        return True


def _read_preprocessor_config(name_or_path: str) -> dict[str, Any]:
    """``preprocessor_config.json`` as a dict, or ``{}`` when the model has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            str(name_or_path),
            "preprocessor_config.json",
            local_files_only=_local_only_quiet(str(name_or_path)),
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except _network_errors():
        return {}
    if not path:
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _normalisation(
    pre: dict[str, Any], mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m = pre.get("image_mean") or mean
    s = pre.get("image_std") or std
    return tuple(float(v) for v in m), tuple(float(v) for v in s)


def _load_tokenizer(name_or_path: str, **kwargs: Any) -> Any | None:
    """The model's tokenizer, or ``None`` when it has none (vision-only checkpoints);
    ``kwargs`` go to ``AutoTokenizer.from_pretrained`` (e.g. ``subfolder=``)."""
    from transformers import AutoTokenizer

    try:
        return _pretrained(AutoTokenizer.from_pretrained, name_or_path, **kwargs)
    except (ModelUnavailableError, ValueError, KeyError):
        return None
    except ImportError as exc:  # e.g. a sentencepiece tokenizer without sentencepiece
        warnings.warn(f"{name_or_path}: no text encoder ({exc})", stacklevel=3)
        return None


def _finish(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model


def _image_size_of(vision_config: Any) -> tuple[int, int]:
    size = getattr(vision_config, "image_size", None)
    if size is None:
        raise InputError("cannot tell the model's image size; pass image_size=")
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _pooled(out: Any, field: str) -> torch.Tensor:
    """Projected embedding from a transformers output (tensor in 4.x, ModelOutput in 5.x)."""
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, field, None)
    if value is None:
        value = out.pooler_output
    return value


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


# --------------------------------------------------------------------------- CLIP / SigLIP


class _TextImageEncoder(ImageEncoder):
    """Shared machinery: preprocessing, dtype handling and unit-norm text embeddings."""

    def __init__(
        self,
        tokenizer: Any | None,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: tuple[int, int],
        name: str,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.preprocess = Preprocess(image_size, mean=mean, std=std)
        self.name = name

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel-unit images ``(B, C, H, W)`` -> the model's normalised input, model dtype."""
        if not torch.is_floating_point(images):
            raise InputError(f"images must be a float tensor, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != self.preprocess.mean.shape[1]:
            raise InputError(
                f"expected images of shape (B, {self.preprocess.mean.shape[1]}, H, W), "
                f"got {tuple(images.shape)}"
            )
        x = self.preprocess(images.to(device=self.device, dtype=torch.float32))
        return x.to(self.dtype)

    def _has_text(self) -> bool:  # overridden
        return False

    @property
    def supports_text(self) -> bool:
        return self.tokenizer is not None and self._has_text()

    def _tokenize(self, texts: Sequence[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if not self.supports_text:
            raise ModelUnavailableError(f"{self.name} was loaded without a text encoder/tokenizer")
        if len(texts) == 0:
            raise InputError("encode_text needs at least one text")
        enc = self.tokenizer(list(texts), return_tensors="pt", truncation=True, **kwargs)
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }


class CLIPEncoder(_TextImageEncoder):
    """CLIP image encoder in pixel units; features are the projected ``image_embeds`` ``(B, D)``.

    Args:
        model: a transformers ``CLIPModel`` or ``CLIPVisionModelWithProjection``.
        tokenizer: the CLIP tokenizer (needed for :meth:`encode_text`).
        text_model: a ``CLIPTextModelWithProjection`` when ``model`` is vision-only.
        mean, std: per-channel normalisation of the model (CLIP's by default).
        image_size: the model's input size (default: ``vision_config.image_size``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        *,
        text_model: nn.Module | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        image_size: int | Sequence[int] | None = None,
        name: str = "clip",
    ) -> None:
        config = model.config
        vision_config = getattr(config, "vision_config", config)
        size = _as_size(image_size) or _image_size_of(vision_config)
        super().__init__(tokenizer, mean, std, size, name)
        self.model = model
        self.text_model = text_model
        self._full = hasattr(model, "get_text_features") and hasattr(model, "text_model")

    def _has_text(self) -> bool:
        return self._full or self.text_model is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixel_values(images)
        if hasattr(self.model, "get_image_features"):
            return _pooled(self.model.get_image_features(pixel_values=x), "image_embeds")
        return self.model(pixel_values=x).image_embeds

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(K, D)`` in the space of the image features."""
        text_cfg = getattr(self.model.config, "text_config", None) or self.text_model.config
        max_len = getattr(text_cfg, "max_position_embeddings", 77)
        enc = self._tokenize(texts, padding=True, max_length=max_len)
        if self._full:
            emb = _pooled(self.model.get_text_features(**enc), "text_embeds")
        else:
            emb = self.text_model(**enc).text_embeds
        return F.normalize(emb.float(), dim=-1)


class SiglipEncoder(_TextImageEncoder):
    """SigLIP image encoder in pixel units; features are the pooled image embeddings ``(B, D)``.

    Args:
        model: a transformers ``SiglipModel`` (image + text) or ``SiglipVisionModel``.
        tokenizer: the SigLIP tokenizer; texts are padded to ``max_length`` as SigLIP was
            trained (its text pooling reads the last position).
        mean, std: default 0.5 / 0.5 (SigLIP's own).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        *,
        mean: Sequence[float] = SIGLIP_MEAN,
        std: Sequence[float] = SIGLIP_STD,
        image_size: int | Sequence[int] | None = None,
        name: str = "siglip",
    ) -> None:
        config = model.config
        vision_config = getattr(config, "vision_config", config)
        size = _as_size(image_size) or _image_size_of(vision_config)
        super().__init__(tokenizer, mean, std, size, name)
        self.model = model

    def _has_text(self) -> bool:
        return hasattr(self.model, "get_text_features")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixel_values(images)
        if hasattr(self.model, "get_image_features"):
            return _pooled(self.model.get_image_features(pixel_values=x), "image_embeds")
        return self.model(pixel_values=x).pooler_output

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(K, D)`` (padding="max_length", as SigLIP expects)."""
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 64)
        enc = self._tokenize(texts, padding="max_length", max_length=max_len)
        enc.pop("attention_mask", None)  # SigLIP was trained without a text attention mask
        emb = _pooled(self.model.get_text_features(**enc), "text_embeds")
        return F.normalize(emb.float(), dim=-1)


class OpenClipEncoder(_TextImageEncoder):
    """Adapter for an already-loaded open_clip-style model (``encode_image``/``encode_text``).

    open_clip itself is never imported: pass the model object, its tokenizer (a callable
    ``texts -> LongTensor``) and its preprocessing numbers.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        *,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        image_size: int | Sequence[int] = 224,
        name: str = "open_clip",
    ) -> None:
        if not callable(getattr(model, "encode_image", None)):
            raise InputError("an open_clip-style model needs an encode_image method")
        super().__init__(tokenizer, mean, std, _as_size(image_size), name)
        self.model = model

    def _has_text(self) -> bool:
        return callable(getattr(self.model, "encode_text", None))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.pixel_values(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(K, D)`` from ``model.encode_text(tokenizer(texts))``."""
        if isinstance(texts, str):
            texts = [texts]
        if not self.supports_text:
            raise ModelUnavailableError(f"{self.name} was given no tokenizer or encode_text")
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def wrap_open_clip_model(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    image_size: int | Sequence[int] = 224,
    name: str = "open_clip",
    device: torch.device | str | None = None,
) -> OpenClipEncoder:
    """Wrap an open_clip-style model object as a pixel-unit :class:`ImageEncoder`.

    ``mean``/``std``/``image_size`` are those of the model's preprocess transform
    (``model.visual.preprocess_cfg`` in open_clip). The model is frozen and put in eval mode.
    """
    enc = OpenClipEncoder(model, tokenizer, mean=mean, std=std, image_size=image_size, name=name)
    _finish(enc, device)
    return enc


def _load_text_image(
    name_or_path: str,
    device: torch.device | str | None,
    dtype: torch.dtype | str | None,
    *,
    model_cls: str,
    vision_cls: str,
    vision_type: str,
    encoder_cls: type,
    mean: Sequence[float],
    std: Sequence[float],
) -> Any:
    """Shared loader of CLIP-style checkpoints: the full model, or its vision half alone
    (``model_type == vision_type``, then no tokenizer); normalisation from the checkpoint's
    preprocessor config with ``mean``/``std`` as the fallback."""
    import transformers as tf

    kind = read_model_config(name_or_path).get("model_type")
    vision_only = kind == vision_type
    cls = getattr(tf, vision_cls if vision_only else model_cls)
    model = _load_weights(cls, name_or_path, dtype=_resolve_dtype(dtype))
    mean, std = _normalisation(_read_preprocessor_config(name_or_path), mean, std)
    tokenizer = None if vision_only else _load_tokenizer(name_or_path)
    enc = encoder_cls(_finish(model, None), tokenizer, mean=mean, std=std, name=str(name_or_path))
    return _finish(enc, device)


def load_clip(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> CLIPEncoder:
    """Load a CLIP checkpoint (``CLIPModel`` or vision-only with projection) as a CLIPEncoder."""
    return _load_text_image(
        name_or_path,
        device,
        dtype,
        model_cls="CLIPModel",
        vision_cls="CLIPVisionModelWithProjection",
        vision_type="clip_vision_model",
        encoder_cls=CLIPEncoder,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
    )


def load_siglip(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> SiglipEncoder:
    """Load a SigLIP checkpoint (``SiglipModel`` or ``SiglipVisionModel``) as a SiglipEncoder."""
    return _load_text_image(
        name_or_path,
        device,
        dtype,
        model_cls="SiglipModel",
        vision_cls="SiglipVisionModel",
        vision_type="siglip_vision_model",
        encoder_cls=SiglipEncoder,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
    )


# --------------------------------------------------------------------------- LLaVA


def _llava_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, Any]:
    """``(vision_tower, multi_modal_projector, config)`` of a LLaVA-type model (4.x and 5.x)."""
    for holder in (getattr(model, "model", None), model):
        if holder is not None and hasattr(holder, "vision_tower"):
            if hasattr(holder, "multi_modal_projector"):
                return holder.vision_tower, holder.multi_modal_projector, model.config
    raise InputError(
        f"{type(model).__name__} has no vision_tower + multi_modal_projector (LLaVA layout)"
    )


def _image_token_id(config: Any) -> int:
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise InputError("the model config names no image token (image_token_id/image_token_index)")


def _image_token_encoder(model: Any) -> bool:
    """Whether ``model`` hands features back to its language model by its own ``generate`` /
    ``loglikelihood`` methods (BLIP-2, PaliGemma, Idefics3, Qwen2-VL, LLaVA any-res, ...):
    encoders that set the class attribute ``hands_back_features = True``."""
    return bool(getattr(model, "hands_back_features", False))


def _unwrap_llava(model: Any, stage: Stage | None = None) -> tuple[nn.Module, Any, Stage | None]:
    """Accept a LlavaVisionTower or the transformers model: ``(model, tokenizer, stage)``;
    a tower supplies its own tokenizer and, when ``stage`` is None, its own stage."""
    if isinstance(model, LlavaVisionTower):
        return model.model, model.tokenizer, stage or model.stage
    return model, None, stage


class LlavaVisionTower(ImageEncoder):
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
        name: str = "llava",
    ) -> None:
        super().__init__()
        if stage not in _STAGES:
            raise InputError(f"stage must be one of {_STAGES}, got {stage!r}")
        tower, projector, config = _llava_parts(model)
        self.model = model
        self.tokenizer = tokenizer
        self.stage = stage
        layer = (
            config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        )
        self.vision_feature_layer = layer if isinstance(layer, int) else [int(v) for v in layer]
        strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise InputError(
                f"vision_feature_select_strategy must be 'default' or 'full': {strategy}"
            )
        self.vision_feature_select_strategy = strategy
        self.image_size = _as_size(image_size) or _image_size_of(config.vision_config)
        self.preprocess = Preprocess(self.image_size, mean=mean, std=std)
        self.name = name
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
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        layers = self.vision_feature_layer
        idx = [layers] if isinstance(layers, int) else layers
        chosen = [out.hidden_states[i] for i in idx]
        if self.vision_feature_select_strategy == "default":
            chosen = [h[:, 1:] for h in chosen]
        return chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)

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
    if stage not in _STAGES:
        raise InputError(f"stage must be one of {_STAGES}, got {stage!r}")
    want = d_lm if stage == "projected" else d_vis
    if feats.shape[-1] != want:
        raise InputError(f"{stage}-stage features must have D={want}, got {feats.shape[-1]}")
    if stage == "vision":
        feats = projector(feats.to(next(projector.parameters()).dtype))
    return feats


def _tokenizer_of(processor_or_tokenizer: Any) -> Any:
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    if tok is None or not callable(tok):
        raise InputError("pass the model's processor or tokenizer to hand features back")
    return tok


def _expand_image_tokens(ids: list[int], image_id: int, num_tokens: int) -> list[int]:
    count = sum(1 for t in ids if t == image_id)
    if count == num_tokens:
        return ids
    if count == 1:
        at = ids.index(image_id)
        return ids[:at] + [image_id] * num_tokens + ids[at + 1 :]
    if count == 0:
        raise InputError(
            "the prompt has no image token (e.g. '<image>'); put one where the image goes"
        )
    raise InputError(f"the prompt has {count} image tokens; use one (or exactly {num_tokens})")


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def _broadcast_texts(texts: str | Sequence[str], batch: int, what: str) -> list[str]:
    if isinstance(texts, str):
        return [texts] * batch
    texts = list(texts)
    if len(texts) == 1:
        return texts * batch
    if len(texts) != batch:
        raise InputError(f"got {len(texts)} {what} for {batch} images; pass one or one per image")
    return texts


def _pad_id(tok: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0


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
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    embeds = embed_with_image_features(model, input_ids, image_features, stage=stage)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits


def _prompt_ids(model: nn.Module, tok: Any, prompts: list[str], num_tokens: int) -> list[list[int]]:
    image_id = _image_token_id(_llava_parts(model)[2])
    return [_expand_image_tokens(list(tok(p)["input_ids"]), image_id, num_tokens) for p in prompts]


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
    if _image_token_encoder(model):  # BLIP-2, PaliGemma, Idefics3, ...: the encoder knows how
        return model.generate(
            image_features,
            prompts,
            processor_or_tokenizer=processor_or_tokenizer,
            stage=stage,
            return_text=return_text,
            **generate_kwargs,
        )
    model, own_tok, stage = _unwrap_llava(model, stage)
    tok = _tokenizer_of(processor_or_tokenizer if processor_or_tokenizer is not None else own_tok)
    texts = _broadcast_texts(prompts, image_features.shape[0], "prompts")
    seqs = _prompt_ids(model, tok, texts, image_features.shape[1])
    ids, mask = _left_pad(seqs, _pad_id(tok))
    device = model.get_input_embeddings().weight.device
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        embeds = embed_with_image_features(model, ids, image_features, stage=stage)
        generate_kwargs.setdefault("pad_token_id", _pad_id(tok))
        new_ids = model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
    if return_text:
        return tok.batch_decode(new_ids, skip_special_tokens=True)
    return new_ids


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
    if reduction not in ("sum", "mean"):
        raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if _image_token_encoder(model):
        return model.loglikelihood(
            image_features,
            prompts,
            targets,
            processor_or_tokenizer=processor_or_tokenizer,
            stage=stage,
            reduction=reduction,
        )
    model, own_tok, stage = _unwrap_llava(model, stage)
    tok = _tokenizer_of(processor_or_tokenizer if processor_or_tokenizer is not None else own_tok)
    batch = image_features.shape[0]
    texts = _broadcast_texts(prompts, batch, "prompts")
    goals = _broadcast_texts(targets, batch, "targets")
    prompt_seqs = _prompt_ids(model, tok, texts, image_features.shape[1])
    target_seqs = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in goals]
    if any(len(t) == 0 for t in target_seqs):
        raise InputError("every target text must have at least one token")
    ids, mask = _left_pad([p + t for p, t in zip(prompt_seqs, target_seqs)], _pad_id(tok))
    logits = logits_with_image_features(model, ids, image_features, mask, stage=stage)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    next_ids = ids[:, 1:].to(logp.device)
    token_logp = logp.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
    width = ids.shape[1]
    is_target = torch.zeros_like(token_logp, dtype=torch.bool)
    for i, t in enumerate(target_seqs):
        is_target[i, width - 1 - len(t) :] = True  # position j predicts token j + 1
    total = (token_logp * is_target).sum(dim=1)
    if reduction == "mean":
        total = total / is_target.sum(dim=1)
    return total


def load_llava_vision_tower(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: Stage = "vision",
) -> LlavaVisionTower:
    """Load a LLaVA-type checkpoint (whole model: the tower hands features back to it)."""
    import transformers as tf

    cfg = read_model_config(name_or_path)
    kind = cfg.get("model_type")
    classes = {
        "llava": "LlavaForConditionalGeneration",
        "llava_next": "LlavaNextForConditionalGeneration",
    }
    if kind not in classes:
        raise ModelUnavailableError(
            f"'{name_or_path}' is a {kind!r} model; LLaVA towers support {sorted(classes)}"
        )
    cls = getattr(tf, classes[kind])
    model = _load_weights(cls, name_or_path, dtype=_resolve_dtype(dtype))
    mean, std = _normalisation(
        _read_preprocessor_config(name_or_path), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    )
    tokenizer = _load_tokenizer(name_or_path)
    tower = LlavaVisionTower(
        _finish(model, None),
        stage=stage,
        tokenizer=tokenizer,
        mean=mean,
        std=std,
        name=str(name_or_path),
    )
    return _finish(tower, device)
