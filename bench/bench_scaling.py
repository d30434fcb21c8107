"""How certification time and memory grow with n and with the batch size.

Two encoders:

* ``efficientnet-lite0`` (real, 4.65 M parameters) on shipped photos: the forward pass
  dominates, so seconds per image should grow linearly in ``n`` with a slope close to the
  cost of one plain forward sample (measured in the same run: ``forward s/sample``).
* the synthetic trig encoder on 3x8x8 images: the forward pass costs almost nothing, so its
  timings expose the per-sample and per-pass Python/bookkeeping overhead of
  ``SmoothedEncoder.certify`` (noise per image, packing, float64 normalisation, numpy
  copies, the betting bound).

For each, seconds per image at several ``n`` (fixed batch size) with a least-squares line
``t = a + b n`` and its R^2, and seconds per image at several batch sizes (fixed ``n``) with
the fit ``t = c + d * passes`` giving the overhead per forward pass. Memory: peak resident
set size above the level before the call (sampled from /proc every 5 ms; ``ru_maxrss``
where /proc is missing), the peak of Python-tracked allocations (tracemalloc; numpy arrays
are tracked, torch tensors are not) in a separate untimed run, and
``torch.cuda.max_memory_allocated`` on a GPU.

    python bench/bench_scaling.py                              # modest, a few minutes
    python bench/bench_scaling.py --cnn-n 64 128 256 512 1024 --synthetic-n 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from featsmooth import SmoothedEncoder
from featsmooth.encoders.registry import load_encoder
from featsmooth.encoders.synthetic import make_trig_encoder
from featsmooth.versions import environment_info

SIGMA = 0.25
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return None


class PeakRSS:
    """Peak resident set size above the starting level while the block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_delta: int | None = None

    def __enter__(self) -> PeakRSS:
        self._start = _rss_bytes()
        self._peak = self._start or 0
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._start is not None:
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.peak_delta = self._peak - self._start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    smoothed: SmoothedEncoder,
    images: torch.Tensor,
    n0: int,
    n: int,
    batch_size: int,
    repeats: int,
    trace: bool,
) -> dict:
    """Median seconds per image over ``repeats`` certify calls, plus memory peaks."""
    device = smoothed.device
    seconds, rss = [], []
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as peak:
            _sync(device)
            start = time.perf_counter()
            smoothed.certify(images, n0=n0, n=n, seed=r, batch_size=batch_size)
            _sync(device)
            seconds.append(time.perf_counter() - start)
        rss.append(peak.peak_delta)
    out = {
        "n": n,
        "batch_size": batch_size,
        "images": images.shape[0],
        "seconds_per_image": float(np.median(seconds)) / images.shape[0],
        "seconds": seconds,
        "peak_rss_delta_mb": max(r for r in rss) / 2**20 if rss[0] is not None else None,
        "passes": -(-images.shape[0] * (n0 + n) // batch_size),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if trace:
        tracemalloc.start()
        smoothed.certify(images, n0=n0, n=n, seed=0, batch_size=batch_size)
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least squares ``y = intercept + slope x`` and R^2."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(xa, ya, 1)
    resid = ya - (intercept + slope * xa)
    total = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def forward_seconds_per_sample(encoder, images, batch_size, device, repeats=3) -> float:
    gen = torch.Generator().manual_seed(0)
    batch = images[:1] + SIGMA * torch.randn((batch_size, *images.shape[1:]), generator=gen)
    batch = batch.to(device)
    times = []
    with torch.inference_mode():
        encoder(batch)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            encoder(batch)
            _sync(device)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) / batch_size


def scale_model(
    label: str,
    encoder,
    images: torch.Tensor,
    device: torch.device,
    n0: int,
    ns: list[int],
    fixed_batch: int,
    batches: list[int],
    fixed_n: int,
    repeats: int,
    trace: bool,
) -> dict:
    smoothed = SmoothedEncoder(encoder, SIGMA, device=device, batch_size=fixed_batch)
    smoothed.certify(images[:1], n0=4, n=fixed_batch, seed=0)  # warm-up
    forward = forward_seconds_per_sample(encoder, images, fixed_batch, device)
    by_n = [measure(smoothed, images, n0, n, fixed_batch, repeats, trace) for n in ns]
    fit_n = linear_fit([r["n"] for r in by_n], [r["seconds_per_image"] for r in by_n])
    by_batch = [measure(smoothed, images, n0, fixed_n, b, repeats, False) for b in batches]
    fit_b = linear_fit(
        [r["passes"] / r["images"] for r in by_batch], [r["seconds_per_image"] for r in by_batch]
    )
    for rows in (by_n, by_batch):
        for r in rows:
            print(
                f"  {label} n={r['n']} batch={r['batch_size']}: "
                f"{r['seconds_per_image']:.4f} s/image",
                flush=True,
            )
    return {
        "model": label,
        "image_shape": list(images.shape[1:]),
        "forward_seconds_per_sample": forward,
        "by_n": by_n,
        "fit_seconds_vs_n": fit_n,
        "slope_over_forward": fit_n["slope"] / forward,
        "by_batch_size": by_batch,
        "fit_seconds_vs_passes_per_image": fit_b,
    }


def ray_comparison(model: str, images: torch.Tensor, n0: int, n: int, batch: int, workers: int):
    """Wall-clock of certify_dataset (1 process) vs certify_dataset_ray (``workers`` actors
    of one thread each), same chunks and seeds; checks the records are identical."""
    import ray

    from featsmooth.distributed import certify_dataset, certify_dataset_ray

    opts = dict(n0=n0, n=n, seed=0, batch_size=batch, images_per_call=max(1, len(images) // 4))
    out: dict = {"model": model, "images": len(images), "n0": n0, "n": n, "batch_size": batch}
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for label, t in (("single_process_all_cores", cores or 1), ("single_process_1_thread", 1)):
        torch.set_num_threads(t)
        start = time.perf_counter()
        local = certify_dataset(model, images, SIGMA, **opts)
        out[label] = {"seconds": time.perf_counter() - start, "torch_threads": t}
    torch.set_num_threads(threads)
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        dist = certify_dataset_ray(model, images, SIGMA, num_workers=workers, **opts)
        ray_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in local]
    same = strip == [{k: v for k, v in r.items() if k != "seconds"} for r in dist]
    out["ray"] = {
        "workers": workers,
        "threads_per_worker": 1,
        "init_seconds": init_s,
        "seconds_incl_actor_start": ray_s,
        "records_identical": same,
    }
    print(f"  ray vs single process ({model}): {json.dumps(out)}", flush=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n0", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cnn-images", type=int, default=1)
    parser.add_argument("--cnn-n", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--cnn-batch", type=int, default=32)
    parser.add_argument("--cnn-batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--cnn-fixed-n", type=int, default=128)
    parser.add_argument("--synthetic-images", type=int, default=4)
    parser.add_argument(
        "--synthetic-n", type=int, nargs="+", default=[2_000, 10_000, 50_000, 100_000]
    )
    parser.add_argument("--synthetic-batch", type=int, default=1024)
    parser.add_argument("--synthetic-batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--synthetic-fixed-n", type=int, default=20_000)
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--ray", action="store_true", help="also compare Ray and one process")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--ray-synthetic-n", type=int, default=20_000)
    parser.add_argument("--ray-cnn-n", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scaling.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    gen = torch.Generator().manual_seed(0)
    synth_images = torch.rand((args.synthetic_images, 3, 8, 8), generator=gen)
    rows.append(
        scale_model(
            "synthetic-trig 3x8x8",
            make_trig_encoder(0.95, SIGMA),
            synth_images,
            device,
            args.n0,
            args.synthetic_n,
            args.synthetic_batch,
            args.synthetic_batches,
            args.synthetic_fixed_n,
            args.repeats,
            trace=True,
        )
    )
    if not args.skip_cnn:
        from featsmooth.data.photos import load_photos

        photos = load_photos(["coffee", "chelsea", "rocket", "china"][: args.cnn_images])
        rows.append(
            scale_model(
                "efficientnet-lite0",
                load_encoder("efficientnet-lite0", device=device),
                photos.images,
                device,
                args.n0,
                args.cnn_n,
                args.cnn_batch,
                args.cnn_batches,
                args.cnn_fixed_n,
                args.repeats,
                trace=False,
            )
        )
    comparisons = []
    if args.ray:
        gen = torch.Generator().manual_seed(1)
        comparisons.append(
            ray_comparison(
                "synthetic-trig",
                torch.rand((16, 3, 32, 32), generator=gen),
                args.n0,
                args.ray_synthetic_n,
                args.synthetic_batch,
                args.ray_workers,
            )
        )
        if not args.skip_cnn:
            from featsmooth.data.photos import load_photos

            comparisons.append(
                ray_comparison(
                    "efficientnet-lite0",
                    load_photos(["coffee", "chelsea", "rocket", "china"]).images,
                    args.n0,
                    args.ray_cnn_n,
                    args.cnn_batch,
                    args.ray_workers,
                )
            )
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sigma": SIGMA,
        "method": "betting",
        "environment": environment_info(device),
        "max_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": rows,
        "ray_vs_single_process": comparisons,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"device={device} threads={torch.get_num_threads()} n0={args.n0} repeats={args.repeats}")
    for row in rows:
        fit = row["fit_seconds_vs_n"]
        print(
            f"\n{row['model']}: forward {1e3 * row['forward_seconds_per_sample']:.4f} ms/sample; "
            f"fit s/image = {fit['intercept']:.3g} + {fit['slope']:.3g} n  (R^2 {fit['r2']:.4f}); "
            f"slope / forward cost = {row['slope_over_forward']:.2f}"
        )
        print(
            f"{'n':>8} {'batch':>6} {'s/image':>9} {'ms/sample':>10} {'RSS+MB':>8} {'trace MB':>9}"
        )
        for r in row["by_n"]:
            print(
                f"{r['n']:>8} {r['batch_size']:>6} {r['seconds_per_image']:>9.4f} "
                f"{1e3 * r['seconds_per_image'] / (r['n'] + args.n0):>10.4f} "
                f"{r['peak_rss_delta_mb'] or float('nan'):>8.1f} "
                f"{r.get('tracemalloc_peak_mb', float('nan')):>9.1f}"
            )
        fb = row["fit_seconds_vs_passes_per_image"]
        print(f"{'n':>8} {'batch':>6} {'s/image':>9} {'passes':>8}")
        for r in row["by_batch_size"]:
            print(
                f"{r['n']:>8} {r['batch_size']:>6} {r['seconds_per_image']:>9.4f} {r['passes']:>8}"
            )
        print(f"overhead per forward pass: {1e6 * fb['slope']:.0f} us (fit R^2 {fb['r2']:.3f})")
    for c in comparisons:
        r = c["ray"]
        print(
            f"\nRay vs one process, {c['model']} ({c['images']} images, n={c['n']}): "
            f"1 process {c['single_process_all_cores']['seconds']:.1f} s "
            f"({c['single_process_all_cores']['torch_threads']} threads), "
            f"1 process 1 thread {c['single_process_1_thread']['seconds']:.1f} s, "
            f"Ray {r['workers']} workers {r['seconds_incl_actor_start']:.1f} s "
            f"(+ {r['init_seconds']:.1f} s ray.init); identical records: {r['records_identical']}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
