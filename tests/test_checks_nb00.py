"""The checks of notebook 00: the reference passes, typical mistakes earn their hints."""

from __future__ import annotations

import pytest
import torch

from mi_course.checks import nb00
from mi_course.checks.core import CheckFailed



def fails_with(check, *args, hint: str) -> None:
    with pytest.raises(CheckFailed) as err:
        check(*args)
    assert hint in err.value.hint, err.value.hint


# ---------------------------------------------------------------- 00.1

REFERENCE_ANSWERS = {study: set(nb00._answer(study)[0]) for study in nb00.STUDIES}


def test_classification_answers_are_not_readable_from_the_package(root):
    """Sealed: the package holds check values and encrypted explanations, not the sets of codes or the reasons."""
    assert REFERENCE_ANSWERS["G"] == set() and REFERENCE_ANSWERS["D"] == {"BC"}  # the check itself can find them
    package = "\n".join(p.read_text() for p in (root / "mi_course").rglob("*.py"))
    for study in nb00.STUDIES:
        codes, why = nb00._answer(study)
        assert why[:60] not in package and why[-60:] not in package
    assert "probe only shows the information is decodable" not in package
    salt, check, sealed = nb00._seal("A", REFERENCE_ANSWERS["A"], "why")
    assert nb00._key("A", salt, frozenset(REFERENCE_ANSWERS["A"])) and check not in package


def test_classification_reference_passes(capsys):
    nb00.check_classification(REFERENCE_ANSWERS)
    assert "✓ Exercise 00.1 passed" in capsys.readouterr().out


def test_classification_accepts_lists_and_lower_case():
    nb00.check_classification({k: [c.lower() for c in v] for k, v in REFERENCE_ANSWERS.items()})


def test_classification_probe_called_causal_names_study_b():
    wrong = dict(REFERENCE_ANSWERS, B={"NT", "BT", "BC"})
    fails_with(nb00.check_classification, wrong, hint="study B: it does not count as narrow technical")


def test_classification_missing_cultural_label_names_study_and_reason():
    wrong = dict(REFERENCE_ANSWERS, E={"NT", "BT"}, F={"NC"})
    with pytest.raises(CheckFailed) as err:
        nb00.check_classification(wrong)
    assert "study E: it also counts as broad cultural" in err.value.hint
    assert "also not right yet: F" in err.value.hint


def test_classification_input_errors():
    fails_with(nb00.check_classification, None, hint="no answer yet")
    fails_with(nb00.check_classification, {"A": {"NT"}}, hint="B, C, D, E, F, G missing")
    fails_with(nb00.check_classification, dict(REFERENCE_ANSWERS, G="BC"), hint="study G: give a set of codes")
    fails_with(nb00.check_classification, dict(REFERENCE_ANSWERS, A={"MI"}), hint="unknown code(s) ['MI']")
# ---------------------------------------------------------------- 00.2 baseline prompts (design)

import mi_course  # noqa: E402
from mi_course.tasks import make_task  # noqa: E402

LETTERS = torch.arange(1, 27)


def clean_prompts(n=6, length=10, seed=3):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        first = LETTERS[torch.randperm(26, generator=g)[:length]]
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), first, first[:-1]]))
    return torch.stack(rows)


def baseline_reference(clean_tokens, letters):
    gen = torch.Generator().manual_seed(0)
    half = clean_tokens.shape[1] // 2
    out = clean_tokens.clone()
    for row in out:
        unused = letters[~torch.isin(letters, row[1 : half + 1])]
        row[1 : half + 1] = unused[torch.randperm(len(unused), generator=gen)[:half]]
    return out


def baseline_by_sets(clean_tokens, letters):
    """Correct, differently written: the unused letters in increasing order, a list built per prompt."""
    half = clean_tokens.shape[1] // 2
    rows = []
    for row in clean_tokens.tolist():
        unused = [t for t in letters.tolist() if t not in row[1 : half + 1]][:half]
        rows.append([row[0], *unused, *row[half + 1 :]])
    return torch.tensor(rows)


def baseline_permuted(clean_tokens, letters):
    half = clean_tokens.shape[1] // 2
    out = clean_tokens.clone()
    out[:, 1 : half + 1] = out[:, 1 : half + 1].flip(-1)
    return out


