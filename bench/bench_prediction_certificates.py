"""Prediction certificates on the shipped photos, all from the same samples per photo.

The settings of ``featsmooth demo`` (DemoConfig: sigma 0.25, n0 16, n 300, alpha 0.001,
betting bound, seed 0 with the demo's per-photo seeds) on the offline zero-shot default
(EfficientNet-Lite0 ConSE, 1000 ImageNet classes). Per photo, one sampling pass of
``n0 + n`` noisy features gives:

* ``margin_old``: pairwise-margin certificate with each of the K - 1 = 999 rival bounds at
  ``alpha / (K - 1)`` (Bonferroni, the certificate before the split was dropped);
* ``margin``: the same with every rival bound at ``alpha`` (docs/theory.md, Proposition 5);
* ``cohen``: Cohen et al. (2019) hard vote, Clopper-Pearson on the top class of the ``n0``
  votes (a different smoothed classifier);
* ``fcsb``: the cone certificate implied by the feature certificate (Proposition 6);
* ``ball_mcdiarmid``, ``ball_bernstein``: one confidence ball for the whole mean feature
  (:mod:`featsmooth.vector_bounds`, Proposition 7) from the same ``n`` fresh draws; every
  margin, ``S_low`` and the clean-reference ``S_c`` lower bound follow from it at once.
  Beside them the scalar bounds of the same quantities (``score_lower``, ``clean_lower``)
  and the samples each bound needs to come within 0.01 of the mean at the photo's ``S``.

A radius of ``null`` means abstain. The samples are drawn exactly as
``SmoothedEncoder.certify_prediction`` draws them; the script checks on the first photo that
``certify_prediction`` itself returns the same margin, cohen and fcsb radii.

    python bench/bench_prediction_certificates.py
    python bench/bench_prediction_certificates.py --photos coffee chelsea --n 1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from featsmooth import SmoothedEncoder, bounds, vector_bounds
from featsmooth.config import DemoConfig
from featsmooth.data.photos import load_photos
from featsmooth.encoders import load_encoder
from featsmooth.encoders.registry import list_models
from featsmooth.loading import model_image_size, zero_shot_classes
from featsmooth.seeds import noise_seed
from featsmooth.smoothing import _cone_cosine
from featsmooth.versions import environment_info

CERTIFICATES = ("margin_old", "margin", "cohen", "fcsb", "ball_mcdiarmid", "ball_bernstein")


def _radius(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _draw(sm: SmoothedEncoder, x: torch.Tensor, seed: int, n0: int, n: int, batch_size: int):
    """``(n0, k)`` and ``(n, k)`` float64 unit features, the streams of certify_prediction."""
    gens, _ = sm._generators(1, [seed])
    first = torch.cat([f for _, f in sm._sample(x, [n0], gens, batch_size)])
    second = torch.cat([f for _, f in sm._sample(x, [n], gens, batch_size)])
    with torch.inference_mode():
        clean = sm._forward(x, torch.float64)[0]
    return first, second, clean


def certificates(first, second, clean, emb, sigma: float, alpha: float, method: str) -> dict:
    """All four certificates of one photo from its samples (the formulas of
    ``certify_prediction``; ``margin_old`` splits alpha over the rivals)."""
    n, num_classes = second.shape[0], emb.shape[0]
    v = first.sum(0)
    v = v / v.norm().clamp_min(1e-300)
    a = int((v @ emb.T).argmax())
    top_cohen = int(torch.bincount((first @ emb.T).argmax(1), minlength=num_classes).argmax())
    scores = second @ emb.T  # (n, K)
    diff_norm = (emb[a] - emb).norm(dim=1).clamp_min(1e-300)
    w_vals = (scores[:, a : a + 1] - scores) / diff_norm
    rivals = torch.arange(num_classes) != a
    margins = w_vals[:, rivals].clamp(-1.0, 1.0).numpy()
    row: dict = {"prediction": a, "cohen_class": top_cohen}
    timings = {}
    for name, level in (("margin", alpha), ("margin_old", alpha / (num_classes - 1))):
        start = time.perf_counter()
        p_low = (1.0 + bounds.min_lower_bound(margins.T, level, method, n)) / 2.0
        timings[name] = time.perf_counter() - start
        row[f"{name}_p_lower"] = float(p_low)
        row[f"{name}_radius"] = _radius(float(bounds.probability_radius(p_low, sigma)))
    votes = int((scores.argmax(1) == top_cohen).sum())
    p_cohen = float(bounds.clopper_pearson_lower(votes, n, alpha))
    row.update(
        cohen_votes=votes,
        cohen_p_lower=p_cohen,
        cohen_radius=_radius(float(bounds.probability_radius(p_cohen, sigma))),
    )
    proj = (second @ v).clamp(-1.0, 1.0).numpy()
    if method == "betting":
        score_low = float(bounds.betting_lower_bounds(proj[None, :], alpha, n)[0])
    else:
        score_low = bounds.mean_lower_bound(proj, alpha, method)
    needed = _cone_cosine(v, emb, a)
    fcsb = (
        float(bounds.certified_radius(score_low, needed, sigma)) if needed is not None else math.nan
    )
    row.update(score_lower=score_low, cone_cosine=needed, fcsb_radius=_radius(fcsb))
    clean_proj = (second @ clean).clamp(-1.0, 1.0).numpy()
    row["clean_lower"] = float(bounds.mean_lower_bound(clean_proj, alpha, method, horizon=n))
    mean_feature = second.mean(0)
    norm = float(mean_feature.norm())
    min_margin = float((w_vals[:, rivals].mean(0)).min())  # min_B <w_B, mean feature>
    for kind in vector_bounds.KINDS:
        eps = float(vector_bounds.ball_radius(norm, n, alpha, kind))
        p_ball = (1.0 + min_margin - eps) / 2.0
        row.update(
            {
                f"ball_{kind}_eps": eps,
                f"ball_{kind}_score_lower": float(
                    vector_bounds.norm_lower_bound(norm, n, alpha, kind)
                ),
                f"ball_{kind}_clean_lower": float(mean_feature @ clean) - eps,
                f"ball_{kind}_p_lower": p_ball,
                f"ball_{kind}_radius": _radius(float(bounds.probability_radius(p_ball, sigma))),
                f"ball_{kind}_samples_for_0.01": vector_bounds.samples_for_width(
                    0.01, alpha, min(norm, 1.0), kind
                ),
            }
        )
    # context, not certified: the rival with the smallest sample mean of p_B
    means = (1.0 + margins.mean(0)) / 2.0
    j = int(np.argmin(means))
    row.update(
        closest_rival=int(torch.arange(num_classes)[rivals][j]),
        closest_rival_p_mean=float(means[j]),
        # spread of the noisy features: total (trace of the sample covariance) and along
        # w of that rival; a confidence set for the whole mean vector pays for the first,
        # a bound in one fixed direction only for the second
        trace_covariance=float((n - n * mean_feature.square().sum()) / (n - 1)),
        closest_rival_variance=float(margins[:, j].var(ddof=1)),
        clean_prediction=int((clean @ emb.T).argmax()),
        seconds_margin=timings,
    )
    return row


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    demo = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--photos", nargs="*", default=None, help="photo names (default: all)")
    parser.add_argument("--sigma", type=float, default=demo.sigma)
    parser.add_argument("--n0", type=int, default=demo.n0)
    parser.add_argument("--n", type=int, default=demo.n)
    parser.add_argument("--alpha", type=float, default=demo.alpha)
    parser.add_argument("--method", default=demo.method, choices=bounds.METHODS)
    parser.add_argument("--seed", type=int, default=demo.seed)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-check", action="store_true", help="skip the certify_prediction check")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/prediction_certificates.json")
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    torch.set_num_threads(args.threads)
    start_all = time.perf_counter()
    load_start = os.getloadavg()  # the machine may be shared: seconds are only context
    encoder = load_encoder(args.model).eval()
    names, emb = zero_shot_classes(encoder, None, "auto")
    emb = torch.nn.functional.normalize(emb.double(), dim=1)
    photos = load_photos(size=model_image_size(encoder))
    keep = [i for i, name in enumerate(photos.names) if args.photos is None or name in args.photos]
    sm = SmoothedEncoder(encoder, args.sigma, batch_size=args.batch_size)

    rows, check = [], None
    for i in keep:
        key = photos.names[i]
        x = photos.images[i].unsqueeze(0)
        seed = noise_seed(args.seed, key, "certify")
        start = time.perf_counter()
        first, second, clean = _draw(
            sm, sm._validate_images(x), seed, args.n0, args.n, args.batch_size
        )
        sampling = time.perf_counter() - start
        row = {"photo": key, "seed": seed, "seconds_sampling": sampling}
        row.update(certificates(first, second, clean, emb, args.sigma, args.alpha, args.method))
        row["prediction_name"] = names[row["prediction"]]
        row["closest_rival_name"] = names[row["closest_rival"]]
        row["label_ok"] = (
            row["prediction"] in photos.acceptable[i] if photos.acceptable[i] else None
        )
        rows.append(row)
        print(
            f"{key:11s} {row['prediction_name'][:18]:18s} "
            + " ".join(f"{c}={row[c + '_radius']}" for c in CERTIFICATES),
            flush=True,
        )
        if check is None and not args.no_check:
            cert = sm.certify_prediction(
                x, emb, n0=args.n0, n=args.n, alpha=args.alpha, method=args.method,
                seed=[seed], batch_size=args.batch_size,
            )[0]  # fmt: skip
            diffs = {}
            for c in ("margin", "cohen", "fcsb"):
                ours, lib = row[f"{c}_radius"], getattr(cert, f"{c}_radius")
                same = (ours is None and math.isnan(lib)) or (
                    ours is not None and abs(ours - lib) <= 1e-9
                )
                diffs[c] = {"bench": ours, "certify_prediction": _radius(lib), "same": same}
            check = {
                "photo": key,
                "radii": diffs,
                "prediction_same": cert.estimate == row["prediction"],
            }
            print("check against certify_prediction:", json.dumps(check), flush=True)

    summary = {}
    for c in CERTIFICATES:
        radii = [r[f"{c}_radius"] for r in rows]
        got = [r for r in radii if r is not None]
        summary[c] = {
            "abstentions": sum(r is None for r in radii),
            "min_radius": min(got) if got else None,
            "median_radius": float(np.median(got)) if got else None,
            "max_radius": max(got) if got else None,
            "mean_radius_abstain_as_0": float(np.mean([r or 0.0 for r in radii])),
        }
    summary["lower_bounds_mean_over_photos"] = {
        name: float(np.mean([r[key] for r in rows]))
        for name, key in (
            ("S_low scalar (betting on <v, f>)", "score_lower"),
            ("S_low ball_mcdiarmid", "ball_mcdiarmid_score_lower"),
            ("S_low ball_bernstein", "ball_bernstein_score_lower"),
            ("S_c_low scalar (betting on <f(x), f>)", "clean_lower"),
            ("S_c_low ball_mcdiarmid", "ball_mcdiarmid_clean_lower"),
            ("S_c_low ball_bernstein", "ball_bernstein_clean_lower"),
            ("ball_mcdiarmid eps", "ball_mcdiarmid_eps"),
            ("ball_bernstein eps", "ball_bernstein_eps"),
        )
    }
    summary["ball_samples_for_0.01_median"] = {
        kind: float(np.median([r[f"ball_{kind}_samples_for_0.01"] for r in rows]))
        for kind in vector_bounds.KINDS
    }
    report = {
        "settings": {
            "model": args.model,
            "encoder": next(
                (m.description for m in list_models() if m.name == args.model),
                type(encoder).__name__,
            ),
            "classes": len(names),
            "photos": [photos.names[i] for i in keep],
            "sigma": args.sigma,
            "n0": args.n0,
            "n": args.n,
            "alpha": args.alpha,
            "alpha_per_rival_old": args.alpha / (len(names) - 1),
            "method": args.method,
            "bet_horizon": args.n,
            "seed": args.seed,
            "seeds": 'per photo: featsmooth.seeds.noise_seed(seed, name, "certify"), as featsmooth demo',
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "input_dtype": "float32",
            "certificates": {
                "margin_old": "pairwise margin, each rival bound at alpha/(K-1) (Bonferroni)",
                "margin": "pairwise margin, each rival bound at alpha (theory.md Prop. 5)",
                "cohen": "Cohen et al. 2019 hard vote, Clopper-Pearson at alpha",
                "fcsb": "FCSB cone certificate from S_low at alpha (theory.md Prop. 6)",
                "ball_mcdiarmid": "one confidence ball for the mean feature, bounded "
                "differences (theory.md Prop. 7)",
                "ball_bernstein": "one confidence ball, Pinelis/Smale-Zhou Bernstein "
                "(theory.md Prop. 7)",
            },
        },
        "environment": environment_info(),
        "summary": summary,
        "check_against_certify_prediction": check,
        "results": rows,
        "seconds_total": time.perf_counter() - start_all,
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"written to {args.out}")
    if check is not None and not (
        check["prediction_same"] and all(d["same"] for d in check["radii"].values())
    ):
        raise SystemExit("the bench's certificates differ from certify_prediction's")


if __name__ == "__main__":
    main()
