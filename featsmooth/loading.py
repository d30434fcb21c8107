"""Loading what a run needs: the encoder, its dtype and image size, a plug-in, zero-shot
classes, the noise centre, and the tuned batch size and dtype."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsmooth.errors import InputError

__all__ = [
    "CENTER_IMAGES",
    "DTYPES",
    "ModelSpec",
    "apply_tuning",
    "load_model",
    "load_module",
    "load_plugin",
    "model_image_size",
    "model_name",
    "noise_center",
    "run_image_size",
    "torch_dtype",
    "zero_shot_classes",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
#: images drawn (uniform in [0, 1]) to estimate the centre of the feature space (--center)
CENTER_IMAGES = 64

#: a registry name, an encoder module, or a loader called as ``loader(device=, dtype=)``
ModelSpec = str | nn.Module | Callable[..., nn.Module]


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``"bfloat16"`` (or ``"bf16"``, ``"torch.bfloat16"``) -> ``torch.bfloat16``;
    ``None``: float32; a floating-point ``torch.dtype`` is returned as it is.

    Raises:
        InputError: not one of :data:`DTYPES` (or their aliases).
    """
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        if not name.is_floating_point:
            raise InputError(f"dtype must be a floating-point dtype, got {name}")
        return name
    text = str(name).removeprefix("torch.")
    text = _DTYPE_ALIASES.get(text, text)
    if text not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[text]


def load_model(name: str, device: str | None = None, dtype: str | None = None) -> nn.Module:
    """A registered encoder (or local folder / hub id) in eval mode.

    Raises:
        InputError: an unknown device, or CUDA asked for where there is none.
        ModelUnavailableError: the model's package or weights are not installed.
    """
    from featsmooth.encoders.registry import load_encoder

    if device is not None:
        try:
            torch.device(device)
        except RuntimeError:
            raise InputError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1, mps)") from None
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available here")
    dt = torch_dtype(dtype)
    encoder = load_encoder(name, device=device, dtype=None if dt == torch.float32 else dt)
    return encoder.eval()


def model_name(model: ModelSpec) -> str:
    """The name a model is recorded under (registry name, ``.name``, or its type)."""
    if isinstance(model, str):
        return model
    if isinstance(model, nn.Module):
        return str(getattr(model, "name", type(model).__name__))
    return str(getattr(model, "__name__", type(model).__name__))


def load_module(model: ModelSpec, device: torch.device | None, dtype: torch.dtype) -> nn.Module:
    """A registry name, a module, or a loader ``(device=, dtype=) -> module`` as a module
    on ``device`` (``None``: where it is) in ``dtype``, in eval mode."""
    if isinstance(model, str):
        from featsmooth.encoders.registry import load_encoder

        module = load_encoder(model, device=device, dtype=dtype)
    elif isinstance(model, nn.Module):
        module = model
    elif callable(model):
        from featsmooth.encoders.registry import call_loader

        module = call_loader(model, device=device, dtype=dtype)
    else:
        raise InputError(
            "model must be a registry name, an nn.Module or a loader returning one, "
            f"got {type(model).__name__}"
        )
    if device is not None:
        module = module.to(device)
    if dtype != torch.float32:
        module = module.to(dtype=dtype)
    return module.eval()


def load_plugin(folder: str | Path, device: str | None = None) -> Any:
    """The trained plug-in (purifier + mapper) saved in ``folder``.

    Raises:
        FileNotFoundError: no such folder.
    """
    from featsmooth.plugin import load_plugin as load

    if not Path(folder).exists():
        raise FileNotFoundError(f"plug-in folder not found: {folder}")
    return load(folder, device=device)


def model_image_size(encoder: Any, default: int = 224) -> int:
    """The square image side the encoder expects (``input_shape`` or ``image_size``)."""
    shape = getattr(encoder, "input_shape", None)
    if shape is not None and len(shape) == 3:
        return int(shape[-1])
    size = getattr(encoder, "image_size", None)
    if isinstance(size, (tuple, list)) and size:
        return int(size[0])
    if isinstance(size, int):
        return size
    return default


