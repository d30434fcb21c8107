"""Does glibc's allocator slow CPU certification down? Paired runs in fresh processes.

glibc reads its malloc tuning from the environment at process start, so each variant runs
in its own child process: the default allocator, and raised mmap/trim thresholds (large
activation buffers stay in the heap instead of being mapped and unmapped at every forward
pass, which is where the system CPU time of large batches goes). Variants alternate
round after round, so load from other processes hits them alike; the report gives the
median per variant and its ratio to the default measured in the same run.

Each child measures, for each batch size: raw forward passes of the default encoder on
noisy 224-px photos (images/s, and user/system CPU seconds per image), and one
``SmoothedEncoder.certify`` call on one photo (noisy samples/s).

    python bench/bench_allocator.py                  # writes bench/results/allocator.json
    python bench/bench_allocator.py --rounds 5 --batch-sizes 8,64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "default": {},
    "malloc-thresholds": {
        # 1 GiB: never hand large blocks back to the kernel between passes
        "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
        "MALLOC_TOP_PAD_": str(1 << 28),
    },
}


def child(batch_sizes: list[int], threads: int, passes: int, n: int) -> dict:
    """Measure in this process (run with the variant's environment)."""
    import torch

    from featsmooth import SmoothedEncoder
    from featsmooth.data.photos import load_photos
    from featsmooth.encoders.registry import load_encoder

    torch.set_num_threads(threads)
    encoder = load_encoder("default").eval()
    photo = load_photos(["coffee"]).images[:1]
    gen = torch.Generator().manual_seed(0)
    out: dict[str, dict] = {}
    for b in batch_sizes:
        x = photo.repeat(b, 1, 1, 1) + 0.25 * torch.randn((b, 3, 224, 224), generator=gen)
        with torch.inference_mode():
            encoder(x)  # warm-up
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(passes):
                encoder(x)
            seconds = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        images = b * passes
        smoothed = SmoothedEncoder(encoder, 0.25, batch_size=b)
        t0 = time.perf_counter()
        smoothed.certify(photo, n0=8, n=n, alpha=0.001, seed=0)
        certify_seconds = time.perf_counter() - t0
        out[str(b)] = {
            "forward_images_per_s": images / seconds,
            "user_cpu_ms_per_image": 1e3 * (r1.ru_utime - r0.ru_utime) / images,
            "system_cpu_ms_per_image": 1e3 * (r1.ru_stime - r0.ru_stime) / images,
            "certify_samples_per_s": (8 + n) / certify_seconds,
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "allocator.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.child:
        print(json.dumps(child(sizes, args.threads, args.passes, args.n)))
        return

    from featsmooth.versions import environment_info

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, extra in VARIANTS.items():
            cmd = [sys.executable, __file__, "--child", "--batch-sizes", args.batch_sizes,
                   "--threads", str(args.threads), "--passes", str(args.passes),
                   "--n", str(args.n)]  # fmt: skip
            done = subprocess.run(
                cmd, env={**os.environ, **extra}, capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {name}: {runs[name][-1]}", flush=True)
        load.append(os.getloadavg()[0])

    summary: dict[str, dict] = {}
    for name in VARIANTS:
        summary[name] = {}
        for b in map(str, sizes):
            summary[name][b] = {
                metric: statistics.median(run[b][metric] for run in runs[name])
                for metric in runs[name][0][b]
            }
    ratios = {
        name: {
            b: {
                "forward": summary[name][b]["forward_images_per_s"]
                / summary["default"][b]["forward_images_per_s"],
                "certify": summary[name][b]["certify_samples_per_s"]
                / summary["default"][b]["certify_samples_per_s"],
            }
            for b in map(str, sizes)
        }
        for name in VARIANTS
        if name != "default"
    }
    result = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "child")},
            "variants": VARIANTS,
            "model": "default",
            "sigma": 0.25,
        },
        "environment": environment_info(),
        "load_average_1min": load,
        "median": summary,
        "ratio_to_default": ratios,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"median": summary, "ratio_to_default": ratios}, indent=1))


if __name__ == "__main__":
    main()
