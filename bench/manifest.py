"""Which command produces which file of ``bench/results``: one entry per results file.

Every file and folder under ``bench/results`` is named by exactly one :class:`Entry`
(``tests/test_bench_manifest.py`` checks it). Paths in arguments are relative to the
repository root, where ``bench/regenerate.py`` runs every command. Trained plug-ins and
resumable records outside ``bench/results`` go to ``runs/`` (ignored by git).

Duration classes (two shared CPU cores, or one GPU for ``cuda`` entries): ``minutes``
(under 15 min), ``hour`` (15-90 min), ``hours`` (more; these are the ``long`` entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RESULTS = "bench/results"
PLUGIN = "runs/plugin-default"  # bench_plugin.py --save-plugin; the attacks' plug-in
TRAIN = "runs/train-default"  # train_plugin_corpus.py --workdir
TRAIN_LONG = "runs/train-default-long"  # its feature stage continued, then a new mapper
DURATIONS = ("minutes", "hour", "hours")


@dataclass(frozen=True)
class Entry:
    """One command: ``python bench/<script> <args>`` writes ``outputs`` (results-relative
    name -> the option that names it in ``args``).

    ``needs`` lists ``"cuda"`` and/or paths (files or folders made by earlier entries) that
    must exist; ``resumes_from`` are paths the script resumes from when present (the
    regenerator moves them aside for a fresh run); ``note`` says what could not be
    recovered exactly."""

    outputs: dict[str, str]
    script: str
    args: tuple[str, ...]
    duration: str
    needs: tuple[str, ...] = ()
    resumes_from: tuple[str, ...] = ()
    note: str = ""

    @property
    def name(self) -> str:
        """The first output's name without ``.json``: unique over the manifest."""
        return next(iter(self.outputs)).removesuffix(".json")

    @property
    def long(self) -> bool:
        """True for the entries that take hours (plug-in training and the big runs)."""
        return self.duration == "hours"

    @property
    def cuda(self) -> bool:
        """True when the entry must run on a CUDA GPU."""
        return "cuda" in self.needs

    def command(self) -> list[str]:
        """The argument vector after the interpreter: script path then its arguments."""
        return [f"bench/{self.script}", *self.args]


def _out(name: str, option: str = "--out") -> tuple[dict[str, str], tuple[str, ...]]:
    """The outputs map and the arguments that write ``bench/results/<name>``."""
    return {name: option}, (option, f"{RESULTS}/{name}")


def _entry(name: str, script: str, args: tuple[str, ...], duration: str, **kw: Any) -> Entry:
    """An entry with one output, named by ``kw["option"]`` (default ``--out``)."""
    outputs, out_args = _out(name, kw.pop("option", "--out"))
    return Entry(outputs, script, (*args, *out_args), duration, **kw)


_ATTACKS_PLUGIN = (
    "--plugin", PLUGIN, "--image-size", "128", "--steps", "20", "--eot", "4", "--judge", "16",
    "--n", "256", "--check-draws", "64",
)  # fmt: skip
_SCALE = ("--draws", "8", "--threads", "1")
_PLUGIN_NOTE = (
    "the plug-in folder is not recorded in the JSON; assumed the one bench_plugin.py saves "
    f"(recorded as plugins/default, here {PLUGIN})"
)

