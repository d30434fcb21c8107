"""The user cache folder: class-text tables, the photo corpus, measured tuning.

``$FEATSMOOTH_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/featsmooth``, else
``~/.cache/featsmooth``. Everything stored there can be deleted at any time: it is rebuilt
(or re-measured) on the next use.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "FEATSMOOTH_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """The cache folder, or a sub-folder of it (not created here)."""
    env = os.environ.get(ENV)
    if env:
        base = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "featsmooth"
    return base.joinpath(*parts)
