"""``featsmooth attack``: untargeted white-box feature attacks on the plain and the smoothed
encoder, one record per image, setting and budget. A mode of the one evaluation harness
(:func:`featsmooth.evaluate.evaluate` with ``certify=False``): the same attacks, seeds,
judging and records as ``featsmooth evaluate`` on a feature-only task, without the
certificates and the consistency check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from featsmooth import config as C
from featsmooth import loading
from featsmooth.commands.common import (
    Callbacks,
    RunResult,
    default_run_dir,
    require_images,
    resolve,
)
from featsmooth.data.sources import select_images
from featsmooth.errors import InputError
from featsmooth.evaluation_results import DEFAULT_SETTINGS as SETTINGS

#: images attacked together in one call (a resumed run redoes whole blocks)
ATTACK_BLOCK = 4


def attack(
    model: str | None = None, *, config_file: str | Path | None = None, **settings: Any
) -> RunResult:
    """Untargeted white-box feature attacks on the plain and the smoothed encoder.

    Threat model: ``||x' - x||_p <= eps`` (``norm`` l2 or linf, pixel units) and ``x'`` in
    [0, 1]; the attack (PGD or APGD) minimises the cosine between the attacked and the
    unattacked feature. Per image, setting and eps one attack record (schema:
    :mod:`featsmooth.schema`): ``adv_cosine`` and ``success = adv_cosine < success_cosine``.

    * ``vanilla``: the encoder's own unit feature ``f``; ``adv_cosine = cos(f(x'), f(x))``.
    * ``fs`` (and ``fs+plugin`` with ``plugin=``): the smoothed encoder at ``sigma``. The
      attack follows the EoT gradient of the Monte-Carlo smoothed feature over ``eot`` noise
      draws per step (adaptive: through the plug-in when there is one); it is judged on
      fresh draws: ``adv_cosine = cos(f_hat(x'), f_hat(x))`` with both smoothed features
      estimated from ``judge_draws`` draws not used by the attack.

    Settings: the fields of :class:`featsmooth.config.AttackConfig`; callbacks
    ``on_config``, ``on_start`` and ``on_record`` as in :func:`featsmooth.api.certify`.
    """
    from featsmooth.attack_specs import AttackSpec
    from featsmooth.checks import run_checks
    from featsmooth.evaluate import evaluate

    start = time.perf_counter()
    report = Callbacks.take(settings)
    cfg = resolve(C.AttackConfig, "attack", model, config_file, settings)
    unknown = sorted(set(cfg.settings) - set(SETTINGS))
    if unknown or not cfg.settings:
        raise InputError(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    if "fs+plugin" in cfg.settings and not cfg.plugin:
        raise InputError("setting fs+plugin needs --plugin FOLDER (a trained plug-in)")
    if cfg.dtype != "float32":
        raise InputError("attack runs the model in float32 only; drop --dtype")
    # `featsmooth attack` drives objective attacks; embedding matching lives in `evaluate`
    specs = [
        AttackSpec(cfg.attack, cfg.norm, eps, cfg.steps, objective="auto",
                   step_size=cfg.step_size, restarts=cfg.restarts)
        for eps in cfg.eps
    ]  # fmt: skip
    if any(s.matches_target_embeddings for s in specs):
        raise InputError(f"{cfg.attack} matches target embeddings: use featsmooth evaluate")
    require_images(cfg)
    if cfg.run_dir is None:
        cfg.run_dir = f"{default_run_dir(cfg, 'attack')}-{cfg.norm}"
    report.config(cfg)
    encoder = loading.load_model(cfg.model, cfg.device, cfg.dtype)
    size = loading.run_image_size(cfg, encoder)
    source = select_images(cfg.images, cfg.photos, size, None)
    plugin = loading.load_plugin(cfg.plugin, cfg.device) if "fs+plugin" in cfg.settings else None
    checks = run_checks(
        sigma=cfg.sigma, model_is_randomized=any(s != "vanilla" for s in cfg.settings),
        eot_draws=cfg.eot, eps=None,
    )  # fmt: skip
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, cfg.run_dir, "attack")  # before the work: a killed run resumes with it
    written: list[dict[str, Any]] = []

    def record(rec: dict[str, Any], new: bool) -> None:
        written.append(rec)
        if report.on_record is not None:
            report.on_record(rec, new)

    result = evaluate(
        encoder, source.all_images(), settings=list(cfg.settings), plugin=plugin,
        sigma=cfg.sigma, attacks=specs, eot_draws=cfg.eot, judge_draws=cfg.judge_draws,
        cosine_threshold=cfg.success_cosine, names=source.keys, run_dir=cfg.run_dir,
        seed=cfg.seed, device=cfg.device, batch_size=ATTACK_BLOCK,
        sample_batch_size=cfg.batch_size, certify=False,
        progress=(lambda _line: None) if cfg.progress else False,  # the bar, not the lines
        contents=[source.content(i) for i in range(len(source))], on_start=report.on_start,
        on_record=record,
        extra_settings={
            "command": "attack", "image_source": source.description, "size": size,
            "success_cosine": cfg.success_cosine,
        },
    )  # fmt: skip
    records = [r for r in result.records if r.get("kind") == "attack"]
    return RunResult(
        run_dir=Path(cfg.run_dir), records=records, new=len(written),
        skipped=len(records) - len(written),
        config=cfg, model=cfg.model, checks=checks, seconds=time.perf_counter() - start,
    )  # fmt: skip
