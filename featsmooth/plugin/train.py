"""Self-supervised training of a plug-in (purifier and/or mapper) for a frozen encoder.

:func:`train_plugin` needs only unlabelled images. Every step draws, for each image x of a
batch, a noise level sigma from the trained set (or range) and ``draws_per_image`` Gaussian
perturbations, runs ``f'(x+eps) = M(f(P(x+eps, sigma)), sigma)`` with gradients flowing
*through* the frozen encoder f into the purifier, and minimises the weighted sum of the
losses in :mod:`featsmooth.plugin.losses`.

Guarantees:
- the encoder's weights are never updated: its parameters get ``requires_grad=False``
  during training (flags and train/eval mode are restored afterwards) and a digest of all
  its tensors is compared bit for bit at the end (FeatureError if it changed, e.g. an
  encoder that updates batch-norm statistics in eval mode);
- training is resumable and deterministic for tensor data: step ``t`` uses its own random
  generator seeded from ``(seed, t)`` (:func:`featsmooth.seeds.noise_seed`), and
  checkpoints (one safetensors file holding the modules, the AdamW state and a JSON state
  in its metadata, written to a temporary file and moved in place with ``os.replace``)
  restore everything; an interrupted run resumed from its checkpoint ends with the same
  weights as an uninterrupted one. No pickle anywhere.

The training data (:mod:`featsmooth.plugin.batches`), the scores (:func:`evaluate_plugin`,
:mod:`featsmooth.plugin.evaluation`) and the checkpoints (:mod:`featsmooth.plugin.checkpoint`)
have modules of their own; their public names are importable from here as well.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsmooth import seeds
from featsmooth.errors import FeatureError, InputError
from featsmooth.plugin import losses as L
from featsmooth.plugin.batches import _as_image_tensor, _Batches, _describe_data, _resolve_data
from featsmooth.plugin.checkpoint import (
    CHECKPOINT_FILE,
    _optimizer_from_flat,
    load_checkpoint,
    save_checkpoint,
)
from featsmooth.plugin.evaluation import (
    _encoder_dtype,
    _first_device,
    evaluate_plugin,
    weights_digest,
)
from featsmooth.plugin.mapper import MapperConfig, SmoothnessMapper
from featsmooth.plugin.plugged import (
    PARTS,
    Plugin,
    encoder_fingerprint,
    encoder_name,
)
from featsmooth.plugin.purifier import Purifier, PurifierConfig
from featsmooth.progress import Bar

# ---------------------------------------------------------------------------- training


def _step_generator(seed: int, step: int) -> torch.Generator:
    return seeds.generator(seed, ("step", step), "train")


def _sigma_set(sigmas: float | Sequence[float]) -> list[float]:
    vals = [float(sigmas)] if isinstance(sigmas, (int, float)) else [float(s) for s in sigmas]
    if not vals or any(not (s > 0 and math.isfinite(s)) for s in vals):
        raise InputError(f"sigmas must be positive numbers, got {sigmas}")
    return sorted(set(vals))


def _default_mapper_config(feature_shape: tuple[int, ...]) -> MapperConfig:
    if len(feature_shape) == 1:
        dim, tokens = feature_shape[0], False
    elif len(feature_shape) == 2:
        dim, tokens = feature_shape[1], True
    elif len(feature_shape) == 3:
        dim, tokens = feature_shape[0], True
    else:
        raise InputError(
            f"the mapper supports features (D,), (T, D) or (D, H, W), got {feature_shape}"
        )
    hidden = min(512, max(128, 8 * math.ceil(dim / 8)))
    return MapperConfig(dim=dim, hidden=hidden, tokens=tokens)


def train_plugin(
    encoder: nn.Module,
    images_or_loader: torch.Tensor | Iterable | str | Path,
    *,
    sigmas: float | Sequence[float] = (0.25,),
    sigma_sampling: str = "set",
    parts: Sequence[str] = PARTS,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 16,
    lr: float = 2e-4,
    weight_decay: float = 0.01,
    loss_weights: L.LossWeights | dict | None = None,
    draws_per_image: int = 2,
    val_images: torch.Tensor | None = None,
    val_every: int = 50,
    val_draws: int = 16,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    purifier_config: PurifierConfig | dict | None = None,
    mapper_config: MapperConfig | dict | None = None,
    init: Plugin | None = None,
    data_description: str | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    class_embeddings: torch.Tensor | None = None,
    agreement_scale: float = 100.0,
) -> Plugin:
    """Train a purifier and/or a smoothness mapper for the frozen ``encoder``.

    Args:
        encoder: image encoder (pixel units in, features out); never modified.
        images_or_loader: clean images ``(N, C, H, W)`` in [0, 1] (or uint8), an iterable of
            such batches (or ``(images, labels)`` tuples; re-iterated each epoch and restarted
            from its beginning on resume), or a folder (via ``featsmooth.data.loaders``).
        sigmas: training noise levels (pixel units); ``sigma_sampling="set"`` draws from
            them, ``"uniform"`` draws uniformly between their min and max. The plug-in
            accepts sigmas in ``[min, max]`` afterwards.
        parts: which modules to train: ``("purifier",)``, ``("mapper",)`` or both.
            Modules of ``init`` (a previously trained Plugin) that are not in ``parts`` are
            used frozen: two-stage training is ``train_plugin(.., parts=("purifier",))``
            then ``train_plugin(.., parts=("mapper",), init=stage1)``.
        steps / epochs: length of training (``steps`` wins; default 8 epochs).
        batch_size, lr, weight_decay: AdamW settings (lr 2e-4 as in the paper).
        loss_weights: :class:`~featsmooth.plugin.losses.LossWeights` or a dict of its fields.
        draws_per_image: noise draws per image and step (>= 2 for the pairwise term).
        val_images, val_every, val_draws: held-out images, validated every ``val_every``
            steps with :func:`evaluate_plugin` (fixed noise seeds) and at the end.
        checkpoint_dir, checkpoint_every, resume: checkpoint every ``checkpoint_every`` steps
            (default ``val_every``) and at the end; with ``resume`` continue from one.
        seed: seeds initialisation, batch order and every noise draw.
        device: where to train (default: the encoder's device).
        progress: show a rich progress bar.
        purifier_config, mapper_config: architecture overrides.
        data_description: free text recorded in the card.
        callback: called as ``callback(step, metrics)`` after every step (may raise to stop).
        class_embeddings, agreement_scale: unit class rows ``(C, D)`` and the logit scale of
            the ``agreement`` loss term (default rows: the encoder's zero-shot ImageNet
            classes, :func:`featsmooth.loading.zero_shot_classes`).

    Returns:
        the trained :class:`Plugin`, its card holding every setting, the loss history and
        the mean score before (plain encoder) and after (plugged) on the validation images.
    """
    t_start = time.perf_counter()
    parts = tuple(parts)
    if not parts or set(parts) - set(PARTS):
        raise InputError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
    if sigma_sampling not in ("set", "uniform"):
        raise InputError("sigma_sampling must be 'set' or 'uniform'")
    sigma_list = _sigma_set(sigmas)
    if batch_size < 1 or draws_per_image < 1 or lr <= 0:
        raise InputError("batch_size and draws_per_image must be >= 1 and lr > 0")
    weights = (
        loss_weights
        if isinstance(loss_weights, L.LossWeights)
        else L.LossWeights.from_dict(loss_weights)
    )
    if draws_per_image < 2 and weights.pairwise_consistency > 0:
        raise InputError("the pairwise consistency loss needs draws_per_image >= 2")
    classes = _agreement_classes(encoder, weights, class_embeddings, agreement_scale)
    data = _resolve_data(images_or_loader, batch_size)
    batches = _Batches(data, batch_size, seed)
    if steps is None:
        per = batches.steps_per_epoch
        if per is None:
            raise InputError("give steps= for a loader without a length")
        steps = (epochs if epochs is not None else 8) * per
    if steps < 1:
        raise InputError("steps must be >= 1")
    if val_images is not None:
        val_images = _as_image_tensor(val_images, "val_images")
    device = torch.device(device) if device is not None else _first_device(encoder)
    enc_dtype = _encoder_dtype(encoder)
    checkpoint_every = checkpoint_every or val_every

    fingerprint = encoder_fingerprint(encoder)
    if init is not None:
        init.check_encoder(encoder)
    digest_before = weights_digest(encoder)
    saved_flags = [(p, p.requires_grad) for p in encoder.parameters()]
    was_training = encoder.training
    encoder.requires_grad_(False)
    encoder.eval()
    try:
        sample = batches.get(0)
        channels = sample.shape[1]
        cfg = purifier_config
        if isinstance(cfg, dict):
            cfg = PurifierConfig(**{"in_channels": channels, **cfg})
        cfg = cfg or PurifierConfig(in_channels=channels)
        if "purifier" in parts and cfg.in_channels != channels:
            raise InputError(
                f"purifier in_channels={cfg.in_channels} but the images have {channels} channels"
            )
        try:
            with torch.no_grad():
                feat_shape = tuple(encoder(sample[:1].to(device, enc_dtype)).shape[1:])
        except InputError:
            raise
        except Exception as err:
            raise InputError(
                f"the encoder fails on training images of shape {tuple(sample.shape[1:])}: {err}"
            ) from err

        if classes is not None and classes.shape[1] != math.prod(feat_shape):
            raise InputError(
                f"class_embeddings have {classes.shape[1]} dims but the encoder's features "
                f"have {math.prod(feat_shape)}"
            )

        # ---- modules
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeds.noise_seed(seed, ("init",), "train"))
            # copies: training never modifies the modules of the plug-in passed as init
            purifier = copy.deepcopy(init.purifier) if init is not None else None
            mapper = copy.deepcopy(init.mapper) if init is not None else None
            if "purifier" in parts and purifier is None:
                purifier = Purifier(cfg)
            if "mapper" in parts and mapper is None:
                cfg_m = mapper_config
                if isinstance(cfg_m, dict):
                    cfg_m = MapperConfig(
                        **{**_default_mapper_config(feat_shape).to_dict(), **cfg_m}
                    )
                mapper = SmoothnessMapper(cfg_m or _default_mapper_config(feat_shape))
        modules = {p: m for p, m in (("purifier", purifier), ("mapper", mapper)) if m is not None}
        for name, m in modules.items():
            m.to(device=device, dtype=torch.float32)
            m.requires_grad_(name in parts)
            m.train(name in parts)
        params = [p for n in parts for p in modules[n].parameters()]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

        config = {
            "encoder_name": encoder_name(encoder),
            "encoder_fingerprint": fingerprint,
            "parts": list(parts),
            "frozen_parts": [n for n in modules if n not in parts],
            "sigmas": sigma_list,
            "sigma_sampling": sigma_sampling,
            "architecture": {
                n: {"kind": type(m).kind, **m.config.to_dict()} for n, m in modules.items()
            },
            "loss_weights": weights.to_dict(),
            "steps": steps,
            "batch_size": batch_size,
            "draws_per_image": draws_per_image,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "optimizer": "AdamW",
        }
        if classes is not None:
            config["agreement"] = {
                "classes": int(classes.shape[0]),
                "scale": float(agreement_scale),
                "classes_digest": _tensor_digest(classes),
            }
        history: list[dict[str, Any]] = []
        validations: list[dict[str, Any]] = []
        start_step = 0
        if checkpoint_dir is not None and resume:
            loaded = load_checkpoint(checkpoint_dir)
            if loaded is not None:
                tensors, state = loaded
                saved_cfg = state.get("config", {})
                now_cfg = json.loads(json.dumps(config))
                diff = sorted(k for k in now_cfg if k != "steps" and saved_cfg.get(k) != now_cfg[k])
                if diff:
                    raise InputError(
                        f"the checkpoint in {Path(checkpoint_dir).name} was written with "
                        f"different settings ({', '.join(diff)}); use another checkpoint_dir "
                        "or resume=False"
                    )
                for name, m in modules.items():
                    prefix = f"model.{name}."
                    sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                    m.load_state_dict(sd)
                _optimizer_from_flat(optimizer, tensors, state["optimizer"])
                start_step = int(state["step"])
                history = state.get("history", [])
                validations = state.get("validations", [])

        score_images = val_images
        score_label = "validation images"
        if score_images is None and torch.is_tensor(data):
            score_images, score_label = data[:8], "training images (first 8)"
        before = None
        if score_images is not None:
            before = evaluate_plugin(
                encoder,
                None,
                score_images,
                sigma_list,
                draws=val_draws,
                seed=seed + 1,
                device=device,
                classes=classes,
            )

        def current_plugin() -> Plugin:
            return Plugin(
                modules.get("purifier"),
                modules.get("mapper"),
                sigmas=sigma_list,
                encoder_name=config["encoder_name"],
                encoder_fingerprint=fingerprint,
            )

        def validate(step: int) -> dict[str, Any]:
            for m in modules.values():
                m.eval()
            res = evaluate_plugin(
                encoder,
                current_plugin(),
                val_images,
                sigma_list,
                draws=val_draws,
                seed=seed + 1,
                device=device,
                classes=classes,
            )
            for n, m in modules.items():
                m.to(dtype=torch.float32).train(n in parts)
            return {"step": step, "metrics": res}

        def checkpoint(step: int) -> None:
            if checkpoint_dir is not None:
                save_checkpoint(
                    checkpoint_dir,
                    modules,
                    optimizer,
                    {
                        "step": step,
                        "config": config,
                        "history": history,
                        "validations": validations,
                    },
                )

        step_times: list[float] = []
        with Bar(progress, steps, "plug-in", unit="steps", completed=start_step) as bar:
            for step in range(start_step, steps):
                t0 = time.perf_counter()
                metrics = _train_step(
                    encoder,
                    modules,
                    parts,
                    optimizer,
                    batches.get(step),
                    weights,
                    sigma_list,
                    sigma_sampling,
                    draws_per_image,
                    _step_generator(seed, step),
                    device,
                    enc_dtype,
                    classes,
                    agreement_scale,
                )
                step_times.append(time.perf_counter() - t0)
                history.append({"step": step + 1, **metrics})
                done = step + 1
                if val_images is not None and val_every and (done % val_every == 0):
                    validations.append(validate(done))
                if checkpoint_every and done % checkpoint_every == 0 and done < steps:
                    checkpoint(done)
                bar.update(done, _progress_info(metrics, validations[-1] if validations else None))
                if callback is not None:
                    callback(done, metrics)
            if val_images is not None and (not validations or validations[-1]["step"] != steps):
                validations.append(validate(steps))
            checkpoint(steps)
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        encoder.train(was_training)
    if weights_digest(encoder) != digest_before:
        raise FeatureError(
            "the frozen encoder's weights changed during plug-in training (does it update "
            "buffers such as batch-norm statistics in eval mode?)"
        )

    for m in modules.values():
        m.eval().requires_grad_(False)
    plugin = current_plugin()
    after = None
    if val_images is not None and validations and validations[-1]["step"] == steps:
        after = validations[-1]["metrics"]  # the same images, seed and draws
    elif score_images is not None:
        after = evaluate_plugin(
            encoder,
            plugin,
            score_images,
            sigma_list,
            draws=val_draws,
            seed=seed + 1,
            device=device,
            classes=classes,
        )
    plugin.card = {
        "training": {
            **config,
            "data": data_description or _describe_data(data),
            "steps_run_this_call": steps - start_step,
            "resumed_from_step": start_step,
            "seconds_this_call": time.perf_counter() - t_start,
            "seconds_per_step": (sum(step_times) / len(step_times)) if step_times else None,
            "steps_per_epoch": batches.steps_per_epoch,
            "device": str(device),
        },
        "scores": {
            "images": score_label,
            "draws": val_draws,
            "noise_seed": seed + 1,
            "before": before,
            "after": after,
        },
        "history": history,
        "validations": validations,
    }
    return plugin


PIXEL_ONLY_WEIGHTS = L.LossWeights(
    clean_consistency=0.0,
    pairwise_consistency=0.0,
    utility=0.0,
    pixel_mse=1.0,
    stats=0.0,
    identity=0.0,
)


def pretrain_purifier(
    encoder: nn.Module,
    images_or_loader: torch.Tensor | Iterable | str | Path,
    *,
    sigmas: float | Sequence[float] = (0.25,),
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    **kwargs: Any,
) -> Plugin:
    """Stage 1 of two-stage training: the purifier as a plain Gaussian denoiser.

    Minimises only ``mean (P(x + eps, sigma) - x)^2`` with sigma uniform over
    ``[min(sigmas), max(sigmas)]``; the encoder is not run in the training steps (only to
    probe its feature shape and, without ``val_images``, to score the first training
    images), so a step costs a purifier pass and small crops (e.g. 64 px) suffice. This is
    the warm start of denoised smoothing (Salman et al., 2020); pass the result as
    ``init=`` to :func:`train_plugin` for stage 2 through the frozen encoder. Other
    keyword arguments go to :func:`train_plugin`.
    """
    for key in ("parts", "loss_weights", "draws_per_image", "sigma_sampling"):
        if key in kwargs:
            raise InputError(f"pretrain_purifier sets {key} itself")
    return train_plugin(
        encoder,
        images_or_loader,
        sigmas=sigmas,
        sigma_sampling="uniform",
        parts=("purifier",),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        loss_weights=PIXEL_ONLY_WEIGHTS,
        draws_per_image=1,
        **kwargs,
    )


def _agreement_classes(
    encoder: nn.Module,
    weights: L.LossWeights,
    class_embeddings: torch.Tensor | None,
    scale: float,
) -> torch.Tensor | None:
    """The unit class rows of the agreement term (None when its weight is 0)."""
    if weights.agreement <= 0:
        return None
    if not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"agreement_scale must be a positive number, got {scale}")
    if class_embeddings is None:
        from featsmooth.loading import zero_shot_classes

        if not getattr(encoder, "supports_text", False):
            raise InputError(
                "the agreement loss needs class_embeddings for an encoder without text "
                "(unit rows (C, D) in the encoder's feature space)"
            )
        found = zero_shot_classes(encoder)
        assert found is not None  # the encoder has text
        class_embeddings = found[1]
    rows = torch.as_tensor(class_embeddings).detach().to(torch.float32)
    if rows.ndim != 2 or rows.shape[0] < 2 or not torch.isfinite(rows).all():
        raise InputError("class_embeddings must be a finite (C, D) tensor with C >= 2 rows")
    return torch.nn.functional.normalize(rows, dim=-1)


def _tensor_digest(t: torch.Tensor) -> str:
    """Short content hash of a tensor (records which class rows a plug-in was trained on)."""
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _train_step(
    encoder: nn.Module,
    modules: dict[str, nn.Module],
    parts: tuple[str, ...],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    w: L.LossWeights,
    sigma_list: list[float],
    sigma_sampling: str,
    k: int,
    gen: torch.Generator,
    device: torch.device,
    enc_dtype: torch.dtype,
    classes: torch.Tensor | None = None,
    agreement_scale: float = 100.0,
) -> dict[str, float]:
    purifier, mapper = modules.get("purifier"), modules.get("mapper")
    grad_through_encoder = "purifier" in parts
    b = x.shape[0]
    if sigma_sampling == "set":
        idx = torch.randint(len(sigma_list), (b,), generator=gen)
        sig = torch.tensor(sigma_list, dtype=torch.float32)[idx]
    else:
        lo, hi = sigma_list[0], sigma_list[-1]
        sig = lo + (hi - lo) * torch.rand(b, generator=gen)
    noise = torch.randn((b * k, *x.shape[1:]), generator=gen)
    sig_rep = sig.repeat_interleave(k)
    x = x.to(device)
    sig, sig_rep = sig.to(device), sig_rep.to(device)
    noisy = x.repeat_interleave(k, 0) + noise.to(device) * sig_rep[:, None, None, None]

    def run_encoder(images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(grad_through_encoder and torch.is_grad_enabled()):
            return encoder(images.to(enc_dtype)).to(torch.float32)

    purified = purifier(noisy, sig_rep) if purifier is not None else noisy
    terms: dict[str, torch.Tensor] = {}
    feats = None
    if w.needs_features:
        with torch.no_grad():
            clean_raw = encoder(x.to(enc_dtype)).to(torch.float32)
        clean = L.unit_flat(clean_raw)
        z = run_encoder(purified)
        mapped = mapper(z, sig_rep) if mapper is not None else z
        feats = L.unit_flat(mapped).view(b, k, -1)
        if w.clean_consistency > 0:
            terms["clean_consistency"] = L.clean_consistency_loss(feats, clean)
        if w.agreement > 0 and classes is not None:
            terms["agreement"] = L.agreement_loss(
                feats, clean, classes.to(feats.device), agreement_scale
            )
        if w.pairwise_consistency > 0 and k >= 2:
            terms["pairwise_consistency"] = L.pairwise_consistency_loss(feats)
        if w.utility > 0:
            pc = purifier(x, sig) if purifier is not None else x
            zc = run_encoder(pc)
            mc = mapper(zc, sig) if mapper is not None else zc
            terms["utility"] = L.utility_loss(L.unit_flat(mc), clean)
        if w.stats > 0 and "mapper" in parts:
            terms["stats"] = L.stats_loss(feats.reshape(b * k, -1), clean)
        if w.identity > 0 and "mapper" in parts:
            terms["identity"] = L.identity_loss(mapper, clean_raw)
    elif "mapper" in parts:
        raise InputError("training the mapper needs a feature loss with a positive weight")
    # pixel-only stage (no feature term): the encoder is not run at all
    if w.pixel_mse > 0 and "purifier" in parts:
        terms["pixel_mse"] = L.pixel_mse_loss(purified, x)
    total = sum(getattr(w, name) * val for name, val in terms.items())
    if not torch.is_tensor(total) or not total.requires_grad:
        raise InputError("no loss term with a positive weight depends on the trained parts")
    if not torch.isfinite(total):
        raise FeatureError("the plug-in loss became non-finite; lower lr or check the encoder")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    out = {"loss": float(total.detach())}
    if feats is not None:
        with torch.no_grad():
            out["train_score"] = float(L.score_estimate(feats.detach()).mean())
    return {**out, **{k_: float(v.detach()) for k_, v in terms.items()}}


def _progress_info(metrics: dict[str, float], val: dict | None) -> str:
    """The trailing text of the training bar: loss, train score, last validation scores."""
    info = f"loss {metrics['loss']:.4f}"
    if "train_score" in metrics:
        info += f"  S_train {metrics['train_score']:.4f}"
    if val is not None:
        s = " ".join(f"{k}:{v['score']:.3f}" for k, v in val["metrics"].items())
        info += f"  S_val[{s}]@{val['step']}"
    return info


__all__ = [
    "CHECKPOINT_FILE",
    "PIXEL_ONLY_WEIGHTS",
    "evaluate_plugin",
    "load_checkpoint",
    "pretrain_purifier",
    "save_checkpoint",
    "train_plugin",
    "weights_digest",
]
