"""Every check of notebook 08 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_course import probing
from mi_course.checks import nb08
from mi_course.checks.core import CheckFailed
from test_checks_core import DRAWS, assert_never_passes

torch.set_num_threads(1)


def fails_with(check, learner, *args, hint: str) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args)
    assert hint in err.value.hint, err.value.hint


@pytest.fixture(scope="module")
def example():
    """A small stand-in for the notebook's data: 40 prompts of 8 tokens, 30 word types, 4 classes."""
    gen = torch.Generator().manual_seed(8)
    types = torch.randint(0, 30, (320,), generator=gen)
    vectors = torch.randn(30, 10, generator=gen)
    labels = torch.randint(0, 4, (30,), generator=gen)[types]
    x = vectors[types] + 0.2 * torch.randn(320, 10, generator=gen)
    prompts = torch.arange(40).repeat_interleave(8)
    train, test = probing.train_test_split(320, 0.25, seed=0, groups=prompts)
    return dict(types=types, y=labels, x=x, prompts=prompts, train=train, test=test)


# 08.1


def split_reference(prompt_ids, test_fraction, seed):
    return probing.train_test_split(len(prompt_ids), test_fraction, seed=seed, groups=prompt_ids)


def split_other(prompt_ids, test_fraction, seed):
    rng = np.random.default_rng(seed)
    ids = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    unique = sorted(set(ids))
    test_prompts = set(rng.choice(unique, size=int(test_fraction * len(unique) + 0.5), replace=False).tolist())
    test = [i for i, p in enumerate(ids) if p in test_prompts]
    train = [i for i, p in enumerate(ids) if p not in test_prompts]
    return np.array(train), np.array(test)


def split_by_token(prompt_ids, test_fraction, seed):
    return probing.train_test_split(len(prompt_ids), test_fraction, seed=seed)


def split_returns_prompt_ids(prompt_ids, test_fraction, seed):
    train, test = split_reference(prompt_ids, test_fraction, seed)
    return prompt_ids[train].unique(), prompt_ids[test].unique()


def split_unseeded(prompt_ids, test_fraction, seed):
    return split_reference(prompt_ids, test_fraction, 0)


def split_first_prompts(prompt_ids, test_fraction, seed):
    ids = prompt_ids.unique()
    is_test = torch.isin(prompt_ids, ids[: int(test_fraction * len(ids))])
    return (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)


def split_global_rng(prompt_ids, test_fraction, seed):
    """Ignores `seed`: draws from the global random state (different each call)."""
    ids = prompt_ids.unique()
    test_prompts = ids[torch.randperm(len(ids))[: round(test_fraction * len(ids))]]
    is_test = torch.isin(prompt_ids, test_prompts)
    return (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)


def split_reseeds_global_rng(prompt_ids, test_fraction, seed):
    """Correct: repeatable, although it sets the global seed (which the check restores afterwards)."""
    torch.manual_seed(seed)
    return split_global_rng(prompt_ids, test_fraction, seed)


def test_split_by_prompt(example):
    nb08.check_split_by_prompt(split_reference, example["prompts"])
    nb08.check_split_by_prompt(split_other, example["prompts"])
    nb08.check_split_by_prompt(split_reseeds_global_rng, example["prompts"])
    assert_never_passes(nb08.check_split_by_prompt, split_global_rng, example["prompts"], hint="same seed, your function gave different answers")
    assert_never_passes(nb08.check_split_by_prompt, split_by_token, example["prompts"], hint="the same sentence is in train and test")
    assert_never_passes(nb08.check_split_by_prompt, split_returns_prompt_ids, example["prompts"], hint="every row index")
    assert_never_passes(nb08.check_split_by_prompt, split_unseeded, example["prompts"], hint="same for seeds 0 and 1")
    assert_never_passes(nb08.check_split_by_prompt, split_first_prompts, example["prompts"], hint="same for seeds 0 and 1")
    assert_never_passes(nb08.check_split_by_prompt, lambda p, f, s: split_reference(p, 0.9, s), example["prompts"], hint="fraction test_fraction")


# 08.2


def control_other(word_types, labels, seed):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = {t: labels[rng.integers(len(labels))] for t in sorted(set(np.asarray(word_types).tolist()))}
    return torch.tensor([chosen[t] for t in np.asarray(word_types).tolist()])


