"""The build pipeline: solution notebooks -> student notebooks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mi_course import build as B
from mi_course import cli

EXERCISE = '''def double(x):
    """Twice x."""
    # BEGIN SOLUTION Multiply x by two.
    y = x + x
    return y
    # END SOLUTION'''


def test_indented_block_becomes_raise_with_hint():
    out = B.strip_code(EXERCISE)
    assert "x + x" not in out and "return y" not in out
    assert "    raise NotImplementedError('Multiply x by two.')" in out
    namespace: dict = {}
    exec(out, namespace)  # the stub still defines the function...
    with pytest.raises(NotImplementedError, match="Multiply x by two"):
        namespace["double"](2)  # ...which raises only when called


def test_top_level_block_assigns_none_to_each_name():
    src = "# BEGIN SOLUTION\nanswer, other = 3, 4\ntotal: int = 7\n# END SOLUTION\nprint('after')"
    out = B.strip_code(src)
    assert "answer = None" in out and "other = None" in out and "total = None" in out
    assert "3, 4" not in out and out.endswith("print('after')")
    assert f"# TODO: {B.DEFAULT_HINT}" in out


@pytest.mark.parametrize(
    "src, message",
    [
        ("    # BEGIN SOLUTION\n    x = 1", "without '# END SOLUTION'"),
        ("x = 1\n# END SOLUTION", "without a '# BEGIN SOLUTION'"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "nested"),
        ("# BEGIN SOLUTION\nprint(1)\n# END SOLUTION", "must assign"),
    ],
)
def test_malformed_blocks_are_named(src, message):
    with pytest.raises(B.BuildError, match=message):
        B.strip_code(src)


def test_markdown_answers_are_hidden():
    src = "Why?\n<!-- BEGIN SOLUTION -->\nBecause.\n<!-- END SOLUTION -->\nNext."
    assert B.strip_markdown(src) == f"Why?\n{B.MD_STUB}\nNext."
    with pytest.raises(B.BuildError, match="unbalanced"):
        B.strip_markdown("<!-- BEGIN SOLUTION --> open")


def make_course(root: Path, name: str = "99_demo") -> Path:
    """A minimal valid course in ``root``: pyproject (for the URL) and one solution notebook."""
    shutil.copy(B.repo_root() / "pyproject.toml", root / "pyproject.toml")
    (root / "solutions").mkdir()
    path = f"solutions/{name}.ipynb"
    title = f"# Demo\n{B.colab_badge(path, root)}\n\nYou will learn: x. Prerequisites: none. Time: 1 min."
    cells = [
        new_markdown_cell(title, id="title"),
        new_code_cell(B.setup_cell_source(root), id="setup"),
        new_code_cell(EXERCISE, id="ex1", metadata={"mi_course": {"exercise": "99.1"}}),
        new_code_cell("assert double(2) == 4", id="check1", metadata={"mi_course": {"role": "check", "exercise": "99.1", "points": 2, "kind": "implement"}}),
        new_markdown_cell("<!-- BEGIN SOLUTION -->secret<!-- END SOLUTION -->", id="md"),
    ]
    cells[3].outputs = [nbformat.v4.new_output("stream", text="ok\n")]
    nb = new_notebook(cells=cells, metadata={"mi_course": {"notebook": name}})
    nbformat.write(nb, root / path)
    return root / path


def test_build_writes_student_copy_and_check_detects_staleness(tmp_path):
    make_course(tmp_path)
    assert B.build(tmp_path, check=True) == [tmp_path / "notebooks/99_demo.ipynb"]
    assert not (tmp_path / "notebooks").exists()  # --check writes nothing
    B.build(tmp_path)
    assert B.build(tmp_path, check=True) == []
    student = nbformat.read(tmp_path / "notebooks/99_demo.ipynb", as_version=4)
    assert [c.id for c in student.cells] == ["title", "setup", "ex1", "check1", "md"]
    assert all(c.outputs == [] for c in student.cells if c.cell_type == "code")
    assert "x + x" not in student.cells[2].source and "secret" not in student.cells[4].source
    assert "/blob/main/notebooks/99_demo.ipynb" in student.cells[0].source
    assert student.cells[3].metadata["mi_course"]["points"] == 2
    # An edit to the source makes the copy stale again; a stray notebook is stale too.
    src = nbformat.read(tmp_path / "solutions/99_demo.ipynb", as_version=4)
    src.cells[4].source += "\nmore"
    nbformat.write(src, tmp_path / "solutions/99_demo.ipynb")
    (tmp_path / "notebooks/98_stray.ipynb").write_text("{}")
    stale = B.build(tmp_path, check=True)
    assert set(stale) == {tmp_path / "notebooks/99_demo.ipynb", tmp_path / "notebooks/98_stray.ipynb"}
    B.build(tmp_path)
    assert not (tmp_path / "notebooks/98_stray.ipynb").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda nb: nb.cells.pop(3), "has no check cell"),
        (lambda nb: nb.cells[3].metadata["mi_course"].update(points=0), "integer points"),
        (lambda nb: nb.cells[2].metadata.pop("mi_course"), "no metadata mi_course.exercise"),
        (lambda nb: nb.cells.pop(1), "setup cell"),
        (lambda nb: setattr(nb.cells[0], "source", "# Demo\nno badge"), "Colab badge"),
        (lambda nb: nb.metadata.pop("mi_course"), "mi_course.notebook"),
    ],
)
def test_build_rejects_broken_conventions(tmp_path, edit, message):
    path = make_course(tmp_path)
    nb = nbformat.read(path, as_version=4)
    edit(nb)
    nbformat.write(nb, path)
    with pytest.raises(B.BuildError, match=message):
        B.build(tmp_path)


def test_course_notebooks_are_up_to_date(root):
    """The committed student notebooks are exactly what `mi-course build` writes."""
    result = subprocess.run([sys.executable, "-m", "mi_course", "build", "--check"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_reports_unknown_command():
    result = subprocess.run([sys.executable, "-m", "mi_course", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr


@pytest.mark.parametrize("command", sorted(c for c in cli.COMMANDS if cli.TOOLS[c]))
def test_cli_names_the_extra_when_an_instructor_tool_is_missing(command, monkeypatch, capsys):
    present = cli.find_spec
    monkeypatch.setattr(cli, "find_spec", lambda name: None if name == "nbformat" else present(name))
    assert cli.main([command, "--help"]) == 2
    assert capsys.readouterr().err == f"mi-course {command} needs the instructor tools (nbformat missing): pip install 'mi-course[instructor]'\n"


def test_cli_commands_without_instructor_tools_run_in_a_student_install(monkeypatch):
    """`mi-course mystery` needs nothing from the instructor extra: it runs with nbformat missing."""
    present = cli.find_spec
    monkeypatch.setattr(cli, "find_spec", lambda name: None if name == "nbformat" else present(name))
    for command in (c for c in cli.COMMANDS if not cli.TOOLS[c]):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0
