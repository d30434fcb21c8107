"""Resumable training checkpoints of a plug-in, without pickle.

One safetensors file (``checkpoint.safetensors``) holds the modules, the AdamW state and a
JSON state in its metadata; it is written to a temporary file and moved in place, beside a
readable ``checkpoint.json`` of the same state (less the optimizer's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsmooth.errors import InputError
from featsmooth.records import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.safetensors"
_STATE_KEY = "featsmooth_plugin_checkpoint"


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    folder: str | Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write modules + AdamW state + JSON ``state`` atomically to ``folder/checkpoint.*``."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.{part}.{k}": v.detach().to("cpu").contiguous()
        for part, m in modules.items()
        for k, v in m.state_dict().items()
    }
    opt_tensors, opt_meta = _optimizer_to_flat(optimizer)
    tensors.update(opt_tensors)
    full_state = {**state, "optimizer": opt_meta}
    blob = save(tensors, metadata={_STATE_KEY: json.dumps(full_state)})
    path = folder / CHECKPOINT_FILE
    atomic_write_bytes(path, blob)
    readable = {k: v for k, v in full_state.items() if k != "optimizer"}
    atomic_write_bytes(folder / "checkpoint.json", json.dumps(readable, indent=2).encode())
    return path


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(tensors, state)`` from ``folder/checkpoint.safetensors``, or None if absent."""
    from safetensors import safe_open

    path = Path(folder) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise InputError(f"checkpoint {path.name} is unreadable ({err}); delete it") from err
    if _STATE_KEY not in meta:
        raise InputError(f"{path.name} is not a featsmooth plug-in checkpoint")
    return tensors, json.loads(meta[_STATE_KEY])
