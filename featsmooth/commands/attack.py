"""``featsmooth attack``: untargeted white-box feature attacks on the plain and the smoothed
encoder, one record per image, setting and budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from featsmooth import config as C
from featsmooth import loading
from featsmooth.commands.common import (
    Callback,
    RunResult,
    default_run_dir,
    require_images,
    resolve,
)
from featsmooth.data.sources import select_images
from featsmooth.errors import InputError
from featsmooth.progress import Bar
from featsmooth.seeds import SCHEME as SEED_SCHEME
from featsmooth.seeds import noise_seed

SETTINGS = ("vanilla", "fs", "fs+plugin")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def _attack_one(
    cfg: C.AttackConfig,
    cls: Any,
    sm: Any,
    setting: str,
    x: torch.Tensor,
    key: str,
    record_key: str,
    eps: float,
) -> dict[str, Any]:
    """Attack one image ``x`` ``(1, C, H, W)`` in one setting at one budget; its record."""
    from featsmooth.attacks import EoTObjective, FeatureCosine

    t0 = time.perf_counter()
    kw = {"steps": cfg.steps, "restarts": cfg.restarts}
    kw["seed"] = noise_seed(cfg.seed, record_key, "attack")
    if cfg.step_size is not None:
        kw["step_size"] = cfg.step_size
    if setting == "vanilla":
        with torch.no_grad():
            ref = sm.features(x)
        objective = FeatureCosine(reference_features=ref)
        result = cls(sm.features, objective, cfg.norm, eps, **kw)(x)
        with torch.no_grad():
            adv_cos = _cos(sm.features(result.adv_images), ref)
    else:
        ref_seed = [noise_seed(cfg.seed, (key, "reference"), "judge")]
        ref = sm.predict_feature(x, cfg.judge_draws, seed=ref_seed)

        def model_fn(z: torch.Tensor) -> torch.Tensor:
            return sm.noisy_features(z, cfg.eot)

        objective = EoTObjective(FeatureCosine(reference_features=ref), mode="mean_feature")
        result = cls(model_fn, objective, cfg.norm, eps, **kw)(x)
        judge_seed = [noise_seed(cfg.seed, record_key, "judge")]
        adv_cos = _cos(sm.predict_feature(result.adv_images, cfg.judge_draws, seed=judge_seed), ref)
    smoothed = setting != "vanilla"
    return {
        "key": record_key,
        "image": key,
        "model": cfg.model,
        "setting": setting,
        "attack": cfg.attack,
        "objective": "feature-cosine",
        "norm": cfg.norm,
        "eps": float(eps),
        "steps": cfg.steps,
        "sigma": cfg.sigma if smoothed else None,
        "eot": cfg.eot if smoothed else None,
        "judge_draws": cfg.judge_draws if smoothed else None,
        "distance": float(result.distance[0]),
        "adv_cosine": adv_cos,
        "success": adv_cos < cfg.success_cosine,
        "seconds": time.perf_counter() - t0,
    }


def attack(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_record: Callback | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_config: Callable[[Any], None] | None = None,
    **settings: Any,
) -> RunResult:
    """Untargeted white-box feature attacks on the plain and the smoothed encoder.

    Threat model: ``||x' - x||_p <= eps`` (``norm`` l2 or linf, pixel units) and ``x'`` in
    [0, 1]; the attack (PGD or APGD) minimises the cosine between the attacked and the clean
    feature. Per image, setting and eps one record (attack schema of
    :mod:`featsmooth.records`): ``adv_cosine`` and ``success = adv_cosine < success_cosine``.

    * ``vanilla``: the encoder's own unit feature ``f``; ``adv_cosine = cos(f(x'), f(x))``.
    * ``fs`` (and ``fs+plugin`` with ``plugin=``): the smoothed encoder at ``sigma``. The
      attack follows the EoT gradient of the Monte-Carlo smoothed feature over ``eot`` noise
      draws per step (adaptive: through the plug-in when there is one); it is judged on
      fresh draws: ``adv_cosine = cos(f_hat(x'), f_hat(x))`` with both smoothed features
      estimated from ``judge_draws`` draws not used by the attack.

    Settings: the fields of :class:`featsmooth.config.AttackConfig`.
    """
    from featsmooth import SmoothedEncoder
    from featsmooth.records import VOLATILE_KEYS, RunWriter

    start = time.perf_counter()
    cfg = resolve(C.AttackConfig, "attack", model, config_file, settings)
    from featsmooth.attacks import get_attack

    # `featsmooth attack` drives objective attacks; embedding matching lives in `evaluate`
    cls = get_attack(cfg.attack, embedding=False)
    if cfg.norm not in ("l2", "linf"):
        raise InputError(f"unknown norm {cfg.norm!r}; choose l2 or linf")
    if cfg.objective != "cosine":
        raise InputError(f"unknown objective {cfg.objective!r}; the CLI offers: cosine")
    unknown = sorted(set(cfg.settings) - set(SETTINGS))
    if unknown or not cfg.settings:
        raise InputError(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    if "fs+plugin" in cfg.settings and not cfg.plugin:
        raise InputError("setting fs+plugin needs --plugin FOLDER (a trained plug-in)")
    require_images(cfg)
    if cfg.run_dir is None:
        cfg.run_dir = f"{default_run_dir(cfg, 'attack')}-{cfg.norm}"
    if on_config is not None:
        on_config(cfg)
    encoder = loading.load_model(cfg.model, cfg.device, cfg.dtype)
    size = loading.run_image_size(cfg, encoder)
    source = select_images(cfg.images, cfg.photos, size, None)
    dtype = loading.torch_dtype(cfg.dtype)
    common = {"device": cfg.device, "input_dtype": dtype, "batch_size": cfg.batch_size}
    smoothers = {"vanilla": SmoothedEncoder(encoder, cfg.sigma, **common)}
    if "fs" in cfg.settings:
        smoothers["fs"] = smoothers["vanilla"]
    if "fs+plugin" in cfg.settings:
        plugin = loading.load_plugin(cfg.plugin, cfg.device)
        smoothers["fs+plugin"] = SmoothedEncoder(encoder, cfg.sigma, plugin=plugin, **common)
    from featsmooth.checks import run_checks

    checks = run_checks(
        sigma=cfg.sigma,
        model_is_randomized=any(s != "vanilla" for s in cfg.settings),
        eot_draws=cfg.eot,
        eps=None,
    )
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, cfg.run_dir, "attack")  # before the work: a killed run resumes with it
    settings_rec = {"command": "attack", **C.to_dict(cfg), "size": size, "seeds": SEED_SCHEME}
    settings_rec["images"] = source.description if cfg.images is None else cfg.images
    jobs = [
        (i, key, setting, eps)
        for i, key in enumerate(source.keys)
        for setting in cfg.settings
        for eps in cfg.eps
    ]
    records: list[dict[str, Any]] = []
    new = skipped = 0
    with RunWriter(cfg.run_dir, settings_rec, resume=True, volatile=VOLATILE_KEYS) as writer:
        rkey = [f"{key}|{setting}|{cfg.attack}|{cfg.norm}|{eps:g}" for _, key, setting, eps in jobs]
        writer.check_content({k: source.content(j[0]) for j, k in zip(jobs, rkey) if k in writer})
        todo = sum(1 for k in rkey if k not in writer)
        if on_start is not None:
            on_start(len(jobs) - todo, todo)
        bar = Bar(cfg.progress, todo, "attack", unit="jobs")
        for (i, key, setting, eps), record_key in zip(jobs, rkey):
            if record_key in writer:
                skipped += 1
                records.append(writer.stored(record_key))
                if on_record is not None:
                    on_record(writer.stored(record_key), False)
                continue
            x = source.image(i).unsqueeze(0).to(smoothers["vanilla"].device)
            record = _attack_one(cfg, cls, smoothers[setting], setting, x, key, record_key, eps)
            record.update(source.content(i))
            stored_record = writer.write(record)
            records.append(stored_record)
            new += 1
            bar.advance(1, info=f"{key} {setting} eps {eps:g}")
            if on_record is not None:
                on_record(stored_record, True)
        bar.close()
    return RunResult(
        run_dir=Path(cfg.run_dir),
        records=records,
        new=new,
        skipped=skipped,
        config=cfg,
        model=cfg.model,
        checks=checks,
        seconds=time.perf_counter() - start,
    )
