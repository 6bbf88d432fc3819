"""The checks of notebook 00: the reference passes, typical mistakes earn their hints."""

from __future__ import annotations

import pytest
import torch

from mi_course.checks import nb00
from mi_course.checks.core import CheckFailed
from mi_course.patching import ablate_head_hook, normalised_effect


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


# ---------------------------------------------------------------- 00.2


def composition_by_loops(W_V, W_O, W_Q, W_K):
    """A correct, differently written implementation: explicit loops over head pairs."""
    scores = torch.zeros(W_V.shape[0], W_Q.shape[0])
    for i in range(W_V.shape[0]):
        ov = W_V[i] @ W_O[i]
        for j in range(W_Q.shape[0]):
            qk = W_Q[j] @ W_K[j].T
            scores[i, j] = torch.linalg.matrix_norm(ov @ qk.T) / (torch.linalg.matrix_norm(ov) * torch.linalg.matrix_norm(qk))
    return scores


def test_composition_reference_and_alternative_pass():
    nb00.check_k_composition_scores(nb00.k_composition_scores)
    nb00.check_k_composition_scores(composition_by_loops)


def test_composition_matches_transformer_lens():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=3, d_vocab=10, attn_only=True, act_fn=None)
    model = HookedTransformer(cfg)
    ours = nb00.k_composition_scores(model.W_V[0], model.W_O[0], model.W_Q[1], model.W_K[1])
    assert torch.allclose(ours, model.all_composition_scores("K")[0, :, 1, :], atol=1e-5)


def test_composition_mistakes():
    fails_with(nb00.check_k_composition_scores, nb00._q_composition, hint="that is the Q-composition score")
    fails_with(nb00.check_k_composition_scores, nb00._k_composition_unnormalised, hint="the score is not normalised")
    fails_with(
        nb00.check_k_composition_scores,
        lambda W_V, W_O, W_Q, W_K: nb00.k_composition_scores(W_V, W_O, W_Q, W_K).T,
        hint="your result has shape (3, 2), expected (2, 3)",
    )


# ---------------------------------------------------------------- 00.3

EXAMPLE = dict(z=torch.arange(2 * 3 * 2 * 2, dtype=torch.float).reshape(2, 3, 2, 2), head=1, mode="mean")


def masked_hook(head, mode="mean"):
    """A correct, differently written implementation: mask arithmetic on a new tensor."""

    def hook_fn(activation, hook):
        keep = torch.ones(activation.shape[2])
        keep[head] = 0.0
        keep = keep[None, None, :, None]
        replacement = torch.zeros_like(activation) if mode == "zero" else activation.mean(0, keepdim=True).expand_as(activation)
        return activation * keep + (1 - keep) * replacement

    return hook_fn


def in_place_hook(head, mode="mean"):
    """Right values, but edits the activation in place: the exercise asks for a copy."""

    def hook_fn(activation, hook):
        activation[:, :, head] = 0.0 if mode == "zero" else activation[:, :, head].mean(0, keepdim=True)
        return activation

    return hook_fn


def wrong_hook(edit):
    def factory(head, mode="mean"):
        def hook_fn(activation, hook):
            out = activation.clone()
            edit(out, activation, head, mode)
            return out

        return hook_fn

    return factory


def test_hook_reference_and_alternative_pass(capsys):
    nb00.check_ablate_head_hook(ablate_head_hook, EXAMPLE)
    nb00.check_ablate_head_hook(masked_hook, EXAMPLE)
    assert capsys.readouterr().out.count("✓ Exercise 00.3 passed") == 2


def test_hook_that_edits_in_place_fails_and_leaves_the_example_alone():
    example = dict(z=EXAMPLE["z"].clone(), head=1, mode="mean")
    fails_with(nb00.check_ablate_head_hook, in_place_hook, example, hint="edits the activation it receives in place")
    assert torch.equal(example["z"], EXAMPLE["z"]), "the learner got a copy of the notebook's tensor"


# The hook's typical mistakes, each with the hint it must earn.
HOOK_MISTAKES = [
    (nb00._every_head, "you ablated every head"),
    (nb00._position_axis, "you indexed axis 1"),
    (nb00._always_zero, "with mode='mean' you wrote zeros"),
    (nb00._always_mean, "with mode='zero' you still wrote the mean"),
    (nb00._mean_over_positions, "you averaged over positions as well"),
    (nb00._mean_over_d_head, "you averaged over d_head"),
    (nb00._mean_over_heads, "you averaged over the heads"),
]


@pytest.mark.parametrize("edit, hint", HOOK_MISTAKES[:-1])
def test_hook_mistakes(edit, hint):
    fails_with(nb00.check_ablate_head_hook, wrong_hook(edit), EXAMPLE, hint=hint)


