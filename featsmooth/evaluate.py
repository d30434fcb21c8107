"""Evaluation harness: clean and robust scores of vanilla, smoothed and plugged encoders.

:func:`evaluate` runs, for each *setting* (a way of using the encoder) and each *attack*
(:class:`AttackSpec`), a white-box attack on every image and scores the result:

========== =============================================================================
setting    model attacked and judged
========== =============================================================================
vanilla    the encoder itself, ``f(x)`` (deterministic)
fs         Feature-space Smoothing of the encoder at ``sigma``
fs+plugin  FS of purifier -> encoder -> mapper (``plugin.wrap``); attacks go through
           purifier and mapper (adaptive)
robust     a user-supplied adversarially fine-tuned encoder (FARE / TeCoA style)
robust+fs  FS of that robust encoder
========== =============================================================================

Threat model: white-box, l2 or linf budget in pixel units of [0, 1] images, the attacker
knows everything except the noise draws of the evaluation. Smoothed settings are random:
they are attacked with EoT (``eot_draws`` noisy copies per gradient step through
``SmoothedEncoder.noisy_features``, wrapped in :class:`~featsmooth.attacks.EoTObjective`)
and judged on ``judge_draws`` *fresh* draws: the smoothed model's output is the mean of
those unit noisy features (Monte-Carlo ``f_hat``), its prediction is the argmax of that
mean, and ``success_rate`` is the fraction of single draws in which the attack succeeds
(:func:`~featsmooth.attacks.judge_randomized`).

Tasks (given by the arguments):

* zero-shot classification: ``class_embeddings`` ``(K, D)`` and ``labels``; clean score =
  accuracy; untargeted success = the prediction on the attacked image is wrong; targeted
  success (``AttackSpec.target``) = the prediction is one of the target classes (e.g. the
  "shark" classes, :func:`classes_named`).
* image-text retrieval: ``captions`` (one per image) with a text-image encoder; the
  captions become the classes and image ``i``'s label is caption ``i`` (recall@1).
* feature only (none of the above): clean score 1, robust score = feature cosine; an
  untargeted attack succeeds when the cosine drops below ``cosine_threshold``.

Certificates. For smoothed settings each clean image is certified once
(``certify_prediction`` with classes, ``certify`` without); every attack record carries the
certified cosine (FCSB) at the attack's actual l2 radius and whether the prediction is
certified there, and the consistency check (:mod:`featsmooth.consistency`) tests every
attacked input against its certificate (expected violations: zero, up to the checks'
failure probabilities).

Records (one per (image, setting, attack), plus one certification record per (image,
smoothed setting)) are appended with :class:`featsmooth.records.RunWriter` when
``run_dir`` is given; running again resumes and skips finished keys. Images are attacked in
fixed blocks of ``batch_size`` (by image order) and every draw is seeded by image name
(:mod:`featsmooth.seeds`), so a resumed run, which redoes the blocks with a missing record,
writes the records of an uninterrupted one. The returned
:class:`EvaluationResult` holds the records and the summary table.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featsmooth import bounds
from featsmooth.attack_specs import (
    DEFAULT_ATTACKS,
    PAPER_ATTACKS,
    AttackSpec,
    classes_named,
    paper_protocol,
    parse_attack,
)
from featsmooth.attacks import EoTObjective, FeatureCosine, ZeroShotCrossEntropy, get_attack
from featsmooth.consistency import check_consistency
from featsmooth.errors import InputError
from featsmooth.evaluation_results import (
    DEFAULT_SETTINGS,
    PREDICTION_METHODS,
    SETTINGS,
    EvaluationResult,
    attack_record,
    certificate_record,
    certified_table,
    summarize,
)
from featsmooth.progress import Bar
from featsmooth.seeds import SCHEME as SEED_SCHEME
from featsmooth.seeds import noise_seed
from featsmooth.smoothing import SmoothedEncoder

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_SETTINGS",
    "PAPER_ATTACKS",
    "PREDICTION_METHODS",
    "SETTINGS",
    "AttackSpec",
    "EvaluationResult",
    "certified_table",
    "classes_named",
    "evaluate",
    "evaluate_paper_protocol",
    "paper_protocol",
    "parse_attack",
    "summarize",
]


# --------------------------------------------------------------------------------------
# settings


@dataclass
class _Setting:
    name: str
    model: SmoothedEncoder  # .features for vanilla settings, noisy draws for smoothed ones
    smoothed: bool


def _build_settings(
    encoder: Any,
    settings: Sequence[str],
    plugin: Any,
    robust_encoder: Any,
    sigma: float,
    device: Any,
    batch_size: int,
    center: Any,
) -> tuple[list[_Setting], dict[str, str]]:
    built: list[_Setting] = []
    skipped: dict[str, str] = {}
    for name in settings:
        if name not in SETTINGS:
            raise InputError(f"unknown setting {name!r}; choose from {SETTINGS}")
        base = robust_encoder if name.startswith("robust") else encoder
        if name.startswith("robust") and robust_encoder is None:
            skipped[name] = "no robust_encoder given"
            continue
        if name == "fs+plugin" and plugin is None:
            skipped[name] = "no plug-in given"
            continue
        sm = SmoothedEncoder(
            base,
            sigma,
            device=device,
            batch_size=batch_size,
            center=center,
            plugin=plugin if name == "fs+plugin" else None,
        )
        sm.encoder.eval()
        built.append(_Setting(name, sm, smoothed=name not in ("vanilla", "robust")))
    return built, skipped


# --------------------------------------------------------------------------------------
# helpers


def _labels(labels: Any, b: int) -> tuple[list[int | None], list[frozenset[int]]]:
    """Primary label and acceptable set per image (a list/tuple: its first item is primary)."""
    if labels is None:
        return [None] * b, [frozenset()] * b
    items = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(items) != b:
        raise InputError(f"got {len(items)} labels for {b} images")
    primary, sets = [], []
    for item in items:
        if item is None:
            primary.append(None)
            sets.append(frozenset())
        elif isinstance(item, (int, np.integer)):
            primary.append(int(item))
            sets.append(frozenset({int(item)}))
        else:
            vals = [int(v) for v in (sorted(item) if isinstance(item, (set, frozenset)) else item)]
            primary.append(vals[0] if vals else None)
            sets.append(frozenset(vals))
    return primary, sets


def _noisy(sm: SmoothedEncoder, x: torch.Tensor, k: int, seeds: Sequence[int]) -> torch.Tensor:
    """``(B, k, D)`` float64 unit noisy features, image ``i`` drawn with ``seeds[i]``."""
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            gen = torch.Generator(device=sm.device).manual_seed(int(seeds[i]))
            done, parts = 0, []
            while done < k:
                m = min(k - done, sm.batch_size)
                parts.append(sm.noisy_features(x[i : i + 1], m, generator=gen)[0].double())
                done += m
            out.append(torch.cat(parts))
    return torch.stack(out)


@dataclass
class _Output:
    """What a setting outputs on a batch: features (B, D) float64 and predictions."""

    features: torch.Tensor
    predictions: np.ndarray | None
    draw_predictions: np.ndarray | None = None  # (B, k) for smoothed settings
    draw_features: torch.Tensor | None = None  # (B, k, D)


def _outputs(
    setting: _Setting,
    x: torch.Tensor,
    classes: torch.Tensor | None,
    draws: int,
    seeds: Sequence[int],
) -> _Output:
    sm = setting.model
    if not setting.smoothed:
        with torch.no_grad():
            feats = sm.features(x).double()
        preds = None if classes is None else (feats @ classes.T).argmax(1).cpu().numpy()
        return _Output(feats, preds)
    noisy = _noisy(sm, x, draws, seeds)
    mean = noisy.mean(1)
    if classes is None:
        return _Output(mean, None, None, noisy)
    preds = (mean @ classes.T).argmax(1).cpu().numpy()
    draw_preds = (noisy @ classes.T).argmax(2).cpu().numpy()
    return _Output(mean, preds, draw_preds, noisy)


def _make_attack(
    spec: AttackSpec,
    setting: _Setting,
    classes: torch.Tensor | None,
    eot_draws: int,
    seed: int,
) -> tuple[Any, Callable[[torch.Tensor, dict[str, Any]], dict[str, Any]]]:
    """The attack object and a function building its call targets for a batch."""
    sm = setting.model
    kwargs: dict[str, Any] = {"seed": seed, "restarts": spec.restarts}
    if spec.step_size is not None:
        kwargs["step_size"] = spec.step_size
    cls = get_attack(spec.name)
    if cls.matches_target_embeddings:
        fn = (
            (lambda x: sm.noisy_features(x, eot_draws).mean(1)) if setting.smoothed else sm.features
        )
        attack = cls(fn, norm=spec.norm, eps=spec.eps, steps=spec.steps, **kwargs)

        def targets(x: torch.Tensor, info: dict[str, Any]) -> dict[str, Any]:
            return {
                "target_features": info["target_features"],
                "target_images": info["target_images"],
            }

        return attack, targets
    kind = spec.objective
    if kind == "auto":
        kind = "ce" if classes is not None else "cosine"
    if kind == "ce":
        if classes is None:
            raise InputError("the cross-entropy objective needs class embeddings or captions")
        inner = ZeroShotCrossEntropy(classes.float(), targeted=spec.target is not None)
    else:
        if spec.target is not None:
            raise InputError("a targeted feature-cosine attack needs an embedding attack")
        inner = FeatureCosine()
    if setting.smoothed:
        model_fn: Callable[[torch.Tensor], torch.Tensor] = lambda x: sm.noisy_features(  # noqa: E731
            x, eot_draws
        )
        objective: Any = EoTObjective(inner)
    else:
        model_fn, objective = sm.features, inner
    attack = cls(model_fn, objective, spec.norm, spec.eps, spec.steps, **kwargs)

    def targets(x: torch.Tensor, info: dict[str, Any]) -> dict[str, Any]:
        if kind != "ce":
            return {}
        if spec.target is not None:
            labels = [spec.target[0]] * x.shape[0]
        else:
            labels = info["primary"]
            if any(v is None for v in labels):
                raise InputError("an untargeted cross-entropy attack needs a label per image")
        return {"labels": torch.as_tensor(labels, dtype=torch.long)}

    return attack, targets


def _settings_dict(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def evaluate(
    encoder: Any,
    images: torch.Tensor,
    labels: Sequence[Any] | torch.Tensor | None = None,
    *,
    class_embeddings: torch.Tensor | None = None,
    captions: Sequence[str] | None = None,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    plugin: Any = None,
    robust_encoder: Any = None,
    sigma: float = 0.25,
    attacks: Sequence[AttackSpec | str | dict[str, Any]] = DEFAULT_ATTACKS,
    target_images: torch.Tensor | None = None,
    eot_draws: int = 8,
    judge_draws: int = 32,
    n0: int = 64,
    n: int = 1000,
    alpha: float = 0.001,
    method: str = bounds.DEFAULT_METHOD,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
    consistency_draws: int = 256,
    consistency_alpha: float = 0.001,
    cosine_threshold: float = 0.5,
    names: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 4,
    sample_batch_size: int = 64,
    center: Any = None,
    progress: bool | Callable[[str], None] = False,
    extra_settings: dict[str, Any] | None = None,
    certify: bool = True,
    contents: Sequence[Mapping[str, str]] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_record: Callable[[dict[str, Any], bool], None] | None = None,
) -> EvaluationResult:
    """Attack and score an encoder under several settings (see the module docstring).

    Args:
        encoder: image encoder (pixel units in, features out); for captions, a text-image
            encoder (``encode_text``).
        images: ``(B, C, H, W)`` in [0, 1].
        labels: per image a class index, a list of acceptable indices (first = primary)
            or None; required for untargeted zero-shot attacks.
        class_embeddings: ``(K, D)`` class text embeddings (zero-shot task).
        captions: one caption per image (retrieval task; mutually exclusive with classes).
        settings: any of :data:`SETTINGS`; unavailable ones are skipped and reported.
        plugin: a plug-in (``.wrap(encoder, sigma)``) for ``fs+plugin``.
        robust_encoder: an adversarially fine-tuned encoder for ``robust`` / ``robust+fs``.
        sigma: smoothing noise level (pixel units).
        attacks: :class:`AttackSpec` objects, dicts or strings (:func:`parse_attack`).
        target_images: ``(1 or B, C, H, W)`` target image(s) of embedding-matching attacks.
        eot_draws: noise draws per gradient step on smoothed settings.
        judge_draws: fresh draws that judge a smoothed setting's output.
        n0, n, alpha, method: certification settings of the smoothed settings.
        radii: l2 radii of the certified-cosine / certified-accuracy table.
        consistency_draws, consistency_alpha: draws and level of the consistency check.
        cosine_threshold: feature-only tasks: an attack succeeds below this cosine.
        names: record names of the images (default ``img0``, ``img1``, ...).
        run_dir: run folder for resumable records (``None``: keep in memory only).
        seed: run seed of attacks, judging, certification and checks; every draw is seeded
            by image name and purpose (:mod:`featsmooth.seeds`), never by batch position,
            so an image is certified with the noise ``featsmooth certify`` gives it.
        device: where models run (default: the encoder's device).
        batch_size: images per attack call.
        sample_batch_size: noisy images per forward pass when sampling.
        center: optional feature centre (see SmoothedEncoder).
        progress: ``True`` prints one line per step; a callable receives those lines.
        extra_settings: more values saved in the run's settings (e.g. a bench's flags);
            they override the harness's own (``command``, for a front end of its own).
        certify: ``False`` attacks and judges only: no certificates, no consistency check
            (``featsmooth attack``).
        contents: per image, the record fields identifying its content (``{"sha256":
            ...}`` of its file): stored in each record, and a resumed run refuses an image
            whose content changed.
        on_start: called as ``on_start(done, todo)`` with the records found and still to
            write, once the run folder is open.
        on_record: called as ``on_record(record, is_new)`` for each record written now.

    Returns:
        :class:`EvaluationResult`.
    """
    say = progress if callable(progress) else (print if progress else (lambda _m: None))
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise InputError("images must be a non-empty (B, C, H, W) tensor in [0, 1]")
    b = images.shape[0]
    names = [f"img{i}" for i in range(b)] if names is None else [str(v) for v in names]
    if len(names) != b or len(set(names)) != b:
        raise InputError("names must be unique, one per image")
    if contents is not None and len(contents) != b:
        raise InputError(f"got {len(contents)} contents for {b} images")
    if captions is not None and class_embeddings is not None:
        raise InputError("give class_embeddings (zero-shot) or captions (retrieval), not both")
    if captions is not None:
        if len(captions) != b:
            raise InputError(f"got {len(captions)} captions for {b} images")
        from featsmooth.tasks.zero_shot import text_encoder

        with torch.no_grad():
            class_embeddings = text_encoder(encoder).encode_text(list(captions)).float()
        labels = list(range(b))
    for name, value in (("eot_draws", eot_draws), ("judge_draws", judge_draws)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    primary, acceptable = _labels(labels, b)
    specs = [parse_attack(a) for a in attacks]
    ids = [s.attack_id for s in specs]
    if len(set(ids)) != len(ids):
        raise InputError(f"attack ids must be unique, got {ids}")
    if any(s.matches_target_embeddings for s in specs) and target_images is None:
        raise InputError("embedding-matching attacks need target_images=")
    if any(s.target is not None for s in specs) and class_embeddings is None:
        raise InputError("targeted attacks judge success by class: give class_embeddings")
    radii_arr = bounds.as_radii(list(radii))
    built, skipped = _build_settings(
        encoder, settings, plugin, robust_encoder, sigma, device, sample_batch_size, center
    )
    for name, reason in skipped.items():
        warnings.warn(f"setting {name!r} not run: {reason}", stacklevel=2)
    if not built:
        raise InputError("no setting can run (see the warnings)")
    dev = built[0].model.device
    x_all = images.detach().to(dev, torch.float32)
    classes = None
    if class_embeddings is not None:
        classes = F.normalize(torch.as_tensor(class_embeddings).double().to(dev), dim=1)

    run_settings = _settings_dict(
        command="evaluate",
        model=str(getattr(encoder, "name", type(encoder).__name__)),
        settings=[s.name for s in built],
        skipped=skipped,
        sigma=sigma,
        attacks=[asdict(s) for s in specs],
        eot_draws=eot_draws,
        judge_draws=judge_draws,
        n0=n0,
        n=n,
        alpha=alpha,
        method=method,
        radii=radii_arr.tolist(),
        consistency_draws=consistency_draws,
        consistency_alpha=consistency_alpha,
        cosine_threshold=cosine_threshold,
        task="zero-shot"
        if class_embeddings is not None and captions is None
        else ("retrieval" if captions is not None else "features"),
        images=names,
        seed=seed,
        seeds=SEED_SCHEME,
        plugin=getattr(plugin, "card", None) if plugin is not None else None,
        robust_encoder=str(getattr(robust_encoder, "name", "given")) if robust_encoder else None,
        device=str(dev),
        batch_size=batch_size,
        # images are attacked in fixed blocks of batch_size: result-defining, unlike the
        # volatile batch_size (kept for readers of older runs)
        attack_batch_size=batch_size,
        **({} if certify else {"certify": False}),
    )
    run_settings.update(extra_settings or {})
    writer = None
    if run_dir is not None:
        from featsmooth.records import RunWriter

        writer = RunWriter(run_dir, run_settings).open()
    memory: list[dict[str, Any]] = list(writer.records) if writer is not None else []
    done = {tuple(r["key"]) for r in memory if isinstance(r.get("key"), list)}
    content = {names[i]: dict(contents[i]) for i in range(b)} if contents is not None else {}
    if writer is not None and content:
        writer.check_content({k: content[k[0]] for k in done if k and k[0] in content})

    def write(record: dict[str, Any]) -> None:
        record.update(content.get(record["image"], {}))
        if writer is not None:
            stored = writer.write(record)
            memory.append(stored)
        else:
            from featsmooth.records import to_jsonable

            memory.append(to_jsonable(record))
        done.add(tuple(record["key"]))
        bar.advance(1, info=f"{record['setting']} {record.get('attack_id', 'certificate')}")
        if on_record is not None:
            on_record(memory[-1], True)

    opts = _Options(
        eot_draws=eot_draws, judge_draws=judge_draws, n0=n0, n=n, alpha=alpha, method=method,
        radii=radii_arr, consistency_draws=consistency_draws,
        consistency_alpha=consistency_alpha, cosine_threshold=cosine_threshold, seed=seed,
        batch_size=batch_size, run_dir=run_dir, certify=certify,
    )  # fmt: skip
    data = _Data(x_all, names, primary, acceptable, classes, target_images)
    expected = {
        (name, setting.name, what)
        for setting in built
        for name in names
        for what in [s.attack_id for s in specs]
        + (["certificate"] if setting.smoothed and certify else [])
    }
    if on_start is not None:
        on_start(len(expected & done), len(expected - done))
    bar = Bar(bool(progress), len(expected - done), "evaluate", unit="records")
    try:
        for setting in built:
            _run_setting(setting, specs, data, opts, done, write, say)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return EvaluationResult(
        summary=summarize(memory),
        certified=certified_table(memory),
        records=memory,
        skipped=skipped,
        run_dir=None if run_dir is None else str(run_dir),
    )


@dataclass(frozen=True)
class _Options:
    """The settings of one evaluation that every step reads (see :func:`evaluate`)."""

    eot_draws: int
    judge_draws: int
    n0: int
    n: int
    alpha: float
    method: str
    radii: np.ndarray
    consistency_draws: int
    consistency_alpha: float
    cosine_threshold: float
    seed: int
    batch_size: int
    run_dir: Any
    certify: bool = True


@dataclass(frozen=True)
class _Data:
    """The images of one evaluation with their names, labels and the task's classes."""

    x_all: torch.Tensor
    names: list[str]
    primary: list[int | None]
    acceptable: list[frozenset[int]]
    classes: torch.Tensor | None
    target_images: torch.Tensor | None


