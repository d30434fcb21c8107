"""When to go to the Hugging Face hub: probe it once, fail fast with the command to run.

Before loading a hub model, :func:`local_files_only` decides, without retries:

* a local folder, or ``HF_HUB_OFFLINE`` set: local files only (no network at all);
* otherwise one HEAD request to the hub endpoint with a short timeout (:data:`PROBE_TIMEOUT`
  seconds, remembered for :data:`PROBE_TTL` seconds per process): hub reachable -> the
  usual download path; unreachable -> local files only when the model's ``config.json`` is
  in the local cache, else :class:`ModelUnavailableError` at once, naming the exact
  command that downloads the model and the hint to pass a local folder.

So with no network a missing model fails in about :data:`PROBE_TIMEOUT` seconds instead
of huggingface_hub's rounds of retries.
"""

from __future__ import annotations

import os
import time
from typing import Any

from featsmooth.errors import ModelUnavailableError

PROBE_TIMEOUT = 1.5
PROBE_TTL = 60.0
_probes: dict[str, tuple[float, bool]] = {}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value in the environment (read each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _head(url: str, timeout: float) -> Any:
    """One HEAD request through huggingface_hub's own HTTP client (its proxies and headers),
    with no retries."""
    from huggingface_hub.utils import get_session

    return get_session().head(url, timeout=timeout, follow_redirects=False)


def probe_hub(timeout: float = PROBE_TIMEOUT) -> bool:
    """One HEAD request to the hub endpoint (any HTTP answer means reachable); the answer is
    remembered for :data:`PROBE_TTL` seconds."""
    url = endpoint()
    now = time.monotonic()
    cached = _probes.get(url)
    if cached is not None and now - cached[0] < PROBE_TTL:
        return cached[1]
    try:
        _head(url, timeout)
        reachable = True
    except Exception:
        reachable = False
    _probes[url] = (now, reachable)
    return reachable


def cached_file_path(repo_id: str, filename: str = "config.json") -> Any:
    """huggingface_hub's ``try_to_load_from_cache`` of ``filename`` of ``repo_id`` in the cache
    that ``HF_HUB_CACHE`` / ``HF_HOME`` name (read each call; no network): the path (a
    ``str``) when it is cached, else another value; ``None`` without huggingface_hub. Errors
    of the lookup propagate."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cache = os.environ.get("HF_HUB_CACHE")
    if cache is None and os.environ.get("HF_HOME"):
        cache = os.path.join(os.environ["HF_HOME"], "hub")
    return try_to_load_from_cache(repo_id, filename, cache_dir=cache)


def in_cache(repo_id: str, filename: str = "config.json") -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local hub cache (no network)."""
    try:
        return isinstance(cached_file_path(repo_id, filename), str)
    except Exception:
        return False


def download_command(repo_id: str) -> str:
    return f"hf download {repo_id}"


def not_available(name: str, reason: str) -> ModelUnavailableError:
    error = ModelUnavailableError(
        f"cannot load model '{name}': {reason}; download it where the hub is reachable with "
        f"`{download_command(name)}`, or pass the path of a local folder holding the model, "
        'or use the offline default instead (`featsmooth models`, name "default")'
    )
    error.hint = (  # type: ignore[attr-defined]
        f"{download_command(name)}  (then it loads from the cache), or load_encoder('/path/to/model')"
    )
    return error


def local_files_only(name: str) -> bool:
    """Whether to load ``name`` from local files only; raises when it cannot be had at all."""
    if os.path.isdir(str(name)):
        return True
    if hub_offline():
        if not in_cache(str(name)):
            raise not_available(name, "it is not in the local cache and HF_HUB_OFFLINE is set")
        return True
    if probe_hub():
        return False
    if in_cache(str(name)):
        return True
    raise not_available(
        name, "the model hub is unreachable and the model is not in the local cache"
    )


def pretrained_kwargs(name: str, **kwargs: Any) -> dict[str, Any]:
    """``kwargs`` with ``local_files_only`` decided by :func:`local_files_only`."""
    kwargs.setdefault("local_files_only", local_files_only(name))
    return kwargs
