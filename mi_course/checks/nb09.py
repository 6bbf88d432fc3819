"""Checks of notebook 09 (the capstone: find the circuit of your own mystery model).

The answers are a set of edges, a role for every head and two short written answers. In
self-study (an open seed) a check scores the answer at once. On a graded model the truth is
not in the student's kernel: the check validates the answer and records it in a line the grader
reads (``ANSWER_MARKER``), and the grader scores it outside the kernel, against the truth it
derives from the course secret and the submission's ``STUDENT_ID``. Feedback says how many edges
are missing or extra and how many roles are wrong, never which.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mi_course import mystery
from mi_course.checks.core import CheckFailed, passed
from mi_course.circuits import Edge, graph

__all__ = ["ANSWER_MARKER", "Score", "score_submission", "submitted_student_id", "check_circuit", "check_roles", "check_written", "parse_answer", "score_circuit", "score_roles"]

# Calling any of these from exercise code is flagged for the instructor (the truth of a graded
# model needs the secret, but a self-study seed's truth is public).
REFERENCES: dict[str, tuple[str, ...]] = {
    "09.1": ("mi_course.mystery.ground_truth", "mi_course.mystery.truth", "mi_course.mystery.student_truth", "mi_course.mystery.layout"),
    "09.2": ("mi_course.mystery.ground_truth", "mi_course.mystery.truth", "mi_course.mystery.student_truth", "mi_course.mystery.layout"),
}
ANSWER_MARKER = "MI-COURSE-ANSWER"  # followed by the exercise id and the answer as JSON
HEAD = re.compile(r"L(\d+)H(\d+)")
MIN_WORDS = 15


@dataclass(frozen=True)
class Score:
    """How an answer compares with the truth: the share of points it earns and what to say."""

    fraction: float
    feedback: str


def _edges(answer: Any) -> set[Edge]:
    if answer is None or answer is Ellipsis:
        raise CheckFailed("09.1", "no answer yet: put the edges of your circuit in the exercise cell.", "no-answer")
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Iterable):
        raise CheckFailed("09.1", f"give a set of edges such as {{'L0H1->L1H2.k', ...}} or Edge objects, not {type(answer).__name__}.", "type")
    edges = set()
    for item in list(answer):
        if isinstance(item, Edge):
            edges.add(Edge(str(item.sender), str(item.receiver)))
        elif isinstance(item, str) and item.count("->") == 1:
            sender, receiver = (part.strip() for part in item.split("->"))
            edges.add(Edge(sender, receiver))
        else:
            raise CheckFailed("09.1", f"{item!r} is not an edge: write 'sender->receiver', e.g. 'embed->L0H1.v'.", "type")
    return edges


def _roles(answer: Any, heads: list[str]) -> dict[str, str]:
    if answer is None or answer is Ellipsis:
        raise CheckFailed("09.2", "no answer yet: give every head a role in the exercise cell.", "no-answer")
    if not isinstance(answer, Mapping):
        raise CheckFailed("09.2", f"give a dict from head name ('L0H1') to role, not {type(answer).__name__}.", "type")
    roles = {str(k).strip().upper(): str(v).strip().lower() for k, v in dict(answer).items()}
    unknown = sorted(set(roles) - set(heads))
    if unknown:
        raise CheckFailed("09.2", f"no head called {unknown[0]} in this model: heads are L0H0 ... L{mystery.N_LAYERS - 1}H{mystery.N_HEADS - 1}.", "type")
    missing = [h for h in heads if h not in roles]
    if missing:
        raise CheckFailed("09.2", f"give every head a role: {len(missing)} head(s) have none, e.g. {missing[0]}.", "incomplete")
    bad = sorted({r for r in roles.values() if r not in mystery.ROLES})
    if bad:
        raise CheckFailed("09.2", f"unknown role {bad[0]!r}: use one of {', '.join(mystery.ROLES)}.", "type")
    return roles


def _heads() -> list[str]:
    return [f"L{l}H{h}" for l in range(mystery.N_LAYERS) for h in range(mystery.N_HEADS)]


def score_circuit(edges: set[Edge], truth: mystery.Truth) -> Score:
    """Edge F1 (the harmonic mean of precision and recall); feedback with counts only."""
    true = set(truth.circuit.edges)
    hits = len(edges & true)
    precision = hits / len(edges) if edges else 0.0
    recall = hits / len(true)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    missing, extra = len(true - edges), len(edges - true)
    feedback = f"precision {precision:.2f}, recall {recall:.2f}: {missing} edge(s) of the circuit missing, {extra} extra."
    return Score(f1, feedback)


def score_roles(roles: Mapping[str, str], truth: mystery.Truth) -> Score:
    """The share of heads whose role is right; feedback with the count only."""
    right = sum(roles.get(h) == r for h, r in truth.roles.items())
    return Score(right / len(truth.roles), f"{right} of {len(truth.roles)} heads have the right role.")


def _record(exercise: str, student_id: str, answer: Any) -> None:
    print(f"{ANSWER_MARKER} {exercise} " + json.dumps({"student_id": student_id, "answer": answer}, sort_keys=True))


def parse_answer(text: str, exercise: str) -> tuple[str, Any] | None:
    """The grader's side: the (student id, answer) a check cell recorded, or None."""
    for line in text.splitlines():
        if line.startswith(f"{ANSWER_MARKER} {exercise} "):
            data = json.loads(line.split(" ", 2)[2])
            return data["student_id"], data["answer"]
    return None


