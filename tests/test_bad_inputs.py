"""Bad input through the real console entry point: one line, a hint, the documented code.

Every row of :data:`ROWS` is one kind of bad input (a missing or crafted file, a hostile
setting, a broken run folder, a failing disk, ...) given to ``featsmooth`` as a user would.
The command must end with the exit code the README documents (2 bad input, 3 unusable
features, 4 model unavailable, 5 run records) and exactly one ``error:`` line that names
the problem and ends with a hint in parentheses, without a traceback; rows that are not
errors any more (a 16-bit image, a symlinked folder, a non-UTF-8 file name) must succeed
and say what they did.

Each row runs in a process of its own, forked from one driver process that has imported
``featsmooth.cli`` (and torch) once, and calls the console entry point
:func:`featsmooth.cli.main` with the row's arguments: the exit code is the real process's
and stdout/stderr are its own files, without paying the interpreter start-up per row. A
row's ``prelude`` runs in its process first, to simulate what a test cannot cause for real
(a full disk, a read-only folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featsmooth.records import read_records

DRIVER = r"""
import json, os, sys, traceback

import featsmooth.api  # noqa: F401  imported once; every row runs in a fork of this process
import featsmooth.cli

for line in sys.stdin:
    row = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(row["cwd"])
            out = os.open(row["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(row["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            exec(row["prelude"], {})
            try:
                featsmooth.cli.main(row["args"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()  # what the interpreter prints for an uncaught error
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Driver:
    """The driver process: ``run(cwd, args, prelude)`` -> (exit code, stdout, stderr)."""

    def __init__(self) -> None:
        env = dict(os.environ, COLUMNS="200", PYTHONWARNINGS="ignore::DeprecationWarning")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, cwd: Path, args: list[str], prelude: str = "") -> tuple[int, str, str]:
        out, err = cwd / ".stdout", cwd / ".stderr"
        row = {"cwd": str(cwd), "args": args, "prelude": prelude, "out": str(out), "err": str(err)}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(row) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the driver process ended"
        code = json.loads(reply)["code"]
        read = lambda p: p.read_bytes().decode("utf-8", "replace")  # noqa: E731
        return code, read(out), read(err)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------------
# the files every row starts from

TINY = ["--size", "32", "--n0", "16", "--n", "64", "--no-progress"]
CERTIFY = ["certify", "synthetic-trig", "--images", "imgs", *TINY]


def _pngs(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(
            folder / f"img{i}.png"
        )


def _tiny_clip(folder: Path) -> None:
    """A 2-layer CLIP vision model folder (safetensors) of a few thousand weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16, projection_dim=8,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder)


class _Unsafe:
    """A pickled object that would run code when unpickled without the weights-only guard."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def driver():
    d = Driver()
    yield d
    d.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory, driver) -> Path:
    """imgs/ (2 PNGs), done/ (a finished run over them), plug/ (a trained mapper plug-in),
    clip/ (a tiny CLIP vision folder)."""
    import torch

    root = tmp_path_factory.mktemp("template")
    _pngs(root / "imgs", 2, seed=0)
    code, _, err = driver.run(root, [*CERTIFY, "--keep-samples", "--run-dir", "done"])
    assert code == 0, err
    code, _, err = driver.run(
        root,
        ["train-plugin", "synthetic-trig", "--images", "imgs", "--steps", "1", "--batch-size",
         "2", "--parts", "mapper", "--out", "plug", "--no-progress"],
    )  # fmt: skip
    assert code == 0, err
    _tiny_clip(root / "clip")
    unsafe = root / "clip-unsafe"
    unsafe.mkdir()
    shutil.copy(root / "clip/config.json", unsafe / "config.json")
    torch.save({"weights": torch.zeros(2), "payload": _Unsafe()}, unsafe / "pytorch_model.bin")
    for f in (root / ".stdout", root / ".stderr"):
        f.unlink(missing_ok=True)
    return root


# --------------------------------------------------------------------------------------
# set-ups of single rows (called in the row's own copy of the template)


def _write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)

    return setup


def _card(**changes) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        card = json.loads((cwd / "plug/plugin.json").read_text())
        card["architecture"]["mapper"].update(changes)
        (cwd / "plug/plugin.json").write_text(json.dumps(card))

    return setup


def _corrupt_line(cwd: Path) -> None:
    records = cwd / "done/records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")


def _replace_image(cwd: Path) -> None:
    _pngs(cwd / "other", 1, seed=7)
    shutil.copy(cwd / "other/img0.png", cwd / "imgs/img0.png")


def _image(name: str, array: np.ndarray, **save) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(cwd / name, **save)

    return setup


def _bomb(cwd: Path) -> None:
    (cwd / "big").mkdir()
    Image.new("L", (20000, 20000)).save(cwd / "big/huge.png", optimize=True)


def _symlinked_folder(cwd: Path) -> None:
    (cwd / "tree").mkdir()
    shutil.copy(cwd / "imgs/img0.png", cwd / "tree/a.png")
    _pngs(cwd / "elsewhere", 1, seed=3)
    (cwd / "tree/linked").symlink_to(cwd / "elsewhere", target_is_directory=True)


def _non_utf8_name(cwd: Path) -> None:
    (cwd / "odd").mkdir()
    shutil.copy(cwd / "imgs/img0.png", os.path.join(os.fsencode(cwd / "odd"), b"caf\xe9.png"))


def _empty_run_dir(cwd: Path) -> None:
    (cwd / "run").mkdir()


#: fault injection in the row's process: the records file's folder refuses writes
READ_ONLY = """
import builtins, errno
real_open = builtins.open
def refusing_open(file, mode="r", *args, **kwargs):
    if str(file).endswith("records.jsonl") and any(c in mode for c in "wax+"):
        raise OSError(errno.EROFS, "Read-only file system", str(file))
    return real_open(file, mode, *args, **kwargs)
builtins.open = refusing_open
"""

#: fault injection: the disk fills up when the first record is made durable
FULL_DISK = """
import errno, os
real_fsync = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("records.jsonl"):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_fsync(fd)
os.fsync = fsync
"""


@dataclass
class Row:
    """One bad input: arguments, documented exit code, text the error line must hold."""

    id: str
    args: list[str]
    code: int
    needle: str
    setup: list[Callable[[Path], None]] = field(default_factory=list)
    prelude: str = ""
    check: Callable[[Path, str, str], None] | None = None
    usage: bool = False  # a flag click rejects: its own usage message
    marks: tuple = ()


def _records_kept(cwd: Path, out: str, err: str) -> None:
    assert len(read_records(cwd / "done")) == 2  # nothing already written is lost


def _nothing_half_written(cwd: Path, out: str, err: str) -> None:
    assert (cwd / "run/records.jsonl").read_bytes() == b""
    assert json.loads((cwd / "run/settings.json").read_text())["command"] == "certify"


def _hint_names_settings_json(cwd: Path, out: str, err: str) -> None:
    _records_kept(cwd, out, err)
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "settings.json" in line and "config.yaml" not in line  # an interrupted run has none


def _sixteen_bit_scaled(cwd: Path, out: str, err: str) -> None:
    (record,) = read_records(cwd / "run")
    assert record["key"] == "grey16.png"


def _linked_warning(cwd: Path, out: str, err: str) -> None:
    assert [r["key"] for r in read_records(cwd / "run")] == ["a.png"]
    assert "warning: skipped the linked folder" in err and "linked" in err


def _non_utf8_kept(cwd: Path, out: str, err: str) -> None:
    (record,) = read_records(cwd / "run")
    assert os.fsencode(record["key"]) == b"caf\xe9.png"


def _same_folder_resumes(cwd: Path, out: str, err: str) -> None:
    assert "0 to go" in out


def _no_overflow_warning(cwd: Path, out: str, err: str) -> None:
    assert "overflow" not in err.lower()


BOMB_YAML = "\n".join(
    [f"l0: &l0 [{', '.join(['x'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    + ["sigma: [*l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7]"]
)

ROWS = [
    # --- images
    Row("missing-images", ["certify", "synthetic-trig", "--images", "nope", *TINY], 2, "nope"),
    Row("no-images-given", ["certify", "synthetic-trig", *TINY], 2, "no images"),
    Row("empty-folder", ["certify", "synthetic-trig", "--images", "empty", *TINY], 2,
        "no image files", [lambda c: (c / "empty").mkdir()]),
    Row("not-an-image", ["certify", "synthetic-trig", "--images", "fake", *TINY], 2,
        "cannot read image", [_write("fake/x.png", "plain text, not a PNG")]),
    Row("truncated-png", ["certify", "synthetic-trig", "--images", "cut", *TINY], 2,
        "cut", [lambda c: _write("cut/x.png", (c / "imgs/img0.png").read_bytes()[:60])(c)]),
    Row("decompression-bomb", ["certify", "synthetic-trig", "--images", "big", *TINY], 2,
        "too large to read safely", [_bomb]),
    Row("float-tiff", ["certify", "synthetic-trig", "--images", "f", *TINY], 2,
        "pixel format 'F'", [_image("f/x.tif", np.full((8, 8), 0.5, np.float32))]),
    Row("16-bit-png", ["certify", "synthetic-trig", "--images", "g", *TINY, "--run-dir", "run"],
        0, "", [_image("g/grey16.png", np.full((32, 32), 20000, np.uint16))],
        check=_sixteen_bit_scaled),
    Row("symlinked-subfolder", [*CERTIFY[:3], "tree", *TINY, "--run-dir", "run"], 0, "",
        [_symlinked_folder], check=_linked_warning),
    Row("non-utf8-file-name", [*CERTIFY[:3], "odd", *TINY, "--keep-samples", "--run-dir", "run"],
        0, "", [_non_utf8_name], check=_non_utf8_kept),
    Row("images-and-photos", [*CERTIFY, "--photos"], 2, "not both"),
    # --- models
    Row("unknown-model", ["certify", "synthetic-trg", "--images", "imgs", *TINY], 4,
        "synthetic-trig"),
    Row("hf-unsafe-pickle", ["certify", "clip-unsafe", "--images", "imgs", *TINY], 4,
        "pytorch_model.bin"),
    Row("hf-folder-without-config", ["certify", "noconf", "--images", "imgs", *TINY], 4,
        "config.json", [lambda c: (c / "noconf").mkdir()]),
    Row("hf-unknown-model-type", ["certify", "weird", "--images", "imgs", *TINY], 4,
        "model_type", [_write("weird/config.json", '{"model_type": "gpt9"}')]),
    Row("bad-device", [*CERTIFY, "--device", "toaster"], 2, "toaster"),
    Row("zero-shot-on-feature-model", [*CERTIFY, "--task", "zero-shot"], 2, "text"),
    # --- settings on the command line
    Row("negative-sigma", [*CERTIFY, "--sigma", "-0.5"], 2, "sigma"),
    Row("sigma-not-a-number", [*CERTIFY, "--sigma", "abc"], 2, "--sigma", usage=True),
    Row("alpha-out-of-range", [*CERTIFY, "--alpha", "2"], 2, "alpha"),
    Row("zero-n", [*CERTIFY, "--n", "0"], 2, "n must be > 0"),
    Row("unknown-method", [*CERTIFY, "--method", "magic"], 2, "method"),
    Row("unknown-dtype", [*CERTIFY, "--dtype", "float8"], 2, "dtype"),
    Row("radii-divide-by-zero", [*CERTIFY, "--radii", "1/0"], 2, "divides by zero"),
    Row("radii-not-numbers", [*CERTIFY, "--radii", "0.1,abc"], 2, "'abc' is not a number"),
    Row("negative-radii", [*CERTIFY, "--radii", "-1"], 2, "radii must be >= 0"),
    Row("huge-size", [*CERTIFY, "--size", "100000"], 2, "too large"),
    Row("huge-n", [*CERTIFY, "--n", "1000000000000"], 2, "of memory"),
    Row("target-cosine-alone", [*CERTIFY, "--target-cosine", "0.5"], 2, "together"),
    Row("ray-address-without-ray", [*CERTIFY, "--ray-address", "auto"], 2, "--ray"),
    Row("huge-radii", [*CERTIFY, "--radii", "1e300", "--run-dir", "run"], 0, "",
        check=_no_overflow_warning),
    # --- config files
    Row("config-missing", [*CERTIFY, "--config", "nope.yaml"], 2, "nope.yaml"),
    Row("config-bad-yaml", [*CERTIFY, "--config", "c.yaml"], 2, "not valid YAML",
        [_write("c.yaml", "sigma: [0.25\nn: 3\n")]),
    Row("config-unknown-key", [*CERTIFY, "--config", "c.yaml"], 2, "bogus",
        [_write("c.yaml", "bogus: 1\n")]),
    Row("config-not-a-mapping", [*CERTIFY, "--config", "c.yaml"], 2, "mapping",
        [_write("c.yaml", "- 1\n- 2\n")]),
    Row("config-not-utf8", [*CERTIFY, "--config", "c.yaml"], 2, "cannot read config",
        [_write("c.yaml", b"sigma: 0.\xff\n")]),
    Row("config-sigma-divide-by-zero", [*CERTIFY, "--config", "c.yaml"], 2, "divides by zero",
        [_write("c.yaml", 'sigma: "1/0"\n')]),
    Row("config-radii-mapping", [*CERTIFY, "--config", "c.yaml"], 2, "is not a number",
        [_write("c.yaml", "radii: {a: 1}\n")]),
    Row("config-sigma-list", [*CERTIFY, "--config", "c.yaml"], 2, "must be of type float",
        [_write("c.yaml", "sigma: [1, 2]\n")]),
    Row("config-alias-bomb", [*CERTIFY, "--config", "c.yaml"], 2, "expands to more than",
        [_write("c.yaml", BOMB_YAML)]),
    Row("config-self-reference", [*CERTIFY, "--config", "c.yaml"], 2, "refers to itself",
        [_write("c.yaml", "sigma: &a [1, *a]\n")]),
    Row("config-too-large", [*CERTIFY, "--config", "c.yaml"], 2, "bytes",
        [_write("c.yaml", "# " + "x" * (2 << 20) + "\n")]),
    Row("config-bad-toml", [*CERTIFY, "--config", "c.toml"], 2, "not valid TOML",
        [_write("c.toml", "sigma = = 1\n")]),
    # --- run folders and records
    Row("run-dir-is-a-file", [*CERTIFY, "--run-dir", "afile"], 2, "not a folder",
        [_write("afile", "x")]),
    Row("run-dir-read-only", [*CERTIFY, "--run-dir", "run"], 5, "Read-only file system",
        [_empty_run_dir], prelude=READ_ONLY),
    Row("disk-full", [*CERTIFY, "--run-dir", "run"], 5, "No space left on device",
        prelude=FULL_DISK, check=_nothing_half_written),
    Row("corrupt-records", [*CERTIFY, "--run-dir", "done"], 5, "line 2", [_corrupt_line],
        check=lambda c, o, e: None),
    Row("settings-changed", [*CERTIFY, "--run-dir", "done", "--sigma", "0.3"], 5,
        "sigma (saved 0.25, now 0.3)", check=_hint_names_settings_json),
    Row("records-without-settings", [*CERTIFY, "--run-dir", "done"], 5, "settings.json",
        [lambda c: (c / "done/settings.json").unlink()]),
    Row("settings-not-json", [*CERTIFY, "--run-dir", "done"], 5, "not valid JSON",
        [_write("done/settings.json", "{oops")]),
    Row("image-replaced", [*CERTIFY, "--keep-samples", "--run-dir", "done"], 5,
        "changed since its record", [_replace_image], check=_records_kept),
    Row("same-folder-written-differently",
        [*CERTIFY[:3], "../" + "{cwd}" + "/imgs/", *TINY, "--keep-samples", "--run-dir", "done"],
        0, "", check=_same_folder_resumes),
    Row("report-missing-run", ["report", "nope"], 2, "nope"),
    Row("recompute-missing-run", ["recompute", "nope", "--alpha", "0.01"], 2, "nope"),
    # --- plug-ins
    Row("plugin-missing", [*CERTIFY, "--plugin", "nope"], 2, "plug-in folder not found"),
    Row("plugin-card-list", [*CERTIFY, "--plugin", "plug"], 2, "JSON object",
        [_write("plug/plugin.json", "[1, 2]")]),
    Row("plugin-card-not-utf8", [*CERTIFY, "--plugin", "plug"], 2, "not UTF-8",
        [_write("plug/plugin.json", b'{"format": "\xff"}')]),
    Row("plugin-card-negative", [*CERTIFY, "--plugin", "plug"], 2, "hidden = -8",
        [_card(hidden=-8)]),
    Row("plugin-card-odd-embedding", [*CERTIFY, "--plugin", "plug"], 2, "emb_dim must be even",
        [_card(emb_dim=127)]),
    Row("plugin-card-not-a-number", [*CERTIFY, "--plugin", "plug"], 2, "must be an integer",
        [_card(dim="two")]),
    Row("plugin-card-claims-more", [*CERTIFY, "--plugin", "plug"], 2, "does not match",
        [_card(hidden=60000)]),
    Row("plugin-other-sigma", [*CERTIFY, "--plugin", "plug", "--sigma", "0.5"], 2, "sigma"),
]  # fmt: skip


def test_the_table_covers_forty_kinds():
    assert len({row.id for row in ROWS}) == len(ROWS) >= 40


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_bad_input(row: Row, template: Path, driver: Driver, tmp_path: Path):
    cwd = tmp_path / "w"
    shutil.copytree(template, cwd, symlinks=True)
    for setup in row.setup:
        setup(cwd)
    args = [a.replace("{cwd}", cwd.name) for a in row.args]
    code, out, err = driver.run(cwd, args, row.prelude)
    assert "Traceback" not in err, err
    assert code == row.code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if row.usage:  # click's own usage error: no "error:" line of ours, no traceback
        assert row.needle in err and "Error" in err
    elif row.code == 0:
        assert errors == [], err
    else:
        assert len(errors) == 1, err
        (line,) = errors
        assert row.needle in line, line
        assert line.endswith(")") and " (" in line, line  # ... (the hint)
        assert len(line) < 700
    if row.check is not None:
        row.check(cwd, out, err)


# --------------------------------------------------------------------------------------
# the same fixes, checked where they happen


def test_hf_folder_with_safetensors_never_reads_the_pickle(tmp_path, monkeypatch):
    from featsmooth.encoders import hf

    calls = []

    class Model:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            calls.append(kwargs)
            return "model"

    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert hf._load_weights(Model, str(tmp_path)) == "model"
    assert calls[-1]["use_safetensors"] is True
    (tmp_path / "model.safetensors").unlink()
    hf._load_weights(Model, str(tmp_path))
    assert "use_safetensors" not in calls[-1]  # only the pickle: torch's weights-only reader


def test_plugin_card_is_checked_against_the_weights_before_building(template, monkeypatch):
    from featsmooth.errors import InputError
    from featsmooth.plugin import io

    folder = template / "plug"
    card = json.loads((folder / "plugin.json").read_text())
    built = []
    cls, cfg_cls = io._BUILDERS["mapper"]

    class Recording(cls):
        def __init__(self, config):
            built.append(str(torch_default_device()))
            super().__init__(config)

    monkeypatch.setitem(io._BUILDERS, "mapper", (Recording, cfg_cls))
    io.load_plugin(folder)
    assert built == ["meta", "cpu"]  # the shapes first, without storage; then the real one
    built.clear()
    card["architecture"]["mapper"]["hidden"] = 4096  # claims 8x the width of its weights
    bad = template.parent / "bad-plug"
    shutil.copytree(folder, bad)
    (bad / "plugin.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="does not match"):
        io.load_plugin(bad)
    assert built == ["meta"]  # nothing the card claims was allocated


def torch_default_device():
    import torch

    return torch.empty(0).device


def test_error_lines_are_capped(capsys, tmp_path, monkeypatch):
    from featsmooth import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("sigma: [" + "1, " * 20000 + "\n")  # broken, 60 KB
    code = cli.run(["certify", "synthetic-trig", "--images", ".", "--config", "c.yaml"])
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(line) < 700 and "not valid YAML" in line
    unknown = "\n".join(f"k{i}: 1" for i in range(3000))
    (tmp_path / "c.yaml").write_text(unknown)
    code = cli.run(["certify", "synthetic-trig", "--images", ".", "--config", "c.yaml"])
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(line) < 700 and "unknown setting" in line


def test_samples_too_few_hint_fits_the_method():
    from featsmooth.checks import CHECKS, best_case_slack, check_alpha_vs_samples

    (warning,) = [w for w in check_alpha_vs_samples(0.001, 50, "betting") if w]
    assert "betting" not in warning.hint and "bernstein" not in warning.hint
    assert "use method='betting'" not in str(warning) + CHECKS["samples-too-few"][1]
    (warning,) = [w for w in check_alpha_vs_samples(0.001, 50, "hoeffding") if w]
    assert "'betting' or 'bernstein' adapt" in warning.hint  # the way out for Hoeffding
    # a huge n is judged without an array of n ones (8 TB at n = 10**12)
    assert 0 < best_case_slack(0.001, 10**12, "betting") < 0.01


def test_summary_md_shows_html_in_names_as_text(tmp_path, make_pngs, capsys, monkeypatch):
    from featsmooth import cli

    monkeypatch.chdir(tmp_path)
    make_pngs(tmp_path / "imgs", 1, seed=0)
    run = "<img src=x onerror=alert(1)>"
    code = cli.run(["certify", "synthetic-trig", "--images", "imgs", *TINY, "--run-dir", run])
    assert code == 0, capsys.readouterr().err
    code = cli.run(["report", run, "--out", "rep", "--format", "md", "--label", run])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "rep/summary.md").read_text()
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_memory_is_checked_up_front():
    from featsmooth import config as C
    from featsmooth.errors import InputError

    cfg = C.CertifyConfig(n=10**6, size=224, batch_size=64)
    need = C.memory_estimate(cfg)
    assert need == 16 * 10**6 + 64 * 3 * 224**2 * 4
    C.check_memory(cfg, available=need * 4)  # fits
    with pytest.warns(UserWarning, match="over half"):
        C.check_memory(cfg, available=need + 1)
    with pytest.raises(InputError, match="more than the"):
        C.check_memory(cfg, available=need - 1)
