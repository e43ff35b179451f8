"""Repository hygiene that CI enforces: notebooks without outputs, papermill parameters cells,
no logic in notebooks, and the README's test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_parameters_cell_and_no_definitions(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters' for papermill"
    )
    for cell in code:
        assert not re.search(r"^\s*(def|class)\s", cell.source, re.M), (
            f"{path.name}: a def/class in a notebook belongs in ctgan/"
        )


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^#+\s*Quick[ -]?start.*?$(.*?)(?=^#+\s|\Z)", text, re.S | re.M | re.I)
    assert section, "README.md has no Quick start section"
    block = re.search(r"```[a-z]*\n(.*?)```", section.group(1), re.S)
    assert block, "README.md's Quick start has no fenced block"
    return [
        line.strip().removeprefix("$ ")
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^\s*{re.escape(commands[1])}\s*$", ci, re.M), (
        f".ci/run must run the README's test command {commands[1]!r}"
    )
