"""Seconds per photo of the demo's work, today's fixed settings vs the measured (tuned) ones.

The demo's work per photo is one sampling pass of n0 + n noisy copies through the offline
default encoder giving the feature certificate and the certified zero-shot prediction
(``SmoothedEncoder.certify_prediction`` over the 1000 classes). The baseline is the demo's
former fixed setting (float32, batch 64); the candidate is what ``featsmooth.tuning.tune``
picks on this machine (its warm-up cost is reported separately: it is paid once and cached).
Variants alternate photo by photo, round after round, in one process, so load from other
processes hits both alike; the ratio of the medians is the figure of record.

    python bench/bench_demo_speed.py                 # writes bench/results/demo_speed.json
    python bench/bench_demo_speed.py --photos 3 --rounds 3 --threads 2
    python bench/bench_demo_speed.py --batches 4 8 16 --busy 2 --out loaded.json

``--batches`` adds fixed float32 batch sizes to the alternation; ``--busy N`` runs N
busy-loop processes during the measurement (a loaded machine, reproducibly).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from featsmooth import SmoothedEncoder
from featsmooth.data import imagenet_classes
from featsmooth.data.photos import load_photos
from featsmooth.encoders.registry import load_encoder
from featsmooth.tasks.zero_shot import class_embeddings
from featsmooth.tuning import tune
from featsmooth.versions import environment_info

SIGMA = 0.25


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n0", type=int, default=16)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[],
        help="more fixed float32 batch sizes to compare",
    )
    parser.add_argument("--no-tune", action="store_true",
                        help="compare fixed settings only (no tuning warm-up)")  # fmt: skip
    parser.add_argument("--busy", type=int, default=0,
                        help="busy-loop processes running during the measurement")  # fmt: skip
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_speed.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder = load_encoder("default").eval()
    photos = load_photos().images[: args.photos]
    classes = class_embeddings(encoder, imagenet_classes())
    load = [os.getloadavg()[0]]

    variants = {"fixed (float32, batch 64)": (encoder, torch.float32, 64)}
    choice, tune_seconds = None, None
    if not args.no_tune:
        t0 = time.perf_counter()
        choice = tune(encoder, photos, SIGMA, cache=False)
        tune_seconds = time.perf_counter() - t0
        tuned = encoder
        if choice.dtype != "float32":  # .to() converts in place: keep a float32 copy
            tuned = load_encoder("default").eval().to(getattr(torch, choice.dtype))
        name = f"tuned ({choice.dtype}, batch {choice.batch_size})"
        variants[name] = (tuned, getattr(torch, choice.dtype), choice.batch_size)
    for batch in args.batches:
        variants[f"fixed (float32, batch {batch})"] = (encoder, torch.float32, batch)
    busy = [_busy_loop() for _ in range(args.busy)]
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.rounds):
            for i in range(photos.shape[0]):
                for name, (enc, dtype, batch) in variants.items():
                    sm = SmoothedEncoder(enc, SIGMA, input_dtype=dtype, batch_size=batch)
                    start = time.perf_counter()
                    sm.certify_prediction(photos[i : i + 1], classes, n0=args.n0,
                                          n=args.n, alpha=0.001, seed=i)  # fmt: skip
                    seconds[name].append(time.perf_counter() - start)
            load.append(os.getloadavg()[0])
            _write(args, choice, tune_seconds, load, seconds)  # a killed run keeps its rounds
    finally:
        for proc in busy:
            proc.kill()
    result = _write(args, choice, tune_seconds, load, seconds)
    print(json.dumps({k: result[k] for k in ("median_seconds_per_photo", "speed_up")}, indent=1))
    if choice is not None:
        print("tuning:", choice.describe(), f"(warm-up {tune_seconds:.1f} s)")


def _write(
    args: argparse.Namespace,
    choice: object,
    tune_seconds: float | None,
    load: list[float],
    seconds: dict[str, list[float]],
) -> dict:
    """Write the results measured so far to ``args.out`` (atomically) and return them."""
    median = {name: statistics.median(v) for name, v in seconds.items()}
    base = median["fixed (float32, batch 64)"]
    result = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "sigma": SIGMA,
            "model": "default",
            "work": "certify_prediction",
        },
        "environment": environment_info(),
        "tuning": None if choice is None else {**choice.__dict__, "warm_up_seconds": tune_seconds},
        "load_average_1min": load,
        "rounds_done": len(load) - 1,
        "seconds_per_photo": seconds,
        "median_seconds_per_photo": median,
        "speed_up": base / list(median.values())[min(1, len(median) - 1)],
        "speed_up_vs_batch_64": {name: base / m for name, m in median.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return result


def _busy_loop() -> subprocess.Popen:
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


if __name__ == "__main__":
    main()
