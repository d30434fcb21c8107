"""Class names, shipped photos and the dataset loaders."""

from __future__ import annotations

import json
import socket
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from featsmooth.data import (
    PHOTOS,
    CaptionData,
    ClassificationData,
    image_to_tensor,
    imagenet_classes,
    load_caption_json,
    load_hf_dataset,
    load_image_folder,
    load_photos,
)
from featsmooth.errors import InputError, ModelUnavailableError

# ---- ImageNet class names -------------------------------------------------------------

KNOWN = {
    0: "tench",
    1: "goldfish",
    2: "great white shark",
    207: "golden retriever",
    281: "tabby cat",
    282: "tiger cat",
    285: "Egyptian cat",
    340: "zebra",
    388: "giant panda",
    409: "analog clock",
    417: "balloon",
    504: "coffee mug",
    779: "school bus",
    812: "space shuttle",
    817: "sports car",
    948: "Granny Smith apple",
    954: "banana",
    967: "espresso",
    985: "daisy",
    999: "toilet paper",
}


def test_imagenet_classes_known_indices():
    names = imagenet_classes()
    assert len(names) == 1000
    assert len(set(names)) == 1000  # distinct, so a name identifies its index
    for index, name in KNOWN.items():
        assert names[index].lower() == name.lower(), index
    assert all(n == n.strip() and n for n in names)


def test_imagenet_classes_returns_a_copy():
    names = imagenet_classes()
    names[0] = "changed"
    assert imagenet_classes()[0] == "tench"


# ---- photos ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_photos():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    return load_photos(size=64)


def test_photos_shapes_range_and_metadata(all_photos):
    ph = all_photos
    n = len(PHOTOS)
    assert ph.images.shape == (n, 3, 64, 64) and ph.images.dtype == torch.float32
    assert ph.images.min() >= 0.0 and ph.images.max() <= 1.0
    assert ph.images.flatten(1).std(dim=1).min() > 0.05  # real content, not blank
    assert ph.names == list(PHOTOS)
    names = imagenet_classes()
    for label, label_name, acc in zip(ph.labels, ph.label_names, ph.acceptable):
        if label is None:
            assert label_name is None and not acc
        else:
            assert label_name == names[label] and label in acc
    assert len(ph.labelled()) == sum(label is not None for label in ph.labels) >= 6
    assert all(isinstance(c, str) and c for c in ph.captions)
    # photos are distinct images
    flat = ph.images.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(n) * 1e9).min() > 1.0


def test_photos_load_without_network(monkeypatch):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    ph = load_photos(size=32)
    assert ph.images.shape == (len(PHOTOS), 3, 32, 32)


def test_photo_selection_and_errors():
    pytest.importorskip("skimage")
    ph = load_photos(["coffee", "chelsea"], size=48)
    assert ph.names == ["coffee", "chelsea"] and ph.images.shape == (2, 3, 48, 48)
    assert ph.labels == [967, 285] and ph.label_names == ["espresso", "Egyptian cat"]
    assert ph.correct([967, 281]) == [True, True]
    assert ph.correct([968, 1]) == [False, False]
    assert load_photos("coffee").images.shape == (1, 3, 224, 224)
    with pytest.raises(InputError, match="unknown photo"):
        load_photos(["coffee", "eagle"])
    with pytest.raises(InputError, match="size"):
        load_photos(["coffee"], size=0)
    with pytest.raises(InputError):
        ph.correct([1])


def test_image_to_tensor_crops_the_centre_and_converts():
    arr = np.zeros((10, 30), dtype=np.uint8)
    arr[:, 10:20] = 255  # only the centre square is white
    t = image_to_tensor(arr, size=5)
    assert t.shape == (3, 5, 5) and torch.allclose(t, torch.ones_like(t))
    rgba = np.full((8, 8, 4), 128, dtype=np.uint8)
    torch.testing.assert_close(image_to_tensor(rgba, None), torch.full((3, 8, 8), 128 / 255))
    assert image_to_tensor(np.ones((4, 4), dtype=bool), None).min() == 1.0
    floats = np.full((4, 6, 3), 0.5)
    assert abs(image_to_tensor(floats, 4).mean().item() - 128 / 255) < 1e-6
    pil = Image.fromarray(np.full((6, 4, 3), 7, dtype=np.uint8))
    assert image_to_tensor(pil, 3).shape == (3, 3, 3)
    with pytest.raises(InputError):
        image_to_tensor(np.zeros((2, 2, 2, 2)))


# ---- image folders --------------------------------------------------------------------