def run_image_size(cfg: Any, encoder: Any) -> int:
    """The side images are resized to: ``--size`` if given, else the encoder's own.

    A size below the encoder's own is allowed (a cheap run, an experiment) but warned
    about (check ``image-size-small``): the encoder then sees images it was not trained on,
    and its predictions may be meaningless.
    """
    native = model_image_size(encoder)
    size = getattr(cfg, "size", None) or native
    declared = hasattr(encoder, "input_shape") or hasattr(encoder, "image_size")
    if declared and size < native:
        from featsmooth.checks import SanityWarning

        warnings.warn(
            SanityWarning(
                "image-size-small",
                f"--size {size} is below the {native} px this encoder expects: its features "
                "and predictions at this size may mean little.",
            ),
            stacklevel=3,
        )
    return size


def apply_tuning(cfg: Any, encoder: Any, images: torch.Tensor) -> tuple[Any, Any, Any]:
    """With ``cfg.tune``: measure (or read from the cache) the fastest batch size and dtype
    for this encoder and device (:func:`featsmooth.tuning.tune`; bfloat16 only where its
    features agree with float32 ones) and return ``(cfg, encoder, tuning)`` with both set,
    the encoder converted to the chosen dtype. The choice is part of the run settings.
    Without ``cfg.tune``: ``(cfg, encoder, None)`` unchanged."""
    if not getattr(cfg, "tune", False):
        return cfg, encoder, None
    import dataclasses

    from featsmooth.tuning import tune

    if torch_dtype(getattr(cfg, "dtype", "float32")) != torch.float32:
        raise InputError("--tune chooses the dtype itself: drop --dtype (or drop --tune)")
    choice = tune(encoder, images, cfg.sigma, device=cfg.device)
    if choice.dtype != "float32":
        encoder = encoder.to(torch_dtype(choice.dtype))
    return (
        dataclasses.replace(cfg, batch_size=choice.batch_size, dtype=choice.dtype),
        encoder,
        choice,
    )


def _read_class_names(spec: str) -> list[str]:
    path = Path(spec)
    if path.suffix.lower() in (".txt", ".csv") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"class-name file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = spec.split(",")
    names = [n.strip() for n in names if n.strip()]
    if len(names) < 2:
        raise InputError("zero-shot classification needs at least 2 class names")
    return names


def zero_shot_classes(
    encoder: Any, classes: str | None = None, task: str = "auto"
) -> tuple[list[str], torch.Tensor] | None:
    """Class names and unit text embeddings ``(K, D)`` for zero-shot certification.

    ``classes``: comma-separated names or a text file (one per line); default for text-image
    models: the 1000 ImageNet classes (prompt "a photo of a {}."). Returns None for
    ``task="features"`` or a model without text (``task="auto"``).
    """
    if task == "features":
        if classes:
            raise InputError("--classes needs --task zero-shot or auto, not features")
        return None
    has_text = bool(getattr(encoder, "supports_text", False))
    if not has_text:
        if task == "zero-shot" or classes:
            name = getattr(encoder, "name", type(encoder).__name__)
            raise InputError(
                f"model '{name}' has no text encoder, so it cannot classify zero-shot; "
                "use --task features"
            )
        return None
    from featsmooth.data import imagenet_classes
    from featsmooth.tasks.zero_shot import class_embeddings

    if classes:
        names = _read_class_names(classes)
        return names, class_embeddings(encoder, names)
    names = imagenet_classes()
    table = getattr(encoder, "class_table", None)
    if isinstance(table, torch.Tensor) and table.shape[0] == len(names):
        return names, torch.nn.functional.normalize(table.detach().float(), dim=-1)
    return names, class_embeddings(encoder, names)


@torch.no_grad()
def noise_center(encoder: Any, shape: Sequence[int], device: Any = None) -> torch.Tensor:
    """Centre of the feature space: mean flattened raw feature of uniform-noise images.

    Computed from :data:`CENTER_IMAGES` images with a fixed seed, so it does not depend on
    the inputs certified (a fixed centre keeps every certificate valid; it only changes
    which features are certified).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((CENTER_IMAGES, *shape), generator=gen)
    dev = device if device is not None else getattr(encoder, "device", "cpu")
    dtype = getattr(encoder, "dtype", torch.float32)
    feats = [encoder(chunk.to(dev, dtype)).flatten(1).double().cpu() for chunk in x.split(16)]
    return torch.cat(feats).mean(0)
