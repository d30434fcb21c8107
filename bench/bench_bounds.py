"""Samples each confidence bound needs to bring S_low within a tolerance of the true S.

Synthetic encoder with an exactly known score S (featsmooth.encoders.synthetic), the full
certification protocol (direction from n0 separate samples, then n fresh samples), alpha
0.001 by default. For the fixed-sample methods (Hoeffding, empirical Bernstein, betting
tuned to n) the smallest n on a geometric grid whose *median* gap ``S - S_low`` over the
repeats is at most the tolerance; for sequential betting the mean number of samples used
when stopping at ``estimate - S_low <= tolerance`` and the gap it actually reached.

    python bench/bench_bounds.py                # S in {0.9, 0.99}, tolerance 0.01
    python bench/bench_bounds.py --repeats 20 --out bench/results/bounds.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from featsmooth import SmoothedEncoder, bounds
from featsmooth.encoders.synthetic import make_trig_encoder
from featsmooth.versions import environment_info

SIGMA = 0.25


def _grid(max_n: int) -> list[int]:
    grid, n = [], 50
    while n <= max_n:
        grid.append(n)
        n = math.ceil(n * 1.1)
    return grid


def fixed_sample_needs(samples: np.ndarray, true_s: float, alpha: float, tol: float) -> dict:
    """Smallest grid n with median gap <= tol, per method; samples is (repeats, N)."""
    out = {}
    for method in bounds.METHODS:
        needed = None
        for n in _grid(samples.shape[1]):
            gaps = [
                true_s - bounds.mean_lower_bound(row[:n], alpha, method, horizon=n)
                for row in samples
            ]
            if float(np.median(gaps)) <= tol:
                needed = n
                break
        out[method] = needed
    return out


def run(scores: list[float], alpha: float, tol: float, repeats: int, n0: int, max_n: int) -> dict:
    rows = []
    for score in scores:
        encoder = make_trig_encoder(score, SIGMA)
        smoothed = SmoothedEncoder(encoder, SIGMA, batch_size=8192)
        x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        xs = x.expand(repeats, -1, -1, -1).contiguous()
        start = time.perf_counter()
        certs = smoothed.certify(xs, n0=n0, n=max_n, alpha=alpha, seed=1, keep_samples=True)
        samples = np.stack([c.samples[0] for c in certs])
        needs = fixed_sample_needs(samples, score, alpha, tol)
        seq = smoothed.certify(xs, n0=n0, n=max_n, alpha=alpha, seed=2, tolerance=tol)
        rows.append(
            {
                "true_score": score,
                "samples_needed": needs,
                "hoeffding_closed_form": bounds.samples_needed("hoeffding", alpha, tol),
                "sequential_betting_mean_samples": float(np.mean([c.n_used for c in seq])),
                "sequential_betting_median_gap": float(
                    np.median([score - c.score_lower for c in seq])
                ),
                "sequential_stop_reasons": sorted({c.stop_reason for c in seq}),
                "seconds": time.perf_counter() - start,
            }
        )
    return {
        "settings": {
            "encoder": "synthetic-trig (one frequency, 3x8x8)",
            "sigma": SIGMA,
            "alpha": alpha,
            "tolerance": tol,
            "repeats": repeats,
            "n0": n0,
            "max_n": max_n,
            "bet_truncation": bounds.BET_TRUNCATION,
            "criterion": "median over repeats of (true S - S_low) <= tolerance",
        },
        "environment": environment_info(),
        "results": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n0", type=int, default=64)
    parser.add_argument("--max-n", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bounds.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    report = run(args.scores, args.alpha, args.tolerance, args.repeats, args.n0, args.max_n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"alpha={args.alpha} tolerance={args.tolerance} repeats={args.repeats} n0={args.n0}")
    print(
        f"{'S':>6} {'hoeffding':>10} {'bernstein':>10} {'betting':>10} {'seq.betting':>12} {'ratio H/seq':>11}"
    )
    for row in report["results"]:
        need = row["samples_needed"]
        seq = row["sequential_betting_mean_samples"]
        hoeff = need["hoeffding"] or row["hoeffding_closed_form"]
        print(
            f"{row['true_score']:>6} {need['hoeffding'] or '>max':>10} {need['bernstein'] or '>max':>10} "
            f"{need['betting'] or '>max':>10} {seq:>12.0f} {hoeff / seq:>11.1f}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
