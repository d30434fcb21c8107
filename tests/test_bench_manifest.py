"""bench/manifest.py names every bench/results file once, with a command its script accepts."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

import manifest  # noqa: E402


def test_every_result_has_exactly_one_entry() -> None:
    """Each file and folder directly under bench/results is an output of one entry."""
    named = [out for entry in manifest.MANIFEST for out in entry.outputs]
    assert len(named) == len(set(named))
    present = {p.name for p in RESULTS.iterdir() if not p.name.endswith(".tmp")}
    assert present == set(named)


def test_names_are_unique_and_classes_known() -> None:
    """Entry names are unique; every duration class is a known one."""
    assert len(manifest.by_name()) == len(manifest.MANIFEST)
    assert {e.duration for e in manifest.MANIFEST} <= set(manifest.DURATIONS)


@pytest.mark.parametrize("entry", manifest.MANIFEST, ids=lambda e: e.name)
def test_entry_arguments_parse_and_name_the_output(entry: manifest.Entry) -> None:
    """The script exists, its parser accepts the arguments, and each output option is
    parsed to the output's path under bench/results."""
    assert (BENCH / entry.script).is_file()
    module = importlib.import_module(entry.script.removesuffix(".py"))
    parser = module.build_parser()
    args = parser.parse_args(list(entry.args))
    for output, option in entry.outputs.items():
        action = next(a for a in parser._actions if option in a.option_strings)
        assert str(getattr(args, action.dest)) == f"{manifest.RESULTS}/{output}"


def test_list_names_every_file() -> None:
    """``regenerate.py --list`` exits 0 and prints every output name."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "regenerate.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    for entry in manifest.MANIFEST:
        for output in entry.outputs:
            assert output in done.stdout
