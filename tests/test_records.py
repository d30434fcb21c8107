"""Run records: resume after a kill, settings guard, corruption, JSON safety, samples."""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from featsmooth import bounds
from featsmooth.errors import InputError, RecordError
from featsmooth.recompute import recompute_certificates
from featsmooth.records import (
    RECORDS_FILE,
    SETTINGS_FILE,
    RecordWarning,
    RunWriter,
    as_float,
    load_samples,
    read_records,
    read_settings,
    sample_path,
    settings_differences,
    to_jsonable,
)
from featsmooth.schema import RECORD_FORMAT, documented_fields, undocumented_fields
from featsmooth.versions import environment_info

SETTINGS = {
    "command": "certify",
    "model": "tiny",
    "sigma": 0.25,
    "n0": 16,
    "n": 200,
    "alpha": 0.001,
    "method": "hoeffding",
    "radii": (0.0, 0.25, 0.5),
    "seed": 0,
    "batch_size": 32,
}


def make_record(i: int) -> dict:
    """A deterministic record with the awkward types a real run produces."""
    rng = np.random.default_rng(i)
    return {
        "key": f"img{i:02d}",
        "image": f"photo {i}.png",
        "score_estimate": np.float32(rng.uniform(0.5, 1.0)),
        "score_lower": float(rng.uniform(0.4, 0.5)),
        "fcsb": np.array([0.9, 0.5, np.nan]),
        "n_used": np.int64(100 + i),
        "certified_radius_cos50": math.inf if i % 3 == 0 else None,
    }


def write_all(run_dir, keys, **kwargs) -> None:
    with RunWriter(run_dir, SETTINGS, environment=False, **kwargs) as run:
        for i in keys:
            if f"img{i:02d}" not in run.done_keys():
                run.write(make_record(i))


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    write_all(full, range(10))
    write_all(killed, range(10))

    # Simulate a kill while record 6 was being written: cut the file in the middle of line 7.
    path = killed / RECORDS_FILE
    data = path.read_bytes()
    lines = data.split(b"\n")
    cut = sum(len(line) + 1 for line in lines[:6]) + len(lines[6]) // 2
    path.write_bytes(data[:cut])

    with pytest.warns(RecordWarning, match="line 7"):
        assert [r["key"] for r in read_records(killed)] == [f"img{i:02d}" for i in range(6)]

    with pytest.warns(RecordWarning, match="incomplete line 7"):
        with RunWriter(killed, SETTINGS, environment=False) as run:
            assert run.done_keys() == {f"img{i:02d}" for i in range(6)}
            assert run.resumed
            for i in range(10):
                if f"img{i:02d}" not in run.done_keys():
                    run.write(make_record(i))

    assert path.read_bytes() == (full / RECORDS_FILE).read_bytes()
    assert read_records(killed) == read_records(full)
    resumed = read_settings(killed)["resumed"]
    assert len(resumed) == 1 and resumed[0]["records"] == 6


def test_resume_skips_done_and_keeps_settings(tmp_path):
    write_all(tmp_path, range(3))
    saved = read_settings(tmp_path)
    write_all(tmp_path, range(5))
    assert [r["key"] for r in read_records(tmp_path)] == [f"img{i:02d}" for i in range(5)]
    after = read_settings(tmp_path)
    assert after["created"] == saved["created"]
    assert after["radii"] == [0.0, 0.25, 0.5]


def test_settings_mismatch_is_refused_with_the_keys(tmp_path):
    write_all(tmp_path, range(2))
    changed = {**SETTINGS, "sigma": 0.5, "alpha": 0.01, "batch_size": 8}
    with pytest.raises(RecordError) as info:
        RunWriter(tmp_path, changed, environment=False).open()
    message = str(info.value)
    assert "sigma (saved 0.25, now 0.5)" in message
    assert "alpha" in message and "batch_size" not in message
    assert "\n" not in message
    # nothing was touched
    assert len(read_records(tmp_path)) == 2
    # volatile keys may change: batch size, device and environment
    volatile = {**SETTINGS, "batch_size": 8, "device": "cuda:1", "environment": {"x": 1}}
    with RunWriter(tmp_path, volatile, environment=False) as run:
        assert len(run.done_keys()) == 2
    assert read_settings(tmp_path)["resumed"][-1]["changed"] == {
        "batch_size": 8,
        "device": "cuda:1",
    }


