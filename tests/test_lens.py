"""Logit lens and tuned lens against hand computations."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.lens import (
    TunedLens,
    answer_prob,
    answer_rank,
    component_logits,
    decode,
    kl_per_layer,
    kl_to_final,
    layer_labels,
    lens_answer_stats,
    lens_top_tokens,
    logit_lens,
    residual_stack,
    top_tokens,
    train_tuned_lens,
)
from mi_course.models import word_level_tokenizer
from mi_course.residual import decompose_resid

torch.set_num_threads(1)
ATOL = 1e-4


def random_model(seed: int = 0, fold: bool = False) -> HookedTransformer:
    """A tiny model whose every parameter (biases and LN weights too) is random."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith(".w") else 0.3 * torch.randn_like(p))
    if fold:
        model.process_weights_()
    return model.eval()


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 50, (n, 12), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return random_model()


def hand_decode(model: HookedTransformer, x: torch.Tensor) -> torch.Tensor:
    """Final LayerNorm and unembedding written out."""
    x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    return (x * model.ln_final.w + model.ln_final.b) @ model.W_U + model.b_U


@pytest.mark.parametrize("fold", [False, True], ids=["ln", "folded"])
def test_last_entry_is_the_models_logits(fold):
    model = random_model(fold=fold)
    toks = tokens(4, 1)
    logits, cache = model.run_with_cache(toks)
    lens = logit_lens(model, cache)
    assert lens.shape == (3, 4, 12, 50)
    torch.testing.assert_close(lens[-1], logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(logit_lens(model, toks), lens, atol=ATOL, rtol=0)


def test_logit_lens_at_one_position_is_the_full_lens_at_that_position(model):
    toks = tokens(3, 4)
    _, cache = model.run_with_cache(toks)
    full = logit_lens(model, cache)
    for pos in (-1, 0, 5):
        at = logit_lens(model, cache, pos=pos)
        assert at.shape == (3, 3, 50)
        torch.testing.assert_close(at, full[:, :, pos], atol=ATOL, rtol=0)
    torch.testing.assert_close(logit_lens(model, toks, pos=-1), full[:, :, -1], atol=ATOL, rtol=0)


def test_intermediate_entries_match_hand_decoding(model):
    toks = tokens(3, 2)
    _, cache = model.run_with_cache(toks)
    lens = logit_lens(model, cache)
    for i, name in enumerate(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]):
        torch.testing.assert_close(lens[i], hand_decode(model, cache[name]), atol=ATOL, rtol=0)
    assert layer_labels(model) == ["embed", "after L0", "after L1"]


def test_rank_and_prob_by_hand():
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0], [3.0, -1.0, 0.5, 0.0]])
    answers = torch.tensor([2, 0])
    assert answer_rank(logits, answers).tolist() == [3, 1]
    expected = torch.tensor([1 / (1 + 2 * torch.e + torch.e**-1), torch.e**3 / (torch.e**3 + torch.e**-1 + torch.e**0.5 + 1)])
    torch.testing.assert_close(answer_prob(logits, answers), expected)
    with pytest.raises(ValueError, match="one token id per distribution"):
        answer_rank(logits, torch.tensor([1, 2, 3]))


def test_lens_answer_stats_per_layer(model):
    toks = tokens(5, 3)
    lens = logit_lens(model, toks)
    answers = torch.tensor([1, 2, 3, 4, 5])
    ranks, probs = lens_answer_stats(lens, answers, pos=-1)
    assert ranks.shape == probs.shape == (3, 5)
    for layer in range(3):
        for b in range(5):
            order = lens[layer, b, -1].argsort(descending=True)
            assert ranks[layer, b] == (order == answers[b]).nonzero().item() + 1
            assert probs[layer, b] == pytest.approx(lens[layer, b, -1].softmax(-1)[answers[b]].item(), abs=1e-6)


def test_top_tokens_by_hand():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=4, d_vocab=4, attn_only=True)
    model = HookedTransformer(cfg, tokenizer=word_level_tokenizer(["a", "b", "c"]))
    top = top_tokens(model, torch.tensor([0.0, 3.0, 1.0, 2.0]), k=2)
    norm = 1 + torch.e**3 + torch.e + torch.e**2
    assert [t for t, _ in top] == ["a", "c"]
    assert [p for _, p in top] == pytest.approx([torch.e**3 / norm, torch.e**2 / norm])
    with pytest.raises(ValueError, match="one position"):
        top_tokens(model, torch.zeros(2, 4))


