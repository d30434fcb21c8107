"""open_clip names through load_encoder, on randomly initialised open_clip models.

No weights are downloaded: the architecture is built with ``pretrained=None`` (or
``load_encoder`` with the download step replaced by a random init), and the checkpoint's
preprocessing comes from open_clip's own pretrained config. The tests that need the real
open_clip skip where it is not installed; the loading path is also run on a stand-in
package with open_clip's API (bottom of the file), so it is tested everywhere.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from featsmooth.encoders.hf import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, OpenClipEncoder
from featsmooth.encoders.openclip import split_name
from featsmooth.encoders.registry import load_encoder
from featsmooth.errors import InputError, ModelUnavailableError

SMALL = "ViT-S-32"  # ~22M + text tower, random weights


def test_names_are_parsed():
    assert split_name("ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert split_name("hf-hub:timm/ViT-B-16-SigLIP") == ("hf-hub:timm/ViT-B-16-SigLIP", None)
    assert split_name("ViT-B-32") == ("ViT-B-32", None)
    with pytest.raises(InputError):
        split_name("ViT-B-32/")


def test_without_open_clip_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(ModelUnavailableError, match=r"featsmooth\[open_clip\]"):
        load_encoder("hf-hub:timm/ViT-B-16-SigLIP")


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def small(open_clip):
    from featsmooth.encoders.openclip import wrap_open_clip

    torch.manual_seed(0)
    return wrap_open_clip(open_clip.create_model(SMALL, pretrained=None), SMALL)


def test_features_match_open_clip_and_gradients_flow(open_clip, small):
    assert isinstance(small, OpenClipEncoder) and small.image_size == (224, 224)
    images = torch.rand(2, 3, 100, 120, generator=torch.Generator().manual_seed(0))
    feats = small(images)
    x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = small.model.encode_image((x - mean) / std)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    text = small.encode_text(["a photo of a cat", "a dog"])
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    images.requires_grad_(True)
    small(images).pow(2).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_mean_std_per_checkpoint(open_clip):
    from featsmooth.encoders.openclip import pretrained_preprocess

    laion = pretrained_preprocess("ViT-B-32", "laion2b_s34b_b79k")
    assert tuple(laion["mean"]) == pytest.approx(OPENAI_CLIP_MEAN)
    siglip = pretrained_preprocess("ViT-B-16-SigLIP", "webli")
    assert tuple(siglip["mean"]) == (0.5, 0.5, 0.5) and tuple(siglip["std"]) == (0.5, 0.5, 0.5)
    with pytest.raises(ModelUnavailableError, match="laion2b_s34b_b79k"):
        pretrained_preprocess("ViT-B-32", "no-such-tag")


def test_load_encoder_by_name_takes_the_checkpoint_preprocessing(open_clip, monkeypatch):
    """The real path of load_encoder("ARCH/TAG"), with the download replaced by random init
    of a small architecture."""
    from featsmooth.encoders import hub

    create, tokenizer = open_clip.create_model, open_clip.get_tokenizer
    seen = {}

    def no_download(arch, pretrained=None, **kwargs):
        seen.update(arch=arch, pretrained=pretrained)
        return create(SMALL, pretrained=None, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", no_download)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, **kw: tokenizer(SMALL))
    monkeypatch.setattr(hub, "_probes", {})
    monkeypatch.setattr(hub, "_head", lambda url, timeout: None)  # a reachable hub
    enc = load_encoder("ViT-B-16-SigLIP/webli")
    assert seen == {"arch": "ViT-B-16-SigLIP", "pretrained": "webli"}
    assert enc.name == "ViT-B-16-SigLIP/webli"
    assert enc.preprocess.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert enc.preprocess.std.flatten().tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ModelUnavailableError, match="ViT-B-32/laion2b_s34b_b79k"):
        load_encoder("ViT-B-32")  # a bare architecture: name a checkpoint


def test_certify_runs(small):
    from featsmooth import SmoothedEncoder

    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    certs = SmoothedEncoder(small, sigma=0.25, batch_size=4).certify(images, n0=4, n=4)
    assert len(certs) == 1 and certs[0].n_used == 4


def test_no_hub_fails_at_once_with_the_download_command(open_clip, monkeypatch, tmp_path):
    from featsmooth.encoders import hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_probes", {})
    probes = []

    def refuse(url, timeout):
        probes.append(url)
        raise ConnectionError("no route to host")

    def never(*args, **kwargs):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(hub, "_head", refuse)
    monkeypatch.setattr(open_clip, "create_model", never)
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder("ViT-B-32/laion2b_s34b_b79k")
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(err.value)
    assert len(probes) == 1


# ------------------------------------------------------- the same path on a stand-in package
# open_clip imports torchvision, which not every machine has for its torch build; these tests
# put a small stand-in ``open_clip`` package (same API: pretrained configs, create_model,
# preprocess_cfg, get_tokenizer) on sys.path so featsmooth's loading path runs everywhere.

FAKE_OPEN_CLIP = """
import torch