def baseline_any_letters(clean_tokens, letters):
    """Random distinct letters, drawn without regard to the clean prompt: they overlap it (10 of 26 letters)."""
    gen = torch.Generator().manual_seed(1)
    half = clean_tokens.shape[1] // 2
    out = clean_tokens.clone()
    for row in out:
        row[1 : half + 1] = letters[torch.randperm(len(letters), generator=gen)[:half]]
    return out


def baseline_fixed_letters(clean_tokens, letters):
    """The same fresh letters for every prompt: they overlap some prompts' letters."""
    half = clean_tokens.shape[1] // 2
    out = clean_tokens.clone()
    out[:, 1 : half + 1] = letters[-half:]
    return out


def baseline_whole_prompt(clean_tokens, letters):
    """Fresh letters everywhere after <bos>: the repeat (what the metric scores) changes too."""
    out = baseline_reference(clean_tokens, letters)
    half = clean_tokens.shape[1] // 2
    out[:, half + 1 :] = out[:, 1:half]
    return out


def baseline_bos_changed(clean_tokens, letters):
    out = baseline_reference(clean_tokens, letters)
    out[:, 0] = letters[0]
    return out


def baseline_repeated_letter(clean_tokens, letters):
    out = baseline_reference(clean_tokens, letters)
    out[:, 2] = out[:, 1]
    return out


def test_baseline_reference_and_alternative_pass(capsys):
    nb00.check_baseline_prompts(baseline_reference, clean_prompts(), LETTERS)
    nb00.check_baseline_prompts(baseline_by_sets, clean_prompts(), LETTERS)
    assert capsys.readouterr().out.count("✓ Exercise 00.2 passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (baseline_permuted, "reuses the clean prompt's letters in another order"),
        (baseline_any_letters, "also occur in the clean prompt's first half"),
        (baseline_whole_prompt, "you changed the second half"),
        (baseline_bos_changed, "keep the first token"),
        (baseline_repeated_letter, "distinct letters"),
        (lambda clean_tokens, letters: clean_tokens.float(), "integer tensor of the same shape"),
        (lambda clean_tokens, letters: baseline_reference(clean_tokens, letters)[:, 1:], "integer tensor of the same shape"),
        (lambda clean_tokens, letters: None, "integer tensor of the same shape"),
    ],
)
def test_baseline_mistakes(wrong, hint):
    fails_with(nb00.check_baseline_prompts, wrong, clean_prompts(), LETTERS, hint=hint)


def test_baseline_leaves_the_notebook_prompts_alone():
    clean = clean_prompts()
    before = clean.clone()

    def in_place(clean_tokens, letters):
        clean_tokens[:, 1] = 0
        return baseline_reference(clean_tokens, letters)

    with pytest.raises(CheckFailed):
        nb00.check_baseline_prompts(in_place, clean, LETTERS)
    assert torch.equal(clean, before)


@pytest.fixture(scope="module")
def handwired():
    model = mi_course.load_model("handwired-induction")
    return model, make_task("induction", model, n=16, seed=0)


def test_baseline_reports_the_model_metric(handwired, capsys):
    model, task = handwired
    nb00.check_baseline_prompts(baseline_reference, task.clean_tokens, LETTERS, metric=task.metric, model=model)
    assert "on your baseline prompts -3." in capsys.readouterr().out


# ---------------------------------------------------------------- 00.3 normalised metric

NORMALISED_EXAMPLE = dict(clean=-0.001, intervened=-3.0, baseline=-3.7)


def test_normalised_reference_and_alternative_pass(capsys):
    nb00.check_normalised(nb00.normalised, NORMALISED_EXAMPLE)
    nb00.check_normalised(lambda clean, intervened, baseline: 1 - (clean - intervened) / (clean - baseline), NORMALISED_EXAMPLE)
    assert capsys.readouterr().out.count("✓ Exercise 00.3 passed") == 2


NORMALISED_WRONG = [
    (lambda clean, intervened, baseline: (clean - intervened) / (clean - baseline), "share of the behaviour that is lost"),
    (lambda clean, intervened, baseline: intervened - baseline, "you did not normalise"),
    (lambda clean, intervened, baseline: intervened / clean, "a ratio to the clean value"),
    (lambda clean, intervened, baseline: (intervened - clean) / (clean - baseline), "an unchanged run must score 1"),
    (lambda clean, intervened, baseline: (intervened - baseline) / (baseline - clean), "the sign is flipped"),
]


@pytest.mark.parametrize("wrong, hint", NORMALISED_WRONG)
def test_normalised_mistakes(wrong, hint):
    fails_with(nb00.check_normalised, wrong, NORMALISED_EXAMPLE, hint=hint)


