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
    python bench/bench_allocator.py --demo-rounds 2 --out bench/results/allocator_demo.json

``--demo-rounds N`` instead times the real ``featsmooth demo`` (which tunes the allocator at
start-up, featsmooth/allocator.py) against the same command with ``FEATSMOOTH_MALLOC_TUNING=0``,
alternating, and checks that both write the same records.
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


def _records(folder: Path) -> list[dict]:
    """The demo's records without their timing fields."""
    rows = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "second" not in k} for r in rows]


def demo(rounds: int, out: Path, environment: dict) -> None:
    """Wall time of ``featsmooth demo`` with and without the start-up tuning, alternating."""
    import tempfile

    switches = {"tuned": "1", "default": "0"}
    times: dict[str, list[float]] = {name: [] for name in switches}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            records = {}
            for name, value in switches.items():
                run_dir = Path(tmp) / f"{name}-{r}"
                cmd = ["featsmooth", "demo", "--no-progress", "--run-dir", str(run_dir)]
                env = {**os.environ, "FEATSMOOTH_MALLOC_TUNING": value}
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, capture_output=True, check=True)
                times[name].append(time.perf_counter() - t0)
                records[name] = _records(run_dir)
                print(f"round {r + 1}/{rounds} {name}: {times[name][-1]:.1f} s", flush=True)
            same = same and records["tuned"] == records["default"]
    photos = len(records["tuned"])
    result = {
        "settings": {"command": "featsmooth demo --no-progress", "rounds": rounds,
                     "switch": "FEATSMOOTH_MALLOC_TUNING (1: tuned at start-up, 0: glibc default)"},
        "environment": environment,
        "photos": photos,
        "seconds": times,
        "median_seconds_per_photo": {k: statistics.median(v) / photos for k, v in times.items()},
        "speedup_median": statistics.median(times["default"]) / statistics.median(times["tuned"]),
        "records_identical": same,
        "load_average_1_5_15_min": os.getloadavg(),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "allocator.json"))
    parser.add_argument("--demo-rounds", type=int, default=0, help="time featsmooth demo instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.child:
        print(json.dumps(child(sizes, args.threads, args.passes, args.n)))
        return

    from featsmooth.versions import environment_info

    if args.demo_rounds:
        demo(args.demo_rounds, Path(args.out), environment_info())
        return
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