MANIFEST: tuple[Entry, ...] = (
    # --- no plug-in needed -------------------------------------------------------------
    _entry("bounds.json", "bench_bounds.py", (), "minutes"),
    _entry("allocator.json", "bench_allocator.py", ("--rounds", "3"), "minutes"),
    _entry("allocator_demo.json", "bench_allocator.py", ("--demo-rounds", "2"), "minutes"),
    _entry("betting_floor.json", "bench_betting_floor.py", (), "minutes"),
    _entry("families.json", "bench_families.py", (), "minutes"),
    _entry("mllm_forward.json", "bench_mllm_forward.py", (), "minutes"),
    _entry(
        "throughput.json",
        "bench_throughput.py",
        (
            "--device",
            "cpu",
            "--dtypes",
            "float32",
            "bfloat16",
            "--images",
            "1",
            "--batch-size",
            "16",
            "--n0",
            "8",
            "--n",
            "24",
            "--repeats",
            "2",
            "--threads",
            "1",
        ),
        "minutes",
    ),
    _entry(
        "throughput_cpu_device.json",
        "bench_throughput.py",
        (
            "--models",
            "efficientnet-lite0",
            "--device",
            "cpu",
            "--dtypes",
            "float32",
            "bfloat16",
            "--images",
            "2",
            "--batch-size",
            "32",
            "--n0",
            "32",
            "--n",
            "96",
            "--repeats",
            "3",
            "--threads",
            "2",
        ),
        "minutes",
        note="measured on the CPU of the GPU machine (16 cores); CUDA not used",
    ),
    _entry(
        "throughput_cuda.json",
        "bench_throughput.py",
        (
            "--models",
            "efficientnet-lite0",
            "--device",
            "cuda",
            "--dtypes",
            "float32",
            "float16",
            "bfloat16",
            "--images",
            "4",
            "--batch-size",
            "256",
            "--n0",
            "64",
            "--n",
            "1984",
            "--repeats",
            "3",
            "--threads",
            "1",
        ),
        "minutes",
        needs=("cuda",),
    ),
    _entry(
        "scaling.json",
        "bench_scaling.py",
        (
            "--device",
            "cpu",
            "--cnn-n",
            "16",
            "32",
            "64",
            "--cnn-batch",
            "16",
            "--cnn-batches",
            "8",
            "16",
            "32",
            "--cnn-fixed-n",
            "32",
            "--ray",
            "--ray-cnn-n",
            "32",
            "--threads",
            "1",
        ),
        "hour",
        note="--ray needs the ray extra (pip install -e .[ray])",
    ),
    _entry(
        "scaling_cuda.json",
        "bench_scaling.py",
        (
            "--device",
            "cuda",
            "--cnn-images",
            "2",
            "--cnn-n",
            "1024",
            "4096",
            "8192",
            "--cnn-batch",
            "256",
            "--cnn-batches",
            "64",
            "256",
            "1024",
            "--cnn-fixed-n",
            "4096",
            "--synthetic-n",
            "10000",
            "50000",
            "200000",
            "--synthetic-batch",
            "4096",
            "--synthetic-batches",
            "256",
            "1024",
            "4096",
            "16384",
            "--synthetic-fixed-n",
            "50000",
        ),
        "minutes",
        needs=("cuda",),
    ),
    _entry(
        "sample_efficiency.json",
        "bench_sample_efficiency.py",
        (
            "--device",
            "cpu",
            "--photos",
            "coffee",
            "--max-n",
            "2000",
            "--seq-max-n",
            "4000",
            "--batch-size",
            "32",
            "--threads",
            "1",
        ),
        "hour",
    ),
    _entry(
        "sample_efficiency_cuda.json",
        "bench_sample_efficiency.py",
        (
            "--model",
            "efficientnet-lite0",
            "--device",
            "cuda",
            "--photos",
            "coffee",
            "chelsea",
            "rocket",
            "china",
            "--max-n",
            "100000",
            "--batch-size",
            "512",
            "--threads",
            "1",
        ),
        "minutes",
        needs=("cuda",),
    ),
    _entry(
        "sample_efficiency_cuda_long.json",
        "bench_sample_efficiency.py",
        (
            "--model",
            "efficientnet-lite0",
            "--device",
            "cuda",
            "--photos",
            "coffee",
            "chelsea",
            "--max-n",
            "150000",
            "--batch-size",
            "1024",
            "--threads",
            "1",
        ),
        "minutes",
        needs=("cuda",),
    ),
    _entry("demo_speed.json", "bench_demo_speed.py", ("--batches", "8", "16"), "minutes"),
    _entry(
        "demo_speed_loaded.json",
        "bench_demo_speed.py",
        ("--no-tune", "--batches", "8", "4", "--busy", "2", "--photos", "1", "--rounds", "3"),
        "minutes",
    ),
    _entry(
        "demo_speed_loaded_1thread.json",
        "bench_demo_speed.py",
        (
            "--no-tune",
            "--batches",
            "4",
            "--busy",
            "2",
            "--photos",
            "1",
            "--rounds",
            "3",
            "--threads",
            "1",
        ),
        "minutes",
    ),
    _entry("prediction_certificates.json", "bench_prediction_certificates.py", (), "minutes"),
    _entry("defaults_default.json", "bench_defaults.py", ("--n0", "16", "--n", "300"), "hours"),
    _entry(
        "defaults_efficientnet-lite0.json",
        "bench_defaults.py",
        ("--model", "efficientnet-lite0", "--n0", "16", "--n", "300"),
        "hour",
    ),
    _entry("attacks.json", "bench_attacks.py", (), "hour"),
    _entry("attacks_l2_0.25.json", "bench_attacks.py", ("--budgets", "l2:0.25"), "hour"),
    Entry(
        {"paper_protocol.json": "--out", "paper_protocol_run": "--run-dir"},
        "bench_paper_protocol.py",
        (
            "--threads",
            "1",
            "--run-dir",
            f"{RESULTS}/paper_protocol_run",
            "--out",
            f"{RESULTS}/paper_protocol.json",
        ),
        "hours",
        resumes_from=(f"{RESULTS}/paper_protocol_run",),
        note="the stored JSON was written with --summarize-only from the records of a run "
        "stopped early (complete: false); this command runs the protocol to the end",
    ),
    _entry(
        "paper_protocol_foa_fs.json",
        "bench_paper_protocol.py",
        (
            "--attacks",
            "foa",
            "--settings",
            "fs",
            "--threads",
            "1",
            "--run-dir",
            "runs/paper-protocol-foa-fs",
        ),
        "hours",
        resumes_from=("runs/paper-protocol-foa-fs",),
        note="the stored JSON was written with --summarize-only from the records of a run "
        "stopped early (complete: false); this command runs the protocol to the end",
    ),
    # --- the plug-in on the labelled photos, then what uses it ---------------------------
    _entry(
        "plugin.json",
        "bench_plugin.py",
        ("--save-plugin", PLUGIN),
        "hours",
        note=f"trains the plug-in (recorded --save-plugin plugins/default, here {PLUGIN})",
    ),
    _entry(
        "attacks_plugin.json",
        "bench_attacks.py",
        _ATTACKS_PLUGIN,
        "hour",
        needs=(PLUGIN,),
        note=_PLUGIN_NOTE,
    ),
    _entry(
        "attacks_plugin_10class.json",
        "bench_attacks.py",
        (*_ATTACKS_PLUGIN, "--ten-classes", "--threads", "1"),
        "hour",
        needs=(PLUGIN,),
        note=_PLUGIN_NOTE,
    ),
    _entry(
        "attacks_plugin_10class_l2_0.25.json",
        "bench_attacks.py",
        (*_ATTACKS_PLUGIN, "--ten-classes", "--threads", "1", "--budgets", "l2:0.25"),
        "hour",
        needs=(PLUGIN,),
        note=_PLUGIN_NOTE,
    ),
    _entry(
        "paper_protocol_plugin.json",
        "bench_paper_protocol.py",
        (
            "--attacks",
            "mf-ii,m-attack",
            "--settings",
            "fs+plugin",
            "--plugin",
            PLUGIN,
            "--threads",
            "1",
            "--run-dir",
            "runs/paper-protocol-plugin",
        ),
        "hour",
        needs=(PLUGIN,),
        resumes_from=("runs/paper-protocol-plugin",),
        note=f"recorded --plugin plugins/default, here {PLUGIN}",
    ),
    # --- the plug-in trained on the photo corpus, then the comparison at scale ----------
    _entry(
        "plugin_scale_training.json",
        "train_plugin_corpus.py",
        (
            "--workdir",
            TRAIN,
            "--pixel-steps",
            "250",
            "--feature-steps",
            "350",
            "--mapper-steps",
            "100",
            "--mapper-lr",
            "1e-3",
        ),
        "hours",
        option="--summary-out",
        resumes_from=(TRAIN,),
        note="the stored JSON was assembled by hand from the workdir (its 'reproduce' line "
        "gives these arguments); --summary-out now writes it, with other keys",
    ),
    _entry(
        "plugin_scale_baselines.json",
        "bench_plugin_scale.py",
        ("--variant", "fs=none", "--variant", "fs+tv=tv", "--variant", "fs+nlm=nlm", *_SCALE),
        "hours",
        resumes_from=(f"{RESULTS}/plugin_scale_baselines.json",),
    ),
    _entry(
        "plugin_scale_learned.json",
        "bench_plugin_scale.py",
        (
            "--variant",
            "fs=none",
            "--variant",
            f"fs+purifier={TRAIN}/feature-plugin:purifier",
            "--variant",
            f"fs+pixel-purifier={TRAIN}/pixel-plugin:purifier",
            *_SCALE,
        ),
        "hours",
        needs=(f"{TRAIN}/feature-plugin", f"{TRAIN}/pixel-plugin"),
        resumes_from=(f"{RESULTS}/plugin_scale_learned.json",),
    ),
    _entry(
        "plugin_scale_plugin.json",
        "bench_plugin_scale.py",
        (
            "--variant",
            "fs=none",
            "--variant",
            f"fs+plugin={TRAIN}/mapper-plugin",
            "--variant",
            f"fs+mapper={TRAIN}/mapper-plugin:mapper",
            *_SCALE,
        ),
        "hours",
        needs=(f"{TRAIN}/mapper-plugin",),
        resumes_from=(f"{RESULTS}/plugin_scale_plugin.json",),
    ),
    _entry(
        "plugin_scale_psnr.json",
        "bench_plugin_scale.py",
        (
            "--psnr",
            "--crops",
            "50",
            "--variant",
            "noisy=none",
            "--variant",
            "tv=tv",
            "--variant",
            "nlm=nlm",
            "--variant",
            f"pixel-purifier={TRAIN}/pixel-plugin:purifier",
            "--variant",
            f"feature-purifier={TRAIN}/feature-plugin:purifier",
        ),
        "minutes",
        needs=(f"{TRAIN}/feature-plugin", f"{TRAIN}/pixel-plugin"),
    ),
    _entry(
        "plugin_scale_training_long.json",
        "train_plugin_corpus.py",
        (
            "--workdir",
            TRAIN_LONG,
            "--stages",
            "feature,mapper",
            "--feature-init",
            f"{TRAIN}/feature-plugin",
            "--feature-steps",
            "1500",
            "--feature-batch",
            "8",
            "--mapper-steps",
            "300",
            "--mapper-batch",
            "16",
            "--mapper-lr",
            "1e-3",
            "--val-crops",
            "32",
            "--val-every",
            "250",
            "--threads",
            "2",
        ),
        "hours",
        option="--summary-out",
        needs=(f"{TRAIN}/feature-plugin",),
        resumes_from=(TRAIN_LONG,),
    ),
    _entry(
        "plugin_scale_long.json",
        "bench_plugin_scale.py",
        (
            "--variant",
            "fs=none",
            "--variant",
            f"fs+plugin-long={TRAIN_LONG}/mapper-plugin",
            "--variant",
            f"fs+purifier-long={TRAIN_LONG}/mapper-plugin:purifier",
            "--draws",
            "8",
            "--threads",
            "2",
        ),
        "hour",
        needs=(f"{TRAIN_LONG}/mapper-plugin",),
        resumes_from=(f"{RESULTS}/plugin_scale_long.json",),
    ),
    # the agreement (KL) objective: two short CPU runs, stopped early (see their validations)
    _entry(
        "plugin_agreement_purifier.json",
        "train_plugin_corpus.py",
        (
            "--workdir",
            "runs/train-agreement-purifier",
            "--stages",
            "feature",
            "--feature-init",
            f"{TRAIN}/feature-plugin",
            "--feature-steps",
            "600",
            "--feature-batch",
            "8",
            "--w-agree",
            "1",
            "--agree-scale",
            "100",
            "--val-crops",
            "32",
            "--val-every",
            "250",
        ),
        "hour",
        option="--summary-out",
        needs=(f"{TRAIN}/feature-plugin",),
        resumes_from=("runs/train-agreement-purifier",),
        note="stopped at step 600 of a planned 5000 (validation S_c fell); rerun with "
        "--feature-steps 600 to reproduce",
    ),
    _entry(
        "plugin_agreement_mapper.json",
        "train_plugin_corpus.py",
        (
            "--workdir",
            "runs/train-agreement-mapper",
            "--stages",
            "mapper",
            "--mapper-steps",
            "525",
            "--mapper-batch",
            "16",
            "--mapper-lr",
            "1e-3",
            "--w-agree",
            "0.1",
            "--agree-scale",
            "100",
            "--val-crops",
            "32",
            "--val-every",
            "250",
        ),
        "hour",
        option="--summary-out",
        resumes_from=("runs/train-agreement-mapper",),
        note="stopped at step 525 of a planned 2500 (validation S_c below plain FS)",
    ),
    # how stable the plain encoder's top-1 is under faint noise: the ceiling of agreement
    _entry(
        "plugin_scale_ceiling.json",
        "bench_plugin_scale.py",
        ("--variant", "fs=none", "--sigmas", "0.02", "0.05", "0.1", *_SCALE, "--save-every", "20"),
        "hour",
    ),
    _entry(
        "plugin_scale_table.json",
        "bench_plugin_scale.py",
        (
            "--report",
            f"{RESULTS}/plugin_scale_baselines.json",
            f"{RESULTS}/plugin_scale_learned.json",
            f"{RESULTS}/plugin_scale_plugin.json",
            f"{RESULTS}/plugin_scale_long.json",
            "--common",
        ),
        "minutes",
        option="--table-out",
        needs=(
            f"{RESULTS}/plugin_scale_baselines.json",
            f"{RESULTS}/plugin_scale_learned.json",
            f"{RESULTS}/plugin_scale_plugin.json",
            f"{RESULTS}/plugin_scale_long.json",
        ),
        note="the table is now wrapped with its settings and environment ('table' key)",
    ),
)


def by_name() -> dict[str, Entry]:
    """Every entry under its :attr:`Entry.name`; names are unique."""
    names = {e.name: e for e in MANIFEST}
    assert len(names) == len(MANIFEST), "duplicate entry names"
    return names