def test_normalised_matches_the_task_normalised_metric(handwired):
    model, task = handwired
    from mi_course.patching import ablate_head_hook

    logits = model.run_with_hooks(task.clean_tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate_head_hook(0))])
    assert abs(nb00.normalised(task.clean_value, task.metric(logits).item(), task.corrupted_value) - task.normalised_metric(logits).item()) < 1e-5


# ---------------------------------------------------------------- 00.4 prediction


def test_prediction_right_set_passes_in_any_form(handwired, capsys):
    model, task = handwired
    for answer in ({(0, 0), (1, 0)}, [(1, 0), (0, 0)], {"L0H0", "l1h0"}, frozenset({(0, 0), (1, 0)})):
        nb00.check_prediction(answer, model, task)
    assert capsys.readouterr().out.count("✓ Exercise 00.4 passed") == 4


def test_prediction_is_graded_by_running_the_ablations(handwired):
    model, task = handwired
    kept = nb00.kept_after_ablation(model, task)
    assert kept[0, 0] < 0.5 and kept[1, 0] < 0.5 and (kept[:, 1] > 0.99).all()


@pytest.mark.parametrize(
    "answer, hint",
    [
        ({(1, 0)}, "a head can matter without writing the answer itself"),
        ({(0, 0), (1, 0), (1, 1)}, "can be ablated almost for free"),
        ({(0, 1), (1, 1)}, "can be ablated almost for free"),
        (None, "no prediction yet"),
        ("L1H0", "give a set of (layer, head) pairs"),
        ({(2, 0)}, "there is no head (2, 0)"),
        ({(0, "x")}, "pair of ints"),
    ],
)
def test_prediction_wrong_sets_get_hints(handwired, answer, hint):
    model, task = handwired
    fails_with(nb00.check_prediction, answer, model, task, hint=hint)


# ---------------------------------------------------------------- 00.5 reading the composition scores


def test_composition_reading(capsys):
    nb00.check_composition_reading({"A", "D"})
    nb00.check_composition_reading(["d", "a"])
    assert capsys.readouterr().out.count("✓ Exercise 00.5 passed") == 2
    fails_with(nb00.check_composition_reading, {"A", "B", "D"}, hint="weights are static")
    fails_with(nb00.check_composition_reading, {"A", "C", "D"}, hint="a score compares pairs")
    fails_with(nb00.check_composition_reading, {"A"}, hint="exactly 0")
    fails_with(nb00.check_composition_reading, "A", hint="give a set of letters")
    fails_with(nb00.check_composition_reading, {"E"}, hint="unknown option")


def test_composition_answer_is_not_readable_from_the_package(root):
    package = "\n".join(p.read_text() for p in (root / "mi_course").rglob("*.py"))
    assert "L0H1's output lies where they never read" not in package


# ---------------------------------------------------------------- pass rates over many draws

from test_checks_core import assert_never_passes  # noqa: E402

WRONG = [
    *[(nb00.check_normalised, wrong, NORMALISED_EXAMPLE, hint) for wrong, hint in NORMALISED_WRONG],
    (nb00.check_normalised, lambda clean, intervened, baseline: abs(intervened - baseline) / abs(clean - baseline), NORMALISED_EXAMPLE, "expected the share"),
    (nb00.check_baseline_prompts, baseline_any_letters, (clean_prompts(), LETTERS), "also occur"),
    (nb00.check_baseline_prompts, baseline_fixed_letters, (clean_prompts(), LETTERS), "also occur"),
]


@pytest.mark.parametrize("check, wrong, example, hint", WRONG, ids=lambda x: getattr(x, "__name__", None) if callable(x) else "")
def test_wrong_answers_pass_in_no_draw(check, wrong, example, hint):
    args = example if isinstance(example, tuple) else (example,)
    assert_never_passes(check, wrong, *args, hint=hint)


@pytest.mark.parametrize(
    "answers, hint",
    [
        ({k: frozenset(v) for k, v in REFERENCE_ANSWERS.items()} | {"A": {1, 2}}, "unknown code(s)"),
        (dict(REFERENCE_ANSWERS, C=None), "give a set of codes"),
        ([("A", {"NT"})], "expected a dict"),
        (dict(REFERENCE_ANSWERS, B=torch.tensor([1])), "give a set of codes"),
    ],
)
def test_classification_odd_answers_get_a_hint(answers, hint):
    fails_with(nb00.check_classification, answers, hint=hint)
