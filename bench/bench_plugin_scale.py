"""Plug-in utility at scale: held-out corpus crops + the labelled photos, many variants.

For every variant (``fs``: the plain smoothed encoder; ``fs+tv`` / ``fs+nlm`` / ``fs+bm3d``:
a classical purifier in front, BPDA for gradients, no training; ``fs+purifier``,
``fs+mapper``, ``fs+plugin``: parts of a trained plug-in) and every sigma, each image gets
``draws`` Gaussian draws (the same draws for every variant: common random numbers, seeded
by image index) and we record:

* ``S_c`` = mean cos(f'(x+e), f(x)) (clean reference, f the plain encoder) and its betting
  lower confidence bound (level 1 - alpha per image, horizon = draws);
* ``S`` = ||mean f'(x+e)|| (plug-in point estimate, biased up by about (1-S^2)/(2 S n));
* FCSB at the radii with both references, from the point estimates of ``S_c`` and ``S``,
  and (clean reference) from the ``S_c`` lower bound. With the few draws this CPU bench
  affords (8-32), the lower bound at level 0.999 is far below the point estimate, so the
  point-estimate columns show what a certificate with many draws would approach; they
  are not certificates themselves;
* the l2 radius keeping cos >= 0.5 (clean reference), point estimate and certified;
* the smoothed top-1 (argmax over the 1000 class-text embeddings of the mean feature) and
  whether it agrees with the clean top-1 of the plain encoder; accuracy on labelled photos;
  agreement also on the images whose clean top-1 leads the runner-up by a cosine margin of
  at least ``MARGIN`` (on near-ties the clean top-1 itself flips under the faintest
  perturbation, so agreement there measures the tie, not the plug-in);
* PSNR of the purified images against the clean image (purifier variants).

Images: the 7 labelled demo photos (224 px centre crops) then ``crops`` random crops of the
corpus held-out photos (never trained on). Images are processed in order, every variant
and sigma on image i before image i+1, and results are saved to ``--out`` as they come: a
run stopped early compares all its variants on the same images (the summaries state how
many), and a re-run with the same settings resumes. ``--report FILE...`` prints the table of one or
more result files.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from featsmooth import bounds
from featsmooth.data import load_photos
from featsmooth.data.corpus import LABELLED_DEMO, load_corpus
from featsmooth.encoders import load_encoder
from featsmooth.plugin import load_plugin
from featsmooth.plugin import losses as L
from featsmooth.plugin.classical import KINDS, classical_plugin
from featsmooth.versions import environment_info


def build_variant(spec: str, encoder):
    """``none`` | ``tv`` | ``nlm`` | ``bm3d`` | ``FOLDER`` | ``FOLDER:purifier`` | ``FOLDER:mapper``."""
    if spec == "none":
        return None, {"kind": "none"}
    if spec in KINDS:
        p = classical_plugin(spec, encoder)
        return p, {"kind": "classical", **p.card["classical"], "gradients": "BPDA (identity)"}
    folder, _, parts = spec.partition(":")
    plugin = load_plugin(folder)
    info = {
        "kind": "trained",
        "folder": Path(folder).name,
        "parts": parts or "+".join(plugin.parts),
        "training": {
            k: plugin.card.get("training", {}).get(k)
            for k in ("steps", "loss_weights", "sigmas", "batch_size", "lr", "data")
        },
    }
    if parts:
        plugin = plugin.select(parts.split("+"))
    return plugin, info


@torch.no_grad()
def run_image(encoder, model, x, sigma, draws, seed, index, table, chunk, ref=None, cache=None):
    """One image, one variant, one sigma. ``cache`` (a dict, per image) shares the encoder
    features of ``purifier -> encoder`` between variants that differ only by the mapper
    (the draws are the same, so the features are too)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    noise = torch.randn((draws, *x.shape), generator=gen) * sigma
    noisy = x[None] + noise
    if ref is None:
        ref = L.unit_flat(encoder(x[None]))[0]
    clean_cos = ref @ table.T
    top2 = clean_cos.topk(2).values
    clean_pred = int(clean_cos.argmax())
    purifier = model.purifier if model is not None else None
    key = (float(sigma), id(purifier) if purifier is not None else None)
    if cache is not None and key in cache:
        zs, psnr = cache[key]
    else:
        zs, psnr = [], []
        for part in noisy.split(chunk):
            xp = purifier(part, sigma) if purifier is not None else part
            if purifier is not None:
                mse = (xp - x[None]).pow(2).flatten(1).mean(1).clamp_min(1e-12)
                psnr.extend((-10 * torch.log10(mse)).tolist())
            zs.append(encoder(xp))
        if cache is not None:
            cache[key] = (zs, psnr)
    mapper = model.mapper if model is not None else None
    feats = [L.unit_flat(mapper(z, sigma) if mapper is not None else z) for z in zs]
    f = torch.cat(feats).double()
    cos_c = (f @ ref.double()).numpy()
    mean = f.mean(0)
    pred = int((mean.float() @ table.T).argmax())
    sc_low = bounds.mean_lower_bound(cos_c, ALPHA, "betting", horizon=draws)
    return {
        "S_c": float(cos_c.mean()),
        "S_c_low": float(sc_low),
        "S": float(mean.norm()),
        "pred": pred,
        "clean_pred": clean_pred,
        "agree": pred == clean_pred,
        "clean_margin": float(top2[0] - top2[1]),
        "psnr": float(np.mean(psnr)) if psnr else None,
    }


