"""Loading Hugging Face checkpoints as pixel-unit encoders: the helpers every family shares.

:func:`load_pretrained_encoder` loads a transformers checkpoint (hub name or local folder) as
any encoder class: float32 unless told otherwise, safetensors first, parameters frozen
(gradients still flow to the images), normalisation read from ``preprocessor_config.json``
and the tokenizer loaded beside the model. It raises :class:`ModelUnavailableError` with one
line when the weights cannot be had (hub unreachable, name unknown). ``HF_HUB_OFFLINE`` set in
the environment means ``local_files_only=True``; otherwise :mod:`featsmooth.encoders.hub`
probes the hub once and, when it is unreachable, reads the cache only or fails at once with
the command that downloads the model.

The encoders built on these helpers live in their own modules and stay importable from here:

* :mod:`featsmooth.encoders.text_image`: :class:`CLIPEncoder`, :class:`SiglipEncoder`,
  :class:`OpenClipEncoder` (:func:`wrap_open_clip_model`) and the loaders :func:`load_clip`
  and :func:`load_siglip`.
* :mod:`featsmooth.encoders.llava`: :class:`LlavaVisionTower`, :func:`load_llava_vision_tower`
  and the functions that hand (smoothed) features back to the model
  (:func:`generate_with_image_features`, :func:`loglikelihood_with_image_features`, ...).
* :mod:`featsmooth.encoders.prompts`: the prompt and target token ids those functions and the
  other multimodal families share.

Every encoder follows :mod:`featsmooth.encoders.base`: ``forward`` takes images
``(B, C, H, W)`` in pixel units (values in [0, 1] when clean, any value when noisy) and of
any size; a bilinear, differentiable resize to the model's input size and the model's own
mean/std normalisation happen *inside* the encoder, so the smoothing ``sigma`` is always in
pixel units. The resize maps the whole image to the model's square input (no centre crop):
crop beforehand if you want the processor's crop.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from featsmooth.encoders.base import Preprocess
from featsmooth.encoders.hub import hub_offline
from featsmooth.errors import InputError, ModelUnavailableError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

Stage = Literal["vision", "projected"]
_STAGES = ("vision", "projected")
OFFLINE_HINT = 'use the offline default instead (`featsmooth models`, name "default")'


# --------------------------------------------------------------------------- loading helpers


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


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _holder(model: nn.Module, attr: str, error: str) -> nn.Module:
    """The module that holds ``attr`` in a ``...ForConditionalGeneration``: its inner
    ``model.model`` (transformers 5.x) or the model itself (4.x); else ``InputError``
    ``"<class name> <error>"``."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, attr):
        return inner
    if hasattr(model, attr):
        return model
    raise InputError(f"{type(model).__name__} {error}")


def load_pretrained_encoder(
    name_or_path: str,
    *,
    model_types: Mapping[str, str],
    encoder_cls: Callable[..., nn.Module],
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    family: str | None = None,
    no_text: Collection[str] = (),
    options: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    **encoder_kwargs: Any,
) -> Any:
    """Load a transformers checkpoint (hub id or local folder) as ``encoder_cls``: the loader
    of every Hugging Face family (CLIP, SigLIP and the multimodal LLMs).

    ``model_types`` maps the accepted ``config.json`` ``model_type`` values to transformers
    class names (the key ``"*"`` stands for any other type); another type raises
    :class:`ModelUnavailableError` naming what ``family`` (default: the class name)
    supports. The weights load in ``dtype`` (float32 by default), safetensors first, and are
    frozen; normalisation comes from ``preprocessor_config.json`` (``mean``/``std`` when it
    has none); the tokenizer is loaded beside the model unless the type is in ``no_text``
    (then ``None``). The encoder is ``encoder_cls(model, tokenizer=..., mean=..., std=...,
    name=name_or_path, **encoder_kwargs, **options(preprocessor_config))``, frozen, in eval
    mode and on ``device``.
    """
    import transformers as tf

    kind = read_model_config(name_or_path).get("model_type")
    cls_name = model_types.get(kind, model_types.get("*"))
    if cls_name is None:
        family = family or getattr(encoder_cls, "__name__", "this loader")
        raise ModelUnavailableError(
            f"'{name_or_path}' is a {kind!r} model; {family} supports {sorted(model_types)}"
        )
    model = _load_weights(getattr(tf, cls_name), name_or_path, dtype=_resolve_dtype(dtype))
    pre = _read_preprocessor_config(name_or_path)
    mean, std = _normalisation(pre, mean, std)
    tokenizer = None if kind in no_text else _load_tokenizer(name_or_path)
    extra = options(pre) if options is not None else {}
    encoder = encoder_cls(
        _finish(model, None),
        tokenizer=tokenizer,
        mean=mean,
        std=std,
        name=str(name_or_path),
        **encoder_kwargs,
        **extra,
    )
    return _finish(encoder, device)


def _set_input(
    encoder: Any,
    size: tuple[int, int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    name: str | None,
) -> None:
    """Give ``encoder`` its ``image_size``, its ``preprocess`` (resize to ``size`` and
    ``mean``/``std`` normalisation) and its ``name``; ``None`` takes the class's
    ``default_mean`` / ``default_std`` / ``default_name``."""
    encoder.image_size = size
    encoder.preprocess = Preprocess(
        size,
        mean=encoder.default_mean if mean is None else mean,
        std=encoder.default_std if std is None else std,
    )
    encoder.name = encoder.default_name if name is None else name


def _check_stage(stage: str | None, stages: tuple[str, ...] = _STAGES) -> None:
    if stage not in stages:
        raise InputError(f"stage must be one of {stages}, got {stage!r}")


# --------------------------------------------------------------------------- moved names

#: public names of the encoders built on these helpers -> the module that defines them;
#: importable from here as before (loaded on first use: those modules import this one)
_MOVED = {
    **dict.fromkeys(
        (
            "CLIPEncoder",
            "OpenClipEncoder",
            "SiglipEncoder",
            "load_clip",
            "load_siglip",
            "wrap_open_clip_model",
        ),
        "featsmooth.encoders.text_image",
    ),
    **dict.fromkeys(
        (
            "LlavaVisionTower",
            "embed_with_image_features",
            "generate_with_image_features",
            "load_llava_vision_tower",
            "logits_with_image_features",
            "loglikelihood_with_image_features",
            "restore_token_features",
        ),
        "featsmooth.encoders.llava",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
