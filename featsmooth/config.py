"""Settings of a command: defaults, then a YAML/TOML config file, then command-line flags.

Every subcommand of ``featsmooth`` has a settings dataclass here (:class:`CertifyConfig`,
:class:`DemoConfig`, ...) whose every field is declared once with a
:class:`~featsmooth.settings.Setting`: default, help text, constraint and flag. Settings
several commands share are declared once below (``SIGMA``, ``N``, ...) and used in each
dataclass, overriding the default or the help where the meaning differs. The command
line's options, their ``--help`` defaults, the keys a config file accepts and the checks
of :func:`validate` are all generated from these declarations.

:func:`resolve` builds a settings object from these sources, later ones winning:

1. the declared defaults;
2. a preset: a named set of overrides in :data:`PRESETS` (``demo-fast``, ``paper``);
3. a config file (``--config FILE``; ``.yaml``/``.yml`` or ``.toml``) whose keys are the
   field names (``-`` and ``_`` are the same: ``batch-size`` = ``batch_size``). A file may
   also hold one section per command (``certify: {sigma: 0.5}``), which is applied over
   its top-level keys, so one file can serve several commands;
4. the flags the user gave (``None`` means "not given" and never overrides).

Values are checked and converted on the way in (``"0.1,0.25"`` becomes ``[0.1, 0.25]``);
any bad value raises :class:`~featsmooth.errors.InputError` naming the key and the source.
The effective settings are printed by the CLI and saved beside the run
(:func:`save_config` writes ``config.yaml``, which ``--config`` accepts back, so a run can
be repeated exactly).
"""

# Fields are made by calling a Setting (featsmooth.settings), which returns dataclasses.field:
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from featsmooth.config_files import load_config_file, shorten
from featsmooth.errors import InputError
from featsmooth.settings import (
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Folder,
    Interval,
    OneOf,
    Setting,
    setting,
)
from featsmooth.settings import check as check_declared

CONFIG_FILE = "config.yaml"
DTYPES = ("float32", "bfloat16", "float16")
TASKS = ("auto", "features", "zero-shot")
DEFAULT_RADII = (0.1, 0.25, 0.5)

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Settings shared by several commands (declared once; a use may override default or help)


def _bound_methods() -> list[str]:
    from featsmooth import bounds

    return list(bounds.METHODS)


MODEL = Setting("default", "Registry name, local model folder or hub id.")
IMAGES = Setting(None, "Folder of images (searched recursively) or one image.")
PHOTOS = Setting(False, "Use the photos shipped with the packages.", flag="--photos")
SIZE = Setting(
    None,
    "Side of the square images (centre crop + resize).",
    check=POSITIVE,
    default_text="the model's",
)
SIGMA = Setting(
    0.25,
    "Noise level in pixel units of [0,1] images.",
    check=Interval(0, 10, closed="right", note="pixel units of [0,1] images; typical 0.12-0.5"),
)
SEED = Setting(0, "Run seed (each image gets its own stream).")
DEVICE = Setting(None, "torch device: cpu, cuda, cuda:1, mps.", default_text="the model's")
DTYPE = Setting("float32", "Model input dtype.", check=OneOf(DTYPES))
BATCH_SIZE = Setting(256, "Noisy images per forward pass.", check=POSITIVE)
CLASSES = Setting(
    None,
    "Zero-shot class names: comma-separated or a text file, one per line.",
    default_text="ImageNet-1k for text-image models",
)
N0 = Setting(64, "Direction samples (they choose the direction v).", check=POSITIVE)
N = Setting(10_000, "Certification samples.", check=POSITIVE)
ALPHA = Setting(0.001, "Failure probability of each certificate.", check=PROBABILITY)
METHOD = Setting(
    "betting",
    "Confidence bound: betting | bernstein | hoeffding.",
    check=OneOf(_bound_methods),
)
RADII = Setting(
    list(DEFAULT_RADII),
    "l2 radii (pixel units) to certify, comma-separated.",
    check=NON_NEGATIVE,
)
TASK = Setting(
    "auto",
    "What to certify (zero-shot predictions need a text-image model).",
    check=OneOf(TASKS),
)
PLUGIN = Setting(None, "Folder of a trained plug-in (purifier + mapper).")
RUN_DIR = Setting(None, "Run folder for the records (resumed if it exists).", check=Folder())
PROGRESS = Setting(True, "Show progress bars.")
TUNE = Setting(
    False,
    "Measure the fastest batch size and dtype for this encoder and device (a short warm-up, "
    "cached; bfloat16 only where its features agree with float32 ones) and use them instead "
    "of --batch-size/--dtype.",
)
ATTACK = Setting("pgd", "Attack: pgd | apgd.")
NORM = Setting("l2", "Threat model: l2 | linf.")
EPS = Setting(
    [0.5], "Budgets in pixel units, comma-separated; linf also k/255.", check=NON_NEGATIVE
)
STEPS = Setting(20, "Attack steps.", check=POSITIVE)
STEP_SIZE = Setting(None, "Step size (pixel units).", check=POSITIVE, default_text="the attack's")
RESTARTS = Setting(1, "Random restarts.", check=POSITIVE)
EOT = Setting(8, "Noise draws per attack step (EoT).", check=POSITIVE)
JUDGE_DRAWS = Setting(32, "Fresh noise draws judging each smoothed result.", check=POSITIVE)


