"""Train the plug-in of the default encoder on the photo corpus, in three resumable stages.

1. ``pixel``: the purifier as a plain Gaussian denoiser (pixel MSE only, sigma uniform in
   the trained range) on random crops of the corpus *train* photos
   (:func:`featsmooth.plugin.pretrain_purifier`);
2. ``feature``: the purifier through the frozen encoder with the clean-reference objective,
   maximise ``cos(f(P(x + e, sigma)), f(x))``, plus the pixel term
   (:func:`featsmooth.plugin.train_plugin`, ``parts=("purifier",)``);
3. ``mapper``: the smoothness mapper after the frozen encoder, the purifier of stage 2
   frozen (``parts=("mapper",)``).

Every stage checkpoints into ``WORKDIR/<stage>/`` and resumes from there when re-run with
the same settings; each finished stage is saved as a plug-in folder ``WORKDIR/<stage>-plugin``.
Crops are drawn on the fly (seeded by epoch) from the corpus train photos, so the training
data is many distinct patches, never a held-out or labelled demo photo. Example::

    python bench/train_plugin_corpus.py --workdir ~/.cache/featsmooth/train-default \\
        --pixel-steps 600 --feature-steps 1200 --mapper-steps 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from featsmooth.data.corpus import load_corpus
from featsmooth.encoders import load_encoder
from featsmooth.plugin import (
    LossWeights,
    load_plugin,
    pretrain_purifier,
    save_plugin,
    train_plugin,
)
from featsmooth.versions import environment_info


class CropStream:
    """Re-iterable batches of fresh random crops of one corpus split (new seed per epoch)."""

    def __init__(self, corpus, split: str, size: int, batch: int, per_epoch: int, seed: int):
        self.corpus, self.split, self.size = corpus, split, size
        self.batch, self.per_epoch, self.seed = batch, per_epoch, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        self.epoch += 1
        for i in range(self.per_epoch):
            seed = self.seed * 1_000_003 + self.epoch * 10_007 + i
            yield self.corpus.crops(self.split, self.batch, self.size, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=None, help="corpus cache folder")
    p.add_argument("--model", default="default")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--stages", default="pixel,feature,mapper")
    p.add_argument("--pixel-steps", type=int, default=600)
    p.add_argument("--pixel-size", type=int, default=96)
    p.add_argument("--pixel-batch", type=int, default=16)
    p.add_argument("--pixel-lr", type=float, default=1e-3)
    p.add_argument("--feature-steps", type=int, default=1200)
    p.add_argument("--feature-batch", type=int, default=4)
    p.add_argument("--feature-lr", type=float, default=2e-4)
    p.add_argument("--w-clean", type=float, default=1.0)
    p.add_argument("--w-mse", type=float, default=1.0)
    p.add_argument(
        "--w-agree",
        type=float,
        default=0.0,
        help="weight of the zero-shot agreement (KL) term in the feature and mapper stages",
    )
    p.add_argument("--agree-scale", type=float, default=100.0, help="logit scale of that term")
    p.add_argument(
        "--feature-init",
        type=Path,
        default=None,
        help="plug-in folder the feature stage starts from (default: the pixel stage's)",
    )
    p.add_argument("--mapper-steps", type=int, default=300)
    p.add_argument("--mapper-batch", type=int, default=8)
    p.add_argument("--mapper-lr", type=float, default=2e-4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--purifier-channels", type=int, default=32)
    p.add_argument("--val-crops", type=int, default=16)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-draws", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--summary-out",
        type=Path,
        default=None,
        help="also write the settings, environment and the trained stages' cards as JSON here",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.workdir.expanduser()
    work.mkdir(parents=True, exist_ok=True)
    stages = [s for s in args.stages.split(",") if s]

    corpus = load_corpus(args.cache_dir)
    train_ids = [ph.id for ph in corpus.split("train")]
    encoder = load_encoder(args.model).eval()
    val = corpus.crops("held_out", args.val_crops, args.size, seed=10_000 + args.seed)
    describe = (
        f"random crops ({{size}}px, side 0.3-1 of the shorter side, flips, fresh per epoch) "
        f"of the {len(train_ids)} train photos of the featsmooth.data.corpus corpus: "
        + ", ".join(i.rsplit("/", 1)[-1] for i in train_ids)
    )
    log = work / "stages.jsonl"

    def record(stage: str, plugin, seconds: float) -> None:
        t = plugin.card.get("training", {})
        with open(log, "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "stage": stage,
                        "steps": t.get("steps"),
                        "seconds_per_step": t.get("seconds_per_step"),
                        "seconds": seconds,
                        "validations": plugin.card.get("validations", [])[-1:],
                    }
                )
                + "\n"
            )

    def printer(stage: str):
        t_last = [time.perf_counter()]

        def cb(step: int, metrics: dict) -> None:
            if step % 10 == 0:
                now = time.perf_counter()
                vals = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                print(
                    f"{stage} step {step} {vals} ({(now - t_last[0]) / 10:.2f} s/step)", flush=True
                )
                t_last[0] = now

        return cb

    def stage(name: str, train, size: int, batch: int, seed_offset: int, **options):
        """Run stage ``name`` of ``stages`` (or load the plug-in it saved before): the same
        data stream, checkpointing, logging and saving for every stage."""
        folder = work / f"{name}-plugin"
        if name not in stages:
            return load_plugin(folder) if folder.exists() else None
        t0 = time.perf_counter()
        plugin = train(
            encoder, CropStream(corpus, "train", size, batch, 500, args.seed + seed_offset),
            sigmas=args.sigmas, batch_size=batch, seed=args.seed, progress=False,
            checkpoint_dir=work / name, callback=printer(name),
            data_description=describe.format(size=size), **options,
        )  # fmt: skip
        save_plugin(plugin, folder)
        record(name, plugin, time.perf_counter() - t0)
        return plugin

    purifier = {"base_channels": args.purifier_channels}
    validation = {"val_images": val, "val_every": args.val_every, "val_draws": args.val_draws}
    # terms every feature-space stage shares: no pairwise or stats term, --w-agree for all
    shared_terms = {"pairwise_consistency": 0.0, "stats": 0.0, "agreement": args.w_agree}
    agreement = {"agreement_scale": args.agree_scale}
    init = stage(
        "pixel", pretrain_purifier, args.pixel_size, args.pixel_batch, 0,
        steps=args.pixel_steps, lr=args.pixel_lr, checkpoint_every=50, val_every=0,
        purifier_config=purifier,
    )  # fmt: skip
    if args.feature_init is not None:
        init = load_plugin(args.feature_init)
    init = stage(
        "feature", train_plugin, args.size, args.feature_batch, 1, sigma_sampling="set",
        parts=("purifier",), init=init, **agreement, steps=args.feature_steps, lr=args.feature_lr,
        loss_weights=LossWeights(clean_consistency=args.w_clean, utility=0.0,
                                 pixel_mse=args.w_mse, identity=0.0, **shared_terms),
        draws_per_image=1, checkpoint_every=25, purifier_config=purifier, **validation,
    ) or init  # fmt: skip
    stage(
        "mapper", train_plugin, args.size, args.mapper_batch, 2, sigma_sampling="set",
        parts=("mapper",), init=init, steps=args.mapper_steps, **agreement, lr=args.mapper_lr,
        loss_weights=LossWeights(clean_consistency=1.0, utility=1.0, pixel_mse=0.0,
                                 identity=0.1, **shared_terms),
        draws_per_image=1, checkpoint_every=25, **validation,
    )  # fmt: skip

    if args.summary_out:
        write_summary(args, work)


def write_summary(args: argparse.Namespace, work: Path) -> None:
    """Write ``args.summary_out``: the settings (no machine path), the environment and,
    per finished stage in ``work``, its plug-in card's training block, validations and
    scores before (plain FS) and after."""
    stages = []
    for stage in ("pixel", "feature", "mapper"):
        folder = work / f"{stage}-plugin"
        if folder.exists():
            card = load_plugin(folder).card
            stages.append(
                {
                    "stage": stage,
                    **card.get("training", {}),
                    "validations": card.get("validations", []),
                    # plain FS ("before") and the stage's plug-in ("after") on the same crops
                    "scores": card.get("scores", {}),
                }
            )
    settings = {
        k: (v.name if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("workdir", "cache_dir", "summary_out")
    }
    summary = {"settings": settings, "environment": environment_info(), "stages": stages}
    args.summary_out.parent.mkdir(parents=True, exist_ok=True)
    args.summary_out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
