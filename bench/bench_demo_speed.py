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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_speed.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder = load_encoder("default").eval()
    photos = load_photos().images[: args.photos]
    classes = class_embeddings(encoder, imagenet_classes())
    load = [os.getloadavg()[0]]

    t0 = time.perf_counter()
    choice = tune(encoder, photos, SIGMA, cache=False)
    tune_seconds = time.perf_counter() - t0
    fast_encoder = encoder if choice.dtype == "float32" else encoder.to(torch.bfloat16)
    if choice.dtype != "float32":
        encoder = load_encoder("default").eval()  # .to() above converted it in place
    variants = {
        "fixed (float32, batch 64)": (encoder, torch.float32, 64),
        f"tuned ({choice.dtype}, batch {choice.batch_size})": (
            fast_encoder,
            getattr(torch, choice.dtype),
            choice.batch_size,
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for i in range(photos.shape[0]):
            for name, (enc, dtype, batch) in variants.items():
                sm = SmoothedEncoder(enc, SIGMA, input_dtype=dtype, batch_size=batch)
                start = time.perf_counter()
                sm.certify_prediction(photos[i : i + 1], classes, n0=args.n0,
                                      n=args.n, alpha=0.001, seed=i)  # fmt: skip
                seconds[name].append(time.perf_counter() - start)
        load.append(os.getloadavg()[0])
    median = {name: statistics.median(v) for name, v in seconds.items()}
    base, tuned = list(median.values())
    result = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "sigma": SIGMA,
            "model": "default",
            "work": "certify_prediction",
        },
        "environment": environment_info(),
        "tuning": {**choice.__dict__, "warm_up_seconds": tune_seconds},
        "load_average_1min": load,
        "seconds_per_photo": seconds,
        "median_seconds_per_photo": median,
        "speed_up": base / tuned,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_seconds_per_photo", "speed_up")}, indent=1))
    print("tuning:", choice.describe(), f"(warm-up {tune_seconds:.1f} s)")


if __name__ == "__main__":
    main()
