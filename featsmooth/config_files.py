"""Reading settings files: YAML (``.yaml``/``.yml``/``.json``) or TOML (``.toml``), with the
limits that keep a crafted file from exhausting memory."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from featsmooth.errors import InputError

__all__ = ["MAX_CONFIG_BYTES", "MAX_YAML_NODES", "load_config_file", "shorten"]

#: largest config file read (a settings file is a few hundred bytes)
MAX_CONFIG_BYTES = 1 << 20
#: most values a YAML config file may expand to: each alias (``*name``) repeats a whole
#: subtree, so a few nested ones make a 1 KB file into gigabytes ("billion laughs")
MAX_YAML_NODES = 10_000


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (an error message must not print megabytes)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            reason = shorten(" ".join(str(exc).split()), 200)
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
