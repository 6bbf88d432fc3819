"""Tasks: prompt structure, corruptions, metrics against hand computations, GPT-2 tokenization, errors."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import grammar
from mi_course.models import wrap_tokenizer
from mi_course.tasks import SVA_VARIANTS, TaskUnavailableError, make_task


def _model(tokenizer, d_vocab: int, seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=64, d_vocab=d_vocab,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    with torch.no_grad():  # random logits large enough that the metrics differ between prompts
        model.W_U.mul_(30)
    return model.eval()


@pytest.fixture(scope="module")
def toy():
    tok = grammar.tokenizer()
    return _model(tok, len(tok))


@pytest.fixture(scope="module")
def gpt2_like(gpt2_tokenizer):
    # Wrapped so that HookedTransformer does not try to fetch the tokenizer from the hub.
    tok = wrap_tokenizer(gpt2_tokenizer.backend_tokenizer, bos_token="<|endoftext|>", name="gpt2-fixture")
    return _model(tok, 50257)


@pytest.fixture(scope="module")
def numbers_only():
    vocab = {"<bos>": 0, **{f"t{i}": i + 1 for i in range(40)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = WhitespaceSplit()
    return _model(wrap_tokenizer(tok, bos_token="<bos>", name="numbers"), len(vocab))


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def test_ioi_prompts_corruption_and_metric(toy):
    task = make_task("ioi", toy, n=40, seed=1)
    tok = toy.tokenizer
    clean, corr = task.clean_tokens, task.corrupted_tokens
    assert clean.shape == corr.shape == (40, 15)
    rows = torch.arange(40)
    assert torch.equal(clean[rows, task.positions["IO"]], task.answers[:, 0])
    assert torch.equal(clean[rows, task.positions["S1"]], task.wrong_answers[:, 0])
    assert torch.equal(clean[rows, task.positions["S2"]], task.wrong_answers[:, 0])
    assert set(task.info["order"]) == {"ABBA", "BABA"}
    names = {tok.convert_tokens_to_ids(n.lower()) for n in grammar.NAMES}
    for i in range(40):
        changed = (clean[i] != corr[i]).nonzero().flatten().tolist()
        assert changed == sorted(task.positions[k][i].item() for k in ("IO", "S1", "S2"))
        new = corr[i, changed].tolist()
        assert len(set(new)) == 3 and set(new) <= names and not set(new) & set(clean[i].tolist())
    logits = _logits(toy, clean)
    expected = torch.stack([logits[i, -1, task.answers[i, 0]] - logits[i, -1, task.wrong_answers[i, 0]] for i in range(40)])
    assert torch.allclose(task.per_prompt_metric(logits), expected)
    assert task.metric(logits).item() == pytest.approx(task.clean_value, abs=1e-5)
    assert task.accuracy(logits) == pytest.approx((expected > 0).float().mean().item())


def test_greater_than_metric_by_hand(toy):
    task = make_task("greater_than", toy, n=30, seed=2)
    tok = toy.tokenizer
    logits = _logits(toy, task.clean_tokens)
    probs = logits[:, -1].softmax(-1)
    for i in range(30):
        strings = tok.convert_ids_to_tokens(task.clean_tokens[i].tolist())
        yy = int(strings[task.positions["YY"][i]])
        assert strings[-1] == strings[task.positions["YY"][i] - 1]  # the century repeats at the end
        assert tok.convert_ids_to_tokens(task.corrupted_tokens[i].tolist())[task.positions["YY"][i]] == "01"
        above = sum(probs[i, tok.convert_tokens_to_ids(f"{y:02d}")] for y in range(yy + 1, 100))
        below = sum(probs[i, tok.convert_tokens_to_ids(f"{y:02d}")] for y in range(yy + 1))
        assert task.per_prompt_metric(logits)[i].item() == pytest.approx((above - below).item(), abs=1e-5)
        assert (task.answers[i] >= 0).sum() == 99 - yy and (task.wrong_answers[i] >= 0).sum() == yy + 1


@pytest.mark.parametrize("variant", SVA_VARIANTS)
def test_sva_flips_the_number_and_scores_verb_pairs(toy, variant):
    task = make_task("sva", toy, n=30, seed=3, variant=variant)
    tok = toy.tokenizer
    singular = {p[0] for p in grammar.NOUNS}
    verbs = grammar.RC_VERBS if variant == "rc_within" else grammar.MAIN_VERBS
    logits = _logits(toy, task.clean_tokens)
    for i in range(30):
        at = task.positions["subject"][i]
        subject = tok.convert_ids_to_tokens(task.clean_tokens[i, at].item())
        flipped = tok.convert_ids_to_tokens(task.corrupted_tokens[i, at].item())
        pair = next(p for p in grammar.NOUNS if subject in p)
        assert flipped == pair[subject in singular] and flipped != subject
        assert (task.clean_tokens[i] != task.corrupted_tokens[i]).sum() == 1
        number = 0 if subject in singular else 1
        right = [logits[i, -1, tok.convert_tokens_to_ids(v[number])] for v in verbs]
        wrong = [logits[i, -1, tok.convert_tokens_to_ids(v[1 - number])] for v in verbs]
        assert task.per_prompt_metric(logits)[i].item() == pytest.approx((sum(right) - sum(wrong)).item() / len(verbs), abs=1e-4)
    if variant != "simple":
        assert 0 < sum(task.info["attractor_mismatch"]) < 30


@pytest.mark.parametrize("which", ["toy", "numbers_only"])
def test_induction_repeats_and_corrupts_the_first_half(request, which):
    model = request.getfixturevalue(which)
    task = make_task("induction", model, n=20, seed=4, length=6)
    clean, corr = task.clean_tokens, task.corrupted_tokens
    assert clean.shape == (20, 12)
    assert torch.equal(clean[:, 7:], clean[:, 1:6]) and torch.equal(corr[:, 7:], clean[:, 7:])
    assert torch.equal(task.answers[:, 0], clean[:, 6])
    for i in range(20):
        assert not set(corr[i, 1:7].tolist()) & set(clean[i, 1:7].tolist())
    logits = _logits(model, clean)
    logprobs = logits.log_softmax(-1)
    expected = [
        torch.stack([logprobs[i, p, clean[i, p - 5]] for p in range(7, 12)]).mean() for i in range(20)
    ]
    assert torch.allclose(task.per_prompt_metric(logits), torch.stack(expected), atol=1e-5)
    assert task.info["tokens"] == ("grammar repeat pool" if which == "toy" else "random tokens")


def test_normalised_metric_and_batched_logits(toy):
    task = make_task("ioi", toy, n=20, seed=5)
    clean, corr = _logits(toy, task.clean_tokens), _logits(toy, task.corrupted_tokens)
    assert task.normalised_metric(clean).item() == pytest.approx(1.0, abs=1e-4)
    assert task.normalised_metric(corr).item() == pytest.approx(0.0, abs=1e-4)
    both = task.metric(torch.stack([clean, corr]))
    assert both.shape == (2,) and both[0].item() == pytest.approx(task.clean_value, abs=1e-5)


def test_seeds_reproduce_and_differ(toy):
    a, b, c = (make_task("sva", toy, n=10, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.clean_tokens, b.clean_tokens) and not torch.equal(a.clean_tokens, c.clean_tokens)


def test_clear_errors(toy, numbers_only):
    with pytest.raises(ValueError, match="Did you mean 'ioi'"):
        make_task("oii", toy)
    with pytest.raises(ValueError, match="positive integer"):
        make_task("ioi", toy, n=0)
    with pytest.raises(TaskUnavailableError, match="names"):
        make_task("ioi", numbers_only)
    with pytest.raises(TaskUnavailableError, match="two-digit"):
        make_task("greater_than", numbers_only)
    with pytest.raises(ValueError, match="variant"):
        make_task("sva", toy, variant="relative")
    task = make_task("ioi", toy, n=4, seed=0)
    with pytest.raises(ValueError, match="shape"):
        task.metric(torch.zeros(4, 3, len(toy.tokenizer)))


@pytest.mark.parametrize("name", ["ioi", "greater_than", "sva", "induction"])
def test_tasks_tokenize_like_gpt2(gpt2_like, gpt2_tokenizer, name):
    task = make_task(name, gpt2_like, n=16, seed=6)
    assert task.clean_tokens.shape == task.corrupted_tokens.shape
    assert (task.clean_tokens[:, 0] == gpt2_tokenizer.bos_token_id).all()
    for i, prompt in enumerate(task.prompts):
        assert gpt2_tokenizer.encode(prompt, add_special_tokens=False) == task.clean_tokens[i, 1:].tolist()
    if name == "ioi":
        io = gpt2_tokenizer.decode(task.answers[0])
        assert io.startswith(" ") and io.strip() in grammar.NAMES
    if name == "greater_than":
        rows = torch.arange(16)
        years = gpt2_tokenizer.convert_ids_to_tokens(task.clean_tokens[rows, task.positions["YY"]].tolist())
        centuries = gpt2_tokenizer.convert_ids_to_tokens(task.clean_tokens[rows, task.positions["YY"] - 1].tolist())
        assert all(len(y) == 2 and y.isdigit() for y in years) and all(c == "Ġ" + c[1:] and c[1:].isdigit() for c in centuries)
        assert gpt2_tokenizer.decode(task.corrupted_tokens[0, task.positions["YY"][0]]) == "01"
    assert torch.isfinite(torch.tensor(task.clean_value))


def test_handwired_induction_model_solves_the_induction_task():
    from mi_course import load_model

    model = load_model("handwired-induction")
    task = make_task("induction", model, n=20, seed=9)
    assert task.info["tokens"] == "random tokens"
    assert task.clean_value > -0.1 and task.corrupted_value < task.clean_value - 1
    with pytest.raises(TaskUnavailableError, match="single tokens"):
        make_task("ioi", model)


def test_mix_moves_one_role_prompt_by_prompt_and_with_corrupted_measures_it(toy):
    task = make_task("ioi", toy, n=12, seed=2)
    rows = torch.arange(12)
    for role in ("IO", "S1", "S2"):
        for into, base, other in (("clean", task.clean_tokens, task.corrupted_tokens), ("corrupted", task.corrupted_tokens, task.clean_tokens)):
            mixed = task.mix(role, into=into)
            differs = (mixed != base).nonzero().tolist()
            assert differs == [[i, int(task.positions[role][i])] for i in range(12)]
            assert torch.equal(mixed[rows, task.positions[role]], other[rows, task.positions[role]])
    assert (task.positions["IO"] != task.positions["IO"][0]).any()  # both orders: IO's slot varies
    only_s2 = task.with_corrupted(toy, task.mix("S2"))
    assert torch.equal(only_s2.clean_tokens, task.clean_tokens) and only_s2.clean_value == task.clean_value
    assert only_s2.corrupted_value == pytest.approx(task.metric(_logits(toy, task.mix("S2"))).item(), abs=1e-5)
    assert only_s2.corrupted_value != pytest.approx(task.corrupted_value, abs=1e-3)
    with pytest.raises(ValueError, match="no position 'S3'"):
        task.mix("S3")
    with pytest.raises(ValueError, match="into must be"):
        task.mix("S2", into="noisy")
    with pytest.raises(ValueError, match="shape"):
        task.with_corrupted(toy, task.clean_tokens[:, :-1])
