"""The README's options table and `nst stylize --help` agree: the same options, the same
defaults wherever the README states one as a value."""

from __future__ import annotations

import re

import pytest
import typer
from conftest import ROOT

from nst_onnx.cli import app


def readme_options() -> dict[frozenset[str], str]:
    """{option names: default cell} from the table under '## Usage'."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Usage", 1)[1].split("\n\n")[2]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = frozenset(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", cells[0]))
        rows[names] = cells[1]
    return rows


def help_options() -> dict[frozenset[str], object]:
    """{option names: default}; where the option's value is None when not given (the run
    decides: --size, --history), the default its help shows."""
    cmd = typer.main.get_command(app).commands["stylize"]

    def default(p):
        shown = re.search(r"\[default: ([^\]]+)\]$", p.help or "")
        return p.default if p.default is not None or not shown else shown.group(1)
    return {frozenset(p.opts + p.secondary_opts): default(p) for p in cmd.params
            if p.param_type_name == "option"}


def test_readme_table_lists_exactly_the_options_of_stylize():
    assert set(readme_options()) == set(help_options()), \
        set(readme_options()) ^ set(help_options())


def _value(cell: str):
    """A default as the README writes it, or None where it describes one in words."""
    cell = cell.strip()
    if m := re.fullmatch(r"`([^`\s]+)`", cell):
        return m.group(1)
    try:
        return float(cell)
    except ValueError:
        return None


@pytest.mark.parametrize("names", sorted(help_options(), key=sorted), ids=lambda n: max(n))
def test_readme_default_is_the_real_one(names):
    stated = _value(readme_options()[names])
    real = help_options()[names]
    if stated is None:
        return
    if isinstance(stated, float):
        assert float(real) == pytest.approx(stated), (names, real)
    else:
        assert str(real) == stated, (names, real)
