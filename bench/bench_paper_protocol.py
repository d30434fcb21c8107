"""The source paper's targeted protocol on the offline default model: vanilla vs FS (vs FS+plug-in).

Threat model (AttackVLM / M-Attack / FOA-Attack defaults, as in the source paper): a
white-box attacker perturbs each source photo within linf 16/255 for 300 steps of 1/255 so
that its encoder feature matches the feature of a *target image*; the attack succeeds when
the zero-shot prediction over a 10-class ImageNet subset names the target's class.

Offline adaptation (no shark photo ships with any registry package): the target image is a
shipped photo, by default ``coffee`` (class "espresso"), and the sources are the other
labelled photos. The 10-class subset is the primary classes of the 7 labelled photos plus
three ImageNet classes no photo shows (tench, goldfish, great white shark), zero-shot with
the prompt "a photo of a {class}.". Smoothed settings are attacked with EoT over ``--eot``
draws per step (through purifier and mapper for the plug-in) and judged on ``--judge``
fresh draws (success = the smoothed prediction names the target, not one lucky draw).

    python bench/bench_paper_protocol.py      # 2 CPU cores: vanilla ~20 min, FS over an hour
    python bench/bench_paper_protocol.py --plugin PLUGIN_DIR --settings fs+plugin

Certification runs too (``--n``) but an linf 16/255 ball has l2 radius up to
16/255 * sqrt(3 * H * W) (about 14 at 128 px), far beyond any certificate: the numbers of
this protocol are empirical attack success rates only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from benchutil import recorded_arguments

from featsmooth.attacks.budget import parse_eps
from featsmooth.data import imagenet_classes
from featsmooth.data.photos import load_photos
from featsmooth.encoders.registry import load_encoder
from featsmooth.evaluate import PAPER_ATTACKS, evaluate_paper_protocol
from featsmooth.tasks.zero_shot import class_embeddings
from featsmooth.versions import environment_info

EXTRA_CLASSES = (0, 1, 2)  # tench, goldfish, great white shark


def ten_class_subset(labelled) -> tuple[list[int], dict[int, int]]:
    """The 10-class ImageNet subset: the photos' primary classes plus :data:`EXTRA_CLASSES`.

    Returns the sorted ImageNet indices and the map ImageNet index -> subset index."""
    subset = sorted({*EXTRA_CLASSES, *(int(c) for c in labelled.labels)})
    return subset, {c: j for j, c in enumerate(subset)}


def subset_labels(photos, local: dict[int, int]) -> list[list[int]]:
    """Per photo its acceptable classes inside the subset, the primary one first."""
    return [[local[c] for c in [p, *sorted(acc - {p})] if c in local]
            for p, acc in zip(photos.labels, photos.acceptable)]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target-photo", default="coffee")
    parser.add_argument("--attacks", default=",".join(PAPER_ATTACKS))
    parser.add_argument("--settings", default="vanilla,fs")
    parser.add_argument("--plugin", default=None, help="trained plug-in folder (fs+plugin)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eps", default="16/255")
    parser.add_argument("--step-size", default="1/255")
    parser.add_argument("--eot", type=int, default=2, help="EoT draws per step (smoothed)")
    parser.add_argument("--judge", type=int, default=16, help="fresh draws that judge FS")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n0", type=int, default=16)
    parser.add_argument("--n", type=int, default=64, help="certification samples")
    parser.add_argument("--check-draws", type=int, default=32, help="consistency-check draws")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=None, help="records folder (resumable)")
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="write the JSON from the records of --run-dir (a run stopped early), no attacks",
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "paper_protocol.json")
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    encoder = load_encoder("default").eval()
    labelled = load_photos(size=args.image_size).labelled()
    if args.target_photo not in labelled.names:
        raise SystemExit(f"--target-photo must be one of {labelled.names}")
    t_idx = labelled.names.index(args.target_photo)
    target_class = labelled.labels[t_idx]
    subset, local = ten_class_subset(labelled)
    names = imagenet_classes()
    table = class_embeddings(encoder, [names[c] for c in subset])
    sources = labelled.subset([i for i in range(len(labelled)) if i != t_idx])
    labels = subset_labels(sources, local)
    settings = [s for s in args.settings.split(",") if s]
    plugin = None
    if args.plugin:
        from featsmooth.plugin import load_plugin

        plugin = load_plugin(args.plugin)
    setup = time.perf_counter() - start
    if args.summarize_only:
        summary, complete = summarize_records(args.run_dir)
    else:
        summary, complete = run_attacks(args, encoder, sources, labelled, t_idx, table, local,
                                        target_class, labels, settings, plugin), True  # fmt: skip
    total = time.perf_counter() - start
    out = {
        "bench": "paper_protocol",
        "model": "default (EfficientNet-Lite0 x MiniLM ConSE zero-shot)",
        "complete": complete,
        "task": {
            "classes": [names[c] for c in subset],
            "target_photo": args.target_photo,
            "target_class": names[target_class],
            "sources": sources.names,
            "image_size": args.image_size,
            "linf_ball_max_l2": float(
                parse_eps(args.eps, "linf") * math.sqrt(3 * args.image_size * args.image_size)
            ),
        },
        "settings": {**recorded_arguments(args), "settings_run": settings},
        "run_settings": _run_settings(args.run_dir),
        "summary": summary,
        "consistency": {
            "checked": sum(r["consistency_checked"] for r in summary),
            "violations": int(sum(r.get("consistency_violations") or 0 for r in summary)),
        },
        "timing_s": {"setup": round(setup, 1), "total": round(total, 1)},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "environment": environment_info(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    cols = ("setting", "attack_id", "images", "unattacked_score", "robust_score", "asr",
            "success_rate", "adv_cosine", "l2_distance")  # fmt: skip
    print("\t".join(cols))
    for row in summary:
        print("\t".join(_fmt(row.get(c)) for c in cols))
    print(f"total {total:.0f}s; written to {args.out}")


def _run_settings(run_dir: str | None) -> dict | None:
    """The settings the harness saved with the run (what actually ran), if any."""
    path = Path(run_dir) / "settings.json" if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def summarize_records(run_dir: str | None) -> tuple[list[dict], bool]:
    """The summary of whatever a (possibly stopped) run wrote to ``run_dir``: only the
    (setting, attack) pairs with records appear; ``complete`` is False."""
    if run_dir is None:
        raise SystemExit("--summarize-only needs --run-dir")
    from featsmooth.evaluate import summarize
    from featsmooth.records import read_records

    return summarize(read_records(run_dir)), False


def run_attacks(
    args, encoder, sources, labelled, t_idx, table, local, target_class, labels, settings, plugin
) -> list[dict]:
    result = evaluate_paper_protocol(
        encoder,
        sources.images,
        labelled.images[t_idx : t_idx + 1],
        table,
        local[target_class],
        attacks=[a for a in args.attacks.split(",") if a],
        steps=args.steps,
        eps=args.eps,
        step_size=args.step_size,
        labels=labels,
        settings=settings,
        plugin=plugin,
        sigma=args.sigma,
        eot_draws=args.eot,
        judge_draws=args.judge,
        n0=args.n0,
        n=args.n,
        radii=(0.0, 0.25, 0.5, 1.0),
        consistency_draws=args.check_draws,
        names=sources.names,
        run_dir=args.run_dir,
        seed=args.seed,
        progress=True,
    )
    return result.summary


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