def control_per_token(word_types, labels, seed):
    gen = torch.Generator().manual_seed(seed)
    return labels[torch.randint(0, len(labels), (len(labels),), generator=gen)]


def control_uniform(word_types, labels, seed):
    types, index = torch.unique(word_types, return_inverse=True)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(labels.max()) + 1, (len(types),), generator=gen)[index]


def control_global_rng(word_types, labels, seed):
    types, index = torch.unique(word_types, return_inverse=True)
    return labels[torch.randint(0, len(labels), (len(types),))][index]


def test_control_task(example):
    args = (example["types"], example["y"])
    nb08.check_control_task(probing.control_labels, *args)
    nb08.check_control_task(control_other, *args)
    assert_never_passes(nb08.check_control_task, control_global_rng, *args, hint="same seed, your function gave different answers")
    assert_never_passes(nb08.check_control_task, control_per_token, *args, hint="one fixed label")
    assert_never_passes(nb08.check_control_task, control_uniform, *args, hint="not uniformly over the classes")
    assert_never_passes(nb08.check_control_task, lambda word_types, labels, seed: labels.clone(), *args, hint="the task's own labels")
    assert_never_passes(nb08.check_control_task, lambda word_types, labels, seed: probing.control_labels(word_types, labels, 0), *args, hint="same for seeds 0 and 1")


# 08.3


@pytest.fixture(scope="module")
def control_case(example):
    """Two "layers" of the example: the word's vector (easy to memorise) and the same blurred by context."""
    gen = torch.Generator().manual_seed(11)
    x = example["x"]
    blurred = x + 1.5 * torch.randn(x.shape, generator=gen)
    control = probing.control_labels(example["types"], example["y"], seed=0)
    layers = {"embed": x, "after L1": blurred}
    truth = {}
    for name, xs in layers.items():
        probe = probing.train_probe(xs[example["train"]], control[example["train"]], n_classes=int(control.max()) + 1)
        truth[name] = probing.accuracy(probe, xs[example["test"]], control[example["test"]])
    assert truth["embed"] > truth["after L1"] + 0.15  # a case where the order means something
    return layers, control, truth


def test_control_prediction(example, control_case, capsys):
    layers, control, truth = control_case
    args = (layers, control, example["train"], example["test"])
    nb08.check_control_prediction(dict(truth), *args)
    nb08.check_control_prediction({k: np.float32(v + 0.1) for k, v in truth.items()}, *args)  # numpy numbers, within tolerance
    assert capsys.readouterr().out.count("✓ Exercise 08.3 passed") == 2
    swapped = {"embed": truth["after L1"], "after L1": truth["embed"]}
    fails_with(nb08.check_control_prediction, swapped, *args, hint="wrong way round")
    fails_with(nb08.check_control_prediction, {"embed": min(1.0, truth["embed"] + 0.3), "after L1": truth["after L1"]}, *args, hint="too high")
    fails_with(nb08.check_control_prediction, {"embed": truth["embed"], "after L1": truth["after L1"] - 0.3}, *args, hint="too low")
    fails_with(nb08.check_control_prediction, None, *args, hint="no prediction yet")
    fails_with(nb08.check_control_prediction, {"embed": 0.9}, *args, hint="one accuracy per residual")
    fails_with(nb08.check_control_prediction, {"embed": 90, "after L1": 60}, *args, hint="between 0 and 1")
    fails_with(nb08.check_control_prediction, {"embed": "high", "after L1": "low"}, *args, hint="a number between 0 and 1")
    fails_with(nb08.check_control_prediction, [0.9, 0.6], *args, hint="give a dict")


def test_control_prediction_is_not_graded_on_another_model(example, control_case, capsys):
    layers, control, truth = control_case
    out = nb08.check_control_prediction({"embed": 0.0, "after L1": 1.0}, layers, control, example["train"], example["test"], "gpt2-small")
    printed = capsys.readouterr().out
    assert "not graded" in printed and "passed" not in printed
    assert out == pytest.approx(truth)


# 08.4


@pytest.fixture(scope="module")
def sva_case():
    from mi_course import load_model
    from mi_course.tasks import make_task

    model = load_model("toy-lm").requires_grad_(False)
    task = make_task("sva", model, n=20, seed=3, variant="pp")
    positions = {"subject": int(task.positions["subject"][0]), "end": int(task.positions["end"][0])}
    return model, task, positions