# --------------------------------------------------------------------------------------
# Settings of each command


@dataclass
class _ModelSettings:
    """Settings shared by commands that run a model on images."""

    model: str = MODEL()
    images: str | None = IMAGES()
    photos: bool = PHOTOS()
    size: int | None = SIZE()
    sigma: float = SIGMA()
    seed: int = SEED()
    device: str | None = DEVICE()
    dtype: str = DTYPE()
    batch_size: int = BATCH_SIZE()
    classes: str | None = CLASSES()


@dataclass
class CertifyConfig(_ModelSettings):
    """Settings of ``featsmooth certify`` (see :func:`featsmooth.api.certify`)."""

    n0: int = N0()
    n: int = N(help="Certification samples (maximum).")
    alpha: float = ALPHA()
    method: str = METHOD()
    radii: list[float] = RADII()
    tolerance: float | None = setting(
        None,
        "Stop an image once estimate − S_low ≤ this (betting bound only).",
        check=POSITIVE,
        default_text="run all n samples",
    )
    target_cosine: float | None = setting(
        None,
        "With --target-radius: stop once this cosine is certified (or cannot be).",
        check=Interval(0, 1, closed="left"),
    )
    target_radius: float | None = setting(
        None, "Radius of --target-cosine (pixel units).", check=POSITIVE
    )
    center: bool = setting(
        False, "Subtract the mean feature of uniform-noise images before normalising."
    )
    keep_samples: bool = setting(
        False,
        "Store per-sample projections (for `featsmooth recompute`).",
        flag="--keep-samples",
    )
    task: str = TASK()
    plugin: str | None = PLUGIN()
    run_dir: str | None = RUN_DIR(default_text="runs/MODEL-sigmaSIGMA")
    progress: bool = PROGRESS()
    ray: bool = setting(
        False,
        "Spread the images over Ray workers (one encoder each). Same records as without "
        "it. Needs Ray: pip install 'ray>=2.9'",
    )
    ray_address: str | None = setting(
        None, "Existing Ray cluster (auto, ray://host:10001).", default_text="local"
    )
    workers: int | None = setting(
        None, "Ray workers.", check=POSITIVE, default_text="one per GPU, else one per CPU"
    )
    tune: bool = TUNE()


@dataclass
class DemoConfig:
    """Settings of ``featsmooth demo``: the offline default on the shipped photos."""

    sigma: float = SIGMA()
    n0: int = N0(16)
    n: int = N(300)
    alpha: float = ALPHA()
    method: str = METHOD()
    radii: list[float] = RADII()
    # batch 4: on 2 CPU cores 3.5x as fast as batch 64 on a quiet machine (4.8 vs 16.9 s per
    # photo) and 2.1x with two busy processes beside it (bench/results/demo_speed*.json)
    batch_size: int = BATCH_SIZE(4)
    seed: int = SEED()
    device: str | None = DEVICE()
    run_dir: str | None = RUN_DIR(help="Run folder.", default_text="runs/demo")
    progress: bool = PROGRESS()
    # off by default: its warm-up measurement is unreliable on a loaded machine (a measured
    # batch 16 once lost to batch 64 there); --tune measures and caches it for this machine
    tune: bool = TUNE(help="Measure the fastest batch size and dtype first (a warm-up, cached).")