PRETRAINED = {"ViT-T-1": {"laion_x": {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6),
                                      "hf_hub": "org/vit-t-1-laion/"}}}
calls = []


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.text = torch.nn.Embedding(10, 8)

    def encode_image(self, x):
        return self.visual(x).mean(dim=(2, 3))

    def encode_text(self, tokens):
        return self.text(tokens).mean(dim=1)


def get_pretrained_cfg(arch, tag):
    return PRETRAINED.get(arch, {}).get(tag, {})


def list_pretrained_tags_by_model(arch):
    return list(PRETRAINED.get(arch, {}))


def create_model(arch, pretrained=None, load_weights=True, force_preprocess_cfg=None, **kw):
    calls.append({"arch": arch, "pretrained": pretrained})
    torch.manual_seed(0)
    model = Model()
    cfg = {"size": 16, "mean": (0.48, 0.45, 0.4), "std": (0.27, 0.26, 0.28)}
    model.visual.preprocess_cfg = {**cfg, **(force_preprocess_cfg or {})}
    return model


def get_model_preprocess_cfg(model):
    return dict(model.visual.preprocess_cfg)


def get_tokenizer(name):
    return lambda texts: torch.tensor([[len(t) % 10, 1] for t in texts])
"""


@pytest.fixture
def fake_open_clip(tmp_path, monkeypatch):
    package = tmp_path / "site" / "open_clip"
    (package / "model_configs").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_OPEN_CLIP)
    (package / "model_configs" / "ViT-T-1.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    import importlib

    importlib.invalidate_caches()
    module = importlib.import_module("open_clip")
    yield module
    sys.modules.pop("open_clip", None)


@pytest.fixture
def reachable_hub(monkeypatch):
    from featsmooth.encoders import hub

    monkeypatch.setattr(hub, "_probes", {})
    monkeypatch.setattr(hub, "_head", lambda url, timeout: None)


def test_load_by_name_uses_the_checkpoint_mean_std(fake_open_clip, reachable_hub):
    enc = load_encoder("ViT-T-1/laion_x")
    assert isinstance(enc, OpenClipEncoder) and enc.name == "ViT-T-1/laion_x"
    assert fake_open_clip.calls == [{"arch": "ViT-T-1", "pretrained": "laion_x"}]
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = enc.model.encode_image((x - mean) / std)
    torch.testing.assert_close(enc(images), ref, atol=1e-6, rtol=1e-6)
    images.requires_grad_(True)
    enc(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in enc.parameters())
    text = enc.encode_text(["a cat", "a dog"])
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2), atol=1e-6, rtol=0)

    from featsmooth import SmoothedEncoder

    certs = SmoothedEncoder(enc, sigma=0.25).certify(images.detach()[:1], n0=4, n=8)
    assert certs[0].n_used == 8


def test_unknown_tag_and_bare_arch_name_the_checkpoints(fake_open_clip, reachable_hub):
    with pytest.raises(ModelUnavailableError, match="ViT-T-1/laion_x"):
        load_encoder("ViT-T-1/nope")
    with pytest.raises(ModelUnavailableError, match="'ViT-T-1/laion_x'"):
        load_encoder("ViT-T-1")
    assert fake_open_clip.calls == []


def test_no_hub_fails_at_once_before_open_clip_downloads(fake_open_clip, monkeypatch, tmp_path):
    from featsmooth.encoders import hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_probes", {})
    probes = []

    def refuse(url, timeout):
        probes.append(url)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(hub, "_head", refuse)
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder("ViT-T-1/laion_x")
    assert "`hf download org/vit-t-1-laion`" in str(err.value)
    assert len(probes) == 1 and fake_open_clip.calls == []
