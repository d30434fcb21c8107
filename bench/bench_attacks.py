"""White-box attacks on the offline default model: vanilla vs FS vs FS + plug-in.

Model: ``load_encoder("default")`` (EfficientNet-Lite0 ImageNet probabilities mixed into
MiniLM text space, ConSE-style), zero-shot over the 1000 ImageNet classes with the prompt
"a photo of a {class}." (``featsmooth.tasks.zero_shot.class_embeddings``). Images: the
shipped labelled photos (``load_photos().labelled()``), a prediction counts as correct when
it is one of the photo's acceptable classes.

For each setting (vanilla; FS at ``--sigma``; FS + plug-in when ``--plugin`` names a trained
plug-in folder) and each budget (l2 0.5, l2 1.0, linf 4/255 by default) an untargeted PGD
on the zero-shot cross-entropy is run through :func:`featsmooth.evaluate.evaluate`; smoothed
settings are attacked with EoT over ``--eot`` noise draws per step (through purifier and
mapper for the plug-in) and judged on ``--judge`` fresh draws. Reported per row: clean and
robust zero-shot accuracy, attack success rate (ASR = fraction of photos misclassified
after the attack), mean feature cosine under attack, mean certified cosine (FCSB) at the
attack's l2 radius, certified accuracy there, and the consistency-check counts (expected
violations: 0). Everything is written to ``--out`` (JSON) with the settings and timings.

    python bench/bench_attacks.py                       # small CPU run (~15 min, 2 cores)
    python bench/bench_attacks.py --steps 50 --eot 16 --judge 64 --n 2000 --threads 8
    python bench/bench_attacks.py --plugin path/to/plugin-folder --image-size 128

Radii are l2 norms in [0, 1] pixel units of ``--image-size`` images; compare a plug-in at
the image size it was trained on.

The default run is deliberately small (few steps, few EoT draws, few certification
samples): its numbers are an illustration of the harness on 7 photos, not a benchmark
of record; raise the flags for that.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from benchutil import recorded_arguments

from featsmooth.data import imagenet_classes
from featsmooth.data.photos import load_photos
from featsmooth.encoders.registry import load_encoder
from featsmooth.evaluate import AttackSpec, evaluate
from featsmooth.tasks.zero_shot import class_embeddings
from featsmooth.versions import environment_info


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eot", type=int, default=2, help="EoT draws per step (smoothed)")
    parser.add_argument("--judge", type=int, default=8, help="fresh draws that judge FS")
    parser.add_argument("--n0", type=int, default=16)
    parser.add_argument("--n", type=int, default=64, help="certification samples")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--check-draws", type=int, default=32, help="consistency-check draws")
    parser.add_argument("--budgets", default="l2:0.5,l2:1.0,linf:4/255")
    parser.add_argument("--plugin", default=None, help="trained plug-in folder (fs+plugin)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N photos")
    parser.add_argument("--image-size", type=int, default=224, help="photo side in pixels")
    parser.add_argument(
        "--ten-classes",
        action="store_true",
        help="zero-shot over the 10-class subset of bench_paper_protocol (not all 1000)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=None, help="records folder (resumable)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attacks.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    encoder = load_encoder("default").eval()
    names = imagenet_classes()
    photos = load_photos(size=args.image_size).labelled()
    if args.limit:
        photos = photos.subset(range(min(args.limit, len(photos))))
    if args.ten_classes:
        from bench_paper_protocol import subset_labels, ten_class_subset

        subset, local = ten_class_subset(photos)
        names = [names[c] for c in subset]
        labels = subset_labels(photos, local)
    else:
        labels = [[p, *sorted(acc - {p})] for p, acc in zip(photos.labels, photos.acceptable)]
    classes = class_embeddings(encoder, names)
    attacks = [
        AttackSpec("pgd", norm, eps if "/" in eps else float(eps), args.steps)
        for norm, eps in (b.split(":") for b in args.budgets.split(","))
    ]
    plugin = None
    settings = ["vanilla", "fs"]
    not_run = {}
    if args.plugin:
        from featsmooth.plugin import load_plugin

        plugin = load_plugin(args.plugin)
        settings.append("fs+plugin")
    else:
        not_run["fs+plugin"] = "no trained plug-in folder given (--plugin); not run"
    setup = time.perf_counter() - start

    result = evaluate(
        encoder,
        photos.images,
        labels,
        class_embeddings=classes,
        settings=settings,
        plugin=plugin,
        sigma=args.sigma,
        attacks=attacks,
        eot_draws=args.eot,
        judge_draws=args.judge,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        radii=(0.0, 0.25, 0.5, 1.0),
        consistency_draws=args.check_draws,
        names=photos.names,
        run_dir=args.run_dir,
        seed=args.seed,
        progress=True,
    )
    total = time.perf_counter() - start
    out = {
        "bench": "attacks",
        "model": "default (EfficientNet-Lite0 x MiniLM ConSE zero-shot, 1000 ImageNet classes)",
        "images": {"count": len(photos), "names": photos.names},
        "settings": {
            "sigma": args.sigma,
            "image_size": args.image_size,
            "attack": "untargeted PGD on zero-shot cross-entropy (logit scale 100)",
            "classes": names if args.ten_classes else "the 1000 ImageNet-1k classes",
            "budgets": [{"norm": a.norm, "eps": a.eps, "steps": a.steps} for a in attacks],
            "eot_draws": args.eot,
            "judge_draws": args.judge,
            "certification": {"n0": args.n0, "n": args.n, "alpha": args.alpha},
            "consistency_draws": args.check_draws,
            "seed": args.seed,
            "threads": args.threads,
            "settings_run": settings,
            "not_run": not_run,
            "arguments": recorded_arguments(args),
        },
        "summary": result.summary,
        "certified": result.certified,
        "consistency": {
            "checked": sum(r["consistency_checked"] for r in result.summary),
            "violations": result.violations,
        },
        "timing_s": {"setup": round(setup, 1), "total": round(total, 1)},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "environment": environment_info(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    cols = ("setting", "attack_id", "unattacked_score", "robust_score", "asr", "adv_cosine",
            "certified_cosine", "certified_accuracy", "consistency_checked",
            "consistency_violations")  # fmt: skip
    print("\t".join(cols))
    for row in result.summary:
        print("\t".join(_fmt(row.get(c)) for c in cols))
    print(f"total {total:.0f}s; written to {args.out}")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
