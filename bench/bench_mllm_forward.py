"""Forward cost per image of the certified feature of each MLLM family, relative to CLIP ViT-B/32.

Two measures, both ratios (no weights are downloaded):

* ``flops_ratio``: forward FLOPs of the certified feature at the real models' sizes (vision
  configs written out below, models built on the ``meta`` device, FLOPs counted by
  ``torch.utils.flop_counter``), divided by CLIP ViT-B/32's image forward;
* ``tiny_time_ratio``: wall time of the encoder's forward on tiny random configs (the test
  suite's sizes, 32x32 images), divided by a tiny CLIP of the same width, on this machine.

Run: ``.venv/bin/python bench/bench_mllm_forward.py [--out bench/results/mllm_forward.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers as tf
from torch.utils.flop_counter import FlopCounterMode

from featsmooth.encoders.blip2 import Blip2Encoder, InstructBlipEncoder
from featsmooth.encoders.hf import CLIPEncoder
from featsmooth.encoders.idefics3 import Idefics3Encoder
from featsmooth.encoders.openflamingo import Flamingo, OpenFlamingoEncoder
from featsmooth.encoders.paligemma import Gemma3Encoder, PaliGemmaEncoder
from featsmooth.versions import environment_info

MEAN = STD = (0.5, 0.5, 0.5)


def _vit(hidden, layers, heads, inter, image, patch, **extra):
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        image_size=image,
        patch_size=patch,
        **extra,
    )


# vision sides at the real sizes (from the released checkpoints' configs)
CLIP_B32 = _vit(768, 12, 12, 3072, 224, 32)
CLIP_L14 = _vit(1024, 24, 16, 4096, 224, 14)
EVA_G14 = _vit(1408, 39, 16, 6144, 224, 14)  # BLIP-2 / InstructBLIP
SO400M = dict(hidden=1152, layers=27, heads=16, inter=4304, patch=14)
QFORMER = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
)
SMALL_TEXT = dict(
    vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1
)


def _so400m(image):
    s = SO400M
    return _vit(s["hidden"], s["layers"], s["heads"], s["inter"], image, s["patch"])


def _eager(cls, config):
    return cls._from_config(config, attn_implementation="eager")


def _real_models():
    """``name -> (model, encoder class, kwargs, image size)`` at real vision sizes; the
    language model is a one-layer stub (the certified feature never reaches it)."""
    llama = tf.LlamaConfig(**SMALL_TEXT, num_key_value_heads=1)
    gemma = dict(**SMALL_TEXT, num_key_value_heads=1, head_dim=64)
    out = {}
    out["CLIP ViT-B/32"] = (
        _eager(
            tf.CLIPVisionModelWithProjection, tf.CLIPVisionConfig(**CLIP_B32, projection_dim=512)
        ),
        CLIPEncoder,
        {},
    )
    blip = dict(
        vision_config=EVA_G14,
        qformer_config=dict(**QFORMER, encoder_hidden_size=1408),
        text_config=tf.OPTConfig(**{**SMALL_TEXT, "ffn_dim": 64}),
        num_query_tokens=32,
        image_token_index=1,
    )
    out["BLIP-2 (Q-Former)"] = (
        _eager(tf.Blip2ForConditionalGeneration, tf.Blip2Config(**blip)),
        Blip2Encoder,
        {},
    )
    out["InstructBLIP (ViT tokens)"] = (
        _eager(tf.InstructBlipForConditionalGeneration, tf.InstructBlipConfig(**blip)),
        InstructBlipEncoder,
        {},
    )
    for name, image in (("PaliGemma 224 (SigLIP)", 224), ("PaliGemma 448 (SigLIP)", 448)):
        cfg = tf.PaliGemmaConfig(
            vision_config=tf.SiglipVisionConfig(**_so400m(image), vision_use_head=False),
            text_config=tf.GemmaConfig(**gemma),
            projection_dim=64,
            hidden_size=64,
            vocab_size=64,
            image_token_index=1,
        )
        out[name] = (_eager(tf.PaliGemmaForConditionalGeneration, cfg), PaliGemmaEncoder, {})
    cfg = tf.Gemma3Config(
        vision_config=tf.SiglipVisionConfig(**_so400m(896), vision_use_head=False),
        text_config=tf.Gemma3TextConfig(**gemma),
        image_token_index=1,
    )
    out["Gemma 3 (SigLIP 896)"] = (
        _eager(tf.Gemma3ForConditionalGeneration, cfg),
        Gemma3Encoder,
        {},
    )
    cfg = tf.SmolVLMConfig(
        vision_config=_vit(768, 12, 12, 3072, 512, 16),
        text_config=dict(model_type="llama", **SMALL_TEXT),
        scale_factor=4,
        image_token_id=1,
    )
    out["SmolVLM-256M (SigLIP 512)"] = (
        _eager(tf.SmolVLMForConditionalGeneration, cfg),
        Idefics3Encoder,
        {},
    )
    flamingo = Flamingo(
        _eager(tf.CLIPVisionModel, tf.CLIPVisionConfig(**CLIP_L14)),
        _eager(tf.LlamaForCausalLM, llama),
        media_token_id=1,
        eoc_token_id=2,
    )
    out["OpenFlamingo (Perceiver)"] = (flamingo, OpenFlamingoEncoder, {})
    return out


def flops_ratios() -> dict[str, float]:
    import transformers.masking_utils as masking

    # meta tensors have no values: keep the (all-ones) masks instead of testing them
    masking._ignore_bidirectional_mask_sdpa = lambda *args, **kwargs: False
    with torch.device("meta"):
        models = _real_models()
    flops = {}
    for name, (model, cls, kwargs) in models.items():
        enc = cls(model.eval().requires_grad_(False), mean=MEAN, std=STD, **kwargs)
        if isinstance(enc, InstructBlipEncoder):
            enc.qformer_tokenizer = None
        x = torch.zeros(1, 3, *enc.image_size, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            if isinstance(enc, CLIPEncoder):
                enc.model(pixel_values=x)
            else:
                enc.encode_pixels(x, enc.stage)
        flops[name] = counter.get_total_flops()
    base = flops["CLIP ViT-B/32"]
    return {name: f / base for name, f in flops.items()}


def _tiny_vision(**extra):
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        **extra,
    )


def _tiny_models():
    text = dict(
        vocab_size=40,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    qformer = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
    )
    blip = dict(
        vision_config=_tiny_vision(),
        qformer_config=qformer,
        text_config=tf.OPTConfig(**{**text, "ffn_dim": 64}),
        num_query_tokens=4,
        image_token_index=4,
    )
    gemma = dict(**text, num_key_value_heads=1, head_dim=24)
    siglip = tf.SiglipVisionConfig(**_tiny_vision(), vision_use_head=False)
    return {
        "CLIP ViT-B/32": (
            tf.CLIPVisionModelWithProjection(
                tf.CLIPVisionConfig(**_tiny_vision(projection_dim=32))
            ),
            CLIPEncoder,
        ),
        "BLIP-2 (Q-Former)": (
            tf.Blip2ForConditionalGeneration(tf.Blip2Config(**blip)),
            Blip2Encoder,
        ),
        "PaliGemma 224 (SigLIP)": (
            tf.PaliGemmaForConditionalGeneration(
                tf.PaliGemmaConfig(
                    vision_config=siglip,
                    text_config=tf.GemmaConfig(**gemma),
                    projection_dim=48,
                    hidden_size=48,
                    vocab_size=40,
                    image_token_index=4,
                )
            ),
            PaliGemmaEncoder,
        ),
        "SmolVLM-256M (SigLIP 512)": (
            tf.SmolVLMForConditionalGeneration(
                tf.SmolVLMConfig(
                    vision_config=_tiny_vision(),
                    text_config=dict(model_type="llama", **text),
                    image_token_id=4,
                )
            ),
            Idefics3Encoder,
        ),
        "OpenFlamingo (Perceiver)": (
            Flamingo(
                tf.CLIPVisionModel(tf.CLIPVisionConfig(**_tiny_vision())),
                tf.LlamaForCausalLM(tf.LlamaConfig(**text, num_key_value_heads=2)),
                media_token_id=4,
                eoc_token_id=3,
                perceiver=dict(depth=2, heads=2, dim_head=8, num_latents=4),
                cross_attention=dict(heads=2, dim_head=8, ff_mult=2),
            ),
            OpenFlamingoEncoder,
        ),
    }


def tiny_time_ratios(batch: int = 32, repeats: int = 20) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    times = {}
    for name, (model, cls) in _tiny_models().items():
        enc = cls(model.eval(), mean=MEAN, std=STD).eval()
        with torch.no_grad():
            enc(x)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                enc(x)
        times[name] = (time.perf_counter() - start) / (repeats * batch)
    base = times["CLIP ViT-B/32"]
    return {name: t / base for name, t in times.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    flops = flops_ratios()
    tiny = tiny_time_ratios()
    rows = {
        name: {"flops_ratio": round(r, 2), "tiny_time_ratio": None} for name, r in flops.items()
    }
    for name, r in tiny.items():
        rows[name]["tiny_time_ratio"] = round(r, 2)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "rows": rows,
        "settings": {"torch_threads": 1},
        "environment": environment_info(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
