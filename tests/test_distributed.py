"""Dataset certification: single process vs Ray workers give identical records; resume."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from featsmooth import SmoothedEncoder
from featsmooth.distributed import certify_dataset, certify_dataset_ray
from featsmooth.encoders.synthetic import load_synthetic_trig
from featsmooth.errors import InputError, ModelUnavailableError, RecordError
from featsmooth.records import read_records

SIGMA = 0.25
MODEL = "synthetic-trig"  # registry name: 3x32x32 inputs, exact S = 0.95 at sigma 0.25


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand((7, 3, 32, 32), generator=torch.Generator().manual_seed(0))


def _strip(records):
    """Records without the wall-clock field (the only one allowed to differ)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _keep_lines(run_dir, keys) -> None:
    """Simulate an interrupted run: keep only the records of ``keys`` (order kept)."""
    path = run_dir / "records.jsonl"
    lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["key"] in keys]
    path.write_text("\n".join(lines) + "\n")


def test_local_matches_one_certify_call(images):
    records = certify_dataset(MODEL, images, SIGMA, n0=16, n=300, seed=5, images_per_call=3)
    certs = SmoothedEncoder(load_synthetic_trig(), SIGMA).certify(images, n0=16, n=300, seed=5)
    assert [r["key"] for r in records] == list(range(len(images)))
    for record, cert in zip(records, certs):
        assert record["seed"] == cert.seed
        assert record["score_lower"] == cert.score_lower
        assert record["clean_score_lower"] == cert.clean_score_lower
        expected = [None if c != c else c for c in cert.fcsb(record["radii"]).tolist()]
        assert record["fcsb"] == expected  # NaN (no certificate) is stored as null
    # the synthetic encoder's true S is 0.95: every bound is below it, and not far below
    assert all(0.85 < r["score_lower"] < 0.95 for r in records)


def test_dataset_input_and_keys_give_the_same_records(images):
    keys = [f"img{i}" for i in range(len(images))]
    opts = dict(n0=16, n=100, seed=1, images_per_call=2)
    tensor_run = certify_dataset(MODEL, images, SIGMA, keys=keys, **opts)
    dataset = [(img, 0) for img in images]  # (image, label) items, like a torch Dataset
    data_run = certify_dataset(MODEL, dataset, SIGMA, keys=keys, **opts)
    assert [r["key"] for r in data_run] == keys
    assert _strip(tensor_run) == _strip(data_run)
    # an image's noise follows its key (featsmooth.seeds), not its position in the data
    backwards = certify_dataset(MODEL, images.flip(0), SIGMA, keys=keys[::-1], **opts)
    for a, b in zip(_strip(tensor_run), _strip(backwards)[::-1]):
        assert {**a, "index": 0} == {**b, "index": 0}
    by_index = certify_dataset(MODEL, images, SIGMA, **opts)  # keys 0, 1, ...: other draws
    assert all(a["seed"] != b["seed"] for a, b in zip(by_index, tensor_run))
    assert all(a["score_lower"] != b["score_lower"] for a, b in zip(by_index, tensor_run))


def test_resume_recomputes_only_missing_keys(images, tmp_path):
    opts = dict(n0=16, n=2000, seed=2, images_per_call=3, tolerance=0.05)
    full = certify_dataset(MODEL, images, SIGMA, run_dir=tmp_path / "full", **opts)
    assert any(r["stop_reason"] == "tolerance" for r in full)  # sequential mode exercised
    run = tmp_path / "cut"
    certify_dataset(MODEL, images, SIGMA, run_dir=run, **opts)
    _keep_lines(run, {0, 4})  # chunks [0,1,2] and [3,4,5] are each half done
    kept = (run / "records.jsonl").read_text()
    resumed = certify_dataset(MODEL, images, SIGMA, run_dir=run, **opts)
    assert _strip(resumed) == _strip(full)
    text = (run / "records.jsonl").read_text()
    assert text.startswith(kept)  # earlier records untouched, nothing rewritten
    assert sorted(r["key"] for r in read_records(run)) == list(range(len(images)))
    with pytest.raises(RecordError, match="sigma"):
        certify_dataset(MODEL, images, 0.5, run_dir=run, **opts)


def test_bad_inputs_raise_input_errors(images):
    with pytest.raises(InputError, match="unique"):
        certify_dataset(MODEL, images[:2], SIGMA, n=10, keys=["a", "a"])
    with pytest.raises(InputError, match="shape"):
        certify_dataset(MODEL, images[0], SIGMA, n=10)
    with pytest.raises(InputError, match="images_per_call"):
        certify_dataset(MODEL, images, SIGMA, n=10, images_per_call=0)


def test_missing_ray_names_the_package(images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ModelUnavailableError, match=r"pip install 'ray>=2\.9'"):
        certify_dataset_ray(MODEL, images, SIGMA, n=10)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_two_workers_match_single_process(ray_cluster, images, tmp_path):
    fixed = dict(n0=16, n=400, seed=7, images_per_call=2)
    local = certify_dataset(MODEL, images, SIGMA, run_dir=tmp_path / "local", **fixed)
    distributed = certify_dataset_ray(
        MODEL, images, SIGMA, run_dir=tmp_path / "ray", num_workers=2, **fixed
    )
    assert _strip(distributed) == _strip(local)
    on_disk = sorted(read_records(tmp_path / "ray"), key=lambda r: r["index"])
    assert _strip(on_disk) == _strip(local)

    # sequential stopping, and a run begun in one process resumed on the cluster
    seq = dict(n0=16, n=2000, seed=8, images_per_call=2, tolerance=0.05)
    local_seq = certify_dataset(MODEL, images, SIGMA, run_dir=tmp_path / "seq", **seq)
    _keep_lines(tmp_path / "seq", {1, 2, 6})
    resumed = certify_dataset_ray(
        MODEL, images, SIGMA, run_dir=tmp_path / "seq", num_workers=2, **seq
    )
    assert _strip(resumed) == _strip(local_seq)
    assert len(read_records(tmp_path / "seq")) == len(images)


def test_ray_refuses_more_workers_than_cpus(ray_cluster, images):
    with pytest.raises(InputError, match="exceed"):
        certify_dataset_ray(MODEL, images, SIGMA, n=10, num_workers=3)