ALPHA = 0.001


#: clean top-1 cosine lead over the runner-up that makes an image "decisive"
MARGIN = 0.05


def decisive_agreement(rows: list[dict]) -> dict:
    """Agreement on the rows whose clean top-1 leads by at least :data:`MARGIN` (rows of
    older files have no margin: nothing is reported for them)."""
    if not rows or any("clean_margin" not in r for r in rows):
        return {}
    sure = [r for r in rows if r["clean_margin"] >= MARGIN]
    return {
        f"decisive_images_margin{MARGIN:g}": len(sure),
        f"agreement_decisive_margin{MARGIN:g}": (
            float(np.mean([r["agree"] for r in sure])) if sure else None
        ),
    }


def summarise(rows: list[dict], sigma: float, radii, n_labelled: int, photos) -> dict:
    held = rows[n_labelled:]
    lab = rows[:n_labelled]
    out = {"images_held_out": len(held), "images_labelled": len(lab)}
    for name, part in (("held_out", held), ("labelled", lab), ("all", rows)):
        if not part:
            continue
        sc = np.clip(np.array([r["S_c"] for r in part]), 0, 1)
        sc_low = np.clip(np.array([r["S_c_low"] for r in part]), 0, 1)
        s = np.clip(np.array([r["S"] for r in part]), 0, 1)

        def mean_fcsb(score, r):
            return float(np.mean(np.nan_to_num(bounds.fcsb(score, r, sigma))))

        rad = np.nan_to_num(bounds.certified_radius(sc, 0.5, sigma))
        rad_low = np.nan_to_num(bounds.certified_radius(sc_low, 0.5, sigma))
        entry = {
            "S_c": float(np.mean([r["S_c"] for r in part])),
            "S_c_low": float(np.mean([r["S_c_low"] for r in part])),
            "S": float(np.mean(s)),
            "agreement": float(np.mean([r["agree"] for r in part])),
            **decisive_agreement(part),
            "fcsb_clean_ref_point": {f"{r:g}": mean_fcsb(sc, r) for r in radii},
            "fcsb_smoothed_ref_point": {f"{r:g}": mean_fcsb(s, r) for r in radii},
            "fcsb_clean_ref_certified": {f"{r:g}": mean_fcsb(sc_low, r) for r in radii},
            "radius_cos0.5_clean_ref_point_mean": float(np.mean(rad)),
            "radius_cos0.5_clean_ref_point_median": float(np.median(rad)),
            "radius_cos0.5_clean_ref_certified_mean": float(np.mean(rad_low)),
        }
        ps = [r["psnr"] for r in part if r["psnr"] is not None]
        if ps:
            entry["psnr"] = float(np.mean(ps))
        out[name] = entry
    if lab and photos is not None:
        seen = photos.subset(range(len(lab)))
        hits = [c for c in seen.correct([r["pred"] for r in lab]) if c is not None]
        clean_hits = [c for c in seen.correct([r["clean_pred"] for r in lab]) if c is not None]
        out["labelled_accuracy_smoothed"] = f"{sum(hits)}/{len(hits)}"
        out["labelled_accuracy_clean_f"] = f"{sum(clean_hits)}/{len(clean_hits)}"
    return out


