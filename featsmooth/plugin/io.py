"""Save and load plug-ins: ``plugin.safetensors`` (weights) + ``plugin.json`` (the card).

Never pickle: weights are read with safetensors only, the card is plain JSON. Loading
rebuilds the architecture from the card and requires the tensors to match it exactly
(InputError for an unknown architecture, missing, unexpected or mis-shaped tensors).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from featsmooth.errors import InputError
from featsmooth.plugin.mapper import MapperConfig, SmoothnessMapper
from featsmooth.plugin.plugged import PARTS, Plugin
from featsmooth.plugin.purifier import Purifier, PurifierConfig

WEIGHTS_FILE = "plugin.safetensors"
CARD_FILE = "plugin.json"
FORMAT = "featsmooth-plugin/1"
_BUILDERS = {
    "purifier": (Purifier, PurifierConfig),
    "mapper": (SmoothnessMapper, MapperConfig),
}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("featsmooth", "numpy", "safetensors"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - version is informational only
            out[mod] = "unknown"
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_plugin(plugin: Plugin, folder: str | Path) -> Path:
    """Write ``folder/plugin.safetensors`` and ``folder/plugin.json``; returns ``folder``.

    The card records the format, the encoder name and fingerprint, the trained sigmas, the
    architecture of each part, the parameter counts, library versions and everything in
    ``plugin.card`` (loss weights, data, steps, seed, scores before/after, history).
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{part}.{k}": v.detach().to("cpu").contiguous()
        for part, m in plugin.modules().items()
        for k, v in m.state_dict().items()
    }
    card: dict[str, Any] = {
        "format": FORMAT,
        "encoder": {"name": plugin.encoder_name, "fingerprint": plugin.encoder_fingerprint},
        "sigmas": plugin.sigmas,
        "sigma_range": list(plugin.sigma_range),
        "parts": list(plugin.parts),
        "architecture": {
            part: {"kind": type(m).kind, **m.config.to_dict()}
            for part, m in plugin.modules().items()
        },
        "num_parameters": plugin.num_parameters,
        "versions": _versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card.update({k: v for k, v in plugin.card.items() if k not in card})
    _atomic_write(
        folder / WEIGHTS_FILE,
        save(tensors, metadata={"format": FORMAT, "parts": ",".join(plugin.parts)}),
    )
    _atomic_write(folder / CARD_FILE, json.dumps(card, indent=2, default=str).encode())
    return folder


def read_card(folder: str | Path) -> dict[str, Any]:
    """The JSON card of a saved plug-in (InputError if missing or not a plug-in card)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise InputError(f"no {CARD_FILE} in {Path(folder).name}: not a saved plug-in folder")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{CARD_FILE} is not valid JSON ({err})") from err
    if card.get("format") != FORMAT:
        raise InputError(f"{CARD_FILE} has format {card.get('format')!r}, expected {FORMAT!r}")
    return card


def load_plugin(folder: str | Path, *, device: torch.device | str | None = None) -> Plugin:
    """Rebuild a :class:`Plugin` saved by :func:`save_plugin` (safetensors only, no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    card = read_card(folder)
    wpath = folder / WEIGHTS_FILE
    if not wpath.is_file():
        raise InputError(f"no {WEIGHTS_FILE} in {folder.name}")
    try:
        tensors = load_file(str(wpath), device="cpu")
    except Exception as err:
        raise InputError(f"{WEIGHTS_FILE} is unreadable ({err})") from err
    modules: dict[str, torch.nn.Module] = {}
    arch = card.get("architecture") or {}
    for part in card.get("parts", []):
        if part not in PARTS or part not in arch:
            raise InputError(f"the card lists an unknown or undescribed part {part!r}")
        cls, cfg_cls = _BUILDERS[part]
        spec = dict(arch[part])
        kind = spec.pop("kind", None)
        if kind != cls.kind:
            raise InputError(
                f"the card's {part} architecture {kind!r} is not supported here (expected "
                f"{cls.kind!r}); upgrade featsmooth"
            )
        try:
            module = cls(cfg_cls(**spec))
        except TypeError as err:
            raise InputError(f"the card's {part} architecture has unknown fields ({err})") from err
        prefix = f"{part}."
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        bad = sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
        if missing or unexpected or bad:
            raise InputError(
                f"{WEIGHTS_FILE} does not match the card's {part} architecture "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]})"
            )
        module.load_state_dict(sd)
        modules[part] = module.eval().requires_grad_(False)
    stray = sorted(k for k in tensors if k.split(".", 1)[0] not in modules)
    if stray:
        raise InputError(f"{WEIGHTS_FILE} holds tensors of parts not in the card: {stray[:3]}")
    enc = card.get("encoder") or {}
    if "fingerprint" not in enc:
        raise InputError("the card does not record the encoder fingerprint")
    extra = {
        k: v
        for k, v in card.items()
        if k not in ("format", "encoder", "sigmas", "sigma_range", "parts", "architecture")
    }
    plugin = Plugin(
        modules.get("purifier"),
        modules.get("mapper"),
        sigmas=card.get("sigmas") or [],
        encoder_name=enc.get("name", "encoder"),
        encoder_fingerprint=enc["fingerprint"],
        card=extra,
    )
    if device is not None:
        plugin.to(device)
    return plugin