def test_settings_differences_normalises_types():
    saved = {"radii": [0.25, 0.5], "sigma": 0.25, "plugin": {"weights": "a", "steps": 3}}
    now = {"radii": (0.25, 0.5), "sigma": np.float64(0.25), "plugin": {"weights": "a", "steps": 4}}
    assert settings_differences(saved, now) == ["plugin.steps"]
    assert settings_differences({"a": 1}, {"b": 1}) == ["a", "b"]
    assert settings_differences({"tolerance": None}, {}) == []


def test_corrupt_middle_line_names_the_line(tmp_path):
    write_all(tmp_path, range(5))
    path = tmp_path / RECORDS_FILE
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:-5] + b"#####"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(RecordError, match="line 3 is corrupt"):
        read_records(tmp_path)
    with pytest.raises(RecordError, match="line 3 is corrupt"):
        RunWriter(tmp_path, SETTINGS, environment=False).open()
    assert path.read_bytes() == b"\n".join(lines)  # refused without repairing anything


def test_complete_last_line_without_newline_is_kept(tmp_path):
    write_all(tmp_path, range(2))
    path = tmp_path / RECORDS_FILE
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    write_all(tmp_path, range(3))
    assert [r["key"] for r in read_records(tmp_path)] == ["img00", "img01", "img02"]


def test_nan_inf_and_array_round_trip(tmp_path):
    record = {
        "key": 7,
        "nan": float("nan"),
        "np_nan": np.float32("nan"),
        "inf": np.inf,
        "ninf": -math.inf,
        "vec": np.array([1.5, np.nan, np.inf]),
        "tensor": torch.tensor([[0.5, float("nan")]], dtype=torch.bfloat16),
        "ints": (np.int32(3), np.int64(4)),
        "flag": np.bool_(True),
        "nested": {"x": np.float64(0.25), 3: [np.nan]},
        "device": torch.device("cpu"),
        "dtype": torch.bfloat16,
    }
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        stored = run.write(record)
    line = (tmp_path / RECORDS_FILE).read_text().strip()
    assert "NaN" not in line and "Infinity" not in line  # strict JSON
    (back,) = read_records(tmp_path)
    assert back == stored
    assert back["nan"] is None and back["np_nan"] is None
    assert back["vec"] == [1.5, None, "inf"] and back["ninf"] == "-inf"
    assert back["tensor"] == [[0.5, None]]
    assert back["ints"] == [3, 4] and back["flag"] is True
    assert back["nested"] == {"x": 0.25, "3": [None]}
    assert back["device"] == "cpu" and back["dtype"] == "torch.bfloat16"
    assert math.isnan(as_float(back["nan"])) and as_float(back["inf"]) == math.inf
    assert as_float(back["ninf"]) == -math.inf and as_float(back["vec"][0]) == 1.5
    with pytest.raises(InputError):
        to_jsonable({"bad": object()})


def test_resume_false_refuses_records_unless_overwrite(tmp_path):
    write_all(tmp_path, range(3))
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        run.write_samples("img00", np.ones(4))
    with pytest.raises(RecordError, match="already holds 3 records"):
        RunWriter(tmp_path, SETTINGS, resume=False, environment=False).open()
    other = {**SETTINGS, "sigma": 1.0}
    with RunWriter(tmp_path, other, resume=False, overwrite=True, environment=False) as run:
        assert run.done_keys() == set()
        run.write(make_record(9))
    assert [r["key"] for r in read_records(tmp_path)] == ["img09"]
    assert read_settings(tmp_path)["sigma"] == 1.0
    assert not sample_path(tmp_path, "img00").exists()


def test_write_validates_and_locks(tmp_path):
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        run.write({"key": "a"})
        with pytest.raises(InputError, match="already written"):
            run.write({"key": "a"})
        with pytest.raises(InputError, match="'key' field"):
            run.write({"value": 1})
        if os.name == "posix":
            with pytest.raises(RecordError, match="another process"):
                RunWriter(tmp_path, SETTINGS, environment=False).open()
    with pytest.raises(InputError, match="not open"):
        RunWriter(tmp_path, SETTINGS, environment=False).write({"key": "b"})