def run(args) -> None:
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model).eval()
    table = encoder.class_table.float()
    corpus = load_corpus(args.cache_dir)
    crops, sources = corpus.crops(
        "held_out", args.crops, args.size, seed=args.crop_seed, return_sources=True
    )
    photos = load_photos(list(LABELLED_DEMO), size=args.size)
    images = torch.cat([photos.images, crops])
    n_lab = len(photos)
    variants = dict(v.split("=", 1) for v in args.variant)
    settings = {
        "model": args.model,
        "size": args.size,
        "sigmas": args.sigmas,
        "draws": args.draws,
        "radii": args.radii,
        "alpha": ALPHA,
        "crops": args.crops,
        "crop_seed": args.crop_seed,
        "seed": args.seed,
        "held_out_photos": sorted(set(sources)),
        "distinct_held_out_photos": len(set(sources)),
        "labelled_photos": list(LABELLED_DEMO),
        "noise": "common random numbers: image i uses seed*1000003+i for every variant",
        "S_c_low": "betting lower bound (Waudby-Smith & Ramdas), horizon = draws, per image",
    }
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {}
    if state.get("settings", settings) != settings:
        raise SystemExit(f"{out} was written with other settings; use another --out")
    state["settings"] = settings
    state["environment"] = environment_info()
    state.setdefault("runs", {})
    models, runs = {}, {}
    for name, spec in variants.items():
        plugin, info = build_variant(spec, encoder)
        for sigma in args.sigmas:
            key = f"{name}@{sigma:g}"
            run_ = state["runs"].setdefault(key, {"variant": name, "sigma": sigma, "rows": []})
            run_["info"] = info
            run_.setdefault("seconds", 0.0)
            models[key] = (plugin.wrap(encoder, sigma) if plugin is not None else None, sigma)
            runs[key] = run_

    def save() -> None:
        for run_ in runs.values():
            rows = run_["rows"]
            if rows:
                run_["seconds_per_image"] = run_["seconds"] / len(rows)
                run_["summary"] = summarise(rows, run_["sigma"], args.radii, n_lab, photos)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(out)

    # image-major order: every variant and sigma advance together, so a run stopped early
    # (or resumed) still compares all variants on the same first images
    for i in range(images.shape[0]):
        ref, cache = None, {}
        for key, run_ in runs.items():
            if len(run_["rows"]) != i:
                continue
            if ref is None:
                with torch.no_grad():
                    ref = L.unit_flat(encoder(images[i][None]))[0]
            model, sigma = models[key]
            t0 = time.perf_counter()
            run_["rows"].append(
                run_image(
                    encoder,
                    model,
                    images[i],
                    sigma,
                    args.draws,
                    args.seed,
                    i,
                    table,
                    args.chunk,
                    ref,
                    cache,
                )
            )
            run_["seconds"] += time.perf_counter() - t0
        if (i + 1) % args.save_every == 0 or i + 1 == images.shape[0]:
            save()
            line = ", ".join(
                f"{k} S_c {r['summary']['all']['S_c']:.3f} agree "
                f"{r['summary']['all']['agreement']:.2f}"
                for k, r in runs.items()
                if r.get("summary")
            )
            print(f"{i + 1} images: {line}", flush=True)


