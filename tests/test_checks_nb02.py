"""The checks of notebook 02: the reference passes, typical mistakes earn their hints."""

from __future__ import annotations

import math

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

_gq = torch.Generator().manual_seed(3)
QK_ACTS = dict(q=torch.randn(2, 7, 3, 5, generator=_gq), k=torch.randn(2, 7, 3, 5, generator=_gq))


def pattern_by_loop(q, k):
    """Correct, written differently: softmax of each query's row over the keys up to it, zeros after."""
    batch, n_pos, heads, d_head = q.shape
    out = torch.zeros(batch, heads, n_pos, n_pos)
    for b in range(batch):
        for h in range(heads):
            for i in range(n_pos):
                scores = k[b, : i + 1, h] @ q[b, i, h] / math.sqrt(d_head)
                out[b, h, i, : i + 1] = scores.softmax(0)
    return out


def pattern_renormalised(q, k):
    """Correct, written differently: softmax over all keys, zero the future, renormalise each row."""
    p = torch.einsum("bqhd,bkhd->bhqk", q, k).div(q.shape[-1] ** 0.5).softmax(-1).tril()
    return p / p.sum(-1, keepdim=True)


def test_attention_pattern_reference_and_alternatives_pass(capsys):
    nb02.check_attention_pattern(induction.attention_pattern, QK_ACTS)
    nb02.check_attention_pattern(pattern_by_loop)
    nb02.check_attention_pattern(pattern_renormalised)
    assert capsys.readouterr().out.count("✓ Exercise 02.1 passed") == 3


def test_attention_pattern_reference_matches_transformer_lens():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=12, d_head=4, n_heads=3, d_vocab=20, attn_only=True, act_fn=None, seed=1)
    model = HookedTransformer(cfg)
    _, cache = model.run_with_cache(torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(induction.attention_pattern(cache["q", 0], cache["k", 0]), cache["pattern", 0], atol=1e-6)


def _scaled(q, k, scale):
    return torch.einsum("bqhd,bkhd->bhqk", q, k) / scale


def _future(q):
    return torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(1)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda q, k: _scaled(q, k, 1.0).masked_fill(_future(q), float("-inf")).softmax(-1), "not scaled"),
        (lambda q, k: _scaled(q, k, q.shape[-1]).masked_fill(_future(q), float("-inf")).softmax(-1), "divided by d_head itself"),
        (lambda q, k: _scaled(q, k, q.shape[-1] ** 0.5).masked_fill(_future(q).T, float("-inf")).softmax(-1), "wrong side"),
        (lambda q, k: _scaled(q, k, q.shape[-1] ** 0.5).masked_fill(_future(q), float("-inf")).softmax(-2), "over the queries"),
        (lambda q, k: _scaled(q, k, q.shape[-1] ** 0.5).softmax(-1).masked_fill(_future(q), 0.0), "masked after the softmax"),
        (lambda q, k: _scaled(q, k, q.shape[-1] ** 0.5).masked_fill(_future(q), float("-inf")).softmax(-1).transpose(-1, -2), "transposed"),
        (lambda q, k: _scaled(q, k, q.shape[-1] ** 0.5).masked_fill(_future(q) | torch.eye(q.shape[1], dtype=torch.bool), float("-inf")).softmax(-1), "keep the diagonal"),
        (lambda q, k: torch.einsum("bqhd,bkhd->bqhk", q, k).div(q.shape[-1] ** 0.5).softmax(-1), "[batch, head, query, key]"),
        (stub, "not implemented yet"),
    ],
)
def test_attention_pattern_mistakes(wrong, hint):
    assert_never_passes(nb02.check_attention_pattern, wrong, QK_ACTS, hint=hint)  # in none of 300 draws of fresh inputs


# ---------------------------------------------------------------- 02.2


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
    assert capsys.readouterr().out.count("✓ Exercise 02.2 passed") == 2


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


# ---------------------------------------------------------------- 02.3

_g = torch.Generator().manual_seed(2)
QK = dict(W_E=torch.randn(5, 4, generator=_g), W_QK=torch.randn(4, 4, generator=_g), W_OV=torch.randn(4, 4, generator=_g))


def composed_by_einsum(W_E, W_QK, W_OV):
    """Correct, written differently: one einsum over the residual dimensions."""
    return torch.einsum("qa,ab,kc,cb->qk", W_E, W_QK, W_E, W_OV)


def test_composed_qk_reference_and_alternative_pass(capsys):
    nb02.check_k_composed_qk(induction.k_composed_qk, QK)
    nb02.check_k_composed_qk(composed_by_einsum)
    assert capsys.readouterr().out.count("✓ Exercise 02.3 passed") == 2


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


# ---------------------------------------------------------------- 02.4


