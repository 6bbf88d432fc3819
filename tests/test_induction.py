"""Induction-head scores and circuits against independent computations and known models."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import mi_course
from mi_course import induction
from mi_course.checks import nb00
from mi_course.circuits import Edge
from mi_course.models import MissingWeightsError

SEQ_LEN = 8


@pytest.fixture(scope="module")
def random_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=40, d_head=8, n_heads=3, d_vocab=30, attn_only=True, act_fn=None, seed=0
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def handwired() -> HookedTransformer:
    return mi_course.load_model("handwired-induction")


def test_repeated_tokens_layout(random_model):
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=5, seed=3)
    assert tokens.shape == (5, 2 * SEQ_LEN + 1)
    assert torch.equal(tokens[:, 1 : SEQ_LEN + 1], tokens[:, SEQ_LEN + 1 :])
    assert all(len(set(row[1 : SEQ_LEN + 1].tolist())) == SEQ_LEN for row in tokens)  # distinct within a half
    assert torch.equal(tokens, induction.repeated_tokens(random_model, SEQ_LEN, n=5, seed=3))
    assert not torch.equal(tokens, induction.repeated_tokens(random_model, SEQ_LEN, n=5, seed=4))


def test_repeated_tokens_skip_bos(handwired):
    tokens = induction.repeated_tokens(handwired, 26, n=4, seed=0)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    with pytest.raises(ValueError, match="distinct tokens"):
        induction.repeated_tokens(handwired, 27)


def test_synthetic_patterns_are_distributions_and_scores_pick_each_head():
    pattern = induction.synthetic_patterns(SEQ_LEN, batch=3, seed=1, noise=0.1)
    assert torch.allclose(pattern.sum(-1), torch.ones(3, 4, 2 * SEQ_LEN + 1))
    assert (pattern.triu(1) == 0).all()
    assert induction.previous_token_score(pattern).argmax() == 0
    assert induction.duplicate_token_score(pattern, SEQ_LEN).argmax() == 1
    assert induction.induction_score(pattern, SEQ_LEN).argmax() == 2
    assert induction.induction_score(pattern, SEQ_LEN)[2] > 0.9


def test_diagonal_scores_equal_mask_scores_on_a_model(random_model):
    """The diagonal scores agree with scores computed from where tokens actually repeat."""
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=6, seed=0)
    scores = induction.head_scores(random_model, tokens, SEQ_LEN)
    _, cache = random_model.run_with_cache(tokens)
    for layer in range(2):
        by_mask = induction.mask_scores(cache["pattern", layer], tokens)
        for name in induction.SCORE_NAMES:
            assert torch.allclose(by_mask[name], scores[name][layer], atol=1e-6), name


def test_mask_scores_without_repeats_are_nan():
    pattern = induction.random_causal_patterns(1, 2, 5, seed=0)
    scores = induction.mask_scores(pattern, torch.arange(5)[None])
    assert scores["induction"].isnan().all() and scores["duplicate_token"].isnan().all()
    assert not scores["previous_token"].isnan().any()


def test_per_token_loss_matches_transformer_lens(random_model):
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=3, seed=0)
    expected = random_model(tokens, return_type="loss", loss_per_token=True)
    assert torch.allclose(induction.per_token_loss(random_model, tokens), expected, atol=1e-5)


def test_find_heads_sorted():
    scores = torch.tensor([[0.1, 0.9], [0.95, 0.2]])
    assert induction.find_heads(scores, 0.5) == [(1, 0), (0, 1)]
    assert induction.find_heads(scores, 0.99) == []


def test_handwired_scores_identify_exactly_the_planted_heads(handwired):
    """L0H0 is the previous-token head and L1H0 the induction head, joined by K-composition."""
    tokens = induction.repeated_tokens(handwired, 20, n=8, seed=0)
    scores = induction.head_scores(handwired, tokens, 20)
    truth = mi_course.ground_truth("handwired-induction")
    assert Edge("L0H0", "L1H0.k") in truth
    assert induction.find_heads(scores["previous_token"], 0.5) == [(0, 0)]
    assert induction.find_heads(scores["induction"], 0.5) == [(1, 0)]
    assert induction.find_heads(scores["duplicate_token"], 0.5) == []
    assert scores["previous_token"][0, 0] > 0.99 and scores["induction"][1, 0] > 0.99
    loss = induction.per_token_loss(handwired, tokens)
    assert loss[:, 21:].mean() < 0.01 < 1.0 < loss[:, 1:20].mean()  # the repeat is predicted (but its first token)


def test_handwired_circuits(handwired):
    letters = torch.arange(1, 27)
    assert induction.head_copying_score(handwired, 1, 0, letters) == 1.0
    assert induction.head_copying_score(handwired, 0, 0, letters) == 0.0  # writes into PREV, which W_U ignores
    composed = induction.k_composition_qk_circuit(handwired, (0, 0), (1, 0))
    assert induction.diagonal_argmax_fraction(composed[1:, 1:]) == 1.0
    positional = induction.positional_qk_circuit(handwired, 0, 0)
    assert torch.equal(positional[1:20].argmax(-1), torch.arange(0, 19))
    k_scores = induction.k_composition_scores(handwired)
    assert k_scores[0, :, 1, :].argmax() == 0  # (L0H0, L1H0) is the top pair
    baseline = induction.composition_baseline(handwired.cfg.d_model, handwired.cfg.d_head, n=30)
    assert k_scores[0, 0, 1, 0] > baseline.max()


def test_head_copying_score_chunks_equal_dense(random_model):
    dense = induction.diagonal_argmax_fraction(induction.full_ov_circuit(random_model, 1, 2))
    assert induction.head_copying_score(random_model, 1, 2, chunk=7) == pytest.approx(dense)
    rows = torch.tensor([3, 5, 11])
    full = induction.full_ov_circuit(random_model, 0, 1)
    assert torch.allclose(induction.full_ov_circuit(random_model, 0, 1, rows), full[rows][:, rows], atol=1e-5)
    composed = induction.k_composition_qk_circuit(random_model, (0, 0), (1, 1))
    assert torch.allclose(induction.k_composition_qk_circuit(random_model, (0, 0), (1, 1), rows), composed[rows][:, rows], atol=1e-5)


def test_circuits_match_transformer_lens_factored_matrices(random_model):
    assert torch.allclose(induction.qk_circuit(random_model, 1, 2), random_model.QK[1, 2].AB, atol=1e-5)
    assert torch.allclose(induction.ov_circuit(random_model, 0, 1), random_model.OV[0, 1].AB, atol=1e-5)


def test_k_composition_matches_transformer_lens_and_notebook_00(random_model):
    ours = induction.k_composition_scores(random_model)
    assert torch.allclose(ours, random_model.all_composition_scores("K"), atol=1e-5)
    m = random_model
    assert torch.allclose(ours[0, :, 1, :], nb00.k_composition_scores(m.W_V[0], m.W_O[0], m.W_Q[1], m.W_K[1]), atol=1e-5)


def test_composition_baseline_is_seeded_and_in_range():
    a = induction.composition_baseline(32, 8, n=20, seed=0)
    assert torch.equal(a, induction.composition_baseline(32, 8, n=20, seed=0))
    assert ((a > 0) & (a < 1)).all()


def _zoo_model(name: str) -> HookedTransformer:
    try:
        return mi_course.load_model(name)
    except MissingWeightsError:
        pytest.skip(f"{name} is not in the zoo yet")


def test_attn_only_2l_has_previous_token_and_induction_heads():
    model = _zoo_model("attn-only-2l")
    tokens = induction.repeated_tokens(model, 20, n=16, seed=0)
    scores = induction.head_scores(model, tokens, 20)
    previous = induction.find_heads(scores["previous_token"], 0.3)  # as in notebook 02
    found = induction.find_heads(scores["induction"], 0.3)
    assert previous and all(layer == 0 for layer, _ in previous)
    assert found and all(layer == 1 for layer, _ in found)
    loss = induction.per_token_loss(model, tokens)
    assert loss[:, 21:].mean() < 0.5 * loss[:, 1:20].mean()


def test_repeat_loss_and_resample_hook(random_model):
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=4, seed=0)
    expected = induction.per_token_loss(random_model, tokens)[:, SEQ_LEN + 1 :].mean().item()
    assert induction.repeat_loss(random_model, tokens, SEQ_LEN) == pytest.approx(expected, abs=1e-5)
    identity = [("blocks.1.attn.hook_z", induction.resample_hook(0, torch.arange(4)))]
    assert induction.repeat_loss(random_model, tokens, SEQ_LEN, identity) == pytest.approx(expected, abs=1e-5)
    shuffled = [("blocks.1.attn.hook_z", induction.resample_hook(0, torch.tensor([1, 2, 3, 0])))]
    assert induction.repeat_loss(random_model, tokens, SEQ_LEN, shuffled) != pytest.approx(expected, abs=1e-5)


def test_ablation_hooks(random_model):
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=4, seed=0)
    clean = induction.repeat_loss(random_model, tokens, SEQ_LEN)
    for how in ("mean", "zero", "resample"):
        hooks = induction.ablation_hooks([(1, 0), (1, 2)], how, source=torch.tensor([1, 2, 3, 0]))
        assert [name for name, _ in hooks] == ["blocks.1.attn.hook_z"] * 2
        assert induction.repeat_loss(random_model, tokens, SEQ_LEN, hooks) != pytest.approx(clean, abs=1e-6)
    with pytest.raises(ValueError, match="needs `source`"):
        induction.ablation_hooks([(1, 0)], "resample")


def test_single_token_ids(handwired):
    assert induction.single_token_ids(handwired, ["A", "Z", "AB", "<bos>"]).tolist() == [1, 26]


def test_toy_lm_has_induction_heads_on_its_repeat_words():
    from mi_course import grammar

    model = _zoo_model("toy-lm")
    words = induction.single_token_ids(model, grammar.REPEAT_POOL)
    tokens = induction.repeated_tokens(model, 10, n=16, seed=0, vocab=words)
    scores = induction.head_scores(model, tokens, 10)
    previous = induction.find_heads(scores["previous_token"], 0.4)
    found = induction.find_heads(scores["induction"], 0.4)
    assert previous and found and min(l for l, _ in previous) < max(l for l, _ in found)
    loss = induction.per_token_loss(model, tokens)
    assert loss[:, 12:].mean() < 0.5 * loss[:, 1:10].mean()


def test_find_heads_layers_and_fallback(capsys):
    scores = torch.tensor([[0.1, 0.9], [0.95, 0.2], [0.05, 0.25]])
    assert induction.find_heads(scores, 0.5, layers=range(1, 3)) == [(1, 0)]
    assert induction.find_heads(scores, 0.5, fallback="induction") == [(1, 0), (0, 1)]  # found: no fallback
    assert capsys.readouterr().out == ""
    assert induction.find_heads(scores, 0.99, layers=[2]) == []  # no fallback asked: nothing found
    assert induction.find_heads(scores, 0.99, layers=[2], fallback="induction") == [(2, 1)]
    said = capsys.readouterr().out
    assert "No induction head scores above 0.99 in layer 2" in said and "L2H1 (score 0.25)" in said
    assert induction.find_heads(scores, 0.99, fallback="previous-token") == [(1, 0)]
    assert "L1H0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no layer"):
        induction.find_heads(scores, 0.99, layers=range(0), fallback="induction")


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_scores_match_transformer_lens_and_a_direct_computation(random_model, kind):
    m = random_model
    ours = induction.composition_scores(m, kind)
    assert torch.allclose(ours, m.all_composition_scores(kind.upper()), atol=1e-5)
    ov, qk = induction.ov_circuit(m, 0, 2), induction.qk_circuit(m, 1, 1)  # direct: |A B| / (|A| |B|)
    later = {"q": qk, "k": qk.T, "v": induction.ov_circuit(m, 1, 1)}[kind]
    assert ours[0, 2, 1, 1].item() == pytest.approx(((ov @ later).norm() / (ov.norm() * later.norm())).item(), abs=1e-5)
    assert (ours[1, :, 0] == 0).all() and (ours[0, :, 0] == 0).all()  # only later layers compose
    with pytest.raises(ValueError, match="kind must be"):
        induction.composition_scores(m, "o")


def test_attention_pattern_matches_the_model(random_model):
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=3, seed=2)
    _, cache = random_model.run_with_cache(tokens)
    for layer in range(2):
        ours = induction.attention_pattern(cache["q", layer], cache["k", layer])
        assert torch.allclose(ours, cache["pattern", layer], atol=1e-6)
    assert torch.allclose(ours.sum(-1), torch.ones_like(ours[..., 0])) and (ours.triu(1) == 0).all()


def test_kept_share_and_repeat_loss_metric(random_model):
    assert induction.kept_share(1.0, 1.0, 5.0) == 1.0 and induction.kept_share(1.0, 5.0, 5.0) == 0.0
    assert induction.kept_share(1.0, 2.0, 5.0) == pytest.approx(0.75)
    tokens = induction.repeated_tokens(random_model, SEQ_LEN, n=4, seed=0)
    metric = induction.repeat_loss_metric(tokens, SEQ_LEN)
    assert metric(random_model(tokens)).item() == pytest.approx(induction.repeat_loss(random_model, tokens, SEQ_LEN), abs=1e-6)


def test_corrupt_repeat_takes_other_sequences():
    tokens = torch.arange(6)[:, None].repeat(1, 9)
    out = induction.corrupt_repeat(tokens, 4, seed=1)
    assert out.shape == tokens.shape and (out[:, 0] != tokens[:, 0]).all()  # every sequence replaced by another one
    assert torch.equal(out, induction.corrupt_repeat(tokens, 4, seed=1))
    assert not torch.equal(out, induction.corrupt_repeat(tokens, 4, seed=2))
    with pytest.raises(ValueError, match="at least 2 prompts"):
        induction.corrupt_repeat(tokens[:1], 4)


def test_input_patch_kept_against_split_inputs(random_model):
    """Independent computation: TransformerLens's per-head q/k/v inputs, with the sender's output swapped by hand."""
    m = random_model
    tokens = induction.repeated_tokens(m, SEQ_LEN, n=4, seed=0)
    corrupted = induction.corrupt_repeat(tokens, SEQ_LEN, seed=0)
    baseline = induction.per_token_loss(m, tokens)[:, 1:SEQ_LEN].mean().item() + 1.0
    ours = induction.input_patch_kept(m, tokens, corrupted, SEQ_LEN, [(0, 1), (0, 2)], (1, 0), baseline)
    head_out = {}
    for name, toks in (("clean", tokens), ("corrupted", corrupted)):
        _, cache = m.run_with_cache(toks)
        z = cache["z", 0]  # [batch, pos, head, d_head]
        head_out[name] = sum(z[:, :, h] @ m.W_O[0, h] for h in (1, 2))
    delta = head_out["corrupted"] - head_out["clean"]
    clean = induction.repeat_loss(m, tokens, SEQ_LEN)
    m.set_use_split_qkv_input(True)
    try:
        for kind in "qkv":
            def swap(x, hook):
                x = x.clone()
                x[:, :, 0] += delta
                return x

            loss = induction.repeat_loss(m, tokens, SEQ_LEN, [(f"blocks.1.hook_{kind}_input", swap)])
            assert ours[kind] == pytest.approx((loss - baseline) / (clean - baseline), abs=1e-4)
    finally:
        m.set_use_split_qkv_input(False)
    assert ours["k"] != pytest.approx(1.0, abs=1e-4)  # the patch changes something
