"""The course's rules for graded exercises (docs/authoring.md, "Exercises that teach").

- Each notebook has 5 to 7 graded exercises, at least one prediction and one experiment design,
  and none left as plumbing.
- A stub's message (the hint after ``# BEGIN SOLUTION``, seen before any attempt) names the
  idea, not the code: at most 5 in the whole course may contain code.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mi_course.build import BEGIN, exercises

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
COURSE = [p for p in SOLUTIONS if p.name[:2] <= "08"]

# What makes a stub message code rather than an idea: backticks, a call, indexing, an assignment
# or comparison, a matrix product or power, a dotted name (model.W_U), library names, or an
# arithmetic formula written out with spaced operators.
CODE = re.compile(
    r"`|[A-Za-z_]\w*\(|\[|\]|==|!=|<=|>=|\s=\s|\+=|@|\*\*|\b(?!e\.g|i\.e)[A-Za-z_]\w*\.[A-Za-z_]\w*"
    r"|\b(?:torch|numpy|np|dim|keepdim|clone|topk|argmax|nonzero|diagonal|einsum|softmax|log_softmax)\b"
    r"|\s[-+*/]\s"
)


def stub_messages(path: Path) -> list[tuple[str, str]]:
    nb = nbformat.read(path, as_version=4)
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.split("\n"):
            match = BEGIN.match(line)
            if match:
                found.append((cell.metadata.get("mi_course", {}).get("exercise", "?"), line.split("BEGIN SOLUTION", 1)[1].strip()))
    return found


def test_code_detector_tells_ideas_from_code():
    assert CODE.search("pattern.diagonal(offset=-1)")
    assert CODE.search("(CE zero - CE spliced) / (CE zero - CE clean)")
    assert CODE.search("clone z; z[:, :, head] = its mean")
    assert not CODE.search("the earlier copy of this token is seq_len positions back")
    assert not CODE.search("how much of the gap between the corrupted and the clean run, e.g. a share")


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.name[:2])
def test_graded_exercises_ask_for_ideas(path):
    nb = nbformat.read(path, as_version=4)
    kinds = {ex.id: ex.kind for ex in exercises(nb, path.name)}
    assert 5 <= len(kinds) <= 7, f"{path.name}: {len(kinds)} graded exercises; aim for 5 to 7, fewer and deeper"
    plumbing = sorted(ex for ex, kind in kinds.items() if kind == "plumbing")
    assert not plumbing, f"{path.name}: exercises {plumbing} are plumbing; ask for an idea, prediction, design or interpretation"
    for needed in ("predict", "design"):
        assert needed in kinds.values(), f"{path.name}: no {needed} exercise"


def test_at_most_five_stub_messages_contain_code():
    with_code = [(p.name[:2], ex, msg) for p in COURSE for ex, msg in stub_messages(p) if CODE.search(msg)]
    assert len(with_code) <= 5, "stub messages that spell out code:\n" + "\n".join(f"  {ex}: {msg}" for _, ex, msg in with_code)
