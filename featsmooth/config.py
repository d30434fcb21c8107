"""Settings of a command: defaults, then a YAML/TOML config file, then command-line flags.

Every subcommand of ``featsmooth`` has a settings dataclass here (:class:`CertifyConfig`,
:class:`DemoConfig`, ...). :func:`resolve` builds one from three sources, later ones
winning:

1. the dataclass defaults;
2. a config file (``--config FILE``; ``.yaml``/``.yml`` or ``.toml``) whose keys are the
   field names (``-`` and ``_`` are the same: ``batch-size`` = ``batch_size``). A file may
   also hold one section per command (``certify: {sigma: 0.5}``), which is applied over
   its top-level keys, so one file can serve several commands;
3. the flags the user gave (``None`` means "not given" and never overrides).

Values are checked and converted on the way in (``"0.1,0.25"`` becomes ``[0.1, 0.25]``);
any bad value raises :class:`~featsmooth.errors.InputError` naming the key and the source.
The effective settings are printed by the CLI and saved beside the run
(:func:`save_config` writes ``config.yaml``, which ``--config`` accepts back, so a run can
be repeated exactly).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from featsmooth.errors import InputError

CONFIG_FILE = "config.yaml"
#: largest config file read (a settings file is a few hundred bytes)
MAX_CONFIG_BYTES = 1 << 20
#: most values a YAML config file may expand to: each alias (``*name``) repeats a whole
#: subtree, so a few nested ones make a 1 KB file into gigabytes ("billion laughs")
MAX_YAML_NODES = 10_000
DTYPES = ("float32", "bfloat16", "float16")
TASKS = ("auto", "features", "zero-shot")
DEFAULT_RADII = (0.1, 0.25, 0.5)

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Settings of each command


@dataclass
class _ModelSettings:
    """Settings shared by commands that run a model on images."""

    model: str = "default"
    images: str | None = None
    photos: bool = False
    size: int | None = None
    sigma: float = 0.25
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    batch_size: int = 256
    classes: str | None = None


@dataclass
class CertifyConfig(_ModelSettings):
    """Settings of ``featsmooth certify`` (see :func:`featsmooth.api.certify`)."""

    n0: int = 64
    n: int = 10_000
    alpha: float = 0.001
    method: str = "betting"
    radii: list[float] = field(default_factory=lambda: list(DEFAULT_RADII))
    tolerance: float | None = None
    target_cosine: float | None = None
    target_radius: float | None = None
    center: bool = False
    keep_samples: bool = False
    task: str = "auto"
    plugin: str | None = None
    run_dir: str | None = None
    progress: bool = True
    ray: bool = False
    ray_address: str | None = None
    workers: int | None = None
    tune: bool = False


@dataclass
class DemoConfig:
    """Settings of ``featsmooth demo``: the offline default on the shipped photos."""

    sigma: float = 0.25
    n0: int = 16
    n: int = 300
    alpha: float = 0.001
    method: str = "betting"
    radii: list[float] = field(default_factory=lambda: list(DEFAULT_RADII))
    batch_size: int = 64
    seed: int = 0
    device: str | None = None
    run_dir: str | None = None
    progress: bool = True
    # off by default: on a loaded 2-core machine the measured choice lost to batch 64
    # (bench/results/demo_speed.json); --tune measures and caches it for this machine
    tune: bool = False


@dataclass
class PredictConfig(_ModelSettings):
    """Settings of ``featsmooth predict``."""

    n: int = 256
    top_k: int = 3


@dataclass
class AttackConfig(_ModelSettings):
    """Settings of ``featsmooth attack`` (see :func:`featsmooth.api.attack`)."""

    attack: str = "pgd"
    objective: str = "cosine"
    norm: str = "l2"
    eps: list[float] = field(default_factory=lambda: [0.5])
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    settings: list[str] = field(default_factory=lambda: ["vanilla", "fs"])
    eot: int = 8
    judge_draws: int = 32
    success_cosine: float = 0.5
    plugin: str | None = None
    batch_size: int = 64
    run_dir: str | None = None


@dataclass
class EvaluateConfig(_ModelSettings):
    """Settings of ``featsmooth evaluate`` (see :func:`featsmooth.api.evaluate`).

    One attack per budget in ``eps`` (``attack``/``norm``/``steps``/``step_size``/
    ``restarts``), or full specifications in ``attacks`` (``"pgd:l2:0.5:steps=20"``, see
    :func:`featsmooth.evaluate.parse_attack`), which then replace them. The targeted
    embedding-matching attacks (``mf-ii``, ``m-attack``, ``foa``) match the features of
    ``target_image``.
    """

    attack: str = "pgd"
    attacks: list[str] = field(default_factory=list)
    norm: str = "l2"
    eps: list[float] = field(default_factory=lambda: [0.25, 0.5])
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    plugin: str | None = None
    target_image: str | None = None
    eot: int = 8
    judge_draws: int = 32
    n0: int = 64
    n: int = 1000
    alpha: float = 0.001
    method: str = "betting"
    radii: list[float] = field(default_factory=lambda: [0.0, *DEFAULT_RADII])
    check_draws: int = 256
    check_alpha: float = 0.001
    task: str = "auto"
    batch_size: int = 64
    attack_batch_size: int = 4
    run_dir: str | None = None
    progress: bool = True


@dataclass
class TrainPluginConfig:
    """Settings of ``featsmooth train-plugin`` (see :func:`featsmooth.api.train_plugin`)."""

    model: str = "default"
    images: str | None = None
    photos: bool = False
    size: int | None = None
    sigmas: list[float] = field(default_factory=lambda: [0.25])
    parts: list[str] = field(default_factory=lambda: ["purifier", "mapper"])
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-4
    draws_per_image: int = 2
    sigma_sampling: str = "set"
    loss_weights: str | None = None
    crops: int | None = None
    pretrain_steps: int = 0
    val_images: str | None = None
    val_every: int = 50
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    out: str = "plugins/plugin"
    progress: bool = True


COMMANDS: dict[str, type] = {
    "certify": CertifyConfig,
    "demo": DemoConfig,
    "predict": PredictConfig,
    "attack": AttackConfig,
    "evaluate": EvaluateConfig,
    "train-plugin": TrainPluginConfig,
}


# --------------------------------------------------------------------------------------
# Reading config files


def _key(name: str) -> str:
    return str(name).strip().replace("-", "_")


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``/``.json``) or TOML (``.toml``) file into a dict.

    Raises:
        InputError: missing file, unreadable or malformed content, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputError(
                f"config file {path} is {size} bytes; a settings file is far smaller "
                f"(at most {MAX_CONFIG_BYTES} bytes read)"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InputError(f"cannot read config file {path}: {reason}") from None
    if path.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise InputError(
                    "reading TOML on Python 3.10 needs tomli (pip install tomli); "
                    "or write the config as YAML"
                ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config file {path} is not valid TOML: {exc}") from None
    else:
        import yaml

        try:
            _check_yaml_size(yaml.compose(text, Loader=yaml.SafeLoader), path)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = _shorten(" ".join(str(exc).split()), 200)
            raise InputError(f"config file {path} is not valid YAML: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InputError(f"config file {path} must hold a mapping of setting names to values")
    return {_key(k): v for k, v in data.items()}


def _check_yaml_size(root: Any, path: Path) -> None:
    """Refuse a YAML document that expands to more than :data:`MAX_YAML_NODES` values
    (aliases counted as the subtrees they repeat), nests deeper than 50 or refers to
    itself."""
    import yaml

    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def too_big(what: str) -> InputError:
        return InputError(
            f"config file {path} {what}; a settings file holds a few plain values: "
            "write them out without YAML aliases (*name)"
        )

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise too_big("refers to itself through a YAML alias")
        if depth > 50:
            raise too_big("nests more than 50 levels deep")
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            busy.add(key)
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [part for pair in node.value for part in pair]
            )
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_YAML_NODES:
                    raise too_big(f"expands to more than {MAX_YAML_NODES} values")
            busy.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        size(root, 0)


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


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _repr(value: Any) -> str:
    """A short repr for an error message (a crafted value must not print megabytes)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 60, 60
    return _shorten(short.repr(value))


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