def test_settings_file_is_complete_json_with_environment(tmp_path):
    with RunWriter(tmp_path, {**SETTINGS, "device": "cpu"}) as run:
        run.write({"key": 0})
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    env = settings["environment"]
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert env["numpy"] == np.__version__ and env["device"] == "cpu"
    assert env["cpu_count"] >= 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    json.dumps(environment_info())  # JSON-safe as returned


def test_samples_round_trip_and_safe_names(tmp_path):
    values = np.linspace(-1, 1, 7, dtype=np.float32)
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        path = run.write_samples("dir/../x y", torch.from_numpy(values))
        run.write_samples("dir/../x y", values[:3], name="clean")
    assert path.parent == tmp_path / "samples" and "/" not in path.name[:-4]
    np.testing.assert_array_equal(load_samples(tmp_path, "dir/../x y"), values)
    np.testing.assert_array_equal(load_samples(tmp_path, "dir/../x y", "clean"), values[:3])
    assert not sample_path(tmp_path, "..").name.startswith(".")
    with pytest.raises(RecordError, match="no projections samples"):
        load_samples(tmp_path, "missing")


def _certified_run(run_dir, n=400, n_used=None, method="hoeffding", tolerance=None):
    """A run with stored projections; score_lower written at alpha=0.001."""
    settings = {**SETTINGS, "n": n, "method": method, "tolerance": tolerance}
    kwargs = {"horizon": None if tolerance is not None else n}
    rng = np.random.default_rng(0)
    samples = {}
    with RunWriter(run_dir, settings, environment=False) as run:
        for i in range(3):
            key = f"img{i}"
            values = np.clip(rng.normal(0.9 - 0.1 * i, 0.05, n_used or n), -1, 1)
            samples[key] = values
            run.write_samples(key, values.astype(np.float32))
            run.write_samples(key, values.astype(np.float32) - 0.05, name="clean")
            run.write(
                {
                    "key": key,
                    "sigma": 0.25,
                    "radii": [0.0, 0.25, 0.5],
                    "n_used": values.size,
                    "score_lower": bounds.mean_lower_bound(values, 0.001, method, **kwargs),
                    "margin_radius": 0.3,
                    "label": 1,
                }
            )
    return samples


def test_recompute_certificates_matches_formulas(tmp_path):
    samples = _certified_run(tmp_path / "run")
    out = recompute_certificates(tmp_path / "run", 0.01, "hoeffding", out_dir=tmp_path / "re")
    assert [r["key"] for r in out] == ["img0", "img1", "img2"]
    for record in out:
        values = samples[record["key"]].astype(np.float32).astype(np.float64)
        expected = values.mean() - 2 * math.sqrt(math.log(1 / 0.01) / (2 * values.size))
        assert record["score_lower"] == pytest.approx(expected, abs=1e-12)
        level = stats.norm.ppf((1 + expected) / 2)
        fcsb = [2 * stats.norm.cdf(level - r / 0.25) - 1 for r in (0.0, 0.25, 0.5)]
        got = [as_float(v) for v in record["fcsb"]]
        assert got == pytest.approx([v if v >= 0 else math.nan for v in fcsb], nan_ok=True)
        r50 = 0.25 * (level - stats.norm.ppf(0.75))
        assert as_float(record["certified_radius_cos50"]) == pytest.approx(
            r50 if r50 >= 0 else math.nan, nan_ok=True
        )
        assert record["clean_score_lower"] < record["score_lower"]
        assert "margin_radius" not in record and record["label"] == 1  # stale field dropped
    # a lower alpha (looser) certificate than the one stored at alpha=0.001 is higher
    stored = read_records(tmp_path / "run")
    assert all(a["score_lower"] > b["score_lower"] for a, b in zip(out, stored))
    # the recomputed run is a normal run folder with the new settings
    assert read_settings(tmp_path / "re")["alpha"] == 0.01
    assert read_records(tmp_path / "re") == out


