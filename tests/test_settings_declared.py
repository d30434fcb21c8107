"""Each setting's default is declared once, in its command's settings dataclass: the CLI's
``--help`` shows that default (generated, never typed by hand), and a config file accepts
exactly the declared settings."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
import yaml

from featsmooth import cli
from featsmooth import config as C
from featsmooth.errors import InputError

DEFAULT = re.compile(r"\[default: ([^\]]*)\]")


def _declared(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


@pytest.mark.parametrize(("command", "config"), sorted(cli.COMMAND_CONFIGS.items()))
def test_help_defaults_are_the_declared_defaults(command, config):
    raw = typer.main.get_command(cli.app).commands[command]
    shown = cli.with_declared_defaults(typer.main.get_command(cli.app)).commands[command]
    fields = {f.name: f for f in dataclasses.fields(getattr(C, config))}
    checked = 0
    for before, option in zip(raw.params, shown.params):
        field = fields.get(option.name)
        if field is None or option.param_type_name != "option":
            continue
        value = _declared(field)
        if value is None:  # help keeps its words ("the model's"), no invented value
            continue
        # no default typed by hand in the source, and the generated one is the declared one
        assert not DEFAULT.search(before.help or ""), (command, option.name, before.help)
        (text,) = DEFAULT.findall(option.help)
        assert text == cli._render_default(option, value), (command, option.name)
        checked += 1
    assert checked >= 3


def test_rendered_defaults_read_back_as_the_declared_values():
    shown = cli.with_declared_defaults(typer.main.get_command(cli.app))
    demo = {p.name: p for p in shown.commands["demo"].params}
    assert "[default: 16]" in demo["n0"].help and "[default: 300]" in demo["n"].help
    assert "[default: no-tune]" in demo["tune"].help
    certify = {p.name: p for p in shown.commands["certify"].params}
    assert "[default: no-tune]" in certify["tune"].help
    assert "[default: 0.1,0.25,0.5]" in certify["radii"].help


@pytest.mark.parametrize("config", sorted(set(cli.COMMAND_CONFIGS.values())))
def test_config_file_keys_are_exactly_the_declared_settings(config, tmp_path):
    cls = getattr(C, config)
    values = {}
    for field in dataclasses.fields(cls):
        value = _declared(field)
        if value is not None:
            values[field.name.replace("_", "-")] = value
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(values))
    assert C.resolve(cls, config_file=path) == cls()  # every declared key is accepted
    path.write_text(yaml.safe_dump({**values, "not-a-setting": 1}))
    with pytest.raises(InputError, match="unknown setting"):
        C.resolve(cls, config_file=path)