def _positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name, None)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise InputError(f"{name.replace('_', '-')} must be {bound}, got {value!r}")


def validate(cfg: Any) -> Any:
    """Check the values of a settings object; raises InputError on the first bad one."""
    if hasattr(cfg, "sigma"):
        _positive(cfg, "sigma")
        if cfg.sigma > 10:
            raise InputError(
                f"sigma = {cfg.sigma:g} is not a plausible noise level for [0,1] images "
                "(pixel units; typical 0.12-0.5)"
            )
    _positive(cfg, "n0", "n", "batch_size", "size", "steps", "restarts", "top_k", "eot")
    _positive(cfg, "judge_draws", "draws_per_image", "lr", "tolerance", "target_radius")
    _positive(cfg, "check_draws", "attack_batch_size", "workers", "crops")
    _positive(cfg, "pretrain_steps", "val_every", allow_zero=True)
    if getattr(cfg, "sigma_sampling", "set") not in ("set", "uniform"):
        raise InputError(f"sigma-sampling must be set or uniform, got {cfg.sigma_sampling!r}")
    if getattr(cfg, "check_alpha", None) is not None and not 0.0 < cfg.check_alpha < 1.0:
        raise InputError(f"check-alpha must lie strictly between 0 and 1, got {cfg.check_alpha!r}")
    if getattr(cfg, "alpha", None) is not None and not 0.0 < cfg.alpha < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1, got {cfg.alpha!r}")
    if getattr(cfg, "method", None) is not None:
        from featsmooth import bounds

        bounds.get_method(cfg.method)  # a clear InputError for an unknown name
    for name in ("radii", "eps", "sigmas"):
        values = getattr(cfg, name, None)
        if values is not None and any(v < 0 for v in values):
            raise InputError(f"{name} must be >= 0, got {values}")
    if getattr(cfg, "sigmas", None) is not None and any(v <= 0 for v in cfg.sigmas):
        raise InputError(f"sigmas must be > 0, got {cfg.sigmas}")
    if getattr(cfg, "dtype", None) is not None and cfg.dtype not in DTYPES:
        raise InputError(f"unknown dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    if getattr(cfg, "task", None) is not None and cfg.task not in TASKS:
        raise InputError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    target_c = getattr(cfg, "target_cosine", None)
    target_r = getattr(cfg, "target_radius", None)
    if (target_c is None) != (target_r is None):
        raise InputError("give --target-cosine and --target-radius together")
    if target_c is not None and not 0.0 <= target_c < 1.0:
        raise InputError(f"target-cosine must lie in [0, 1), got {target_c!r}")
    if getattr(cfg, "images", None) is not None and getattr(cfg, "photos", False):
        raise InputError("give either --images or --photos, not both")
    for name in ("run_dir", "out"):
        folder = getattr(cfg, name, None)
        if isinstance(folder, str) and os.path.exists(folder) and not os.path.isdir(folder):
            flag = "--run-dir" if name == "run_dir" else "--out"
            raise InputError(f"{flag} {folder} exists and is not a folder")
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
) -> T:
    """Settings of type ``cls``: defaults, then ``config_file``, then ``overrides``.

    ``overrides`` values that are ``None`` are ignored (flag not given). Unknown keys in
    the file raise InputError listing the valid ones.
    """
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    values: dict[str, Any] = {}
    if config_file is not None:
        data = _section(load_config_file(config_file), command)
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError(
                f"unknown setting(s) {_shorten(', '.join(unknown))} in {config_file}; "
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
    from featsmooth.records import atomic_write_bytes

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