def _finish(exercise: str, assignment: mystery.Assignment, score: Score, what: str) -> None:
    if assignment.graded:
        passed(exercise, f"{what} recorded; the grader scores it against your model's truth.")
    elif score.fraction == 1.0:
        passed(exercise, f"{what}: right on open seed {assignment.seed}. {score.feedback}")
    else:
        raise CheckFailed(exercise, f"not the whole truth yet (score {score.fraction:.2f}): {score.feedback}", "partial")


def check_circuit(assignment: mystery.Assignment, answer: Any) -> None:
    """09.1: the circuit, as edges of the model's graph."""
    edges = _edges(answer)
    known = graph(assignment.model).edges
    unknown = sorted(edges - known)
    if unknown:
        raise CheckFailed("09.1", f"{unknown[0]!r} is not an edge of this model's graph (see circuits.graph(model)).", "unknown-edge")
    if not edges:
        raise CheckFailed("09.1", "your circuit has no edges.", "empty")
    _record("09.1", assignment.student_id, sorted(map(repr, edges)))
    score = None if assignment.graded else score_circuit(edges, mystery.ground_truth(assignment.seed))
    _finish("09.1", assignment, score, f"a circuit of {len(edges)} edges")


def check_roles(assignment: mystery.Assignment, answer: Any) -> None:
    """09.2: a role for every head."""
    roles = _roles(answer, _heads())
    _record("09.2", assignment.student_id, roles)
    score = None if assignment.graded else score_roles(roles, mystery.ground_truth(assignment.seed))
    _finish("09.2", assignment, score, "a role for every head")


def check_written(exercise: str, text: Any) -> None:
    """09.3 and 09.4: a short written answer that names the heads and the evidence. Read by the instructor."""
    if text is None or text is Ellipsis or (isinstance(text, str) and not text.strip()):
        raise CheckFailed(exercise, "no answer yet: write a few sentences in the exercise cell.", "no-answer")
    if not isinstance(text, str):
        raise CheckFailed(exercise, f"write your answer as a string, not {type(text).__name__}.", "type")
    if len(text.split()) < MIN_WORDS:
        raise CheckFailed(exercise, f"say more: at least {MIN_WORDS} words, with the heads and the numbers you measured.", "too-short")
    if not HEAD.search(text.upper()):
        raise CheckFailed(exercise, "name the heads you mean (as L1H2), so a reader can check your evidence.", "no-head")
    passed(exercise, "answer recorded for your instructor to read.")


STUDENT_ID_LINE = re.compile(r"""^STUDENT_ID\s*=\s*(["'])(.*?)\1""", re.M)


def submitted_student_id(sources: Iterable[str]) -> str | None:
    """The grader's side: the ``STUDENT_ID`` a submission sets (the last assignment wins)."""
    found = [m[2] for source in sources for m in STUDENT_ID_LINE.finditer(source)]
    return found[-1] if found else None


def score_submission(stdout: Mapping[str, str], student_id: str, secret: str | None) -> dict[str, Score]:
    """The grader's scores of 09.1 and 09.2 from what their check cells printed (``stdout`` by
    exercise), against the truth of ``student_id``'s model: with the course secret for a graded
    class, else the id's self-study seed. An answer recorded for another id scores 0."""
    truth = mystery.student_truth(student_id, secret)
    sid = " ".join(student_id.split()).lower()
    scores = {}
    for exercise, scorer in (("09.1", score_circuit), ("09.2", score_roles)):
        recorded = parse_answer(stdout.get(exercise, ""), exercise)
        if recorded is None:
            scores[exercise] = Score(0.0, "no answer was recorded (the check cell did not run to its end).")
        elif recorded[0] != sid:
            scores[exercise] = Score(0.0, f"the answer was recorded for student {recorded[0]!r}, not for STUDENT_ID {sid!r}.")
        else:
            try:
                answer = _edges(recorded[1]) if exercise == "09.1" else _roles(recorded[1], _heads())
            except CheckFailed as err:
                scores[exercise] = Score(0.0, err.hint)
                continue
            scores[exercise] = scorer(answer, truth)
    return scores
