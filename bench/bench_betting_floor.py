"""The fewest samples the betting bound needs to certify a mean within ``width``, at best.

With every sample equal to ``x`` (zero variance: the best case for any variance-adaptive
bound) the betting bound of ``featsmooth.bounds`` still needs ``n_min`` samples before
``x - L <= width``: its bets are truncated (``bounds.BET_TRUNCATION / m``), so the wealth grows
by at most a fixed factor per sample. Hoeffding's sample size for the same width,
``(b - a)^2 ln(1/alpha) / (2 width^2)`` with ``[a, b] = [-1, 1]``, divided by ``n_min`` is the
largest saving the betting bound can show over Hoeffding at that width; real samples (any
variance) need more.

    python bench/bench_betting_floor.py     # writes bench/results/betting_floor.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from featsmooth import bounds
from featsmooth.versions import environment_info


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--values", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.99])
    parser.add_argument("--max-n", type=int, default=100_000)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "betting_floor.json")
    )
    return parser


def smallest_n(x: float, width: float, alpha: float, max_n: int) -> int:
    """The fewest constant samples ``x`` whose anytime betting bound is within ``width``."""

    def close(n: int) -> bool:
        return x - bounds.mean_lower_bound(np.full(n, x), alpha, "betting") <= width

    low, high = 1, max_n
    if not close(high):
        raise SystemExit(f"x = {x}: not within {width} even at n = {max_n}")
    while low < high:  # the width shrinks as n grows
        mid = (low + high) // 2
        low, high = (low, mid) if close(mid) else (mid + 1, high)
    return low


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    hoeffding = math.ceil(4 * math.log(1 / args.alpha) / (2 * args.width**2))
    rows = []
    for x in args.values:
        n = smallest_n(x, args.width, args.alpha, args.max_n)
        rows.append({"value": x, "n_min": n, "hoeffding_over_n_min": hoeffding / n})
        print(f"x = {x}: n_min = {n}, Hoeffding {hoeffding} = {hoeffding / n:.1f}x")
    result = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "bound": "betting, anytime schedule (featsmooth default)",
            "bet_truncation": bounds.BET_TRUNCATION,
            "samples": "all equal to value (zero variance)",
        },
        "environment": environment_info(),
        "hoeffding_n": hoeffding,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