@pytest.mark.parametrize(("tolerance", "n_used"), [(None, None), (0.05, 300)])
def test_recompute_reproduces_the_stored_bound(tmp_path, tolerance, n_used):
    # fixed-n runs bet for horizon n, sequential runs (tolerance set) use the anytime schedule
    _certified_run(tmp_path, method="betting", n=400, n_used=n_used, tolerance=tolerance)
    stored = read_records(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # betting after early stopping is valid: no warning
        again = recompute_certificates(tmp_path, 0.001, "betting")
    for a, b in zip(again, stored):
        assert a["score_lower"] == pytest.approx(b["score_lower"], abs=1e-6)
    # the two schedules differ, so reproducing the stored value is a real check
    values = load_samples(tmp_path, "img0").astype(np.float64)
    other = {"horizon": 400 if tolerance is not None else None}
    assert (
        abs(bounds.mean_lower_bound(values, 0.001, "betting", **other) - again[0]["score_lower"])
        > 1e-4
    )


def test_recompute_warns_on_stopped_samples_and_missing(tmp_path):
    _certified_run(tmp_path, n=400, n_used=250)
    with RunWriter(tmp_path, {**SETTINGS, "n": 400}, environment=False) as run:
        run.write({"key": "no-samples", "sigma": 0.25})
    with pytest.warns(RecordWarning) as caught:
        out = recompute_certificates(tmp_path, 0.001, "bernstein")
    messages = " ".join(str(w.message) for w in caught)
    assert "not valid after optional stopping" in messages
    assert "1 of 4 records have no stored samples" in messages
    assert len(out) == 3


def test_recompute_without_any_stored_samples_is_an_error(tmp_path):
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        run.write({"key": "a", "sigma": 0.25, "score_lower": 0.5})
    with pytest.raises(RecordError, match="no record has stored samples") as info:
        recompute_certificates(tmp_path, 0.001, "betting")
    assert "--keep-samples" in info.value.hint


# --------------------------------------------------------------------------------------
# content checks, path spellings, failing disks, file modes, non-UTF-8 keys


def test_check_content_refuses_a_replaced_input(tmp_path):
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        run.write({"key": "a.png", "sha256": "aaa"})
        run.write({"key": "old.png"})  # written before records had hashes: not checked
        run.check_content({"a.png": {"sha256": "aaa"}, "old.png": {"sha256": "x"}})
        run.check_content({"new.png": {"sha256": "nnn"}})  # not written yet
        with pytest.raises(RecordError, match=r"a\.png.*changed since its record") as err:
            run.check_content({"a.png": {"sha256": "bbb"}})
    assert "records.jsonl" in err.value.hint


def test_a_folder_written_two_ways_is_the_same_setting(tmp_path, monkeypatch):
    (tmp_path / "x/dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "x")
    saved = {**SETTINGS, "images": "dir"}
    for same in ("dir/", "./dir", "../x/dir", str(tmp_path / "x/dir")):
        assert settings_differences(saved, {**SETTINGS, "images": same}) == []
    assert settings_differences(saved, {**SETTINGS, "images": "other"}) == ["images"]


def test_a_full_disk_loses_nothing_already_written(tmp_path, monkeypatch):
    import errno

    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        run.write({"key": "a", "v": 1})
        real = os.fsync

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(RecordError, match="No space left on device") as err:
            run.write({"key": "b", "v": 2})
        assert "free some disk space" in err.value.hint
        monkeypatch.setattr(os, "fsync", real)
    assert read_records(tmp_path) == [{"key": "a", "v": 1}]  # no half record either
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        assert run.done_keys() == {"a"}
        run.write({"key": "b", "v": 2})
    assert [r["key"] for r in read_records(tmp_path)] == ["a", "b"]


def test_an_unwritable_run_folder_is_a_record_error(tmp_path, monkeypatch):
    import builtins
    import errno

    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if str(file).endswith(RECORDS_FILE) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    with pytest.raises(RecordError, match="Read-only file system"):
        RunWriter(tmp_path / "run", SETTINGS, environment=False).open()


def test_settings_file_is_as_readable_as_the_records(tmp_path):
    with RunWriter(tmp_path, SETTINGS, environment=False) as run:
        run.write({"key": "a"})
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    assert (tmp_path / SETTINGS_FILE).stat().st_mode & 0o777 == expected
    assert (tmp_path / RECORDS_FILE).stat().st_mode & 0o777 == expected


def test_non_utf8_keys_round_trip(tmp_path):
    key = os.fsdecode(b"caf\xe9.png")  # a Latin-1 file name read on a UTF-8 system
    with RunWriter(tmp_path, {**SETTINGS, "images": key}, environment=False) as run:
        run.write_samples(key, np.ones(3))
        run.write({"key": key, "image": key})
    (record,) = read_records(tmp_path)
    assert record["key"] == key
    with RunWriter(tmp_path, {**SETTINGS, "images": key}, environment=False) as run:
        assert key in run  # resumed: the key read back is the key given
    assert load_samples(tmp_path, key).tolist() == [1.0, 1.0, 1.0]
    assert sample_path(tmp_path, key).name == "caf%E9.png.npy"


# ------------------------------------------------------------------ record format


def test_format_1_records_are_upgraded_on_read(tmp_path):
    """Format 1 (no ``record_format`` in the settings): evaluate's attack records said
    ``clean_*`` for the unattacked output and its certificate records ``estimate``."""
    run = tmp_path / "v1"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps({"command": "evaluate"}))
    old = [
        {"key": ["a", "fs", "pgd"], "kind": "attack", "clean_prediction": 1, "clean_score": 1.0,
         "clean_objective": -1.0, "adv_prediction": 2},
        {"key": ["a", "fs"], "kind": "certificate", "estimate": 1, "clean_prediction": 1},
        {"key": "b", "clean_prediction": 3, "score_lower": 0.5},
    ]  # fmt: skip
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    attack, cert, plain = read_records(run)
    assert attack == {"key": ["a", "fs", "pgd"], "kind": "attack", "unattacked_prediction": 1,
                      "unattacked_score": 1.0, "unattacked_objective": -1.0,
                      "adv_prediction": 2}  # fmt: skip
    assert cert == {"key": ["a", "fs"], "kind": "certificate", "smoothed_prediction": 1,
                    "clean_prediction": 1}  # fmt: skip
    assert plain == old[2]  # certify's records kept their names
    # a format-1 run resumes; what it holds is read as format 2
    with RunWriter(run, {"command": "evaluate"}, environment=False) as w:
        assert w.stored(["a", "fs", "pgd"])["unattacked_score"] == 1.0
        w.write({"key": "c", "score_lower": 0.7})
    assert len(read_records(run)) == 4


def test_new_runs_record_their_format_and_a_newer_one_is_refused(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, {"command": "certify"}, environment=False) as w:
        w.write({"key": "a"})
    settings = json.loads((run / "settings.json").read_text())
    assert settings["record_format"] == RECORD_FORMAT
    settings["record_format"] = RECORD_FORMAT + 1
    (run / "settings.json").write_text(json.dumps(settings))
    for action in (
        lambda: read_records(run),
        lambda: RunWriter(run, {"command": "certify"}).open(),
    ):
        with pytest.raises(RecordError, match=f"format {RECORD_FORMAT + 1}.*upgrade featsmooth"):
            action()


def test_field_table_covers_certify_records():
    """Every field the one record builder writes (feature and prediction certificates) is
    in the schema table, and the table has no field twice."""
    from featsmooth.certificates import Certificate, PredictionCertificate
    from featsmooth.runloop import certificate_record

    feat = Certificate(0.25, 0.001, "betting", 8, 100, 0.9, 0.8, 0.9, 0.8, 0.99)
    pred = PredictionCertificate(
        0.25, 0.001, "betting", 8, 100, 1, 1, 0.3, 1, 0.2, 1, 0.4, 1, 0.8, features=feat
    )
    names = ["cat", "dog"]
    for cert in (feat, pred):
        record = certificate_record(
            cert, key="x.png", index=0, image="x.png", model="m", radii=[0.1], seconds=1.0,
            content={"sha256": "0" * 64}, class_names=names, label=1,
        )  # fmt: skip
        assert undocumented_fields(record) == []
    assert record["clean_prediction_name"] == "dog" and record["correct"] is True
    documented = documented_fields()
    assert len(documented) == len(set(documented))
