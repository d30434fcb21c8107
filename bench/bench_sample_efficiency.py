"""Samples per real photo for a certificate within a tolerance of its estimate, per bound.

For each photo, one ``certify(keep_samples=True)`` run with a large ``n`` gives the
per-sample projections ``<v, f(x + eps_i)>``; each bound is then evaluated on prefixes of
that one sample stream (no encoder re-runs), like bench/bench_bounds.py does on the
synthetic encoder. The criterion is the one of ``certify(tolerance=...)``: the *gap*
``mean(prefix) - lower_bound(prefix) <= tolerance`` (a certificate within ``tolerance`` of
its own estimate), at ``alpha``.

* Hoeffding, empirical Bernstein, betting tuned to a fixed n: the smallest prefix length on
  a geometric grid (x1.1) reaching the gap. These bounds are valid only for an n fixed in
  advance, so the number is what one must know (or guess) beforehand. When the stream is
  too short the closed form (Hoeffding exactly; Bernstein at the measured standard
  deviation) is reported instead and marked as such.
* Betting with sequential stopping: a real ``certify(tolerance=...)`` run on the encoder
  (fresh seed), which needs no prior knowledge of n; reported: samples used, gap reached,
  wall-clock seconds.

End-to-end seconds per certified image at equal quality (gap <= tolerance): the seconds
per sample of the long run (encoder + noise + bookkeeping) times ``n0 + samples needed``
for the fixed-n bounds, and the measured wall time of the sequential run.

    python bench/bench_sample_efficiency.py                     # 2 photos, ~10 min on 2 cores
    python bench/bench_sample_efficiency.py --photos coffee chelsea rocket china --max-n 20000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from featsmooth import SmoothedEncoder, bounds
from featsmooth.data.photos import load_photos
from featsmooth.encoders.registry import load_encoder
from featsmooth.versions import environment_info

FIXED = ("hoeffding", "bernstein", "betting")


def _grid(max_n: int, start: int = 32) -> list[int]:
    grid, n = [], start
    while n < max_n:
        grid.append(n)
        n = math.ceil(n * 1.1)
    return [*grid, max_n]


def gap(values: np.ndarray, alpha: float, method: str) -> float:
    """Estimate minus lower bound on the prefix ``values`` (betting tuned to its length)."""
    return float(
        values.mean() - bounds.mean_lower_bound(values, alpha, method, horizon=values.size)
    )


def samples_needed(values: np.ndarray, alpha: float, tol: float, method: str) -> int | None:
    """Smallest grid prefix length whose gap is <= tol, or None if the stream is too short."""
    for m in _grid(len(values)):
        if gap(values[:m], alpha, method) <= tol:
            return m
    return None


def closed_form(method: str, alpha: float, tol: float, std: float) -> int | None:
    if method == "hoeffding":
        return bounds.samples_needed("hoeffding", alpha, tol)
    if method == "bernstein":
        return bounds.samples_needed("bernstein", alpha, tol, std=std)
    return None


def run(args: argparse.Namespace) -> dict:
    photos = load_photos(args.photos)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    encoder = load_encoder(args.model, device=args.device, dtype=dtype)
    smoothed = SmoothedEncoder(
        encoder, args.sigma, device=args.device, input_dtype=dtype, batch_size=args.batch_size
    )
    smoothed.certify(photos.images[:1], n0=8, n=args.batch_size, seed=0)  # warm-up
    rows = []
    for i, name in enumerate(photos.names):
        x = photos.images[i : i + 1]
        start = time.perf_counter()
        long = smoothed.certify(
            x, n0=args.n0, n=args.max_n, alpha=args.alpha, seed=args.seed + i, keep_samples=True
        )[0]
        long_s = time.perf_counter() - start
        per_sample = long_s / (args.n0 + args.max_n)
        values = long.samples[0]
        std = float(values.std(ddof=1))
        needs, sources = {}, {}
        for method in FIXED:
            found = samples_needed(values, args.alpha, args.tolerance, method)
            if found is not None:
                needs[method], sources[method] = found, "measured"
            else:
                needs[method] = closed_form(method, args.alpha, args.tolerance, std)
                sources[method] = "closed form" if needs[method] is not None else "> max_n"
        start = time.perf_counter()
        seq = smoothed.certify(
            x,
            n0=args.n0,
            n=args.seq_max_n,
            alpha=args.alpha,
            seed=10_000 + args.seed + i,
            tolerance=args.tolerance,
            keep_samples=True,
        )[0]
        seq_s = time.perf_counter() - start
        seconds = {
            m: (args.n0 + needs[m]) * per_sample if needs[m] is not None else None for m in FIXED
        }
        seconds["sequential_betting"] = seq_s
        rows.append(
            {
                "photo": name,
                "score_estimate": long.score_estimate,
                "projection_mean": float(values.mean()),
                "projection_std": std,
                "score_lower_at_max_n": long.score_lower,
                "samples_needed": needs,
                "samples_needed_source": sources,
                "gap_at_max_n": {m: gap(values, args.alpha, m) for m in FIXED},
                "sequential_betting": {
                    "n_used": seq.n_used,
                    "gap": float(seq.samples[0].mean() - seq.score_lower),
                    "score_lower": seq.score_lower,
                    "stop_reason": seq.stop_reason,
                    "seconds": seq_s,
                },
                "seconds_per_sample": per_sample,
                "long_run_seconds": long_s,
                "seconds_per_certified_image": seconds,
            }
        )
        print(f"  {name}: {json.dumps(needs)} seq={seq.n_used} ({seq.stop_reason})", flush=True)
    return {
        "settings": {
            "model": args.model,
            "dtype": args.dtype,
            "device": args.device,
            "photos": photos.names,
            "sigma": args.sigma,
            "alpha": args.alpha,
            "tolerance": args.tolerance,
            "criterion": "mean(prefix) - lower_bound(prefix) <= tolerance",
            "n0": args.n0,
            "max_n": args.max_n,
            "seq_max_n": args.seq_max_n,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "grid": "geometric x1.1 from 32",
            "bet_truncation": bounds.BET_TRUNCATION,
        },
        "environment": environment_info(args.device),
        "results": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--photos", nargs="+", default=["coffee", "chelsea"])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--n0", type=int, default=64)
    parser.add_argument("--max-n", type=int, default=3000, help="length of the sample stream")
    parser.add_argument("--seq-max-n", type=int, default=20_000, help="cap of the sequential run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sample_efficiency.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    s = report["settings"]
    print(
        f"model={s['model']} sigma={s['sigma']} alpha={s['alpha']} tolerance={s['tolerance']} "
        f"n0={s['n0']} stream={s['max_n']} device={s['device']} ({s['dtype']})"
    )
    print("samples needed per image (* = closed form, not measured):")
    print(
        f"{'photo':<14} {'S_est':>6} {'std':>7} {'hoeffding':>10} {'bernstein':>10} "
        f"{'betting':>8} {'seq.bet':>8} {'seq.gap':>8}"
    )
    for r in report["results"]:
        cells = []
        for m in FIXED:
            v = r["samples_needed"][m]
            mark = "*" if r["samples_needed_source"][m] == "closed form" else ""
            cells.append(f"{v}{mark}" if v is not None else ">max")
        seq = r["sequential_betting"]
        print(
            f"{r['photo']:<14} {r['score_estimate']:>6.3f} {r['projection_std']:>7.4f} "
            f"{cells[0]:>10} {cells[1]:>10} {cells[2]:>8} {seq['n_used']:>8} {seq['gap']:>8.4f}"
        )
    print("end-to-end seconds per certified image at gap <= tolerance:")
    print(
        f"{'photo':<14} {'s/sample':>9} {'hoeffding':>10} {'bernstein':>10} {'betting':>8} "
        f"{'seq.bet':>8}"
    )
    for r in report["results"]:
        sec = r["seconds_per_certified_image"]
        cells = [f"{sec[m]:.1f}" if sec[m] is not None else "-" for m in FIXED]
        print(
            f"{r['photo']:<14} {r['seconds_per_sample']:>9.4f} {cells[0]:>10} {cells[1]:>10} "
            f"{cells[2]:>8} {sec['sequential_betting']:>8.1f}"
        )
    med = {
        m: statistics.median(
            [
                r["seconds_per_certified_image"][m]
                for r in report["results"]
                if r["seconds_per_certified_image"][m] is not None
            ]
            or [math.nan]
        )
        for m in (*FIXED, "sequential_betting")
    }
    print(
        "median seconds per certified image: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
