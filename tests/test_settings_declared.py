"""Each setting is declared once (:mod:`featsmooth.settings`, used by the dataclasses of
:mod:`featsmooth.config`): the CLI's options, their ``--help`` defaults, the keys a config
file accepts and the validation messages are all generated from the declarations."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
import typer
import typer.rich_utils
import yaml

from featsmooth import cli
from featsmooth import config as C
from featsmooth import settings as S
from featsmooth.errors import InputError

DEFAULT = re.compile(r"\[default: ([^\]]*)\]")
#: the options of a command that are not settings: its own extras, and --config
EXTRAS = {"demo": {"fast"}, "predict": {"save"}}
COMMANDS = sorted(C.COMMANDS.items())


def _declared_default(field: dataclasses.Field) -> typing.Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _command(name: str) -> typing.Any:
    return typer.main.get_command(cli.app).commands[name]


def _kind(cls: type, name: str) -> type:
    return cli._cli_type(typing.get_type_hints(cls)[name])


def _read_back(text: str, spec: S.Setting, name: str, kind: type, hint: typing.Any) -> typing.Any:
    """The value a shown default stands for: the flag that sets a boolean, else the text
    through the same conversion as a command-line value."""
    if hint is bool:
        on, _, off = spec.flags(name, bool).partition("/")
        return {on.lstrip("-"): True, off.lstrip("-") or "off": False, "on": True}[text]
    return C._convert(name, hint, text, "help")


def test_every_field_is_declared_with_a_setting():
    for cls in C.COMMANDS.values():
        declared = S.declared(cls)  # raises for a field with a plain default
        assert list(declared) == [f.name for f in dataclasses.fields(cls)]
        assert all(spec.help.strip() for spec in declared.values())
        assert not any(DEFAULT.search(spec.help) for spec in declared.values())  # generated


@pytest.mark.parametrize(("command", "cls"), COMMANDS)
def test_help_defaults_are_the_declared_defaults(command, cls):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    declared = S.declared(cls)
    checked = 0
    for option in _command(command).params:
        if option.name not in declared or option.param_type_name != "option":
            continue
        spec, value = declared[option.name], _declared_default(fields[option.name])
        shown = DEFAULT.findall(option.help or "")
        if value is None:  # words such as "the model's", or nothing: no invented value
            assert shown == ([spec.default_text] if spec.default_text else []), option.name
            continue
        assert len(shown) == 1, (command, option.name, option.help)
        kind = _kind(cls, option.name)
        assert _read_back(shown[0], spec, option.name, kind, hints[option.name]) == value, (
            command,
            option.name,
            shown[0],
        )
        checked += 1
    assert checked >= 3


def test_real_help_shows_the_declared_defaults(capsys, monkeypatch):
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 2000)
    assert cli.run(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for shown in ("[default: 16]", "[default: 300]", "[default: no-tune]", "[default: runs/demo]"):
        assert shown in text
    assert cli.run(["certify", "--help"]) == 0
    text = capsys.readouterr().out
    assert "[default: 0.1,0.25,0.5]" in text and "[default: 10000]" in text
    assert "[default: no-tune]" in text and "[default: the model's]" in text


@pytest.mark.parametrize(("command", "cls"), COMMANDS)
def test_cli_options_are_the_declared_settings(command, cls):
    params = _command(command).params
    arguments = {p.name for p in params if p.param_type_name == "argument"}
    options = {p.name for p in params if p.param_type_name == "option"} - {"help"}
    declared = {name for name, spec in S.declared(cls).items() if spec.cli}
    assert arguments - {"images"} <= declared  # predict's images: files, not one folder
    assert options == (declared - arguments) | {"config"} | EXTRAS.get(command, set())
    for option in params:  # each flag is the declared spelling
        if option.name in declared - arguments:
            spec = S.declared(cls)[option.name]
            flags = spec.flags(option.name, _kind(cls, option.name)).split("/")
            assert [*option.opts, *option.secondary_opts] == flags


@pytest.mark.parametrize("cls", sorted(set(C.COMMANDS.values()), key=lambda c: c.__name__))
def test_config_file_keys_are_exactly_the_declared_settings(cls, tmp_path):
    values = {
        f.name.replace("_", "-"): _declared_default(f) for f in dataclasses.fields(cls)
    }  # every declared key, unset (null) ones included
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(values))
    assert C.resolve(cls, config_file=path) == cls()  # every declared key is accepted
    path.write_text(yaml.safe_dump({**values, "not-a-setting": 1}))
    with pytest.raises(InputError, match="unknown setting") as caught:
        C.resolve(cls, config_file=path)
    valid = str(caught.value).split("valid: ")[1].split(", ")
    assert valid == list(values)  # ... and the message lists exactly the declared ones


def test_presets_are_named_overrides_of_declared_settings():
    fast = C.resolve(C.DemoConfig, preset="demo-fast")
    assert (fast.n0, fast.n, fast.batch_size, fast.tune) == (8, 32, 40, False)
    assert fast.sigma == C.DemoConfig().sigma  # everything else stays declared
    assert C.resolve(C.DemoConfig, preset="demo-fast", overrides={"n": 50}).n == 50
    paper = C.resolve(C.EvaluateConfig, preset="paper")
    assert [a.split(":")[0] for a in paper.attacks] == list(C.PAPER_ATTACKS)
    for name, overrides in C.PRESETS.items():
        assert any(set(overrides) <= set(S.declared(cls)) for cls in C.COMMANDS.values()), name
    with pytest.raises(InputError, match="unknown preset"):
        C.resolve(C.DemoConfig, preset="nope")
    with pytest.raises(InputError, match="not a setting"):
        C.resolve(C.DemoConfig, preset="paper")


def _bad_value(constraint: S.Constraint, kind: type, tmp_path) -> str:
    if isinstance(constraint, S.Interval):
        if constraint.low is not None:
            bad = (
                constraint.low if constraint.closed in ("right", "neither") else constraint.low - 1
            )
        else:
            bad = constraint.high + 1
        return str(int(bad) if kind is int else bad)
    if isinstance(constraint, S.OneOf):
        return "no-such-choice"
    if isinstance(constraint, S.Folder):
        (tmp_path / "a-file").write_text("x")
        return str(tmp_path / "a-file")
    raise AssertionError(f"no bad value known for {constraint!r}")


CONSTRAINED = [
    (command, cls, name)
    for command, cls in COMMANDS
    for name, spec in S.declared(cls).items()
    if spec.check is not None and spec.cli
]


@pytest.mark.parametrize(
    ("command", "cls", "name"), CONSTRAINED, ids=[f"{c}-{n}" for c, _, n in CONSTRAINED]
)
def test_a_bad_value_is_refused_naming_the_setting(command, cls, name, tmp_path, capsys):
    spec = S.declared(cls)[name]
    kind = _kind(cls, name)
    flag = spec.flags(name, kind).split("/")[0]
    args = [command] + (["synthetic-trig"] if command != "demo" else [])
    code = cli.run([*args, f"{flag}={_bad_value(spec.check, kind, tmp_path)}"])
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and S.dashed(name) in line.split("(see")[0], line


def test_constraint_messages_say_what_is_expected():
    with pytest.raises(InputError, match=r"n must be > 0, got 0"):
        S.POSITIVE.check("n", 0)
    with pytest.raises(InputError, match=r"radii must be >= 0, got \[0.1, -1.0\]"):
        S.NON_NEGATIVE.check("radii", [0.1, -1.0])
    with pytest.raises(InputError, match="alpha must lie strictly between 0 and 1, got 2"):
        S.PROBABILITY.check("alpha", 2.0)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\), got 1"):
        S.Interval(0, 1, closed="left").check("target-cosine", 1.0)
    with pytest.raises(InputError, match="unknown dtype 'x'; choose one of a, b"):
        S.OneOf(("a", "b")).check("dtype", "x")
    S.Interval(0, 10, closed="right").check("sigma", 10.0)  # a closed end is inside
