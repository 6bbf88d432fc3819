"""Student notebooks from the solution notebooks, the single source.

In a solution notebook, code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` lines is
the answer (nbgrader's convention). Text after ``# BEGIN SOLUTION`` is the one-line hint
the student sees. An indented block becomes ``raise NotImplementedError(hint)``; a
top-level block becomes the hint as a comment and ``name = None`` for each name it
assigns, so the cell still runs and the check below it reports "no answer yet".
Markdown cells hide answers between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->``.

Cell metadata (key ``mi_course``) ties exercises to checks: an exercise cell has
``{"exercise": "00.1"}``; its check cell ``{"role": "check", "exercise": "00.1", "points": 2,
"kind": "implement"}``. The kind says what the exercise asks for (``KINDS``).
"""

from __future__ import annotations

import ast
import copy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KEY = "mi_course"
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\b[ \t:—-]*(?P<hint>.*?)\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
MD_BLOCK = re.compile(r"<!-- BEGIN SOLUTION -->.*?<!-- END SOLUTION -->", re.S)
MD_STUB = "*Your answer here.*"
DEFAULT_HINT = "Replace this line with your implementation."
COURSE = (
    "00_mechanistic",
    "01_residual_stream",
    "02_induction_heads",
    "03_activation_patching",
    "04_edge_patching",
    "05_logit_lens",
    "06_attribution_patching",
    "07_sparse_autoencoders",
    "08_probing_baselines",
    "09_find_the_circuit",
)
SETUP_MARKER = "# Setup: in Colab this installs the course package; elsewhere it does nothing."


class BuildError(ValueError):
    """A solution notebook breaks the authoring conventions; the message says where and how."""


def repo_root() -> Path:
    """The repository that holds ``solutions/`` (the package's parent folder)."""
    return Path(__file__).resolve().parent.parent


def repository_url(root: Path | None = None) -> str:
    """The course repository's URL, kept in one place: pyproject's ``[project.urls]``."""
    pyproject = (root or repo_root()) / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"].rstrip("/")


def colab_url(path: str, root: Path | None = None) -> str:
    """The "Open in Colab" address of a notebook at ``path`` in the repository."""
    repo = repository_url(root).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/main/{path}"


def colab_badge(path: str, root: Path | None = None) -> str:
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    return f"[![Open In Colab]({badge})]({colab_url(path, root)})"


def setup_cell_source(root: Path | None = None) -> str:
    """The first code cell of every notebook."""
    return (
        f"{SETUP_MARKER}\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "mi-course @ git+{repository_url(root)}"\n'
    )


def _stub_code(block: list[str], indent: str, hint: str) -> list[str]:
    hint = hint or DEFAULT_HINT
    if indent:
        return [f"{indent}raise NotImplementedError({hint!r})"]
    try:
        tree = ast.parse("\n".join(block))
    except SyntaxError as err:
        raise BuildError(f"a top-level solution block does not parse: {err}") from None
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name) and sub.id not in names:
                    names.append(sub.id)
    if not names:
        raise BuildError("a top-level solution block must assign the names its check reads")
    return [f"# TODO: {hint}"] + [f"{name} = None" for name in names]


def strip_code(source: str) -> str:
    """Replace every solution block of a code cell with its stub."""
    out: list[str] = []
    block: list[str] | None = None
    indent = hint = ""
    for line in source.split("\n"):
        if block is None:
            m = BEGIN.match(line)
            if m:
                block, indent, hint = [], m["indent"], m["hint"]
            elif END.match(line):
                raise BuildError("'# END SOLUTION' without a '# BEGIN SOLUTION' before it")
            else:
                out.append(line)
        elif END.match(line):
            out.extend(_stub_code(block, indent, hint))
            block = None
        elif BEGIN.match(line):
            raise BuildError("nested '# BEGIN SOLUTION'")
        else:
            block.append(line)
    if block is not None:
        raise BuildError("'# BEGIN SOLUTION' without '# END SOLUTION'")
    return "\n".join(out)


def strip_markdown(source: str) -> str:
    if source.count("<!-- BEGIN SOLUTION -->") != source.count("<!-- END SOLUTION -->"):
        raise BuildError("unbalanced <!-- BEGIN SOLUTION --> / <!-- END SOLUTION --> in a markdown cell")
    return MD_BLOCK.sub(MD_STUB, source)


# What a graded exercise asks of the student: a method to implement end to end, a prediction
# made before the run that reveals it, an experiment to design (graded by running it), or an
# interpretation of a result among stated options. "plumbing" marks an exercise still to rework.
KINDS = ("implement", "predict", "design", "interpret", "plumbing")


@dataclass(frozen=True)
class Exercise:
    id: str
    points: int
    exercise_cell: str  # cell id
    check_cell: str  # cell id
    kind: str = ""