@torch.no_grad()
def psnr_table(args) -> None:
    """PSNR (dB) of each purifier on held-out crops, one noise draw per crop and sigma."""
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model).eval()
    corpus = load_corpus(args.cache_dir)
    crops = corpus.crops("held_out", args.crops, args.size, seed=args.crop_seed)
    result = {
        "settings": {
            "crops": args.crops,
            "crop_seed": args.crop_seed,
            "size": args.size,
            "sigmas": args.sigmas,
            "draws_per_crop": 1,
            "seed": args.seed,
            "variants": [v.split("=", 1)[0] for v in args.variant],
        },
        "environment": environment_info(),
        "psnr": {},
    }
    for v in args.variant:
        name, spec = v.split("=", 1)
        plugin, info = build_variant(spec, encoder)
        for sigma in args.sigmas:
            vals = []
            for i in range(crops.shape[0]):
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
                noisy = crops[i : i + 1] + sigma * torch.randn(
                    crops[i : i + 1].shape, generator=gen
                )
                out = noisy.clamp(0, 1) if plugin is None else plugin.purifier(noisy, sigma)
                vals.append(float(-10 * torch.log10((out - crops[i : i + 1]).pow(2).mean())))
            result["psnr"][f"{name}@{sigma:g}"] = {
                "mean": float(np.mean(vals)),
                "images": len(vals),
                "info": info,
            }
            print(f"{name:<14} sigma {sigma:g}: PSNR {np.mean(vals):.2f} dB ({len(vals)} crops)")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def _decisive_text(summary: dict) -> str:
    n = summary.get(f"decisive_images_margin{MARGIN:g}")
    a = summary.get(f"agreement_decisive_margin{MARGIN:g}")
    return "-" if n is None else f"{a if a is not None else math.nan:.3f} ({n})"


def report(files: list[str], common: bool = False) -> dict:
    """Print (and return) the table of result files; later files win on equal keys.

    With ``common`` every run is re-summarised on the first ``n`` images, ``n`` the
    smallest image count over the runs, so all rows compare the same images and draws.
    """
    runs, settings = {}, None
    for f in files:
        d = json.loads(Path(f).read_text())
        runs.update(d["runs"])
        settings = settings or d["settings"]
    if common:
        n = min(len(r["rows"]) for r in runs.values())
        photos = load_photos(settings["labelled_photos"], size=settings["size"])
        n_lab = len(settings["labelled_photos"])
        for r in runs.values():
            r["summary"] = summarise(r["rows"][:n], r["sigma"], settings["radii"], n_lab, photos)
        print(f"all runs on their first {n} images ({max(0, n - n_lab)} held-out crops)")
    head = (
        f"{'variant':<18}{'sigma':>6}{'n_img':>6}{'S_c':>7}{'S':>7}"
        f"{'agree':>7}{'R@.5':>7}{'PSNR':>6}{'acc7':>6}{'lab S_c':>8}{'lab agr':>8}"
        f"{'decisive agr (n)':>18}"
    )
    print(head)
    table = {}
    for key, r in sorted(runs.items(), key=lambda kv: (kv[1]["sigma"], kv[0])):
        s = r.get("summary")
        if not s or "held_out" not in s:
            continue
        h, lab = s["held_out"], s.get("labelled", {})
        table[key] = s
        print(
            f"{r['variant']:<18}{r['sigma']:>6g}{s['images_held_out']:>6}{h['S_c']:>7.3f}"
            f"{h['S']:>7.3f}{h['agreement']:>7.3f}"
            f"{h['radius_cos0.5_clean_ref_point_mean']:>7.3f}"
            f"{h.get('psnr', math.nan):>6.1f}{s.get('labelled_accuracy_smoothed', '-'):>6}"
            f"{lab.get('S_c', math.nan):>8.3f}{lab.get('agreement', math.nan):>8.3f}"
            f"{_decisive_text(h):>18}"
        )
    return table


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=SPEC, SPEC none|tv|nlm|bm3d|PLUGIN_FOLDER[:purifier|:mapper] (repeatable)",
    )
    p.add_argument("--model", default="default")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--crops", type=int, default=200)
    p.add_argument("--crop-seed", type=int, default=12_345)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--out", default="bench/results/plugin_scale.json")
    p.add_argument("--psnr", action="store_true", help="only PSNR of the purifiers (none=clamp)")
    p.add_argument("--common", action="store_true", help="report: same first images for all")
    p.add_argument("--table-out", default=None, help="report: also write the table as JSON")
    p.add_argument("--report", nargs="+", default=None, help="print the table of result files")
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.report:
        table = report(args.report, common=args.common)
        if args.table_out:
            written = {
                "settings": {"files": [Path(f).name for f in args.report], "common": args.common},
                "environment": environment_info(),
                "table": table,
            }
            Path(args.table_out).write_text(json.dumps(written, indent=1) + "\n")
        return
    if args.psnr:
        psnr_table(args)
        return
    if not args.variant:
        p.error("give at least one --variant NAME=SPEC")
    run(args)


if __name__ == "__main__":
    main()
