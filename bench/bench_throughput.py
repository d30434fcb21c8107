"""Noisy samples per second through SmoothedEncoder.certify vs plain forward passes.

For each model and dtype: the *baseline* is the encoder's own batched forward pass on
ready-made noisy inputs (``batch_size`` per pass, no noise drawing, no bookkeeping); the
*certify* rate is ``images * (n0 + n) / seconds`` of one ``SmoothedEncoder.certify`` call
(noise drawn per image from its own generator, packed into passes of ``batch_size``,
normalised in float64, projected, bounded). Baseline and certify runs alternate and each
is repeated, and the ratio of the medians is reported, so load from other processes on a
shared machine hits both sides alike. Target: ratio >= 0.9.

A breakdown times the pieces of certify's overhead separately on the same sample count:
drawing the noise with per-image generators, and the float64 unit-normalisation and
projections of the features.

    python bench/bench_throughput.py                       # CPU: fp32 and bf16, two models
    python bench/bench_throughput.py --device cuda         # GPU: fp16 and bf16 (fp32 too
                                                           # with --dtypes float32 ...)
    python bench/bench_throughput.py --models efficientnet-lite0 --batch-size 64 --n 448
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from featsmooth import SmoothedEncoder
from featsmooth.encoders.registry import load_encoder
from featsmooth.versions import environment_info

SIGMA = 0.25
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(count: int, source: str) -> tuple[torch.Tensor, list[str]]:
    """Shipped photos (``source="photos"``) or seeded random 224x224 images."""
    if source == "photos":
        from featsmooth.data.photos import load_photos

        photos = load_photos(["coffee", "chelsea", "rocket", "china", "flower", "grace_hopper"])
        idx = [i % len(photos) for i in range(count)]
        return photos.images[idx], [photos.names[i] for i in idx]
    gen = torch.Generator().manual_seed(0)
    return torch.rand((count, 3, 224, 224), generator=gen), [f"random{i}" for i in range(count)]


def time_forward(encoder, batch: torch.Tensor, passes: int, device: torch.device) -> float:
    """Seconds for ``passes`` forward passes of ``batch`` (inputs prepared beforehand)."""
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        for _ in range(passes):
            encoder(batch)
        _sync(device)
    return time.perf_counter() - start


def time_certify(smoothed: SmoothedEncoder, images: torch.Tensor, n0: int, n: int) -> float:
    _sync(smoothed.device)
    start = time.perf_counter()
    smoothed.certify(images, n0=n0, n=n, seed=0)
    _sync(smoothed.device)
    return time.perf_counter() - start


def time_overheads(
    smoothed: SmoothedEncoder, images: torch.Tensor, samples: int, feature_dim: int
) -> dict[str, float]:
    """Seconds spent outside the forward pass for ``samples`` samples, piece by piece."""
    device, batch_size = smoothed.device, smoothed.batch_size
    gens, _ = smoothed._generators(images.shape[0], 0)
    images = images.to(device)
    per_image = samples // images.shape[0]
    _sync(device)
    start = time.perf_counter()
    for i in range(images.shape[0]):
        left = per_image
        while left > 0:
            k = min(batch_size, left)
            noise = torch.randn((k, *images.shape[1:]), generator=gens[i], device=device)
            (images[i].unsqueeze(0) + smoothed.sigma * noise).to(smoothed.input_dtype)
            left -= k
    _sync(device)
    noise_s = time.perf_counter() - start
    raw = torch.randn((batch_size, feature_dim), device=device).to(smoothed.input_dtype)
    direction = torch.randn(feature_dim, device=device, dtype=torch.float64)
    _sync(device)
    start = time.perf_counter()
    for _ in range(max(1, samples // batch_size)):
        feats = smoothed._unit(raw, torch.float64)
        (feats @ direction).cpu().numpy()
        (feats @ direction).cpu().numpy()
    _sync(device)
    return {"noise_seconds": noise_s, "normalise_project_seconds": time.perf_counter() - start}


def bench_one(
    model: str,
    dtype_name: str,
    device: torch.device,
    images: torch.Tensor,
    batch_size: int,
    n0: int,
    n: int,
    repeats: int,
) -> dict:
    dtype = DTYPES[dtype_name]
    encoder = load_encoder(model, device=device, dtype=dtype)
    smoothed = SmoothedEncoder(
        encoder, SIGMA, device=device, input_dtype=dtype, batch_size=batch_size
    )
    samples = images.shape[0] * (n0 + n)
    passes = max(1, round(samples / batch_size))
    gen = torch.Generator().manual_seed(1)
    batch = (images[:1] + SIGMA * torch.randn((batch_size, *images.shape[1:]), generator=gen)).to(
        device, dtype
    )
    # warm-up: lazy initialisation, oneDNN/cuDNN kernel choice, allocator
    time_forward(encoder, batch, 1, device)
    time_certify(smoothed, images[:1], n0=min(n0, 8), n=min(n, batch_size))
    forward_s, certify_s = [], []
    for _ in range(repeats):
        forward_s.append(time_forward(encoder, batch, passes, device))
        certify_s.append(time_certify(smoothed, images, n0, n))
    base_rate = passes * batch_size / statistics.median(forward_s)
    cert_rate = samples / statistics.median(certify_s)
    with torch.inference_mode():
        feature_dim = smoothed.features(images[:1]).shape[1]
    overheads = time_overheads(smoothed, images, samples, feature_dim)
    del encoder, smoothed
    return {
        "model": model,
        "dtype": dtype_name,
        "forward_samples_per_s": base_rate,
        "certify_samples_per_s": cert_rate,
        "ratio": cert_rate / base_rate,
        "forward_seconds": forward_s,
        "certify_seconds": certify_s,
        "forward_passes": passes,
        "certify_samples": samples,
        "feature_dim": feature_dim,
        **overheads,
        "noise_share_of_certify": overheads["noise_seconds"] / statistics.median(certify_s),
        "normalise_share_of_certify": overheads["normalise_project_seconds"]
        / statistics.median(certify_s),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "default"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2, help="images per certify call")
    parser.add_argument("--source", choices=["photos", "random"], default="photos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n0", type=int, default=32)
    parser.add_argument("--n", type=int, default=96, help="certification samples per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes or (
        ["float32", "bfloat16"] if device.type == "cpu" else ["float16", "bfloat16"]
    )
    images, names = _images(args.images, args.source)
    rows = []
    for model in args.models:
        for dtype_name in dtypes:
            row = bench_one(
                model, dtype_name, device, images, args.batch_size, args.n0, args.n, args.repeats
            )
            rows.append(row)
            print(
                f"  {model} {dtype_name}: ratio {row['ratio']:.3f} "
                f"({row['certify_samples_per_s']:.1f} / {row['forward_samples_per_s']:.1f} samples/s)",
                flush=True,
            )
    report = {
        "settings": {
            "models": args.models,
            "dtypes": dtypes,
            "device": str(device),
            "images": names,
            "source": args.source,
            "batch_size": args.batch_size,
            "n0": args.n0,
            "n": args.n,
            "sigma": SIGMA,
            "method": "betting",
            "alpha": 0.001,
            "repeats": args.repeats,
            "statistic": "ratio of medians over repeats; baseline and certify alternate",
        },
        "environment": environment_info(device),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"device={device} batch={args.batch_size} images={len(names)} n0={args.n0} n={args.n} "
        f"repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print(
        f"{'model':<20} {'dtype':<9} {'forward/s':>10} {'certify/s':>10} {'ratio':>6} "
        f"{'noise%':>7} {'norm%':>6}"
    )
    for r in rows:
        print(
            f"{r['model']:<20} {r['dtype']:<9} {r['forward_samples_per_s']:>10.1f} "
            f"{r['certify_samples_per_s']:>10.1f} {r['ratio']:>6.3f} "
            f"{100 * r['noise_share_of_certify']:>6.1f}% {100 * r['normalise_share_of_certify']:>5.1f}%"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