def test_patch_prediction(sva_case, capsys):
    model, task, positions = sva_case
    truth = nb08.check_patch_prediction({"subject": 0.0, "end": 1.0}, model, task, positions, 2)
    assert truth["subject"] < 0.3 and truth["end"] > 0.7  # toy-lm: the subject decides, the end barely
    nb08.check_patch_prediction({k: np.float64(v - 0.15) for k, v in truth.items()}, model, task, positions, 2)
    assert capsys.readouterr().out.count("✓ Exercise 08.4 passed") == 2
    fails_with(nb08.check_patch_prediction, {"subject": truth["subject"], "end": 0.0}, model, task, positions, 2, hint="end is too low")
    fails_with(nb08.check_patch_prediction, {"subject": 1.0, "end": truth["end"]}, model, task, positions, 2, hint="subject is too high")
    fails_with(nb08.check_patch_prediction, None, model, task, positions, 2, hint="no prediction yet")
    fails_with(nb08.check_patch_prediction, {"end": 1.0}, model, task, positions, 2, hint="one normalised metric per position")
    fails_with(nb08.check_patch_prediction, {"subject": "low", "end": "high"}, model, task, positions, 2, hint="should be a number")
    out = nb08.check_patch_prediction({"subject": 1.0, "end": 0.0}, model, task, positions, 2, "gpt2-small")
    printed = capsys.readouterr().out
    assert "not graded" in printed and "passed" not in printed and out == pytest.approx(truth)


# 08.5


def inlp_reference(x, y, n_iterations):
    return probing.inlp(x, y, n_iterations)[0]


def inlp_gram_schmidt(x, y, n_iterations):
    """The notebook's solution: one unit vector per round, made orthogonal to the earlier ones."""
    d = x.shape[1]
    removed, P = torch.zeros(0, d), torch.eye(d)
    for _ in range(n_iterations):
        w = probing.probe_direction(probing.train_probe(x @ P, y))[0] @ P
        w = w - removed.T @ (removed @ w)
        removed = torch.cat([removed, (w / w.norm())[None]])
        P = torch.eye(d) - removed.T @ removed
    return P


def inlp_sklearn(x, y, n_iterations):
    """Written independently: scikit-learn's logistic regression, projections in numpy float64."""
    from sklearn.linear_model import LogisticRegression

    X, Y = np.asarray(x, dtype=np.float64), np.asarray(y)
    d = X.shape[1]
    directions = []
    P = np.eye(d)
    for _ in range(n_iterations):
        w = LogisticRegression(max_iter=1000).fit(X @ P, Y).coef_[0] @ P
        directions.append(w)
        basis = np.linalg.svd(np.array(directions), full_matrices=False)[2]
        P = np.eye(d) - basis.T @ basis
    return P


def inlp_one_round(x, y, n_iterations):
    w = probing.probe_direction(probing.train_probe(x, y))[0]
    return torch.eye(x.shape[1]) - torch.outer(w, w) / w.dot(w)


def inlp_unprojected(x, y, n_iterations):
    """Retrains on the original data every round: the same direction again and again."""
    d = x.shape[1]
    directions = torch.stack([probing.probe_direction(probing.train_probe(x, y, seed=i))[0] for i in range(n_iterations)])
    basis = torch.linalg.svd(directions, full_matrices=False)[2]
    basis = basis[: int(torch.linalg.matrix_rank(directions, rtol=1e-3))]
    return torch.eye(d) - basis.T @ basis


def inlp_last_only(x, y, n_iterations):
    P = inlp_reference(x, y, n_iterations - 1) if n_iterations > 1 else torch.eye(x.shape[1])
    w = probing.probe_direction(probing.train_probe(x @ P, y))[0] @ P
    return torch.eye(x.shape[1]) - torch.outer(w, w) / w.dot(w)


def inlp_unnormalised(x, y, n_iterations):
    removed = probing.inlp(x, y, n_iterations)[1]
    return torch.eye(x.shape[1]) - 2 * removed.T @ removed


def inlp_kept_span(x, y, n_iterations):
    removed = probing.inlp(x, y, n_iterations)[1]
    return removed.T @ removed