def test_lens_top_tokens_rows():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6, normalization_type="LN")
    model = HookedTransformer(cfg, tokenizer=word_level_tokenizer(["a", "b", "c", "d", "e"]))
    prompt = torch.tensor([0, 3, 1, 4])
    tuned = TunedLens(2, 16)
    with torch.no_grad():
        tuned.b[0] = torch.randn(16)
    rows = lens_top_tokens(model, prompt, tuned, pos=2, k=3)
    lens = logit_lens(model, prompt[None])
    assert [r["layer"] for r in rows] == ["embed", "after L0", "after L1"]
    for i, row in enumerate(rows):
        assert row["logit lens"] == top_tokens(model, lens[i, 0, 2], k=3)
    translated = decode(model, tuned(residual_stack(model, prompt[None])))[:, 0, 2]
    assert rows[0]["tuned lens"] == top_tokens(model, translated[0], k=3)
    assert rows[1]["tuned lens"] == rows[1]["logit lens"] and rows[0]["tuned lens"] != rows[0]["logit lens"]
    assert "tuned lens" not in lens_top_tokens(model, prompt)[0]
    with pytest.raises(ValueError, match="one prompt"):
        lens_top_tokens(model, prompt[None])


def test_component_logits_sum_to_model_logits(model):
    toks = tokens(4, 4)
    logits, cache = model.run_with_cache(toks)
    parts, _ = decompose_resid(model, cache, pos=-1)
    total = sum(component_logits(model, cache, part, pos=-1) for part in parts)
    bias = model.ln_final.b @ model.W_U + model.b_U
    torch.testing.assert_close(total + bias, logits[:, -1], atol=ATOL, rtol=0)


def test_component_logits_of_a_head_result(model):
    toks = tokens(4, 5)
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(toks)
    finally:
        model.set_use_attn_result(False)
    head = cache["blocks.1.attn.hook_result"][:, -1, 2]
    x = head - head.mean(-1, keepdim=True)
    expected = x / cache["ln_final.hook_scale"][:, -1] * model.ln_final.w @ model.W_U
    torch.testing.assert_close(component_logits(model, cache, head), expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="one position"):
        component_logits(model, cache, cache["blocks.1.attn.hook_result"][:, :, 2])


def test_identity_translator_is_the_logit_lens(model):
    stack = residual_stack(model, tokens(4, 6))
    lens = TunedLens(model.cfg.n_layers, model.cfg.d_model)
    torch.testing.assert_close(lens(stack), stack)
    torch.testing.assert_close(kl_to_final(model, stack, lens), kl_to_final(model, stack))
    assert kl_to_final(model, stack)[-1] == pytest.approx(0, abs=1e-6)


def test_kl_does_not_depend_on_the_chunk_size(model):
    stack = residual_stack(model, tokens(5, 13))  # 60 tokens
    lens = TunedLens(model.cfg.n_layers, model.cfg.d_model)
    with torch.no_grad():
        lens.b.normal_(generator=torch.Generator().manual_seed(0))
    whole = kl_to_final(model, stack, lens)
    for batch_size in (1, 7, 60, 1000):
        torch.testing.assert_close(kl_to_final(model, stack, lens, batch_size=batch_size), whole, atol=1e-5, rtol=1e-5)
    by_chunks = kl_per_layer(model, stack, lens, batch_size=7)
    torch.testing.assert_close(by_chunks["tuned lens"], whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        kl_to_final(model, stack, batch_size=0)


def test_default_chunk_keeps_the_logits_of_a_large_vocabulary_small():
    from mi_course.lens import _DECODE_BUDGET, _tokens_per_chunk

    gpt2_like = HookedTransformer(HookedTransformerConfig(n_layers=12, d_model=8, n_heads=2, d_head=4, n_ctx=4, d_vocab=50257, attn_only=True))
    chunk = _tokens_per_chunk(gpt2_like, 13, None)
    assert 1 <= chunk < 4096 and chunk * 13 * 50257 <= _DECODE_BUDGET
    assert _tokens_per_chunk(random_model(), 3, None) == 4096  # small vocabularies: chunks as before
    assert _tokens_per_chunk(gpt2_like, 13, 5) == 5


def test_kl_by_hand(model):
    stack = residual_stack(model, tokens(2, 7))
    p = hand_decode(model, stack[-1]).softmax(-1)
    q = hand_decode(model, stack[0]).softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert kl_to_final(model, stack)[0] == pytest.approx(expected.item(), rel=1e-4)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="batch, pos"):
        residual_stack(model, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="d_model=32"):
        decode(model, torch.zeros(3, 31))
    with pytest.raises(ValueError, match=r"n_layers \+ 1 = 3"):
        kl_to_final(model, torch.zeros(2, 5, 32))
    _, cache = model.run_with_cache(tokens(1, 0), names_filter=lambda n: "resid_pre" in n)
    with pytest.raises(KeyError, match="resid_post"):
        residual_stack(model, cache)