@dataclass
class PredictConfig(_ModelSettings):
    """Settings of ``featsmooth predict``."""

    n: int = N(256, help="Noise draws per image.")
    top_k: int = setting(3, "Classes to show.", check=POSITIVE)
    progress: bool = PROGRESS()


@dataclass
class AttackConfig(_ModelSettings):
    """Settings of ``featsmooth attack`` (see :func:`featsmooth.api.attack`)."""

    attack: str = ATTACK()
    objective: str = setting("cosine", "What the attack lowers.", check=OneOf(("cosine",)))
    norm: str = NORM()
    eps: list[float] = EPS()
    steps: int = STEPS()
    step_size: float | None = STEP_SIZE()
    restarts: int = RESTARTS()
    settings: list[str] = setting(
        ["vanilla", "fs"], "Encoders attacked: vanilla, fs, fs+plugin (comma-separated)."
    )
    eot: int = EOT()
    judge_draws: int = JUDGE_DRAWS()
    success_cosine: float = setting(
        0.5,
        "An attack succeeds when the cosine drops below this.",
        check=Interval(-1, 1, closed="both"),
    )
    plugin: str | None = PLUGIN(help="Plug-in folder (for fs+plugin).")
    batch_size: int = BATCH_SIZE(64)
    run_dir: str | None = RUN_DIR(default_text="runs/attack-MODEL-NORM")
    progress: bool = PROGRESS()


@dataclass
class EvaluateConfig(_ModelSettings):
    """Settings of ``featsmooth evaluate`` (see :func:`featsmooth.api.evaluate`).

    One attack per budget in ``eps`` (``attack``/``norm``/``steps``/``step_size``/
    ``restarts``), or full specifications in ``attacks`` (``"pgd:l2:0.5:steps=20"``, see
    :func:`featsmooth.evaluate.parse_attack`), which then replace them. The targeted
    embedding-matching attacks (``mf-ii``, ``m-attack``, ``foa``) match the features of
    ``target_image``.
    """

    attack: str = ATTACK()
    attacks: list[str] = setting(
        [],
        "Full attack specs separated by ';' (e.g. pgd:l2:0.5:steps=20, or the paper's "
        "mf-ii:linf:16/255:steps=300:target=shark); they replace --attack/--norm/--eps/--steps.",
        default_text="one per --eps",
    )
    norm: str = NORM()
    eps: list[float] = EPS(
        [0.25, 0.5],
        help="Budgets (pixel units), comma-separated; linf also k/255. One attack each.",
    )
    steps: int = STEPS()
    step_size: float | None = STEP_SIZE()
    restarts: int = RESTARTS()
    plugin: str | None = PLUGIN(help="Plug-in folder: adds the setting fs+plugin.")
    target_image: str | None = setting(
        None, "Target image of the embedding-matching attacks (mf-ii, m-attack, foa)."
    )
    eot: int = EOT()
    judge_draws: int = JUDGE_DRAWS()
    n0: int = N0()
    n: int = N(1000)
    alpha: float = ALPHA()
    method: str = METHOD()
    radii: list[float] = RADII(
        [0.0, *DEFAULT_RADII], help="Radii of the certified table, comma-separated."
    )
    check_draws: int = setting(256, "Fresh draws of the consistency check.", check=POSITIVE)
    check_alpha: float = setting(
        0.001, "Failure probability of the consistency check.", check=PROBABILITY
    )
    task: str = TASK()
    dtype: str = DTYPE(help="Model input dtype (evaluate runs float32 only).")
    batch_size: int = BATCH_SIZE(64)
    attack_batch_size: int = setting(4, "Images per attack batch.", check=POSITIVE)
    run_dir: str | None = RUN_DIR(default_text="runs/evaluate-MODEL")
    progress: bool = PROGRESS()


