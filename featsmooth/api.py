"""The Python API behind the ``featsmooth`` command line: one plain function per subcommand.

Each function takes the settings of its command as keyword arguments (the fields of the
matching dataclass in :mod:`featsmooth.config`; ``config_file=`` adds a YAML/TOML file
underneath them), does the work, writes records where the command does, and returns plain
data. The CLI only parses flags, calls these functions and prints what they return::

    from featsmooth import api
    result = api.certify("default", photos=True, sigma=0.25, n=2000, run_dir="runs/x")
    result.records[0]["fcsb"]            # certified cosine at each radius (None: none)
    api.report(["runs/x"], "reports/x")

What the numbers mean (docs/theory.md): for each image, with probability at least
``1 - alpha`` over the run's noise draws, ``score_lower <= S = ||f_hat(x)||``, so the
smoothed feature keeps cosine at least ``fcsb[i]`` with the clean smoothed feature for every
l2 perturbation of norm at most ``radii[i]`` (pixel units of [0, 1] images); zero-shot
models also get the certified smoothed prediction three ways (margin / fcsb / cohen).

Runs are resumable: records go to ``<run_dir>/records.jsonl`` one line per image as soon
as it is certified (see :mod:`featsmooth.records`); running the same command again skips
the images already done and refuses different result-defining settings. Every image has
its own noise stream derived from the run seed and its key, so a resumed run gives the same
records as an uninterrupted one.
"""

from __future__ import annotations

from featsmooth.commands.attack import SETTINGS, attack
from featsmooth.commands.certify import certify, demo, predict
from featsmooth.commands.common import RunResult, default_run_dir
from featsmooth.commands.evaluate import evaluate
from featsmooth.commands.results import ModelRow, models, recompute, report
from featsmooth.commands.train import parse_loss_weights, train_plugin
from featsmooth.data.sources import ImageSource, folder_images, photo_images, random_images
from featsmooth.loading import (
    apply_tuning,
    load_model,
    model_image_size,
    noise_center,
    run_image_size,
    torch_dtype,
    zero_shot_classes,
)

__all__ = [
    "SETTINGS",
    "ImageSource",
    "ModelRow",
    "RunResult",
    "apply_tuning",
    "attack",
    "certify",
    "default_run_dir",
    "demo",
    "evaluate",
    "folder_images",
    "load_model",
    "model_image_size",
    "models",
    "noise_center",
    "parse_loss_weights",
    "photo_images",
    "predict",
    "random_images",
    "recompute",
    "report",
    "run_image_size",
    "torch_dtype",
    "train_plugin",
    "zero_shot_classes",
]
