"""In Colab the setup cell installs the course's core only, and leaves Colab's runtime alone.

The one test module that uses the network: pip, in subprocesses, resolves and installs from
PyPI into a fresh virtual environment made like Colab's runtime (a few minutes). It skips
when PyPI is unreachable. The course is installed from a copy of this checkout, under the
name and extras the setup cell uses, so that the build writes nothing into the checkout.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from mi_course import build as B
from mi_course import integrity

ROOT = B.repo_root()
# Colab's notebook runtime: googlecolab/backend-info, pip-freeze.txt at a724079 (2026-08-19).
COLAB_PIP = "24.1.2"
COLAB_RUNTIME = {
    "ipykernel": "6.17.1",
    "ipython": "7.34.0",
    "jupyter-client": "7.4.9",
    "jupyter-server": "2.20.0",
    "notebook": "6.5.7",
    "tornado": "6.5.7",
    "pyzmq": "26.2.1",
}
INSTRUCTOR = ("jupyterlab", "nbval", "pytest")  # the distributions and their modules


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_cell_requirement() -> str:
    """What the setup cell's ``%pip install`` asks for."""
    return re.search(r'%pip install -q "(.+)"', B.setup_cell_source())[1]


def torch_spec() -> list[str]:
    """The PyTorch build setup.sh installs (its TORCH_SPEC), as pip arguments."""
    default = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-(.+)\}", (ROOT / "setup.sh").read_text())[1]
    return os.environ.get("TORCH_SPEC", default).split()


def pypi_reachable() -> bool:
    # A subprocess: conftest.py's offline guard blocks this process's sockets.
    probe = "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=5)"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run(*args: str | Path, timeout: int = 1800, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@dataclass(frozen=True)
class ColabEnv:
    python: Path
    planned: dict[str, str]  # what the dry run would install or upgrade: name -> version
    install_s: float  # how long the real install of the setup cell's requirement took


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> ColabEnv:
    """A venv with torch and Colab's runtime; the setup cell's install, dry-run first, then real.

    About 2 GB, left in pytest's temporary folder (pytest keeps those of the last 3 runs).
    """
    if not pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is unreachable: cannot resolve the Colab install")
    tmp = tmp_path_factory.mktemp("colab")
    run(sys.executable, "-m", "venv", tmp / "venv", timeout=300)
    python = tmp / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"pip=={COLAB_PIP}")
    run(python, "-m", "pip", "install", "--quiet", *torch_spec())  # alone: TORCH_SPEC may name an index
    run(python, "-m", "pip", "install", "--quiet", *(f"{n}=={v}" for n, v in COLAB_RUNTIME.items()))
    source = tmp / "mi-course"
    shutil.copytree(ROOT / "mi_course", source / "mi_course", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    requirement = setup_cell_requirement().replace(f"git+{B.repository_url()}", source.as_uri())
    report = tmp / "report.json"
    run(python, "-m", "pip", "install", "--quiet", "--dry-run", "--report", report, requirement)
    planned = {normalise(p["metadata"]["name"]): p["metadata"]["version"] for p in json.loads(report.read_text())["install"]}
    start = time.monotonic()
    run(python, "-m", "pip", "install", "--quiet", requirement)
    return ColabEnv(python, planned, time.monotonic() - start)


def test_setup_cell_installs_the_course_without_extras():
    assert setup_cell_requirement() == f"mi-course @ git+{B.repository_url()}"


def test_colab_install_keeps_torch_and_the_notebook_runtime(colab):
    print(f"the setup cell's install took {colab.install_s:.0f} s")
    assert "mi-course" in colab.planned
    kept = {"torch", *COLAB_RUNTIME}
    touched = {name: colab.planned[name] for name in kept if name in colab.planned}
    assert not touched, f"the Colab install would reinstall or upgrade {touched}"
    instructor = {name for name in INSTRUCTOR if name in colab.planned}
    assert not instructor, f"the Colab install would bring the instructor tools {sorted(instructor)}"


def test_core_env_is_consistent_and_has_no_instructor_tools(colab):
    run(colab.python, "-m", "pip", "check")
    probe = f"import importlib.util; print(*[m for m in {INSTRUCTOR!r} if importlib.util.find_spec(m)])"
    assert run(colab.python, "-c", probe).stdout.strip() == ""


def test_grade_names_the_missing_extra_in_the_core_env(colab, tmp_path):
    result = subprocess.run([colab.python, "-m", "mi_course", "grade", "submissions"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "mi-course grade needs the instructor tools (pytest, nbval missing): pip install 'mi-course[instructor]'\n"


def notebook_imports() -> list[str]:
    """Every import statement in the code cells of the student and solution notebooks."""
    found = set()
    for path in sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("solutions/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                tree = ast.parse(integrity.python_source(cell.source))
                found |= {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return sorted(found)


def test_notebook_imports_work_in_the_core_env(colab, tmp_path):
    imports = notebook_imports()
    assert "import mi_course.checks.nb03" in imports and "import torch" in imports
    # From an empty folder, so that mi_course is the installed copy, package data included.
    script = "\n".join([*imports, "import mi_course", "print(mi_course.__file__)", "load_model('toy-lm')"])
    out = run(colab.python, "-c", script, cwd=tmp_path, timeout=600).stdout
    assert "site-packages" in out
