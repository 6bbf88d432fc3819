"""Every check of notebook 08 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_course import probing
from mi_course.checks import nb08
from mi_course.checks.core import CheckFailed
from test_checks_core import assert_never_passes

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


def majority_other(y_train, y_test):
    values, counts = np.unique(y_train.numpy(), return_counts=True)
    return float(np.mean(y_test.numpy() == values[counts.argmax()]))


def test_majority_accuracy(example):
    args = (example["y"][example["train"]], example["y"][example["test"]])
    nb08.check_majority_accuracy(probing.majority_accuracy, *args)
    nb08.check_majority_accuracy(majority_other, *args)
    assert_never_passes(nb08.check_majority_accuracy, lambda y_train, y_test: majority_other(y_test, y_test), *args, hint="most common label of the test set")
    assert_never_passes(nb08.check_majority_accuracy, lambda y_train, y_test: majority_other(y_train, y_train), *args, hint="how common the majority label is in the training set")
    assert_never_passes(nb08.check_majority_accuracy, lambda y_train, y_test: 1 / len(torch.unique(y_train)), *args, hint="chance for balanced classes")


# 08.2


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


# 08.3


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


# 08.4


def selectivity_other(x, y, control, train_idx, test_idx):
    n_classes = int(torch.cat([y, control]).max()) + 1
    scores = []
    for target in (y, control):
        probe = probing.train_probe(x[train_idx], target[train_idx], n_classes=n_classes)
        scores.append((probe(x[test_idx]).argmax(-1) == target[test_idx]).double().mean().item())
    return scores[0] - scores[1]


def test_selectivity(example):
    control = probing.control_labels(example["types"], example["y"], seed=0)
    args = (example["x"], example["y"], control, example["train"], example["test"])
    nb08.check_selectivity(nb08.reference_selectivity, *args)
    nb08.check_selectivity(selectivity_other, *args)
    fails_with(nb08.check_selectivity, lambda x, y, control, train_idx, test_idx: selectivity_other(x, y, control, train_idx, train_idx), *args, hint="rows they were trained on")
    fails_with(nb08.check_selectivity, lambda x, y, control, train_idx, test_idx: -selectivity_other(x, y, control, train_idx, test_idx), *args, hint="not the other way round")

    def scored_on_task(x, y, control, train_idx, test_idx):
        task = probing.train_probe(x[train_idx], y[train_idx], n_classes=4)
        ctrl = probing.train_probe(x[train_idx], control[train_idx], n_classes=4)
        return probing.accuracy(task, x[test_idx], y[test_idx]) - probing.accuracy(ctrl, x[test_idx], y[test_idx])

    fails_with(nb08.check_selectivity, scored_on_task, *args, hint="against the control labels")


# 08.5


def reflect_other(h, direction, offset):
    unit = direction / direction.norm()
    distance = (h @ unit + offset / direction.norm())[:, None]
    return h - 2 * distance * unit


def test_reflect():
    gen = torch.Generator().manual_seed(9)
    h, w = torch.randn(12, 16, generator=gen), 3 * torch.randn(16, generator=gen)
    args = (h, w, 0.7)
    nb08.check_reflect(nb08.reference_reflect, *args)
    nb08.check_reflect(reflect_other, *args)
    hook_based = lambda h, direction, offset: probing.probe_intervention_hook(direction, offset)(h[:, None])[:, 0]
    nb08.check_reflect(hook_based, *args)
    assert_never_passes(nb08.check_reflect, lambda h, direction, offset: -h, *args, hint="flipped the whole vector")
    assert_never_passes(nb08.check_reflect, lambda h, direction, offset: h - 2 * (h @ direction + offset)[:, None] * direction, *args, hint="unnormalised weight")
    assert_never_passes(nb08.check_reflect, lambda h, direction, offset: reflect_other(h, direction, 0.0), *args, hint="include the offset")
    assert_never_passes(nb08.check_reflect, lambda h, direction, offset: (h + reflect_other(h, direction, offset)) / 2, *args, hint="factor 1")
    assert_never_passes(nb08.check_reflect, lambda h, direction, offset: reflect_other(h, direction, offset)[:, :-1], *args, hint="shape")


def test_selectivity_fresh_cases_separate_every_mistake():
    """08.4 trains probes (not cheap): by construction, each fresh case puts every mistake 0.02 or more from the answer."""
    from mi_course.checks.core import separates

    for seed in range(3):
        case = nb08.separating_case(nb08._random_probe_data, nb08.reference_selectivity, nb08._SELECTIVITY_MISTAKES.values(), seed, tol=0.02, tries=20)
        assert separates(case, nb08.reference_selectivity, nb08._SELECTIVITY_MISTAKES.values(), tol=0.02)


def test_custom_checks_answer_any_return_with_a_hint(example):
    """08.2 and 08.3 check properties by hand: wrong types still get a hint, never a traceback."""
    prompts = example["prompts"]
    fails_with(nb08.check_split_by_prompt, lambda prompt_ids, test_fraction, seed: torch.arange(len(prompt_ids)), prompts, hint="return two index tensors")
    fails_with(nb08.check_split_by_prompt, lambda prompt_ids, test_fraction, seed: (torch.zeros(3), torch.ones(2)), prompts, hint="of integers")
    fails_with(nb08.check_split_by_prompt, lambda prompt_ids, test_fraction, seed: ([0, 10**9], [1]), prompts, hint="every row index")
    fails_with(nb08.check_split_by_prompt, lambda ids, fraction: None, prompts, hint="must take the arguments")
    args = (example["types"], example["y"])
    fails_with(nb08.check_control_task, lambda word_types, labels, seed: labels.float(), *args, hint="of integers")
    fails_with(nb08.check_control_task, lambda word_types, labels, seed: "labels", *args, hint="of integers")
    fails_with(nb08.check_control_task, lambda word_types, labels, seed: labels[:5], *args, hint="one control label per row")
