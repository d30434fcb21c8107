"""Photo corpus: .deb extraction, licences, the art rule, the split and seeded crops.

No network: a tiny fake ``mate-backgrounds`` .deb is built with ``dpkg-deb --build`` in the
test (skipped where dpkg-deb is absent); the real packages are used only if already in the
user's cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from featsmooth.data import corpus as C
from featsmooth.errors import ModelUnavailableError

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2020, Someone
License: GPL-2+

Files: nature/Photo0*.jpg
Copyright: 2021, A Photographer
License: CC-BY-4.0

Files: nature/Photo05.jpg
       nature/Flat.jpg
Copyright: 2022, Another
License: CC0-1.0
"""

NAMES = [f"Photo{i:02d}" for i in range(12)]


def _noise_photo(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3)).astype(np.uint8)
    big = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(big).astype(np.int16) + rng.integers(-20, 21, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _flat_art(size=(160, 120)) -> Image.Image:
    x = np.linspace(40, 160, size[0])[None, :, None]
    arr = np.broadcast_to(x, (size[1], size[0], 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


@pytest.fixture(scope="module")
def fake_deb(tmp_path_factory):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not available")
    root = tmp_path_factory.mktemp("deb") / "pkg"
    nature = root / "usr/share/backgrounds/mate/nature"
    nature.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        _noise_photo(i).save(nature / f"{name}.jpg", quality=95)
    _flat_art().save(nature / "Flat.jpg", quality=95)
    doc = root / "usr/share/doc/mate-backgrounds"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: mate-backgrounds\nVersion: 0.1\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: fake\n"
    )
    deb = root.parent / "mate-backgrounds_0.1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


@pytest.fixture()
def corpus(fake_deb, tmp_path):
    C.extract_deb(fake_deb, tmp_path / "mate-backgrounds")
    (tmp_path / "mate-backgrounds" / ".extracted").write_text("ok\n")
    return C.load_corpus(tmp_path, packages=["mate-backgrounds"], extract=False, pypi=False)


def test_flatness_separates_photos_from_flat_art():
    assert C.flatness(_flat_art()) > 0.95
    assert C.flatness(_noise_photo(0)) < 0.2
    assert C.flatness(np.asarray(_noise_photo(1))) < 0.2  # arrays work too


def test_copyright_parsing_last_matching_stanza_wins():
    stanzas = C.parse_copyright(COPYRIGHT)
    assert [lic for _, lic in stanzas] == ["GPL-2+", "CC-BY-4.0", "CC0-1.0"]
    base = "usr/share/backgrounds/mate/nature/"
    assert C.licence_for(stanzas, base + "Photo03.jpg") == "CC-BY-4.0"
    assert C.licence_for(stanzas, base + "Photo05.jpg") == "CC0-1.0"
    assert C.licence_for(stanzas, base + "Photo11.jpg") == "GPL-2+"  # only Files: * matches
    assert C.licence_for(stanzas[1:], "usr/share/x/Other.jpg") is None


def test_fake_deb_corpus_manifest_licences_and_art_rule(corpus, tmp_path):
    ids = [p.id for p in corpus.photos]
    assert len(ids) == len(NAMES)
    assert all("Flat.jpg" not in i for i in ids)
    flat_id = "mate-backgrounds/usr/share/backgrounds/mate/nature/Flat.jpg"
    assert corpus.dropped[flat_id].startswith("art (flatness")
    lic = {p.id.rsplit("/", 1)[-1]: p.licence for p in corpus.photos}
    assert lic["Photo05.jpg"] == "CC0-1.0" and lic["Photo01.jpg"] == "CC-BY-4.0"
    assert lic["Photo10.jpg"] == "GPL-2+"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {p["id"] for p in manifest["photos"]} == set(ids)
    assert manifest["rule"]["flat_limit"] == C.FLAT_LIMIT
    assert all(p["package"] == "mate-backgrounds" for p in manifest["photos"])


def test_listed_art_is_dropped(corpus, fake_deb, tmp_path, monkeypatch):
    listed = "mate-backgrounds/usr/share/backgrounds/mate/nature/Photo02.jpg"
    monkeypatch.setitem(C.ART, listed, "test entry")
    again = C.load_corpus(tmp_path, packages=["mate-backgrounds"], extract=False, pypi=False)
    assert listed not in [p.id for p in again.photos]
    assert again.dropped[listed] == "art (listed): test entry"


def test_split_is_deterministic_by_photo_and_never_trains_on_labelled_photos(corpus):
    for p in corpus.photos:
        assert p.split == C.split_of(p.id)
    splits = {p.split for p in corpus.photos}
    assert splits == {"train", "held_out"}, "the fake names should land in both splits"
    train = {p.id for p in corpus.split("train")}
    held = {p.id for p in corpus.split("held_out")}
    assert not train & held
    for name in C.LABELLED_DEMO:
        assert C.split_of(f"pypi/skimage/{name}") == "held_out"


def test_crops_are_seeded_and_come_from_one_split(corpus):
    a, src = corpus.crops("train", 6, 32, seed=3, return_sources=True)
    b = corpus.crops("train", 6, 32, seed=3)
    c = corpus.crops("train", 6, 32, seed=4)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    train = {p.id for p in corpus.split("train")}
    assert set(src) <= train
    _, held_src = corpus.crops("held_out", 4, 32, seed=0, return_sources=True)
    assert not set(held_src) & train


def test_missing_apt_get_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="apt-get"):
        C.load_corpus(tmp_path, packages=["darknet"], pypi=False, strict=True)
    lenient = C.load_corpus(tmp_path, packages=["darknet"], pypi=False)
    assert "darknet" in lenient.missing and len(lenient) == 0


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEATSMOOTH_CACHE_DIR", str(tmp_path / "fc"))
    assert C.default_cache_dir() == tmp_path / "fc" / "corpus"
    monkeypatch.delenv("FEATSMOOTH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.default_cache_dir() == tmp_path / "xdg" / "featsmooth" / "corpus"


def test_real_corpus_when_cached():
    root = C.default_cache_dir()
    if not all((root / p / ".extracted").exists() for p in C.DEBIAN_SOURCES):
        pytest.skip("the Debian photo packages are not in the cache")
    corpus = C.load_corpus(root, extract=False)
    ids = [p.id for p in corpus.photos]
    assert len(corpus.split("train")) >= 15 and len(corpus.split("held_out")) >= 5
    assert not any(i.endswith("scream.jpg") for i in ids)
    assert all(p.licence for p in corpus.photos)
    assert not any(i.rsplit("/", 1)[-1].split(".")[0] in C.LABELLED_DEMO for i in ids)