def test_hook_forgetting_return_or_factory():
    def no_return(head, mode="mean"):
        def hook_fn(activation, hook):
            activation = activation.clone()
            activation[:, :, head] = 0.0

        return hook_fn

    fails_with(nb00.check_ablate_head_hook, no_return, EXAMPLE, hint="your hook function returns None")

    def not_a_factory(head, mode="mean"):
        return torch.zeros(1)

    fails_with(nb00.check_ablate_head_hook, not_a_factory, EXAMPLE, hint="must return a hook function")


def test_hook_stub_says_not_implemented():
    def stub(head, mode="mean"):
        raise NotImplementedError("hint")

    fails_with(nb00.check_ablate_head_hook, stub, EXAMPLE, hint="not implemented yet")


# ---------------------------------------------------------------- 00.4

EFFECT_EXAMPLE = dict(clean=0.2, intervened=3.0, baseline=4.0)


def test_effect_reference_and_alternative_pass():
    nb00.check_normalised_effect(normalised_effect, EFFECT_EXAMPLE)
    nb00.check_normalised_effect(lambda clean, intervened, baseline: 1 - (intervened - baseline) / (clean - baseline), EFFECT_EXAMPLE)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda clean, intervened, baseline: (intervened - clean) / (clean - baseline), "wrong sign"),
        (lambda clean, intervened, baseline: clean - intervened, "you did not normalise"),
        (lambda clean, intervened, baseline: (intervened - baseline) / (clean - baseline), "fraction of the behaviour that survives"),
        (lambda clean, intervened, baseline: (clean - intervened) / clean, "you divided by the clean value"),
    ],
)
def test_effect_mistakes(wrong, hint):
    fails_with(nb00.check_normalised_effect, wrong, EFFECT_EXAMPLE, hint=hint)


# ---------------------------------------------------------------- pass rates over many draws

from test_checks_core import assert_never_passes  # noqa: E402


def _abs_effect(clean, intervened, baseline):
    return abs(clean - intervened) / abs(clean - baseline)


def _other_head(edit):
    """Ablates head (head + 1) % n_heads instead of head."""
    def wrong(head, mode="mean"):
        def hook_fn(activation, hook):
            return ablate_head_hook((head + 1) % activation.shape[2], mode)(activation, hook)
        return hook_fn
    return wrong


WRONG = [
    (nb00.check_k_composition_scores, nb00._q_composition, None, "Q-composition"),
    (nb00.check_k_composition_scores, nb00._k_composition_unnormalised, None, "not normalised"),
    (nb00.check_k_composition_scores, nb00._k_composition_one_norm, None, "not only W_OV's"),
    (nb00.check_k_composition_scores, lambda W_V, W_O, W_Q, W_K: nb00._k_composition_unnormalised(W_V, W_O, W_Q, W_K) / (W_Q @ W_K.transpose(-1, -2)).norm(dim=(-2, -1))[None], None, "differ from"),
    (nb00.check_k_composition_scores, lambda W_V, W_O, W_Q, W_K: nb00.k_composition_scores(W_V, W_O, W_Q, W_K).T, None, "shape"),
    *[(nb00.check_ablate_head_hook, wrong_hook(edit), EXAMPLE, hint) for edit, hint in HOOK_MISTAKES],
    (nb00.check_ablate_head_hook, in_place_hook, EXAMPLE, "in place"),
    (nb00.check_ablate_head_hook, _other_head(None), EXAMPLE, "only head `head` changes"),
    (nb00.check_normalised_effect, lambda clean, intervened, baseline: (intervened - clean) / (clean - baseline), EFFECT_EXAMPLE, "wrong sign"),
    (nb00.check_normalised_effect, lambda clean, intervened, baseline: clean - intervened, EFFECT_EXAMPLE, "did not normalise"),
    (nb00.check_normalised_effect, lambda clean, intervened, baseline: (intervened - baseline) / (clean - baseline), EFFECT_EXAMPLE, "survives"),
    (nb00.check_normalised_effect, lambda clean, intervened, baseline: (clean - intervened) / clean, EFFECT_EXAMPLE, "clean value"),
    (nb00.check_normalised_effect, _abs_effect, EFFECT_EXAMPLE, "expected (clean - intervened)"),
]


@pytest.mark.parametrize("check, wrong, example, hint", WRONG, ids=lambda x: getattr(x, "__name__", None) if callable(x) else "")
def test_wrong_answers_pass_in_no_draw(check, wrong, example, hint):
    assert_never_passes(check, wrong, example, hint=hint)


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
