"""Certificates of the offline default models on the shipped photos, at several sigmas.

For each sigma: mean S estimate, mean S_low, mean FCSB (an uncertified radius counts as 0,
and the fraction certified is given beside it) at each radius for both references, mean
clean-vs-smoothed cosine, mean cosine between the clean features of different photos, and
for the zero-shot default the certified zero-shot accuracy (margin / fcsb / cohen) at each
radius, plus seconds per image. Optionally the same with feature centring (the centre is
the mean clean feature of the photos themselves, recorded in the settings).

One sampling pass per image (SmoothedEncoder.certify_prediction returns the feature
certificate from the same samples).

    python bench/bench_defaults.py                       # zero-shot default, 3 sigmas
    python bench/bench_defaults.py --model efficientnet-lite0 --n 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featsmooth import SmoothedEncoder
from featsmooth.data import imagenet_classes
from featsmooth.data.photos import load_photos
from featsmooth.encoders import load_encoder
from featsmooth.tasks.zero_shot import class_embeddings
from featsmooth.versions import environment_info


def unrelated_cosine(features: torch.Tensor) -> float:
    """Mean cosine between the features of different images."""
    f = F.normalize(features.double(), dim=1)
    gram = f @ f.T
    off = ~torch.eye(len(f), dtype=torch.bool)
    return float(gram[off].mean())


def summarise(preds, certs, photos, radii, seconds) -> dict:
    out: dict = {
        "mean_score_estimate": float(np.mean([c.score_estimate for c in certs])),
        "mean_score_lower": float(np.mean([c.score_lower for c in certs])),
        "mean_clean_score_lower": float(np.mean([c.clean_score_lower for c in certs])),
        "mean_clean_smoothed_cosine": float(np.mean([c.clean_smoothed_cosine for c in certs])),
        "seconds_per_image": seconds / len(certs),
        "fcsb": {},
    }
    for r in radii:
        for ref in ("smoothed", "clean"):
            vals = np.array([float(c.fcsb(r, reference=ref)) for c in certs])
            out["fcsb"][f"{ref}@{r}"] = {
                "mean_with_uncertified_as_0": float(np.nan_to_num(vals, nan=0.0).mean()),
                "fraction_certified": float(np.mean(~np.isnan(vals))),
            }
    if preds is not None:
        labelled = [i for i, acc in enumerate(photos.acceptable) if acc]
        out["labelled_images"] = len(labelled)
        clean_correct = [preds[i].clean_prediction in photos.acceptable[i] for i in labelled]
        out["clean_accuracy"] = float(np.mean(clean_correct))
        out["certified_accuracy"] = {}
        for method in ("margin", "fcsb", "cohen"):
            for r in [0.0, *radii]:
                ok = [
                    preds[i].certified(r, method)
                    and preds[i].predicted(method) in photos.acceptable[i]
                    for i in labelled
                ]
                out["certified_accuracy"][f"{method}@{r}"] = float(np.mean(ok))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    parser.add_argument("--radii", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--n0", type=int, default=32)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--center-sigmas",
        type=float,
        nargs="*",
        default=[0.25],
        help="sigmas at which to also run with feature centring (none: no centring runs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    torch.manual_seed(args.seed)
    encoder = load_encoder(args.model)
    photos = load_photos()
    with torch.no_grad():
        clean = encoder(photos.images).flatten(1).float()
    center = clean.mean(0)
    text = getattr(encoder, "supports_text", False)
    classes = class_embeddings(encoder, imagenet_classes()) if text else None
    results = []
    runs = [(s, False) for s in args.sigmas] + [(s, True) for s in args.center_sigmas]
    for sigma, centred in runs:
        ctr = center if centred else None
        feats = clean - center if centred else clean
        smoothed = SmoothedEncoder(encoder, sigma, batch_size=args.batch_size, center=ctr)
        start = time.perf_counter()
        if classes is not None and not centred:
            preds = smoothed.certify_prediction(
                photos.images, classes, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed
            )
            certs = [p.features for p in preds]
        else:
            preds = None
            certs = smoothed.certify(
                photos.images, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed
            )
        seconds = time.perf_counter() - start
        row = {"sigma": sigma, "centred": centred, "unrelated_cosine": unrelated_cosine(feats)}
        row.update(summarise(preds, certs, photos, args.radii, seconds))
        results.append(row)
        print(json.dumps(row))
    report = {
        "settings": {
            "model": args.model,
            "photos": photos.names,
            "n0": args.n0,
            "n": args.n,
            "alpha": args.alpha,
            "method": "betting",
            "batch_size": args.batch_size,
            "radii": args.radii,
            "seed": args.seed,
            "center": "mean clean feature of the photos",
            "center_sigmas": args.center_sigmas,
            "prompt": "a photo of a {}." if text else None,
            "torch_threads": torch.get_num_threads(),
        },
        "environment": environment_info(),
        "results": results,
    }
    out = args.out or Path(f"bench/results/defaults_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
