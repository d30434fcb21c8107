"""open_clip checkpoints by name: ``"ViT-B-32/laion2b_s34b_b79k"``, ``"hf-hub:org/repo"``.

Needs the optional ``open_clip`` extra (``pip install "featsmooth[open_clip]"``, which
installs ``open_clip_torch``). Names:

* ``"ARCH/TAG"``: an open_clip architecture and one of its pretrained tags
  (``open_clip.list_pretrained()``), e.g. ``"ViT-B-32/laion2b_s34b_b79k"``;
* ``"hf-hub:org/repo"`` or ``"local-dir:/path"``: open_clip's own schemas.

The encoder is :class:`featsmooth.encoders.hf.OpenClipEncoder`: images in pixel units,
bilinear resize to the model's input size and the checkpoint's own mean/std inside (read
from the model's ``preprocess_cfg``, which open_clip fills from the pretrained config of the
tag or from the hub's ``open_clip_config.json``: e.g. OpenAI's CLIP statistics for
``laion2b_s34b_b79k``, 0.5/0.5 for SigLIP tags). The certified feature is the image
embedding ``encode_image`` ``(B, D)``, in the space where ``encode_text`` compares.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from featsmooth.encoders import hub
from featsmooth.encoders.hf import _network_errors, _resolve_dtype, unavailable_error
from featsmooth.encoders.text_image import OpenClipEncoder
from featsmooth.errors import InputError, ModelUnavailableError

SCHEMAS = ("hf-hub:", "local-dir:")
INSTALL_HINT = 'pip install "featsmooth[open_clip]"  (installs open_clip_torch)'


def _package_dir() -> str | None:
    """Folder of the installed open_clip package, found without importing it."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def split_name(name: str) -> tuple[str, str | None]:
    """``"ARCH/TAG"`` -> ``("ARCH", "TAG")``; a schema name or ``"ARCH"`` -> ``(name, None)``."""
    if name.startswith(SCHEMAS):
        return name, None
    arch, sep, tag = name.partition("/")
    if not arch or (sep and not tag):
        raise InputError(f"an open_clip name is 'ARCH/TAG' or 'hf-hub:org/repo', got '{name}'")
    return arch, (tag or None)


def is_open_clip_name(name: str) -> bool:
    """Whether ``name`` is an open_clip name: a schema, or an architecture of the installed
    open_clip (its ``model_configs/ARCH.json``), checked without importing open_clip."""
    if name.startswith(SCHEMAS):
        return True
    folder = _package_dir()
    if folder is None or os.path.isdir(name):
        return False
    arch = name.partition("/")[0]
    return bool(arch) and os.path.isfile(os.path.join(folder, "model_configs", f"{arch}.json"))


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ModelUnavailableError(
            f"open_clip models need the open_clip package: {INSTALL_HINT}"
        ) from exc
    return open_clip


def pretrained_preprocess(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained config of ``ARCH/TAG`` (``mean``, ``std``, ``hf_hub``...)."""
    open_clip = _import_open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        listed = ", ".join(f"{arch}/{t}" for t in tags) or "none"
        raise ModelUnavailableError(f"open_clip has no checkpoint '{arch}/{tag}'; known: {listed}")
    return dict(cfg)


def wrap_open_clip(model: nn.Module, name: str, device: Any = None) -> OpenClipEncoder:
    """An open_clip model object -> :class:`OpenClipEncoder` with the model's own
    ``preprocess_cfg`` (size, mean, std) and tokenizer."""
    open_clip = _import_open_clip()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size") or getattr(model.visual, "image_size", 224)
    tokenizer = open_clip.get_tokenizer(name if name.startswith(SCHEMAS) else split_name(name)[0])
    enc = OpenClipEncoder(
        model, tokenizer, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), image_size=size, name=name
    )
    enc.eval().requires_grad_(False)
    if device is not None:
        enc.to(device)
    return enc


def load_open_clip(
    name: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    pretrained: bool = True,
) -> OpenClipEncoder:
    """Load an open_clip checkpoint by name (see the module docstring).

    ``pretrained=False`` builds the architecture with random weights (no download), with the
    preprocessing of the named checkpoint. Weights are downloaded by open_clip on first use
    (``HF_HUB_OFFLINE=1``: from the local cache only).
    """
    open_clip = _import_open_clip()
    arch, tag = split_name(name)
    if tag is None and not name.startswith(SCHEMAS):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        listed = ", ".join(f"'{arch}/{t}'" for t in tags[:6]) or "none known"
        raise ModelUnavailableError(f"name the open_clip checkpoint of {arch}: {listed}")
    kwargs: dict[str, Any] = {"precision": "fp32"}
    repo = name[len("hf-hub:") :] if name.startswith("hf-hub:") else None
    if tag is not None:
        cfg = pretrained_preprocess(arch, tag)
        kwargs["force_preprocess_cfg"] = {"mean": cfg["mean"], "std": cfg["std"]}
        repo = (cfg.get("hf_hub") or "").strip("/") or None
        if pretrained:
            kwargs["pretrained"] = tag
    elif not pretrained:
        kwargs["load_weights"] = False
    # one hub probe: fail at once (with the download command) or read the cache only
    local = hub.local_files_only(repo) if (repo and pretrained) else hub.hub_offline()
    try:
        with _hub_offline_mode(local):
            model = open_clip.create_model(arch, **kwargs)
            model = model.to(_resolve_dtype(dtype))
            return wrap_open_clip(model, name, device)
    except (RuntimeError, *_network_errors()) as exc:
        raise unavailable_error(name, exc) from exc


@contextlib.contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (cache only, no retries) for the duration, if asked."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old