def test_kqv_prediction_accepts_the_key_only(capsys):
    nb02.check_kqv_prediction({"K"})
    nb02.check_kqv_prediction(["k"])
    assert capsys.readouterr().out.count("✓ Exercise 02.4 passed") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        ({"Q"}, "the query sits at the current token"),
        ({"V"}, "what it copies is the token at that position"),
        ({"Q", "K"}, "the query sits at the current token"),
        (set(), "how does it know which token came before it"),
        (None, "no answer yet"),
        ("K", "give a set of letters"),
        ({"X"}, "unknown option"),
    ],
)
def test_kqv_prediction_wrong_answers(wrong, hint):
    fails_with(lambda learner, example: nb02.check_kqv_prediction(learner), wrong, hint=hint)


# ---------------------------------------------------------------- 02.5


@pytest.fixture(scope="module")
def attn_only():
    """attn-only-2l with its found heads, a repeated batch and its first-half loss."""
    import mi_course

    torch.set_grad_enabled(False)
    model = mi_course.load_model("attn-only-2l")
    model.process_weights_()
    tokens = induction.repeated_tokens(model, 20, n=16, seed=0)
    scores = induction.head_scores(model, tokens, 20)
    previous = induction.find_heads(scores["previous_token"], 0.3, layers=[0])
    strongest = induction.find_heads(scores["induction"], 0.3, layers=[1])[0]
    first_half = induction.per_token_loss(model, tokens)[:, 1:20].mean().item()
    return dict(model=model, tokens=tokens, seq_len=20, senders=previous, receiver=strongest, baseline=first_half)


def check_design(learner, setup):
    nb02.check_corruption(learner, setup["model"], setup["tokens"], setup["seq_len"], setup["senders"], setup["receiver"], setup["baseline"])


def shuffle_runs(tokens, seq_len, seed):
    """Correct, written differently: each sequence's run shuffled within itself (and repeated)."""
    g = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    for row in out:
        run = row[1 : seq_len + 1][torch.randperm(seq_len, generator=g)]
        row[1 : seq_len + 1], row[seq_len + 1 :] = run, run
    return out


def test_corruption_reference_and_alternatives_pass(attn_only, capsys):
    check_design(induction.corrupt_repeat, attn_only)
    check_design(lambda tokens, seq_len, seed: tokens.roll(1, dims=0), attn_only)
    check_design(shuffle_runs, attn_only)
    assert capsys.readouterr().out.count("✓ Exercise 02.5 passed") == 3


def second_half_only(tokens, seq_len, seed):
    out = tokens.clone()
    out[:, seq_len + 1 :] = tokens.roll(1, dims=0)[:, seq_len + 1 :]
    return out


def in_place(tokens, seq_len, seed):
    tokens[:] = tokens.roll(1, dims=0)
    return tokens


def unseeded(tokens, seq_len, seed):
    return tokens[torch.randperm(len(tokens))]


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (second_half_only, "too few tokens of the first run change"),
        (lambda tokens, seq_len, seed: tokens.clone(), "too few tokens of the first run change"),
        (lambda tokens, seq_len, seed: tokens[:, : seq_len + 1].clone(), "must have the clean one's length"),
        (lambda tokens, seq_len, seed: torch.cat([tokens[:, :1], tokens[:, 1:].roll(1, dims=0)[:, :1].expand(-1, 2 * seq_len)], 1), "repeats the same few tokens"),
        (lambda tokens, seq_len, seed: torch.where(torch.arange(tokens.shape[1]) < seq_len + 1, tokens[0, 0], tokens), "contain the BOS token"),
        (lambda tokens, seq_len, seed: tokens.roll(1, dims=1), "keep the first token"),
        (lambda tokens, seq_len, seed: tokens.float(), "integer token ids"),
        (lambda tokens, seq_len, seed: torch.cat([tokens[:, :1], tokens[:, 1:].roll(1, dims=0) + 10_000], 1), "outside the vocabulary"),
        (lambda tokens, seq_len, seed: tokens.tolist(), "must return a tensor"),
        (in_place, "in place"),
        (unseeded, "same seed"),
        (stub, "not implemented yet"),
    ],
)
def test_corruption_mistakes(attn_only, wrong, hint):
    with pytest.raises(CheckFailed) as err:
        check_design(wrong, attn_only)
    assert hint in err.value.hint, err.value.hint


def test_corruption_on_a_model_without_the_behaviour_checks_validity_only(capsys):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=24, d_head=4, n_heads=2, d_vocab=40, attn_only=True, act_fn=None, seed=0)
    model = HookedTransformer(cfg)
    tokens = induction.repeated_tokens(model, 10, n=6, seed=0)
    baseline = induction.per_token_loss(model, tokens)[:, 1:10].mean().item()
    nb02.check_corruption(induction.corrupt_repeat, model, tokens, 10, [(0, 0)], (1, 0), baseline)
    assert "checked for validity only" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="too few tokens"):
        nb02.check_corruption(second_half_only, model, tokens, 10, [(0, 0)], (1, 0), baseline)
