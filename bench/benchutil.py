"""What several benchmark scripts share (run them from the repository root:
``python bench/<script>.py``; the folder of the script is then on the import path)."""

from __future__ import annotations

import argparse
from pathlib import Path


def recorded_arguments(args: argparse.Namespace) -> dict:
    """The command-line arguments without any machine path: no ``out``; the folders
    ``run_dir`` and ``plugin`` reduced to their last component."""
    kept = {k: v for k, v in vars(args).items() if k not in ("out", "run_dir", "plugin")}
    for key in ("run_dir", "plugin"):
        value = getattr(args, key)
        kept[key] = Path(value).name if value else None
    return kept
