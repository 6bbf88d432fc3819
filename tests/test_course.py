"""The course as a whole: install files, README, and every notebook wired to its checks."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import nbformat
import pytest

from mi_course import build as B

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = B.repo_root()
STUDENT_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_environment_yml_installs_the_same_requirements_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["instructor"]
    pip_lines = re.findall(r'^\s+- "(.+)"$', (ROOT / "environment.yml").read_text(), re.M)
    assert sorted(pip_lines) == sorted(deps + ["-e .[instructor]"])


def test_setup_installs_the_instructor_tools():
    setup = (ROOT / "setup.sh").read_text()
    assert re.search(r'^\.venv/bin/python -m pip install --quiet -e "\.\[instructor\]"$', setup, re.M)


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_gives_two_commands_and_ci_runs_them():
    setup, test = readme_commands()
    ci = (ROOT / ".ci/run").read_text()
    assert f"{setup} --no-open" in ci, "CI must set up exactly as the README's first command"
    assert ci.rstrip().endswith(test), "CI must end by running the README's test command"


def test_readme_lists_every_notebook_with_its_colab_badge():
    readme = (ROOT / "README.md").read_text()
    for name in B.COURSE:
        row = next((l for l in readme.splitlines() if l.startswith(f"| {name} ")), None)
        assert row is not None, f"README.md has no row for {name}"
        if (ROOT / "notebooks" / f"{name}.ipynb").exists():
            assert B.colab_badge(f"notebooks/{name}.ipynb") in row, f"{name}: badge missing or wrong"
        else:
            assert "*in preparation*" in row, f"{name} does not exist yet: mark it *in preparation*"


def test_setup_cell_installs_from_the_repository_only_in_colab():
    src = B.setup_cell_source()
    assert 'if "google.colab" in sys.modules:' in src
    assert f"git+{B.repository_url()}" in src
    namespace: dict = {}
    exec(src.replace("%pip", "raise RuntimeError #"), namespace)  # outside Colab: does nothing


@pytest.mark.parametrize("path", STUDENT_NOTEBOOKS, ids=lambda p: p.stem)
def test_student_notebook_fails_exactly_at_its_check_cells(path, tmp_path):
    """Proof that every exercise is wired to a check, and that nothing else breaks."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checks = {i for i, c in enumerate(code) if c.metadata.get("mi_course", {}).get("role") == "check"}
    assert checks, f"{path.name} has no check cells"
    xml = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", str(path), f"--junitxml={xml}", "-q", "-p", "no:randomly"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    failed = set()
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(int(re.search(r"Cell (\d+)", case.get("name")).group(1)))
    assert failed == checks, f"failing code cells {sorted(failed)} != check cells {sorted(checks)}"