def inlp_product(x, y, n_iterations):
    """Multiplies per-round projections whose directions are not orthogonal to each other."""
    d = x.shape[1]
    P = torch.eye(d)
    for i in range(n_iterations):
        w = probing.probe_direction(probing.train_probe(x @ P, y, seed=i))[0]
        w = w + 0.5 * torch.randn(d, generator=torch.Generator().manual_seed(i)) * w.norm()  # a direction outside what is left
        P = P @ (torch.eye(d) - torch.outer(w, w) / w.dot(w))
    return P


@pytest.fixture(scope="module")
def inlp_example():
    return nb08._redundant_data(123)


def test_inlp_correct_answers_pass(inlp_example, capsys):
    for learner in (inlp_reference, inlp_gram_schmidt, inlp_sklearn):
        nb08.check_inlp(learner, *inlp_example)
    assert capsys.readouterr().out.count("✓ Exercise 08.5 passed") == 3


@pytest.mark.parametrize(
    "learner, hint",
    [
        (inlp_one_round, "single direction"),
        (inlp_unprojected, "single direction"),
        (inlp_last_only, "single direction"),
        (inlp_unnormalised, "projecting twice"),
        (inlp_kept_span, "Keep everything except the removed directions"),
        (inlp_product, "not symmetric"),
        (lambda x, y, n_iterations: torch.eye(x.shape[1]), "removes nothing"),
        (lambda x, y, n_iterations: probing.inlp(x, y, n_iterations), "not a pair"),
        (lambda x, y, n_iterations: torch.eye(3), "[d, d] matrix"),
        (lambda x, y, n_iterations: "P", "[d, d] matrix"),
        (lambda x, y, n_iterations: torch.full((x.shape[1], x.shape[1]), float("nan")), "NaN"),
    ],
)
def test_inlp_mistakes_never_pass(inlp_example, learner, hint):
    assert_never_passes(nb08.check_inlp, learner, *inlp_example, hint=hint, draws=min(DRAWS, 10))


def test_inlp_fresh_data_needs_several_rounds():
    """By construction: one round leaves the label readable, ten rounds do not (the check relies on both)."""
    for seed in range(5):
        x, y = nb08._redundant_data(seed)
        majority = max(y.float().mean().item(), 1 - y.float().mean().item())
        for rounds, readable in ((1, True), (10, False)):
            P = inlp_reference(x, y, rounds)
            acc = probing.accuracy(probing.train_probe(x @ P, y), x @ P, y)
            assert (acc > majority + 0.15) if readable else (acc < majority + 0.06), (seed, rounds, acc)


# 08.6


def test_end_position_choice(capsys):
    nb08.check_end_position("C")
    nb08.check_end_position(" c ")
    assert capsys.readouterr().out.count("✓ Exercise 08.6 passed") == 2
    for wrong, hint in (("A", "reflecting along its direction"), ("B", "same-number control"), ("D", "either one reverse")):
        fails_with(nb08.check_end_position, wrong, hint=hint)
    fails_with(nb08.check_end_position, None, hint="no answer yet")
    fails_with(nb08.check_end_position, "E", hint="unknown option")
    fails_with(nb08.check_end_position, {"C"}, hint="one letter")


def test_custom_checks_answer_any_return_with_a_hint(example):
    """08.1 and 08.2 check properties by hand: wrong types still get a hint, never a traceback."""
    prompts = example["prompts"]
    fails_with(nb08.check_split_by_prompt, lambda prompt_ids, test_fraction, seed: torch.arange(len(prompt_ids)), prompts, hint="return two index tensors")
    fails_with(nb08.check_split_by_prompt, lambda prompt_ids, test_fraction, seed: (torch.zeros(3), torch.ones(2)), prompts, hint="of integers")
    fails_with(nb08.check_split_by_prompt, lambda prompt_ids, test_fraction, seed: ([0, 10**9], [1]), prompts, hint="every row index")
    fails_with(nb08.check_split_by_prompt, lambda ids, fraction: None, prompts, hint="must take the arguments")
    args = (example["types"], example["y"])
    fails_with(nb08.check_control_task, lambda word_types, labels, seed: labels.float(), *args, hint="of integers")
    fails_with(nb08.check_control_task, lambda word_types, labels, seed: "labels", *args, hint="of integers")
    fails_with(nb08.check_control_task, lambda word_types, labels, seed: labels[:5], *args, hint="one control label per row")