def exercises(nb: nbformat.NotebookNode, name: str) -> list[Exercise]:
    """The exercises of a solution notebook, validated: each has one exercise and one check cell."""
    found: dict[str, dict] = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get(KEY, {})
        has_solution = cell.cell_type == "code" and any(BEGIN.match(l) for l in cell.source.split("\n"))
        if meta.get("role") == "check":
            ex = meta.get("exercise")
            points = meta.get("points")
            if not ex or not isinstance(points, int) or points <= 0:
                raise BuildError(f"{name}: check cell {cell.id} needs metadata mi_course.exercise and integer points > 0")
            if meta.get("kind") not in KINDS:
                raise BuildError(f"{name}: check cell {cell.id} needs metadata mi_course.kind, one of {KINDS}")
            if "check" in found.setdefault(ex, {}):
                raise BuildError(f"{name}: exercise {ex} has two check cells")
            found[ex].update(check=cell.id, points=points, kind=meta["kind"])
        elif has_solution:
            ex = meta.get("exercise")
            if not ex:
                raise BuildError(f"{name}: cell {cell.id} has a solution block but no metadata mi_course.exercise")
            if "cell" in found.setdefault(ex, {}):
                raise BuildError(f"{name}: exercise {ex} has two exercise cells")
            found[ex]["cell"] = cell.id
    result = []
    for ex, parts in found.items():
        if "check" not in parts or "cell" not in parts:
            missing = "check cell" if "check" not in parts else "exercise cell"
            raise BuildError(f"{name}: exercise {ex} has no {missing}")
        result.append(Exercise(ex, parts["points"], parts["cell"], parts["check"], parts["kind"]))
    return result


def validate_front_matter(nb: nbformat.NotebookNode, path: str, root: Path | None = None) -> None:
    """Title, badge for its own path, and the setup cell as first code cell."""
    first = nb.cells[0]
    if first.cell_type != "markdown" or not first.source.startswith("# "):
        raise BuildError(f"{path}: the first cell must be a markdown title")
    if colab_badge(path, root) not in first.source:
        raise BuildError(f"{path}: the first cell must carry the Colab badge {colab_badge(path, root)}")
    for heading in ("You will learn", "Prerequisites", "Time"):
        if heading not in first.source:
            raise BuildError(f"{path}: the first cell must say '{heading}'")
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or code[0].source != setup_cell_source(root).rstrip("\n") and code[0].source != setup_cell_source(root):
        raise BuildError(f"{path}: the first code cell must be the setup cell (mi_course.build.setup_cell_source())")


def student_notebook(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student copy: answers replaced by stubs, outputs removed, cell ids kept."""
    exercises(nb, name)
    out = copy.deepcopy(nb)
    out.metadata[KEY] = {"notebook": name}
    out.metadata.pop("widgets", None)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.source = strip_code(cell.source)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = strip_markdown(cell.source)
            cell.source = cell.source.replace("/blob/main/solutions/", "/blob/main/notebooks/")
    return out


def _dump(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def build(root: Path | None = None, *, check: bool = False) -> list[Path]:
    """Write ``notebooks/`` from ``solutions/``; with ``check``, only list the stale files."""
    root = root or repo_root()
    stale: list[Path] = []
    sources = sorted((root / "solutions").glob("*.ipynb"))
    wanted = {root / "notebooks" / s.name for s in sources}
    for src in sources:
        name = src.stem
        if name not in COURSE and not name.startswith("99_"):  # 99_*: test fixtures
            raise BuildError(f"{src}: not a course notebook; the names are {', '.join(COURSE)}")
        nb = nbformat.read(src, as_version=4)
        validate_front_matter(nb, f"solutions/{src.name}", root)
        if nb.metadata.get(KEY, {}).get("notebook") != name:
            raise BuildError(f"{src}: notebook metadata mi_course.notebook must be {name!r}")
        target = root / "notebooks" / src.name
        text = _dump(student_notebook(nb, name))
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text)
    for extra in sorted((root / "notebooks").glob("*.ipynb")):
        if extra not in wanted:
            stale.append(extra)
            if not check:
                extra.unlink()
    return stale


def execute(path: Path, timeout: int = 600) -> None:
    """Run a solution notebook in place, as a learner would (cwd = its folder)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # Static attention views keep the committed notebooks small (see mi_course.viz); the
    # kernel inherits this process's environment, which is restored afterwards.
    before = os.environ.get("MI_COURSE_VIZ")
    os.environ["MI_COURSE_VIZ"] = before or "static"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if before is None:
            del os.environ["MI_COURSE_VIZ"]
    for cell in nb.cells:  # keep outputs deterministic: no timing metadata
        cell.get("metadata", {}).pop("execution", None)
    path.write_text(_dump(nb))


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mi-course build", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if notebooks/ is stale; write nothing")
    parser.add_argument("--execute", nargs="*", metavar="NAME", help="first execute these solution notebooks in place (all if none named)")
    args = parser.parse_args(argv)
    root = repo_root()
    try:
        if args.execute is not None:
            paths = sorted((root / "solutions").glob("*.ipynb"))
            if args.execute:
                paths = [p for p in paths if any(p.stem.startswith(n) for n in args.execute)]
            for path in paths:
                print(f"executing {path.relative_to(root)}", file=sys.stderr)
                execute(path)
        stale = build(root, check=args.check)
    except BuildError as err:
        print(f"mi-course build: {err}", file=sys.stderr)
        return 2
    if args.check and stale:
        for path in stale:
            print(f"stale: {path.relative_to(root)} (run `mi-course build`)", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path.relative_to(root)}")
    return 0
