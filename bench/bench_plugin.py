"""Does the plug-in raise the certified score of the offline default model? FS vs FS+plug-in.

Trains a purifier + smoothness mapper (featsmooth.plugin.train_plugin) for the frozen offline
zero-shot default (EfficientNet-Lite0 probabilities x MiniLM prompts), one sigma-conditioned
plug-in for the range of ``--sigmas``, in two stages:

1. ``--pretrain-steps`` of pixel denoising only (MSE; the encoder is not run), on small
   random crops, as denoised smoothing (Salman et al., 2020) warm-starts its denoiser;
2. ``--steps`` of the full self-supervised objective through the frozen encoder.

Training images are random crops of unlabelled real images (``--train-photos`` plus the
extra scikit-image images of featsmooth.data.crops); the evaluation photos (by default the 7
labelled ones) are never seen in training. On them, with the SAME noise draws for every
variant (common random numbers), it compares

    fs         the frozen encoder alone (Feature-space Smoothing)
    fs+plugin  purifier -> encoder -> mapper
    purifier   the purifier of that plug-in alone     } ablations of the jointly trained
    mapper     the mapper of that plug-in alone       } plug-in (--separate-parts trains
                                                        each part on its own instead)

reporting mean S (point estimate, n0 + n draws), mean certified S_low (betting bound at
level 1 - alpha on n fresh draws after choosing the direction on n0 draws, exactly the
protocol of SmoothedEncoder.certify), mean FCSB at each radius (an image without a
certificate counts as 0 and is also counted separately), the same for the clean reference
u = f(x) of the ORIGINAL encoder (so every variant is measured against the feature the user
cares about), the clean feature agreement cos(f'(x), f(x)), and zero-shot accuracy of the
clean prediction and of the smoothed prediction. Radii are l2 norms in pixel units of the
``--image-size`` images. Timings are wall clock on this machine.

    python bench/bench_plugin.py                          # CPU run (~30 minutes on 2 cores)
    python bench/bench_plugin.py --steps 2000 --train-crops 4096 --n 1024 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featsmooth import bounds
from featsmooth.data.crops import load_training_pool, random_crops
from featsmooth.data.photos import load_photos
from featsmooth.plugin import LossWeights, Plugin, pretrain_purifier, save_plugin, train_plugin

VARIANTS = ("fs", "fs+plugin", "purifier", "mapper")


def load_encoder(name: str):
    if name == "conse":
        from featsmooth.encoders.conse import load_zero_shot_default

        return load_zero_shot_default()
    from featsmooth.encoders.cnn import load_efficientnet_lite0

    return load_efficientnet_lite0()


def unit(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z.flatten(1).double(), dim=-1)


@torch.no_grad()
def variant_features(encoder, plugins: dict[str, Plugin | None], x: torch.Tensor, sigma: float):
    """Unit features ``{variant: (N, k)}`` of the batch ``x`` (noisy or clean) at ``sigma``."""
    out = {}
    raw_cache: dict[int, torch.Tensor] = {}
    for name, plugin in plugins.items():
        pur = plugin.purifier if plugin is not None else None
        mapper = plugin.mapper if plugin is not None else None
        key = id(pur)
        if key not in raw_cache:
            raw_cache[key] = encoder(pur(x, sigma) if pur is not None else x)
        z = raw_cache[key]
        out[name] = unit(mapper(z, sigma) if mapper is not None else z)
    return out


def evaluate(
    encoder, plugins, images, sigma, n0, n, alpha, radii, seed, chunk, table, labels
) -> dict:
    """Per-variant S, S_low, FCSB, clean agreement and smoothed predictions at ``sigma``."""
    per = {
        v: {"S": [], "Sc": [], "S_low": [], "Sc_low": [], "fcsb": [], "fcsb_c": [], "pred": []}
        for v in plugins
    }
    t0 = time.perf_counter()
    clean = variant_features(encoder, plugins, images, sigma)
    for i in range(images.shape[0]):
        gen = torch.Generator().manual_seed(seed * 7919 + i)
        x = images[i : i + 1]
        feats: dict[str, list[torch.Tensor]] = {v: [] for v in plugins}
        for start in range(0, n0 + n, chunk):
            m = min(chunk, n0 + n - start)
            noise = (torch.randn((m, *x.shape[1:]), generator=gen) * sigma).to(x.device)
            for v, f in variant_features(encoder, plugins, x + noise, sigma).items():
                feats[v].append(f)
        for v in plugins:
            f = torch.cat(feats[v])
            direction = F.normalize(f[:n0].mean(0), dim=0)
            proj = (f[n0:] @ direction).cpu().numpy()
            proj_c = (f[n0:] @ clean["fs"][i]).cpu().numpy()  # u = f(x), original encoder
            s_low = bounds.mean_lower_bound(proj, alpha, "betting", horizon=n)
            sc_low = bounds.mean_lower_bound(proj_c, alpha, "betting", horizon=n)
            mean = f.mean(0)
            per[v]["S"].append(float(mean.norm()))
            per[v]["Sc"].append(float(mean @ clean["fs"][i]))
            per[v]["S_low"].append(float(s_low))
            per[v]["Sc_low"].append(float(sc_low))
            per[v]["fcsb"].append(bounds.fcsb(s_low, np.asarray(radii), sigma).tolist())
            per[v]["fcsb_c"].append(bounds.fcsb(sc_low, np.asarray(radii), sigma).tolist())
            if table is not None:
                per[v]["pred"].append(int((mean.float() @ table.T).argmax()))
    rows = {}
    for v in plugins:
        fc = np.asarray(per[v]["fcsb"], dtype=np.float64)  # (images, radii)
        fcc = np.asarray(per[v]["fcsb_c"], dtype=np.float64)
        row = {
            "mean_S": float(np.mean(per[v]["S"])),
            "mean_S_low": float(np.mean(per[v]["S_low"])),
            "mean_clean_reference_S": float(np.mean(per[v]["Sc"])),
            "mean_clean_reference_S_low": float(np.mean(per[v]["Sc_low"])),
            "mean_fcsb": {
                f"{r:g}": float(np.mean(np.nan_to_num(fc[:, j], nan=0.0)))
                for j, r in enumerate(radii)
            },
            "certified_fraction": {
                f"{r:g}": float(np.mean(~np.isnan(fc[:, j]))) for j, r in enumerate(radii)
            },
            "mean_clean_reference_fcsb": {
                f"{r:g}": float(np.mean(np.nan_to_num(fcc[:, j], nan=0.0)))
                for j, r in enumerate(radii)
            },
            "clean_reference_certified_fraction": {
                f"{r:g}": float(np.mean(~np.isnan(fcc[:, j]))) for j, r in enumerate(radii)
            },
            "clean_cos_to_f": float((clean[v] * clean["fs"]).sum(-1).mean()),
            "per_image_S": per[v]["S"],
            "per_image_S_low": per[v]["S_low"],
            "per_image_clean_reference_S_low": per[v]["Sc_low"],
        }
        if table is not None and labels is not None:
            hits = [p in acc for p, acc, lab in zip(per[v]["pred"], *labels) if lab is not None]
            row["smoothed_accuracy"] = float(np.mean(hits)) if hits else None
            row["smoothed_predictions"] = per[v]["pred"]
        rows[v] = row
    return {"variants": rows, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def clean_accuracy(encoder, plugins, photos, sigma, table) -> dict[str, float | None]:
    device = next(encoder.parameters()).device
    feats = variant_features(encoder, plugins, photos.images.to(device), sigma)
    out = {}
    for v, f in feats.items():
        preds = (f.float() @ table.T).argmax(-1).tolist()
        hits = [c for c in photos.correct(preds) if c is not None]
        out[v] = float(np.mean(hits)) if hits else None
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    encoder = load_encoder(args.model).to(args.device).eval()
    table = getattr(encoder, "class_table", None)
    table = table.float() if table is not None else None
    val_names = [x for x in args.val_photos.split(",") if x]
    train_names = [x for x in args.train_photos.split(",") if x]
    overlap = set(val_names) & set(train_names)
    if overlap:
        raise SystemExit(f"photos both trained on and held out: {sorted(overlap)}")
    pool = load_training_pool(train_names, extras=None if args.extras else [])
    pool_images = [x for _, x in pool]
    val = load_photos(val_names, size=args.image_size)
    train_images = random_crops(pool_images, args.train_crops, args.image_size, seed=args.seed)
    patches = random_crops(pool_images, args.pretrain_crops, args.pretrain_size, seed=args.seed + 1)
    load_seconds = time.perf_counter() - t_load
    pool_names = [n for n, _ in pool]
    data_description = (
        f"{args.train_crops} random crops/flips ({args.image_size}px, scale 0.3-1) of "
        f"{pool_names}; evaluated on held-out {val.names}"
    )

    t_pre = time.perf_counter()
    init = None
    if args.pretrain_steps > 0:
        init = pretrain_purifier(
            encoder,
            patches,
            sigmas=args.sigmas,
            steps=args.pretrain_steps,
            batch_size=args.pretrain_batch,
            lr=args.pretrain_lr,
            seed=args.seed,
            progress=not args.quiet,
            device=args.device,
            purifier_config={"base_channels": args.purifier_channels},
            data_description=f"{args.pretrain_crops} crops ({args.pretrain_size}px) of {pool_names}",
        )
    pretrain_seconds = time.perf_counter() - t_pre

    weights = LossWeights(
        clean_consistency=args.w_clean,
        pairwise_consistency=args.w_pairwise,
        utility=args.w_utility,
        pixel_mse=args.w_mse,
        stats=args.w_stats,
        identity=args.w_identity,
    )
    common = {
        "sigmas": args.sigmas,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "loss_weights": weights,
        "draws_per_image": args.draws,
        "val_images": val.images,
        "val_every": args.val_every,
        "val_draws": args.val_draws,
        "seed": args.seed,
        "progress": not args.quiet,
        "device": args.device,
        "purifier_config": {"base_channels": args.purifier_channels},
        "data_description": data_description,
        "sigma_sampling": "uniform",
    }
    trained: dict[str, Plugin] = {}
    t_train = time.perf_counter()
    trained["fs+plugin"] = train_plugin(
        encoder, train_images, parts=("purifier", "mapper"), init=init, **common
    )
    if args.separate_parts:
        trained["purifier"] = train_plugin(
            encoder, train_images, parts=("purifier",), init=init, **common
        )
        trained["mapper"] = train_plugin(encoder, train_images, parts=("mapper",), **common)
    train_seconds = time.perf_counter() - t_train
    joint = trained["fs+plugin"]
    if args.save_plugin is not None:
        save_plugin(joint, args.save_plugin)
    plugins: dict[str, Plugin | None] = {
        "fs": None,
        "fs+plugin": joint,
        "purifier": trained.get("purifier") or joint.select(["purifier"]),
        "mapper": trained.get("mapper") or joint.select(["mapper"]),
    }
    for p in plugins.values():
        if p is not None:
            p.to(dtype=torch.float32)
            for m in p.modules().values():
                m.eval()

    results = {}
    for sigma in args.sigmas:
        ev = evaluate(
            encoder,
            plugins,
            val.images.to(args.device),
            sigma,
            args.n0,
            args.n,
            args.alpha,
            args.radii,
            args.seed + 1,
            args.chunk,
            table,
            (val.acceptable, val.labels),
        )
        if table is not None:
            acc_val = clean_accuracy(encoder, plugins, val, sigma, table)
            for v in plugins:
                ev["variants"][v]["clean_accuracy_held_out"] = acc_val[v]
        results[f"{sigma:g}"] = ev
        if not args.quiet:
            print_sigma(sigma, ev, args.radii)

    sec_per_step = joint.card["training"]["seconds_per_step"]
    steps_per_epoch = math.ceil(args.train_crops / args.batch_size)
    try:
        from featsmooth.versions import environment_info

        env = environment_info()
    except Exception:  # pragma: no cover - informational only
        env = {"torch": torch.__version__}
    return {
        "benchmark": "plugin",
        "settings": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("out", "save_plugin")
            },
            "save_plugin": args.save_plugin.name if args.save_plugin else None,
            "loss_weights": weights.to_dict(),
            "training_pool": pool_names,
            "held_out_photos": val.names,
            "plugin_parameters": joint.num_parameters,
            "ablation": "separately trained parts"
            if args.separate_parts
            else "parts of the jointly trained plug-in removed at test time",
            "certificate": "direction from n0 draws, betting lower bound on n fresh draws "
            "(level 1 - alpha per image); FCSB of S_low; no certificate counts as 0 in mean_fcsb",
            "radius_units": f"l2 norm in [0,1] pixel units of {args.image_size}px RGB images",
        },
        "timing": {
            "load_seconds": load_seconds,
            "pretrain_seconds": pretrain_seconds,
            "pretrain_seconds_per_step": (
                init.card["training"]["seconds_per_step"] if init is not None else None
            ),
            "train_seconds_total": train_seconds,
            "seconds_per_step": sec_per_step,
            "steps_per_epoch": steps_per_epoch,
            "seconds_per_epoch": sec_per_step * steps_per_epoch if sec_per_step else None,
        },
        "training_card": {
            k: v for k, v in joint.card.items() if k in ("training", "scores", "validations")
        },
        "results": results,
        "environment": env,
    }


def print_sigma(sigma: float, ev: dict, radii) -> None:
    head = f"sigma={sigma:g}  {'variant':<10} {'S':>7} {'S_low':>7} " + " ".join(
        f"{'FCSB@' + format(r, 'g'):>9}" for r in radii
    )
    print(head + f" {'S_c':>7} {'cos(f,f)':>8} {'acc':>5}")
    for v, row in ev["variants"].items():
        fc = " ".join(f"{row['mean_fcsb'][f'{r:g}']:>9.3f}" for r in radii)
        acc = row.get("clean_accuracy_held_out")
        print(
            f"{'':>12}{v:<10} {row['mean_S']:>7.4f} {row['mean_S_low']:>7.4f} {fc} "
            f"{row['mean_clean_reference_S']:>7.4f} {row['clean_cos_to_f']:>8.4f} {acc if acc is not None else float('nan'):>5.2f}"
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("conse", "efficientnet"), default="conse")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument(
        "--val-photos", default="chelsea,coffee,rocket,motorcycle,camera,china,grace_hopper"
    )
    p.add_argument("--train-photos", default="astronaut,flower")
    p.add_argument("--no-extras", dest="extras", action="store_false", help="photos only")
    p.add_argument("--pretrain-steps", type=int, default=1500, help="pixel-MSE-only steps")
    p.add_argument("--pretrain-crops", type=int, default=4096)
    p.add_argument("--pretrain-size", type=int, default=64)
    p.add_argument("--pretrain-batch", type=int, default=32)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--train-crops", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--draws", type=int, default=2, help="noise draws per image and step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--purifier-channels", type=int, default=32)
    p.add_argument("--w-clean", type=float, default=1.0)
    p.add_argument("--w-pairwise", type=float, default=0.5)
    p.add_argument("--w-utility", type=float, default=1.0)
    p.add_argument("--w-mse", type=float, default=1.0)
    p.add_argument("--w-stats", type=float, default=0.0)
    p.add_argument("--w-identity", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=50, help="0: validate only at the end")
    p.add_argument("--val-draws", type=int, default=8)
    p.add_argument("--separate-parts", action="store_true", help="train each part alone too")
    p.add_argument("--n0", type=int, default=16)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--chunk", type=int, default=16, help="noisy images per forward pass")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--save-plugin", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/results/plugin.json"))
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    report = run(args)
    report["timing"]["total_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {report['timing']['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
