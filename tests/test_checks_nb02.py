"""The checks of notebook 02: the reference passes, typical mistakes earn their hints."""

from __future__ import annotations

import pytest
import torch

from mi_course import induction
from mi_course.checks import nb02
from mi_course.checks.core import CheckFailed
from test_checks_core import assert_never_passes

PATTERN = dict(pattern=induction.synthetic_patterns(5, batch=2, seed=0))
REPEAT = dict(PATTERN, seq_len=5)


def fails_with(check, learner, example=None, *, hint: str) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, example)
    assert hint in err.value.hint, err.value.hint


def stub(*args, **kwargs):
    raise NotImplementedError("hint")


# ---------------------------------------------------------------- 02.1


def previous_by_loop(pattern):
    """Correct, written differently: gather the [q, q - 1] entries with index tensors."""
    q = torch.arange(1, pattern.shape[-1])
    return pattern[:, :, q, q - 1].mean(-1).mean(0)


def test_previous_token_reference_and_alternative_pass(capsys):
    nb02.check_previous_token_score(induction.previous_token_score, PATTERN)
    nb02.check_previous_token_score(previous_by_loop)
    assert capsys.readouterr().out.count("✓ Exercise 02.1 passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda pattern: pattern.diagonal(dim1=-2, dim2=-1).mean(dim=(0, -1)), "you read the main diagonal"),
        (lambda pattern: pattern.diagonal(offset=-1, dim1=-1, dim2=-2).mean(dim=(0, -1)), "diagonal above the main one"),
        (lambda pattern: pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, -1)), "you left out query 1"),
        (lambda pattern: pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, -1)), "keep the head axis"),
        (lambda pattern: pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(), "keep the head axis"),
        (stub, "not implemented yet"),
    ],
)
def test_previous_token_mistakes(wrong, hint):
    assert_never_passes(nb02.check_previous_token_score, wrong, PATTERN, hint=hint)  # in none of 300 draws of fresh inputs


# ---------------------------------------------------------------- 02.2


def duplicate_by_loop(pattern, seq_len):
    """Correct, written differently: an explicit loop over the repeat's queries."""
    total = torch.zeros(pattern.shape[1])
    for q in range(seq_len + 1, 2 * seq_len + 1):
        total += pattern[:, :, q, q - seq_len].mean(0)
    return total / seq_len


def test_duplicate_token_reference_and_alternative_pass(capsys):
    nb02.check_duplicate_token_score(induction.duplicate_token_score, REPEAT)
    nb02.check_duplicate_token_score(duplicate_by_loop)
    assert capsys.readouterr().out.count("✓ Exercise 02.2 passed") == 2


def test_duplicate_token_example_answer():
    assert induction.duplicate_token_score(**REPEAT).argmax() == 1  # head 1 is the duplicate-token head


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda pattern, seq_len: induction.induction_score(pattern, seq_len), "(that is the induction score)"),
        (lambda pattern, seq_len: pattern.diagonal(-seq_len, -2, -1).mean(dim=(0, -1)), "you included the BOS column"),
        (lambda pattern, seq_len: pattern.diagonal(-seq_len - 1, -2, -1)[..., -seq_len:].mean(dim=(0, -1)), "seq_len + 1"),
        (lambda pattern, seq_len: pattern.diagonal(-seq_len, -2, -1)[..., -seq_len:].mean(dim=(1, -1)), "keep the head axis"),
    ],
)
def test_duplicate_token_mistakes(wrong, hint):
    assert_never_passes(nb02.check_duplicate_token_score, wrong, REPEAT, hint=hint)  # in none of 300 draws of fresh inputs


# ---------------------------------------------------------------- 02.3


def induction_by_mask(pattern, seq_len):
    """Correct, written differently: a 0/1 mask of the induction keys."""
    n = pattern.shape[-1]
    mask = torch.zeros(n, n)
    for q in range(seq_len + 1, n):
        mask[q, q - seq_len + 1] = 1.0
    return (pattern * mask).sum(dim=(-2, -1)).mean(0) / seq_len


def test_induction_reference_and_alternative_pass(capsys):
    nb02.check_induction_score(induction.induction_score, REPEAT)
    nb02.check_induction_score(induction_by_mask)
    assert capsys.readouterr().out.count("✓ Exercise 02.3 passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda pattern, seq_len: induction.duplicate_token_score(pattern, seq_len), "off by one in the induction offset"),
        (lambda pattern, seq_len: pattern.diagonal(2 - seq_len, -2, -1)[..., -seq_len:].mean(dim=(0, -1)), "not query - seq_len + 2"),
        (lambda pattern, seq_len: pattern.diagonal(1 - seq_len, -2, -1).mean(dim=(0, -1)), "drop the first half"),
        (lambda pattern, seq_len: pattern.diagonal(seq_len - 1, -2, -1).mean(dim=(0, -1)), "the offset must be negative"),
        (
            lambda pattern, seq_len: pattern.diagonal(1 - seq_len, -2, -1)[..., -seq_len:].sum(-1).mean(0) / pattern.shape[-1],
            "you divided by every query",
        ),
        (stub, "not implemented yet"),
    ],
)
def test_induction_mistakes(wrong, hint):
    assert_never_passes(nb02.check_induction_score, wrong, REPEAT, hint=hint)  # in none of 300 draws of fresh inputs


# ---------------------------------------------------------------- 02.4

Z = dict(z=torch.randn(4, 3, 2, 5, generator=torch.Generator().manual_seed(0)), head=1, source=torch.tensor([1, 2, 3, 0]))