@dataclass
class TrainPluginConfig:
    """Settings of ``featsmooth train-plugin`` (see :func:`featsmooth.api.train_plugin`)."""

    model: str = MODEL(help="Registry name of the frozen encoder.")
    images: str | None = IMAGES(help="Folder of training images.")
    photos: bool = PHOTOS(help="Train on the shipped photos (a demo).")
    size: int | None = SIZE()
    sigmas: list[float] = setting([0.25], "Training noise levels, comma-separated.", check=POSITIVE)
    parts: list[str] = setting(
        ["purifier", "mapper"], "Parts to train: purifier, mapper or both (comma-separated)."
    )
    steps: int = STEPS(200, help="Training steps.")
    batch_size: int = BATCH_SIZE(8, help="Images per step.")
    lr: float = setting(2e-4, "AdamW learning rate.", check=POSITIVE)
    draws_per_image: int = setting(2, "Noise draws per image and step.", check=POSITIVE)
    sigma_sampling: str = setting(
        "set",
        "How a step draws its noise level: 'set' from SIGMAS, 'uniform' between their min and max.",
        check=OneOf(("set", "uniform")),
    )
    loss_weights: str | None = setting(
        None,
        "Loss weights as name=value,... (clean_consistency, pairwise_consistency, utility, "
        "pixel_mse, stats, identity, agreement); unnamed ones keep their defaults.",
    )
    agreement_scale: float = setting(
        100.0,
        "Logit scale of the agreement term: KL between the zero-shot class distributions "
        "softmax(scale * cos) of the clean and the plugged noisy features (ImageNet classes).",
        check=POSITIVE,
    )
    crops: int | None = setting(
        None,
        "Train on this many random crops/flips of the images (few images).",
        check=POSITIVE,
        default_text="the images as they are",
    )
    pretrain_steps: int = setting(
        0,
        "Pixel-denoising steps for the purifier first (encoder not run).",
        check=NON_NEGATIVE,
    )
    val_images: str | None = setting(None, "Held-out images: S and clean agreement while training.")
    val_every: int = setting(50, "Validate every this many steps.", check=NON_NEGATIVE)
    seed: int = SEED()
    device: str | None = DEVICE()
    dtype: str = DTYPE()
    out: str = setting("plugins/plugin", "Output folder.", check=Folder())
    progress: bool = PROGRESS()


COMMANDS: dict[str, type] = {
    "certify": CertifyConfig,
    "demo": DemoConfig,
    "predict": PredictConfig,
    "attack": AttackConfig,
    "evaluate": EvaluateConfig,
    "train-plugin": TrainPluginConfig,
}

#: the targeted embedding-matching attacks of the source paper's protocol
PAPER_ATTACKS = ("mf-ii", "m-attack", "foa")

#: named overrides of the declared defaults (:func:`resolve`'s ``preset``): a preset
#: changes a few settings and nothing else, so it cannot drift from the declarations
PRESETS: dict[str, dict[str, Any]] = {
    # `featsmooth demo --fast`: a smoke test (loose bounds)
    "demo-fast": {"n0": 8, "n": 32, "batch_size": 40, "tune": False},
    # `evaluate`: the source paper's targeted protocol, linf 16/255, 300 steps of 1/255
    # (give --target-image; a ``target=CLASS`` in each spec sets the success classes)
    "paper": {
        "attacks": [f"{name}:linf:16/255:steps=300:step_size=1/255" for name in PAPER_ATTACKS]
    },
}


# --------------------------------------------------------------------------------------
# Reading config files


def _key(name: str) -> str:
    return str(name).strip().replace("-", "_")


def _section(data: Mapping[str, Any], command: str | None) -> dict[str, Any]:
    """Top-level keys with the command's own section (if any) applied over them."""
    sections = {_key(c) for c in COMMANDS}
    flat = {k: v for k, v in data.items() if not (k in sections and isinstance(v, Mapping))}
    if command is not None:
        own = data.get(_key(command))
        if isinstance(own, Mapping):
            flat.update({_key(k): v for k, v in own.items()})
    return flat


