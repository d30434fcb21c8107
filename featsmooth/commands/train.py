"""``featsmooth train-plugin``: train a purifier + smoothness mapper for a frozen encoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from featsmooth import config as C
from featsmooth import loading
from featsmooth.commands.common import require_images, resolve
from featsmooth.data.sources import folder_images, select_images
from featsmooth.errors import InputError


def train_plugin(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_config: Callable[[Any], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a purifier + smoothness mapper for a frozen encoder and save it (safetensors + card).

    Wraps :func:`featsmooth.plugin.train_plugin` and :func:`featsmooth.plugin.save_plugin`;
    settings are the fields of :class:`featsmooth.config.TrainPluginConfig`. Training
    checkpoints go to ``<out>/checkpoint`` and a rerun resumes from them. Returns
    ``{"out": folder, "scores": {"before": ..., "after": ...}, "card": card}``, the scores
    being Monte-Carlo estimates of S on the first training images (not certificates).
    """
    from featsmooth.data.crops import random_crops
    from featsmooth.plugin import pretrain_purifier, save_plugin
    from featsmooth.plugin import train_plugin as _train

    cfg = resolve(C.TrainPluginConfig, "train-plugin", model, config_file, settings)
    require_images(cfg, "training images")
    unknown = sorted(set(cfg.parts) - {"purifier", "mapper"})
    if unknown or not cfg.parts:
        raise InputError(f"unknown part(s) {unknown}; choose purifier and/or mapper")
    if on_config is not None:
        on_config(cfg)
    weights = parse_loss_weights(cfg.loss_weights)
    if cfg.val_images is not None and not Path(cfg.val_images).exists():
        raise FileNotFoundError(f"validation image folder or file not found: {cfg.val_images}")
    encoder = loading.load_model(cfg.model, cfg.device, cfg.dtype)
    size = loading.run_image_size(cfg, encoder)
    # random crops come from images loaded at twice the training size
    source = select_images(cfg.images, cfg.photos, 2 * size if cfg.crops else size, None)
    images = source.all_images()
    description = f"{source.description} ({len(source)} images, {size} px)"
    if cfg.crops:
        images = random_crops(list(images), cfg.crops, size, seed=cfg.seed)
        description = f"{cfg.crops} random crops ({size} px, scale 0.3-1) of {description}"
    val = folder_images(cfg.val_images, size).all_images() if cfg.val_images else None
    out = Path(cfg.out)
    shared = {"sigmas": cfg.sigmas, "seed": cfg.seed, "device": cfg.device,
              "progress": cfg.progress}  # fmt: skip
    init = None
    if cfg.pretrain_steps:
        patch = min(64, size)
        patches = random_crops(list(images), 4096, patch, seed=cfg.seed + 1)
        init = pretrain_purifier(
            encoder, patches, steps=cfg.pretrain_steps, checkpoint_dir=out / "pretrain-checkpoint",
            data_description=f"4096 random {patch} px crops of {description}", **shared,
        )  # fmt: skip
    plugin = _train(
        encoder, images, sigma_sampling=cfg.sigma_sampling, parts=cfg.parts, steps=cfg.steps,
        batch_size=cfg.batch_size, lr=cfg.lr, loss_weights=weights,
        draws_per_image=cfg.draws_per_image, val_images=val, val_every=cfg.val_every,
        checkpoint_dir=out / "checkpoint", init=init, data_description=description,
        agreement_scale=cfg.agreement_scale, **shared,
    )  # fmt: skip
    if init is not None:
        plugin.card["pretraining"] = init.card["training"]
    save_plugin(plugin, out)
    C.save_config(cfg, out, "train-plugin")
    return {"out": out, "scores": plugin.card.get("scores", {}), "card": plugin.card}


def parse_loss_weights(text: str | dict | None) -> dict[str, float] | None:
    """``"clean_consistency=1,pairwise_consistency=0.5"`` (or a mapping) as loss weights;
    unnamed terms keep their defaults (:class:`featsmooth.plugin.LossWeights`)."""
    from featsmooth.plugin import LossWeights

    if text is None or text == "":
        return None
    if isinstance(text, dict):
        items = dict(text)
    else:
        items = {}
        for part in str(text).split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise InputError(f"loss weights: expected name=value, got {part.strip()!r}")
            try:
                items[key.strip()] = float(value)
            except ValueError:
                raise InputError(f"loss weights: {value.strip()!r} is not a number") from None
    return LossWeights.from_dict({**LossWeights().to_dict(), **items}).to_dict()