def _run_setting(
    setting: _Setting,
    specs: list[AttackSpec],
    data: _Data,
    opts: _Options,
    done: set[tuple[Any, ...]],
    write: Callable[[dict[str, Any]], None],
    say: Callable[[str], None],
) -> None:
    """Certify (smoothed settings) and attack every image of ``data`` in ``setting`` whose
    records are not all ``done``; ``write`` each new record."""
    x_all, names, primary, acceptable = data.x_all, data.names, data.primary, data.acceptable
    classes, target_images = data.classes, data.target_images
    seed, judge_draws, method = opts.seed, opts.judge_draws, opts.method
    certified = setting.smoothed and opts.certify
    sm = setting.model
    b = x_all.shape[0]

    def key(i: int, what: str) -> tuple[str, str, str]:
        return (names[i], setting.name, what)

    # Images are attacked in fixed blocks of batch_size (by image order), and every draw is
    # seeded by image name (featsmooth.seeds), so a resumed run redoes whole blocks and
    # reproduces the records of an uninterrupted one; only missing records are written.
    size = opts.batch_size
    blocks = [list(range(s, min(s + size, b))) for s in range(0, b, size)]
    needed = [
        i
        for block in blocks
        if any(
            any(key(i, s.attack_id) not in done for s in specs)
            or (certified and key(i, "certificate") not in done)
            for i in block
        )
        for i in block
    ]
    if not needed:
        say(f"[{setting.name}] all records present, skipped")
        return
    x = x_all[needed]
    pos = {i: j for j, i in enumerate(needed)}
    t0 = time.perf_counter()
    # clean outputs (fresh draws for smoothed settings; seeded per image)
    clean_seeds = [noise_seed(seed, (names[i], setting.name, "clean"), "judge") for i in needed]
    clean = _outputs(setting, x, classes, judge_draws, clean_seeds)
    certs: list[Any] = [None] * len(needed)
    if certified:
        image_seeds = [noise_seed(seed, names[i], "certify") for i in needed]
        if classes is not None:
            certs = sm.certify_prediction(
                x, classes, n0=opts.n0, n=opts.n, alpha=opts.alpha, method=method, seed=image_seeds
            )
        else:
            certs = sm.certify(
                x, n0=opts.n0, n=opts.n, alpha=opts.alpha, method=method, seed=image_seeds
            )
        for j, i in enumerate(needed):
            if key(i, "certificate") in done:
                continue
            write(certificate_record(key(i, "certificate"), names[i], setting, certs[j],
                                      primary[i], acceptable[i], opts.radii))  # fmt: skip
        say(f"[{setting.name}] certified {len(needed)} images ({time.perf_counter() - t0:.1f}s)")
    target_feats = tgt = None
    if target_images is not None and any(s.matches_target_embeddings for s in specs):
        tgt = target_images.detach().to(x.device, torch.float32)
        tgt = tgt if tgt.ndim == 4 else tgt.unsqueeze(0)
        tgt_seeds = [
            noise_seed(seed, ("target", t, setting.name), "judge") for t in range(tgt.shape[0])
        ]
        target_feats = _outputs(setting, tgt, None, judge_draws, tgt_seeds).features
    for spec in specs:
        for block in blocks:
            if all(key(i, spec.attack_id) in done for i in block):
                continue
            rows = [pos[i] for i in block]
            t1 = time.perf_counter()
            attack_seed = noise_seed(
                seed, (setting.name, spec.attack_id, *[names[i] for i in block]), "attack"
            )
            attack, make_targets = _make_attack(spec, setting, classes, opts.eot_draws, attack_seed)
            xb = x[rows]
            info: dict[str, Any] = {"primary": [primary[needed[j]] for j in rows]}
            if target_feats is not None:
                tf = target_feats.float()
                info["target_features"] = tf if tf.shape[0] == 1 else tf[rows]
                info["target_images"] = tgt if tgt.shape[0] == 1 else tgt[rows]
            with warnings.catch_warnings():
                # SmoothedEncoder.features checks the range of its (grad-carrying) input
                warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
                result = attack(xb, **make_targets(xb, info))
            adv = result.adv_images.detach()
            judge_seeds = [noise_seed(seed, key(i, spec.attack_id), "judge") for i in block]
            adv_out = _outputs(setting, adv, classes, judge_draws, judge_seeds)
            consistency = None
            if certified:
                consistency = check_consistency(
                    sm, xb, adv, [certs[j] for j in rows], n=opts.consistency_draws,
                    alpha=opts.consistency_alpha, method=method,
                    seed=[noise_seed(seed, key(i, spec.attack_id), "check") for i in block],
                    run_dir=opts.run_dir, keys=["/".join(key(needed[j], spec.attack_id)) for j in rows],
                    clean_smoothed=clean.features[rows],
                )  # fmt: skip
            seconds = (time.perf_counter() - t1) / len(rows)
            for r, j in enumerate(rows):
                i = needed[j]
                if key(i, spec.attack_id) in done:  # written before an interruption
                    continue
                write(
                    attack_record(
                        key(i, spec.attack_id), names[i], setting, spec, j, r, xb, adv, result,
                        clean, adv_out, classes, primary[i], acceptable[i], certs[j],
                        None if consistency is None else consistency[r], opts.eot_draws,
                        judge_draws, opts.cosine_threshold, target_feats, seconds,
                    )
                )  # fmt: skip
            say(
                f"[{setting.name}] {spec.attack_id}: {len(rows)} images "
                f"({time.perf_counter() - t1:.1f}s)"
            )