# --------------------------------------------------------------------------------------
# Conversion and checks


def parse_float_list(value: Any, what: str = "value") -> list[float]:
    """``"0.1,0.25"``, ``0.5`` or ``[0.1, 0.25]`` as a list of finite floats."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    out = []
    for p in parts:
        try:
            x = float(_fraction(p) if isinstance(p, str) else p)
        except ZeroDivisionError:
            raise InputError(f"{what}: {_repr(p)} divides by zero") from None
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{what}: {_repr(p)} is not a number") from None
        if not math.isfinite(x):
            raise InputError(f"{what}: {_repr(p)} is not a finite number")
        out.append(x)
    if not out:
        raise InputError(f"{what}: give at least one number")
    return out


def _fraction(text: str) -> float:
    """``"16/255"`` -> 16/255; anything else through ``float``."""
    if "/" in text:
        num, _, den = text.partition("/")
        return float(num) / float(den)
    return float(text)


def _repr(value: Any) -> str:
    """A short repr for an error message (a crafted value must not print megabytes)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 60, 60
    return shorten(short.repr(value))


def parse_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, (list, tuple)):
        return [str(p).strip() for p in value if str(p).strip()]
    return [str(value)]


def _convert(name: str, hint: Any, value: Any, source: str) -> Any:
    """Convert ``value`` for the field ``name`` of type ``hint`` (a typing annotation)."""
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise InputError(f"{name} ({source}) cannot be empty")
    where = f"{name} ({source})"
    try:
        if text.startswith("list[float]"):
            return parse_float_list(value, where)
        if text.startswith("list[str]"):
            return parse_str_list(value)
        if text.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise InputError(f"{where} must be true or false, got {value!r}")
        if text.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if text.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            try:
                out = float(_fraction(value) if isinstance(value, str) else value)
            except ZeroDivisionError:
                raise InputError(f"{where}: {_repr(value)} divides by zero") from None
            if not math.isfinite(out):
                raise InputError(f"{where} must be a finite number, got {_repr(value)}")
            return out
        if isinstance(value, (Mapping, list, tuple, set)):
            raise ValueError
        return str(value)
    except InputError:  # already names the key and the reason
        raise
    except (TypeError, ValueError, OverflowError):
        kind = text.split(" ")[0].split("|")[0]
        raise InputError(f"{where} must be of type {kind}, got {_repr(value)}") from None


def validate(cfg: Any) -> Any:
    """Check a settings object: each field against its declared constraint (messages name
    the setting), then the rules that join several settings and the memory needed.

    Returns ``cfg``. Raises InputError on the first bad value.
    """
    check_declared(cfg)
    target_c = getattr(cfg, "target_cosine", None)
    target_r = getattr(cfg, "target_radius", None)
    if (target_c is None) != (target_r is None):
        raise InputError("give --target-cosine and --target-radius together")
    if getattr(cfg, "images", None) is not None and getattr(cfg, "photos", False):
        raise InputError("give either --images or --photos, not both")
    check_memory(cfg)
    return cfg


#: largest image side accepted (a 16384 x 16384 RGB image is 3.2 GB as float32)
MAX_SIZE = 16384


