"""``featsmooth evaluate``: attack the plain and the smoothed encoder and test every attack
against its certificate (a front end to :func:`featsmooth.evaluate.evaluate`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featsmooth import config as C
from featsmooth import loading
from featsmooth.commands.common import default_run_dir, require_images, resolve, sanity_checks
from featsmooth.data.sources import folder_images, select_images
from featsmooth.errors import InputError

if TYPE_CHECKING:
    from featsmooth.evaluate import EvaluationResult


def evaluate(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_config: Callable[[Any], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> EvaluationResult:
    """Attack the plain and the smoothed encoder and test every attack against its certificate.

    Loads the model, images and (for text-image models) zero-shot classes as
    :func:`featsmooth.api.certify` does and runs the evaluation harness
    :func:`featsmooth.evaluate.evaluate` with the settings ``vanilla``, ``fs`` and, with
    ``plugin=`` (a folder), ``fs+plugin``. Threat model: white-box, ``||x' - x||_p <= eps``
    in pixel units; smoothed settings are attacked with EoT over ``eot`` draws per step and
    judged on ``judge_draws`` fresh draws. Each smoothed setting certifies every clean image
    (``n0``/``n``/``alpha``/``method``), and the sound consistency check
    (:mod:`featsmooth.consistency`, ``check_draws``/``check_alpha``) compares an *upper*
    confidence bound of the attacked input's projection with the certified bound at the
    attack's actual l2 radius: a violation means a bug (or a certificate that failed with
    probability ``alpha``), and its tensors are saved under ``<run_dir>/violations``.

    Args:
        model: registry name, local folder or hub id (default ``"default"``).
        config_file: YAML/TOML settings file (flags in ``settings`` win over it).
        on_config: called with the effective settings before any work.
        on_progress: receives one line per step when ``progress`` is on (default: print).
        **settings: any field of :class:`featsmooth.config.EvaluateConfig`; ``attacks`` may
            also be one string of specifications separated by ``;``.

    Returns:
        :class:`featsmooth.evaluate.EvaluationResult` (``summary``, ``certified``,
        ``records``, ``skipped``, ``violations``); records are resumable in ``run_dir``
        (default ``runs/evaluate-<model>``).
    """
    from featsmooth.evaluate import AttackSpec, parse_attack
    from featsmooth.evaluate import evaluate as _evaluate

    if isinstance(settings.get("attacks"), str):
        settings = {**settings, "attacks": [a for a in settings["attacks"].split(";") if a.strip()]}
    cfg = resolve(C.EvaluateConfig, "evaluate", model, config_file, settings)
    require_images(cfg)
    if cfg.dtype != "float32":
        raise InputError("evaluate runs the model in float32 only; drop --dtype")
    if cfg.target_image is not None and not Path(cfg.target_image).is_file():
        raise FileNotFoundError(f"target image not found: {cfg.target_image}")
    if cfg.attacks:
        specs = [parse_attack(a) for a in cfg.attacks if not _names_target(a)]
    else:
        specs = [
            AttackSpec(cfg.attack, cfg.norm, eps, cfg.steps, objective="auto",
                       step_size=cfg.step_size, restarts=cfg.restarts)
            for eps in cfg.eps
        ]  # fmt: skip
    if cfg.run_dir is None:
        cfg.run_dir = default_run_dir(cfg, "evaluate")
    if on_config is not None:
        on_config(cfg)
    encoder = loading.load_model(cfg.model, cfg.device, cfg.dtype)
    plugin = loading.load_plugin(cfg.plugin, cfg.device) if cfg.plugin else None
    classes = loading.zero_shot_classes(encoder, cfg.classes, cfg.task)
    size = loading.run_image_size(cfg, encoder)
    source = select_images(cfg.images, cfg.photos, size, classes[0] if classes else None)
    labels = None
    if classes is not None:
        unlabelled = [k for k, lb in zip(source.keys, source.labels) if lb is None]
        if len(unlabelled) == len(source):
            raise InputError(
                "zero-shot evaluation needs labelled images (class folders named after the "
                "classes); use --task features to attack the features instead"
            )
        if unlabelled:
            warnings.warn(
                f"skipping {len(unlabelled)} image(s) without a label ({', '.join(unlabelled)}):"
                " untargeted zero-shot attacks need one",
                stacklevel=2,
            )
            source = source.subset([i for i, lb in enumerate(source.labels) if lb is not None])
        # first = primary label, then the other acceptable classes
        labels = [
            [lb, *[a for a in acc if a != lb]] for lb, acc in zip(source.labels, source.acceptable)
        ]
    images = source.all_images()
    sanity_checks(cfg, images[:1])
    if cfg.attacks:  # now that the class names are known, targets may name classes
        specs = [parse_attack(a, classes[0] if classes else None) for a in cfg.attacks]
    if any(s.matches_target_embeddings for s in specs) and cfg.target_image is None:
        from featsmooth.attacks import attack_names

        raise InputError(f"{', '.join(attack_names(embedding=True))} attacks need --target-image")
    target = folder_images(cfg.target_image, size).all_images() if cfg.target_image else None
    settings_run = ["vanilla", "fs", *(["fs+plugin"] if plugin is not None else [])]
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, cfg.run_dir, "evaluate")  # `--config RUN/config.yaml` resumes the run
    return _evaluate(
        encoder,
        images,
        labels,
        class_embeddings=classes[1] if classes else None,
        settings=settings_run,
        plugin=plugin,
        sigma=cfg.sigma,
        attacks=specs,
        target_images=target,
        eot_draws=cfg.eot,
        judge_draws=cfg.judge_draws,
        n0=cfg.n0,
        n=cfg.n,
        alpha=cfg.alpha,
        method=cfg.method,
        radii=cfg.radii,
        consistency_draws=cfg.check_draws,
        consistency_alpha=cfg.check_alpha,
        names=source.keys,
        run_dir=cfg.run_dir,
        seed=cfg.seed,
        device=cfg.device,
        batch_size=cfg.attack_batch_size,
        sample_batch_size=cfg.batch_size,
        progress=(on_progress or True) if cfg.progress else False,
        extra_settings={
            "image_source": source.description,
            "size": size,
            "dtype": cfg.dtype,
            "plugin_folder": cfg.plugin,
        },
    )


def _names_target(spec: Any) -> bool:
    """Whether an attack string's ``target=`` names classes (resolved once they are loaded)."""
    if not isinstance(spec, str):
        return False
    return any(
        part.strip().startswith("target=")
        and not part.split("=", 1)[1].replace("+", "").replace(",", "").lstrip("-").isdigit()
        for part in spec.split(":")
    )