def evaluate_paper_protocol(
    encoder: Any,
    images: torch.Tensor,
    target_image: torch.Tensor,
    class_embeddings: torch.Tensor,
    target: int | Sequence[int],
    *,
    attacks: Sequence[str] = PAPER_ATTACKS,
    steps: int = 300,
    eps: str | float = "16/255",
    step_size: str | float = "1/255",
    **kwargs: Any,
) -> EvaluationResult:
    """The source paper's evaluation: targeted embedding matching toward ``target_image``
    (``(1, C, H, W)`` or one per image) with each of ``attacks`` at linf ``eps`` for
    ``steps`` steps; an attack succeeds when the zero-shot prediction (smoothed settings:
    of the Monte-Carlo smoothed feature on fresh draws) is one of ``target``, e.g.
    ``classes_named(imagenet_classes(), "shark")``. Other keyword arguments go to
    :func:`evaluate` (settings, plugin, sigma, eot_draws, judge_draws, run_dir, ...)."""
    specs = paper_protocol(target, attacks=attacks, eps=eps, steps=steps, step_size=step_size)
    return evaluate(
        encoder,
        images,
        kwargs.pop("labels", None),
        class_embeddings=class_embeddings,
        attacks=specs,
        target_images=target_image,
        **kwargs,
    )
