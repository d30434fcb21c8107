"""Save and load plug-ins: ``plugin.safetensors`` (weights) + ``plugin.json`` (the card).

Never pickle: weights are read with safetensors only, the card is plain JSON. Loading
rebuilds the architecture from the card and requires the tensors to match it exactly
(InputError for an unknown architecture, missing, unexpected or mis-shaped tensors).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from featsmooth.errors import InputError
from featsmooth.files import atomic_write_bytes
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
    atomic_write_bytes(
        folder / WEIGHTS_FILE,
        save(tensors, metadata={"format": FORMAT, "parts": ",".join(plugin.parts)}),
    )
    atomic_write_bytes(folder / CARD_FILE, json.dumps(card, indent=2, default=str).encode())
    return folder


#: largest card read (a card is a few kilobytes)
MAX_CARD_BYTES = 1 << 20


def read_card(folder: str | Path) -> dict[str, Any]:
    """The JSON card of a saved plug-in (InputError if missing or not a plug-in card)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise InputError(f"no {CARD_FILE} in {Path(folder).name}: not a saved plug-in folder")
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise InputError(f"{CARD_FILE} is over {MAX_CARD_BYTES} bytes: not a plug-in card")
        card = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(
            f"{CARD_FILE} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{CARD_FILE} is not valid JSON ({_short(err)})") from None
    except OSError as err:
        raise InputError(f"cannot read {CARD_FILE}: {err.strerror or err}") from None
    if not isinstance(card, dict):
        raise InputError(f"{CARD_FILE} must hold a JSON object, not a {type(card).__name__}")
    if card.get("format") != FORMAT:
        raise InputError(
            f"{CARD_FILE} has format {_short(card.get('format'))}, expected {FORMAT!r}"
        )
    if not isinstance(card.get("architecture", {}), dict):
        raise InputError(f"{CARD_FILE}: 'architecture' must be an object of parts")
    parts = card.get("parts", [])
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise InputError(f"{CARD_FILE}: 'parts' must be a list of part names")
    return card


def _short(value: Any, limit: int = 80) -> str:
    text = str(value) if isinstance(value, Exception) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: architecture fields that are counts, with their smallest allowed value
_COUNTS = {
    "in_channels": 1, "base_channels": 1, "patch": 1, "emb_dim": 2, "dim": 1, "hidden": 1,
    "heads": 0, "kernel": 1,
}  # fmt: skip
#: largest count accepted (a width of 2**16 already means gigabytes of weights)
_MAX_COUNT = 1 << 16


def _check_spec(part: str, spec: dict[str, Any]) -> None:
    """The card's architecture values are plain counts in range (before anything is built)."""
    where = f"the card's {part} architecture"
    for name, value in spec.items():
        if name in _COUNTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{where}: {name} must be an integer, got {_short(value)}")
            if not _COUNTS[name] <= value <= _MAX_COUNT:
                raise InputError(
                    f"{where}: {name} = {value} is out of range ({_COUNTS[name]}..{_MAX_COUNT})"
                )
        elif name == "channel_mults":
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= 8
                or not all(type(v) is int and 1 <= v <= 64 for v in value)
            ):
                raise InputError(
                    f"{where}: channel_mults must be 1 to 8 integers in 1..64, got {_short(value)}"
                )
        elif name == "sigma_data":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"{where}: sigma_data must be a positive number")
        elif name == "tokens":
            if not isinstance(value, bool):
                raise InputError(f"{where}: tokens must be true or false")
    if spec.get("emb_dim", 2) % 2:
        raise InputError(f"{where}: emb_dim must be even, got {spec['emb_dim']}")
    if spec.get("kernel", 1) % 2 == 0:
        raise InputError(f"{where}: kernel must be odd, got {spec['kernel']}")


def _build(part: str, spec: dict[str, Any], device: str | None = None) -> torch.nn.Module:
    cls, cfg_cls = _BUILDERS[part]
    try:
        if device is None:
            return cls(cfg_cls(**spec))
        with torch.device(device):
            return cls(cfg_cls(**spec))
    except InputError:
        raise
    except TypeError as err:
        raise InputError(
            f"the card's {part} architecture has unknown fields ({_short(err)})"
        ) from None
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        raise InputError(f"the card's {part} architecture is invalid ({_short(err)})") from None


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
        cls, _ = _BUILDERS[part]
        if not isinstance(arch[part], dict):
            raise InputError(f"the card's {part} architecture must be an object")
        spec = dict(arch[part])
        kind = spec.pop("kind", None)
        if kind != cls.kind:
            raise InputError(
                f"the card's {part} architecture {_short(kind)} is not supported here "
                f"(expected {cls.kind!r}); upgrade featsmooth"
            )
        _check_spec(part, spec)
        # the shapes the card implies, from a model without storage ("meta"): the weights
        # are checked against them before anything the card claims is allocated
        expected = _build(part, spec, "meta").state_dict()
        prefix = f"{part}."
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        bad = sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
        if missing or unexpected or bad:
            raise InputError(
                f"{WEIGHTS_FILE} does not match the card's {part} architecture "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]})"
            )
        module = _build(part, spec)
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
