"""Forward cost per image of each model family, relative to CLIP, on tiny random models.

Every family is built from a tiny random config of the same width and depth (hidden 32,
2 layers, patch 8 or 4), so that what differs is what the family does per image: the
number of views (any-res tiles), of tokens (dynamic resolution) and the extra modules.
Each encoder runs its pixel-unit forward (resize, normalisation, patchify / tiling and the
vision model, as featsmooth smooths it) on the same batch of 64x64 images; the median
seconds per image is divided by that of the tiny CLIP on the same machine. Only the ratios
are meaningful: absolute times of tiny models say nothing about the real checkpoints.

    python bench/bench_families.py                 # -> bench/results/families.json
    python bench/bench_families.py --repeats 20 --out families_local.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf

from featsmooth.versions import environment_info

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def clip() -> torch.nn.Module:
    from featsmooth.encoders.hf import CLIPEncoder

    cfg = tf.CLIPVisionConfig(**VISION, projection_dim=32)
    return CLIPEncoder(tf.CLIPVisionModelWithProjection(cfg))


def siglip() -> torch.nn.Module:
    from featsmooth.encoders.hf import SiglipEncoder

    return SiglipEncoder(tf.SiglipVisionModel(tf.SiglipVisionConfig(**VISION)))


def llava() -> torch.nn.Module:
    from featsmooth.encoders.hf import LlavaVisionTower

    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**VISION),
        text_config=tf.LlamaConfig(**TEXT),
        image_token_id=4,
        vision_feature_layer=-2,
    )
    return LlavaVisionTower(tf.LlavaForConditionalGeneration(cfg))


def llava_next() -> torch.nn.Module:
    from featsmooth.encoders.llava_next import LlavaAnyResTower

    cfg = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**VISION),
        text_config=tf.LlamaConfig(**TEXT),
        image_token_id=4,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
    )
    return LlavaAnyResTower(tf.LlavaNextForConditionalGeneration(cfg))


def llava_onevision() -> torch.nn.Module:
    from featsmooth.encoders.llava_next import LlavaAnyResTower

    cfg = tf.LlavaOnevisionConfig(
        vision_config=tf.SiglipVisionConfig(**VISION),
        text_config=tf.Qwen2Config(**TEXT),
        image_token_id=4,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    return LlavaAnyResTower(tf.LlavaOnevisionForConditionalGeneration(cfg))


def _qwen_text() -> dict:
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}
    return {**TEXT, "rope_parameters": rope}


def qwen2_vl() -> torch.nn.Module:
    from featsmooth.encoders.qwen2_vl import QwenVLEncoder

    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=8)
    cfg = tf.Qwen2VLConfig(text_config=_qwen_text(), vision_config=vision, image_token_id=4)
    return QwenVLEncoder(tf.Qwen2VLForConditionalGeneration(cfg), image_size=(32, 32))


def qwen2_5_vl() -> torch.nn.Module:
    from featsmooth.encoders.qwen2_vl import QwenVLEncoder

    vision = dict(
        depth=2,
        hidden_size=32,
        out_hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=8,
        window_size=32,
        fullatt_block_indexes=[1],
    )
    cfg = tf.Qwen2_5_VLConfig(text_config=_qwen_text(), vision_config=vision, image_token_id=4)
    return QwenVLEncoder(tf.Qwen2_5_VLForConditionalGeneration(cfg), image_size=(32, 32))


def open_clip_vit() -> torch.nn.Module:
    import open_clip

    from featsmooth.encoders.openclip import wrap_open_clip

    cfg = dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
    )
    model = open_clip.CLIP(**cfg)
    model.visual.preprocess_cfg = {
        "size": 32,
        "mean": (0.48145466, 0.4578275, 0.40821073),
        "std": (0.26862954, 0.26130258, 0.27577711),
    }
    return wrap_open_clip(model, "ViT-B-32")


FAMILIES: dict[str, tuple[Callable[[], torch.nn.Module], str]] = {
    "clip": (clip, "projected image embedding (B, D)"),
    "siglip": (siglip, "pooled image embedding (B, D)"),
    "llava": (llava, "vision-tower tokens (B, T, D)"),
    "llava_next": (llava_next, "vision tokens of base view + any-res tiles"),
    "llava_onevision": (llava_onevision, "SigLIP tokens of base view + any-res tiles"),
    "qwen2_vl": (qwen2_vl, "merged vision tokens (vision encoder incl. merger)"),
    "qwen2_5_vl": (qwen2_5_vl, "merged vision tokens (window-attention encoder)"),
    "open_clip": (open_clip_vit, "encode_image embedding (B, D)"),
}


def seconds_per_image(encoder: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    encoder.eval().requires_grad_(False)
    with torch.no_grad():
        encoder(images)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / images.shape[0]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/families.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 64, 64)
    rows: dict[str, dict] = {}
    for name, (build, feature) in FAMILIES.items():
        try:
            encoder = build()
        except ImportError as exc:
            rows[name] = {"feature": feature, "skipped": f"not installed: {exc.name}"}
            continue
        out = encoder(images[:1])
        sec = seconds_per_image(encoder, images, args.repeats)
        rows[name] = {"feature": feature, "shape": list(out.shape[1:]), "seconds": sec}
    ref = rows["clip"]["seconds"]
    for row in rows.values():
        if "seconds" in row:
            row["relative_to_clip"] = round(row.pop("seconds") / ref, 2)
    result = {
        "what": "forward cost per image relative to a tiny CLIP (same width/depth), tiny "
        "random configs, 64x64 inputs; ratios only",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads,
        "batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "families": rows,
        "settings": {"repeats": args.repeats, "batch": args.batch, "threads": args.threads},
        "environment": environment_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(
            f"{name:16s} {row.get('relative_to_clip', row.get('skipped'))!s:>8}  {row['feature']}"
        )


if __name__ == "__main__":
    main()