def _save(path, value, size=(12, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    _save(tmp_path / "golden_retriever" / "a.png", 10)
    _save(tmp_path / "golden_retriever" / "b.jpg", 20)
    _save(tmp_path / "cat" / "x.png", 200)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder(folder):
    ds = load_image_folder(folder, size=8)
    assert ds.folders == ["cat", "golden_retriever"]
    assert ds.class_names == ["cat", "golden retriever"]
    assert ds.labels == [0, 1, 1] and len(ds) == 3
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and label == 0
    assert abs(image.mean().item() - 200 / 255) < 1e-6
    batches = list(ds.batches(batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 1]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.tensor([0, 1, 1]))
    data = ds.load()
    assert isinstance(data, ClassificationData) and data.images.shape == (3, 3, 8, 8)
    assert len(ds.load(limit=2)) == 2
    assert len(load_image_folder(folder, 8, limit_per_class=1)) == 2
    named = load_image_folder(folder, 8, class_names=["Cat", "Dog"])
    assert named.class_names == ["Cat", "Dog"]
    with pytest.raises(InputError, match="class names"):
        load_image_folder(folder, 8, class_names=["one"])


def test_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(InputError, match="no images and no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_image_folder(tmp_path)


def test_flat_image_folder_is_one_class(tmp_path):
    root = tmp_path / "unlabelled_images"
    _save(root / "1.png", 5)
    _save(root / "2.png", 6)
    ds = load_image_folder(root, 4)
    assert len(ds) == 2 and ds.labels == [0, 0] and ds.class_names == ["unlabelled images"]
    images, labels = next(ds.batches(8))
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [0, 0]


def test_image_folder_unreadable_image(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")
    ds = load_image_folder(tmp_path, 8)
    with pytest.raises(InputError, match="cannot read"):
        ds[0]


# ---- caption files --------------------------------------------------------------------


def test_coco_captions(tmp_path):
    _save(tmp_path / "img" / "1.png", 50)
    _save(tmp_path / "img" / "2.png", 150)
    coco = {
        "images": [
            {"id": 7, "file_name": "1.png"},
            {"id": 9, "file_name": "2.png"},
            {"id": 11, "file_name": "3.png"},  # no caption: skipped
        ],
        "annotations": [
            {"image_id": 9, "caption": "a grey square "},
            {"image_id": 7, "caption": "dark"},
            {"image_id": 9, "caption": "light grey"},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(coco))
    ds = load_caption_json(path, tmp_path / "img", size=4)
    assert ds.names == ["1.png", "2.png"]
    assert ds.captions == [["dark"], ["a grey square", "light grey"]]
    data = ds.load()
    assert isinstance(data, CaptionData) and data.images.shape == (2, 3, 4, 4)
    assert abs(data.images[1].mean().item() - 150 / 255) < 1e-6
    assert len(load_caption_json(path, tmp_path / "img", 4, limit=1)) == 1
    images, caps = next(ds.batches(batch_size=5))
    assert images.shape[0] == 2 and caps == ds.captions


def test_karpathy_captions(tmp_path):
    _save(tmp_path / "val2014" / "a.jpg", 30)
    _save(tmp_path / "val2014" / "b.jpg", 90)
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": "a.jpg", "split": "test",
             "sentences": [{"raw": "first"}, {"raw": "second"}]},
            {"filepath": "val2014", "filename": "b.jpg", "split": "train",
             "sentences": [{"raw": "third"}]},
        ]
    }  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(karpathy))
    all_ = load_caption_json(path, tmp_path, 8)
    assert all_.captions == [["first", "second"], ["third"]]
    test = load_caption_json(path, tmp_path, 8, split="test")
    assert test.captions == [["first", "second"]] and len(test) == 1
    with pytest.raises(InputError, match="no captioned images"):
        load_caption_json(path, tmp_path, 8, split="val")


def test_caption_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_caption_json(tmp_path / "none.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_caption_json(bad, tmp_path)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="'images' list"):
        load_caption_json(bad, tmp_path)
    bad.write_text(json.dumps({"images": [{"filename": "gone.png", "sentences": ["x"]}]}))
    with pytest.raises(InputError, match="missing"):
        load_caption_json(bad, tmp_path)


# ---- Hugging Face datasets ------------------------------------------------------------


class _FakeDataset:
    def __init__(self, rows, features):
        self.rows, self.features = rows, features
        self.column_names = list(rows[0])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _fake_datasets(rows, features=None):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return _FakeDataset(rows, features or {})

    return types.SimpleNamespace(load_dataset=load_dataset), calls


def test_hf_dataset_labels(monkeypatch):
    pil = Image.fromarray(np.full((10, 14, 3), 60, dtype=np.uint8))
    rows = [
        {"img": pil, "y": 1},
        {"img": np.full((5, 5, 3), 250, np.uint8), "y": 0},
        {"img": pil, "y": 1},
    ]
    feature = types.SimpleNamespace(names=["ant", "bee"])
    fake, calls = _fake_datasets(rows, {"y": feature})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = load_hf_dataset("local/path", "validation", image_column="img", label_column="y",
                           size=6, limit=2)  # fmt: skip
    assert calls == [("local/path", "validation")]
    assert isinstance(data, ClassificationData) and data.class_names == ["ant", "bee"]
    assert data.images.shape == (2, 3, 6, 6) and data.labels.tolist() == [1, 0]
    assert abs(data.images[1].mean().item() - 250 / 255) < 1e-6


def test_hf_dataset_captions_and_errors(monkeypatch):
    pil = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    rows = [{"image": pil, "text": ["a", "b"]}, {"image": pil, "text": "c"}]
    fake, _ = _fake_datasets(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = load_hf_dataset("x", caption_column="text", size=4)
    assert isinstance(data, CaptionData) and data.captions == [["a", "b"], ["c"]]
    with pytest.raises(InputError, match="no column"):
        load_hf_dataset("x", caption_column="caption")
    with pytest.raises(InputError, match="exactly one"):
        load_hf_dataset("x", label_column="y", caption_column="text")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ModelUnavailableError, match="pip install datasets"):
        load_hf_dataset("x", label_column="label")


# ---- unlabelled training pool and random crops ------------------------------------------


def test_random_crops_shape_range_and_seed():
    from featsmooth.data.crops import random_crops

    big = [torch.rand(3, 40, 60), torch.rand(3, 50, 50)]
    a = random_crops(big, 12, 16, seed=3)
    assert a.shape == (12, 3, 16, 16) and a.dtype == torch.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, random_crops(big, 12, 16, seed=3))
    assert not torch.equal(a, random_crops(big, 12, 16, seed=4))
    # a full-size crop without flips of a constant image is that constant
    flat = random_crops([torch.full((3, 20, 20), 0.3)], 2, 8, scale=(1.0, 1.0), flip=False)
    assert torch.allclose(flat, torch.full_like(flat, 0.3), atol=1e-6)
    for bad in ({"count": 0, "size": 8}, {"count": 2, "size": 8, "scale": (0.0, 1.0)}):
        with pytest.raises(InputError):
            random_crops(big, **bad)
    with pytest.raises(InputError, match="no images"):
        random_crops([], 2, 8)


def test_training_pool_is_offline_and_excludes_labelled_views():
    pytest.importorskip("skimage")
    from featsmooth.data.crops import EXTRA_IMAGES, load_training_pool

    pool = load_training_pool(["flower"], extras=["clock", "brick"], max_side=128)
    assert [n for n, _ in pool] == ["flower", "clock", "brick"]
    for _, x in pool:
        assert x.shape[0] == 3 and max(x.shape[1:]) <= 128
        assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert not set(EXTRA_IMAGES) & set(PHOTOS)
    assert "stereo_motorcycle" not in EXTRA_IMAGES
    with pytest.raises(InputError, match="unknown image"):
        load_training_pool(["nope"])
    with pytest.raises(InputError, match="empty"):
        load_training_pool([], extras=[])


# ---- image files: 16-bit, decompression bombs, linked folders ---------------------------


def test_sixteen_bit_grey_png_is_scaled_not_saturated(tmp_path):
    from featsmooth.data.loaders import open_image

    values = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(values).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    x = open_image(tmp_path / "g.png", None)
    assert x.shape == (3, 32, 32)
    # convert("RGB") clipped every value above 255 to white: 99% of the pixels were 1.0
    assert float((x == 1.0).float().mean()) < 0.05
    expected = torch.from_numpy(np.round(values / 65535 * 255) / 255).float()
    assert torch.allclose(x[0], expected, atol=1e-6) and torch.equal(x[0], x[2])


def test_sixteen_bit_tiff_grey_and_colour(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from featsmooth.data.loaders import open_image

    grey = np.full((16, 16), 32768, np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    assert float(open_image(tmp_path / "g.tif", None).mean()) == pytest.approx(128 / 255, abs=1e-6)
    colour = np.zeros((16, 16, 3), np.uint16)
    colour[..., 0] = 65535
    colour[..., 1] = 16384
    tifffile.imwrite(tmp_path / "c.tif", colour, photometric="rgb")
    x = open_image(tmp_path / "c.tif", None)
    assert float(x[0].mean()) == pytest.approx(1.0) and float(x[1].mean()) == pytest.approx(
        64 / 255, abs=1e-6
    )


def test_float_images_are_refused_and_bombs_are_one_error(tmp_path, monkeypatch):
    from featsmooth.data.loaders import open_image

    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="pixel format 'F'"):
        open_image(tmp_path / "f.tif", 8)
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    with pytest.raises(InputError, match="too large to read safely"):
        open_image(tmp_path / "big.png", 8)


def test_linked_sub_folder_is_named_in_a_warning(tmp_path, make_pngs):
    from featsmooth.data.loaders import list_image_files

    make_pngs(tmp_path / "tree/a", 1, seed=0)
    make_pngs(tmp_path / "elsewhere", 2, seed=1)
    (tmp_path / "tree/link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.warns(UserWarning, match="linked folder .*link"):
        files = list_image_files(tmp_path / "tree")
    assert [f.relative_to(tmp_path / "tree").as_posix() for f in files] == ["a/img0.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list_image_files(tmp_path / "elsewhere")) == 2
