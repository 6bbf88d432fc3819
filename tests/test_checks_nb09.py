"""Checks of the capstone (notebook 09): answers are validated, scored against the right truth,
and feedback counts mistakes without naming them."""

from __future__ import annotations

import contextlib
import io

import pytest

from mi_course import mystery
from mi_course.checks import nb09
from mi_course.checks.core import CheckFailed

SEED = 4  # an open seed with a backup head


@pytest.fixture(scope="module")
def study():
    return mystery.Assignment(mystery.make(SEED), "someone", False, SEED)


def _truth_answers(seed=SEED):
    truth = mystery.ground_truth(seed)
    return {repr(e) for e in truth.circuit.edges}, dict(truth.roles)


def _run(check, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        check(*args)
    return out.getvalue()


def test_the_truth_passes_and_is_recorded_for_the_grader(study):
    edges, roles = _truth_answers()
    printed = _run(nb09.check_circuit, study, edges)
    assert "✓ Exercise 09.1 passed" in printed and "precision 1.00, recall 1.00" in printed
    assert nb09.parse_answer(printed, "09.1") == ("someone", sorted(edges))
    printed = _run(nb09.check_roles, study, {k.lower(): v.upper() for k, v in roles.items()})  # case does not matter
    assert "✓ Exercise 09.2 passed" in printed and "12 of 12" in printed


def test_partial_answers_get_counts_never_names(study):
    edges, roles = _truth_answers()
    dropped = sorted(edges)[:2]
    extra = "L2H3->logits" if "L2H3->logits" not in edges else "L2H2->logits"
    with pytest.raises(CheckFailed) as info:
        _run(nb09.check_circuit, study, (edges - set(dropped)) | {extra})
    assert "2 edge(s) of the circuit missing, 1 extra" in info.value.hint
    assert not any(e in info.value.hint for e in dropped + [extra])
    wrong = dict(roles, **{h: "idle" if r != "idle" else "decoy" for h, r in list(roles.items())[:3]})
    with pytest.raises(CheckFailed, match="9 of 12 heads") as info:
        _run(nb09.check_roles, study, wrong)
    assert not any(h in info.value.hint for h in list(roles)[:3])


@pytest.mark.parametrize(
    "answer, hint",
    [
        (None, "no answer yet"),
        ("embed->L0H0.v", "set of edges"),
        ({"embed->L0H0.v", 3}, "not an edge"),
        ({"embed->L9H0.v"}, "not an edge of this model"),
        (set(), "no edges"),
    ],
)
def test_malformed_circuits_get_a_hint(study, answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        _run(nb09.check_circuit, study, answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (None, "no answer yet"),
        (["idle"] * 12, "dict from head name"),
        ({"L0H0": "idle"}, "11 head"),
        ({**{f"L{l}H{h}": "idle" for l in range(3) for h in range(4)}, "L0H0": "name mover"}, "unknown role"),
        ({**{f"L{l}H{h}": "idle" for l in range(3) for h in range(4)}, "L3H0": "idle"}, "no head called L3H0"),
    ],
)
def test_malformed_roles_get_a_hint(answer, hint, study):
    with pytest.raises(CheckFailed, match=hint):
        _run(nb09.check_roles, study, answer)


def test_a_graded_model_is_recorded_not_scored_in_the_kernel():
    graded = mystery.Assignment(mystery.build(mystery.student_key("secret", "s1")), "s1", True, None)
    printed = _run(nb09.check_circuit, graded, {"embed->L0H0.v"})
    assert "recorded" in printed and nb09.parse_answer(printed, "09.1") == ("s1", ["embed->L0H0.v"])


def test_written_answers_need_heads_and_substance():
    for text, hint in [(None, "no answer"), ("  ", "no answer"), (3, "string"), ("too short L1H2", "say more"),
                       ("the decoy heads look like induction heads but ablating them changed nothing at all in my runs", "name the heads")]:
        with pytest.raises(CheckFailed, match=hint):
            nb09.check_written("09.3", text)
    nb09.check_written("09.3", "L1H1 looks like an induction head with score 0.9 but zero-ablating it kept 1.00 of the behaviour")


def test_the_grader_scores_against_the_submitting_id_so_copied_answers_score_differently():
    secret = "course secret"
    truth = mystery.student_truth("alice", secret)
    answers = {  # alice's right answers, recorded as her check cells print them
        "09.1": f"{nb09.ANSWER_MARKER} 09.1 " + __import__("json").dumps({"student_id": "alice", "answer": sorted(map(repr, truth.circuit.edges))}),
        "09.2": f"{nb09.ANSWER_MARKER} 09.2 " + __import__("json").dumps({"student_id": "alice", "answer": truth.roles}),
    }
    alice = nb09.score_submission(answers, "alice", secret)
    assert alice["09.1"].fraction == 1.0 and alice["09.2"].fraction == 1.0
    # bob copies alice's answers and changes the id in the recorded lines: scored against his own model
    bobs = {k: v.replace('"alice"', '"bob"') for k, v in answers.items()}
    bob = nb09.score_submission(bobs, "bob", secret)
    assert bob["09.1"].fraction < 1.0 or bob["09.2"].fraction < 1.0
    assert (bob["09.1"].fraction, bob["09.2"].fraction) != (1.0, 1.0)
    # answers recorded under another id than the submission's STUDENT_ID score nothing
    assert nb09.score_submission(answers, "bob", secret)["09.1"].fraction == 0.0
    # without the secret, the self-study truth of the id is used: alice's graded answers are not that
    assert nb09.score_submission(answers, "alice", None) != alice
    assert nb09.score_submission({}, "alice", secret)["09.1"].feedback.startswith("no answer")


def test_the_grader_reads_the_student_id_from_the_source():
    assert nb09.submitted_student_id(['x = 1', 'STUDENT_ID = "s42"  # mine', "STUDENT_ID = 's43'"]) == "s43"
    assert nb09.submitted_student_id(["print(STUDENT_ID)"]) is None


def test_exercise_code_that_asks_the_package_for_the_truth_is_flagged():
    from mi_course import grade, integrity

    course = grade.load_course()
    references, imports = course.references["09.1"], course.notebooks["09_find_the_circuit"].imports
    cheat = "truth = mystery.ground_truth(assignment.seed)\nmy_circuit = {repr(e) for e in truth.circuit.edges}"
    assert ["mi_course.mystery.ground_truth" in use for use in integrity.reference_uses(cheat, references, imports)] == [True]
    honest = "search = acdc(model, clean, corrupted, metric, threshold=0.05)\nmy_circuit = {repr(e) for e in search.circuit.edges}"
    assert integrity.reference_uses(honest, references, imports) == []