def _total_memory() -> int | None:
    """Physical memory of this machine in bytes (None where unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def memory_estimate(cfg: Any) -> int:
    """A lower bound on the memory (bytes) a run with these settings needs at its peak.

    Counted: one batch of noisy images (``min(batch_size, n)`` images of ``3 x size x
    size`` float32, the image side known only when ``size`` is given) and the kept
    projections of the certification draws (two float64 per draw: smoothed and clean
    reference). The encoder's own activations come on top.
    """
    n = max(int(getattr(cfg, "n", 0) or 0), int(getattr(cfg, "n0", 0) or 0))
    size = getattr(cfg, "size", None)
    batch = int(getattr(cfg, "batch_size", 1) or 1)
    total = 16 * n
    if size:
        images = max(1, min(batch, n) if n else batch)
        total += images * 3 * int(size) ** 2 * 4
    return total


def check_memory(cfg: Any, available: int | None = None) -> None:
    """Refuse settings that cannot fit in this machine's memory; warn above half of it.

    Raises:
        InputError: ``size`` above :data:`MAX_SIZE`, or :func:`memory_estimate` above
            ``available`` (default: the physical memory).
    """
    size = getattr(cfg, "size", None)
    if size is not None and size > MAX_SIZE:
        raise InputError(
            f"size = {size} pixels is too large: one {size}x{size} image alone takes "
            f"{_gb(3 * size**2 * 4)} (at most {MAX_SIZE}; models use 224-448)"
        )
    available = _total_memory() if available is None else available
    if not available:
        return
    need = memory_estimate(cfg)
    what = f"n = {getattr(cfg, 'n', None)}, batch-size = {getattr(cfg, 'batch_size', None)}" + (
        f", size = {size}" if size else ""
    )
    if need > available:
        raise InputError(
            f"these settings ({what}) need at least {_gb(need)} of memory, more than the "
            f"{_gb(available)} of this machine: lower --n, --batch-size or --size"
        )
    if need > available / 2:
        import warnings

        warnings.warn(
            f"these settings ({what}) need at least {_gb(need)} of memory, over half of the "
            f"{_gb(available)} of this machine",
            UserWarning,
            stacklevel=3,
        )


def resolve(
    cls: type[T],
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    command: str | None = None,
    preset: str | None = None,
) -> T:
    """Settings of type ``cls``: defaults, then ``preset`` (a name in :data:`PRESETS`),
    then ``config_file``, then ``overrides``; validated (:func:`validate`).

    ``overrides`` values that are ``None`` are ignored (flag not given). A config file
    accepts exactly the fields of ``cls``: unknown keys raise InputError listing the valid
    ones, as does an unknown preset or one that sets a field ``cls`` lacks.
    """
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        for k, v in PRESETS[preset].items():
            if k not in hints:
                raise InputError(f"preset {preset!r} sets {k!r}, not a setting of this command")
            values[k] = _convert(k, hints[k], v, f"preset {preset}")
    if config_file is not None:
        data = _section(load_config_file(config_file), command)
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError(
                f"unknown setting(s) {shorten(', '.join(unknown))} in {config_file}; "
                f"valid: {', '.join(n.replace('_', '-') for n in names)}"
            )
        for k, v in data.items():
            values[k] = _convert(k, hints[k], v, f"config file {Path(config_file).name}")
    for k, v in (overrides or {}).items():
        k = _key(k)
        if v is None:
            continue
        if k not in hints:
            raise InputError(f"unknown setting {k!r}")
        values[k] = _convert(k, hints[k], v, "command line")
    return validate(cls(**values))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The settings as a plain dict (field order)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    """The settings as YAML text (keys with ``-``, readable by :func:`load_config_file`)."""
    import yaml

    data = {k.replace("_", "-"): v for k, v in to_dict(cfg).items()}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def save_config(cfg: Any, folder: str | os.PathLike[str], command: str | None = None) -> Path:
    """Write the effective settings to ``folder/config.yaml`` (atomically); returns the path.

    With ``command`` the settings are written as that command's section, so the file can
    be passed back with ``--config`` to repeat the run.
    """
    from featsmooth.files import atomic_write_bytes

    text = dump_yaml(cfg)
    if command is not None:
        text = f"{command}:\n" + "".join(f"  {line}\n" for line in text.splitlines())
    path = Path(folder) / CONFIG_FILE
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


__all__ = [
    "COMMANDS",
    "CONFIG_FILE",
    "DTYPES",
    "PAPER_ATTACKS",
    "PRESETS",
    "TASKS",
    "AttackConfig",
    "CertifyConfig",
    "DemoConfig",
    "EvaluateConfig",
    "PredictConfig",
    "TrainPluginConfig",
    "dump_yaml",
    "load_config_file",
    "parse_float_list",
    "parse_str_list",
    "resolve",
    "save_config",
    "to_dict",
    "validate",
]