def resample_other(z, head, source):
    """Correct, written differently: index_select and torch.where on a new tensor."""
    mask = torch.zeros(z.shape[2], dtype=torch.bool)
    mask[head] = True
    return torch.where(mask[None, None, :, None], z.index_select(0, source), z)


def resample_in_place(z, head, source):
    """Right values, but edits the argument in place: the exercise asks for a copy."""
    z[:, :, head] = z.index_select(0, source)[:, :, head].clone()
    return z


def test_resample_reference_and_alternative_pass(capsys):
    nb02.check_resample_ablate(induction.resample_ablate, Z)
    nb02.check_resample_ablate(resample_other)
    assert capsys.readouterr().out.count("✓ Exercise 02.4 passed") == 2


def test_resample_in_place_fails_and_leaves_the_example_alone():
    example = dict(z=Z["z"].clone(), head=1, source=Z["source"].clone())
    fails_with(nb02.check_resample_ablate, resample_in_place, example, hint="changed `z` in place")
    assert torch.equal(example["z"], Z["z"])


def test_resample_leaves_other_heads():
    out = induction.resample_ablate(**Z)
    assert torch.equal(out[:, :, 0], Z["z"][:, :, 0])
    assert torch.equal(out[0, :, 1], Z["z"][1, :, 1])


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (nb02._scatter, "you scattered instead of gathering"),
        (nb02._every_head, "you resampled every head"),
        (nb02._mean, "that is mean ablation"),
        (nb02._zero, "that is zero ablation"),
        (resample_in_place, "changed `z` in place"),
        (lambda z, head, source: induction.resample_ablate(z, head, source.argsort()), "scattered instead of gathering"),
        (lambda z, head, source: induction.resample_ablate(z, (head + 1) % z.shape[2], source), None),
    ],
)
def test_resample_mistakes(wrong, hint):
    assert_never_passes(nb02.check_resample_ablate, wrong, Z, hint=hint)  # in none of 300 draws of fresh inputs


# ---------------------------------------------------------------- 02.5

OV = dict(full_ov=torch.eye(6) + 0.1 * torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))


def copying_by_loop(full_ov):
    """Correct, written differently: compares each diagonal entry with its row's maximum."""
    hits = sum(bool(full_ov[i, i] >= full_ov[i].max()) for i in range(full_ov.shape[0]))
    return torch.tensor(hits / full_ov.shape[0])


def test_copying_reference_and_alternative_pass(capsys):
    nb02.check_copying_score(lambda full_ov: induction.diagonal_argmax_fraction(full_ov), OV)
    nb02.check_copying_score(copying_by_loop)
    assert capsys.readouterr().out.count("✓ Exercise 02.5 passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda full_ov: (full_ov.argmax(0) == torch.arange(len(full_ov))).float().mean(), "argmax down each column"),
        (lambda full_ov: int((full_ov.argmax(-1) == torch.arange(len(full_ov))).sum()), "that is a count"),
        (lambda full_ov: (full_ov.diagonal() > 0).float().mean(), "a positive own logit is not enough"),
        (lambda full_ov: (full_ov.diagonal() > full_ov.mean(-1)).float().mean(), "row's mean"),
        (lambda full_ov: (full_ov.argmax(-1) == torch.arange(len(full_ov))).float().sum() / (len(full_ov) + 1), None),
    ],
)
def test_copying_mistakes(wrong, hint):
    assert_never_passes(nb02.check_copying_score, wrong, OV, hint=hint)  # in none of 300 draws of fresh inputs


# ---------------------------------------------------------------- 02.6

_g = torch.Generator().manual_seed(2)
QK = dict(W_E=torch.randn(5, 4, generator=_g), W_QK=torch.randn(4, 4, generator=_g), W_OV=torch.randn(4, 4, generator=_g))


def composed_by_einsum(W_E, W_QK, W_OV):
    """Correct, written differently: one einsum over the residual dimensions."""
    return torch.einsum("qa,ab,kc,cb->qk", W_E, W_QK, W_E, W_OV)


def test_composed_qk_reference_and_alternative_pass(capsys):
    nb02.check_k_composed_qk(induction.k_composed_qk, QK)
    nb02.check_k_composed_qk(composed_by_einsum)
    assert capsys.readouterr().out.count("✓ Exercise 02.6 passed") == 2


def test_composed_qk_matches_package_on_a_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=2, d_vocab=10, attn_only=True, act_fn=None, seed=0)
    model = HookedTransformer(cfg)
    ours = induction.k_composed_qk(model.W_E, induction.qk_circuit(model, 1, 1), induction.ov_circuit(model, 0, 0))
    assert torch.allclose(ours, induction.k_composition_qk_circuit(model, (0, 0), (1, 1)), atol=1e-5)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda W_E, W_QK, W_OV: W_E @ W_QK @ W_E.T, "you left out the previous-token head"),
        (lambda W_E, W_QK, W_OV: (W_E @ W_OV) @ W_QK @ W_E.T, "feeds the keys, not the queries"),
        (lambda W_E, W_QK, W_OV: (W_E @ W_QK @ (W_E @ W_OV).T).T, "you returned the transpose"),
        (lambda W_E, W_QK, W_OV: W_E @ W_QK @ W_OV @ W_E.T, "transpose W_OV's whole product"),
        (lambda W_E, W_QK, W_OV: W_E @ W_QK.T @ (W_E @ W_OV).T, None),
    ],
)
def test_composed_qk_mistakes(wrong, hint):
    assert_never_passes(nb02.check_k_composed_qk, wrong, QK, hint=hint)  # in none of 300 draws of fresh inputs