def test_training_recovers_a_planted_affine_distortion(model):
    """Layers built as an exact affine distortion of the final residual: the tuned lens undoes it."""
    gen = torch.Generator().manual_seed(8)
    final = residual_stack(model, tokens(160, 9))[-1].reshape(-1, 32)
    layers = []
    for _ in range(model.cfg.n_layers):
        A = 0.3 * torch.randn(32, 32, generator=gen) / 32**0.5
        b = 0.5 * torch.randn(32, generator=gen)
        layers.append((final - b) @ torch.linalg.inv(torch.eye(32) + A))  # h + h A + b = final
    stack = torch.stack([*layers, final])
    train, test = stack[:, :1500], stack[:, 1500:]
    tuned, losses = train_tuned_lens(model, train, steps=300, lr=3e-3, progress=False)
    assert losses[-1] < 0.1 * losses[0]
    kl = kl_per_layer(model, test, tuned)
    assert (kl["logit lens"][:-1] > 0.05).all()
    assert (kl["tuned lens"][:-1] < 0.1 * kl["logit lens"][:-1]).all()


def test_tuned_lens_beats_logit_lens_on_held_out_data(model):
    train = residual_stack(model, tokens(120, 10))
    test = residual_stack(model, tokens(40, 11))
    before = kl_to_final(model, test)
    tuned, _ = train_tuned_lens(model, train, steps=200, lr=3e-3, progress=False)
    kl = kl_per_layer(model, test, tuned)
    torch.testing.assert_close(kl["logit lens"], before)
    assert (kl["tuned lens"][:-1] < kl["logit lens"][:-1]).all()
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_training_works_with_gradients_switched_off(model):
    """Notebooks often call torch.set_grad_enabled(False); training must still learn."""
    train = residual_stack(model, tokens(40, 12))
    with torch.no_grad():
        _, losses = train_tuned_lens(model, train, steps=30, lr=3e-3, progress=False)
    assert losses[-1] < losses[0]


def test_name_control_replaces_both_names_and_nothing_else():
    from mi_course.lens import name_control

    tokens = torch.tensor([[1, 5, 2, 7, 3, 7, 4, 0], [1, 8, 2, 9, 3, 9, 4, 0]])
    io, s, names = torch.tensor([5, 8]), torch.tensor([7, 9]), torch.tensor([5, 7, 8, 9, 10, 11, 12])
    out = name_control(tokens, io, s, names, seed=0)
    assert out.shape == tokens.shape
    names_at = (tokens == io[:, None]) | (tokens == s[:, None])
    assert torch.equal(out[~names_at], tokens[~names_at]), "only the names change"
    for row in range(2):
        new = out[row][names_at[row]]
        assert not set(new.tolist()) & {int(io[row]), int(s[row])} and set(new.tolist()) <= set(names.tolist())
        assert len(set(out[row][tokens[row] == s[row]].tolist())) == 1, "the repeated subject stays repeated"
        assert int(out[row][tokens[row] == io[row]][0]) != int(out[row][tokens[row] == s[row]][0])
    assert torch.equal(out, name_control(tokens, io, s, names, seed=0))
    assert len({tuple(name_control(tokens, io, s, names, seed=k).flatten().tolist()) for k in range(10)}) > 1
    with pytest.raises(ValueError, match="two names"):
        name_control(tokens, io, s, torch.tensor([5, 7, 10]), seed=0)
