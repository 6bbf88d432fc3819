"""The grammar: tokenization, labels that line up with tokens, exact entropies, GPT-2 compatibility."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mi_course import grammar as g


def test_tokenizer_matches_word_encoding_on_whole_documents():
    tok = g.tokenizer()
    rng = random.Random(11)
    for _ in range(20):
        words = g.document_words(g.sample_document(rng, 64))
        text = "".join(w.text for w in words[1:])
        assert tok(text, add_special_tokens=False)["input_ids"] == g.encode_words(words[1:])
    assert tok.convert_ids_to_tokens(tok(" 1741", add_special_tokens=False)["input_ids"]) == ["17", "41"]
    assert tok.bos_token == g.BOS and tok.convert_ids_to_tokens(g.encode_words(words[:1])) == [g.BOS]
    assert all(f"{i:02d}" in g.vocabulary() for i in range(100))


def test_unknown_word_gets_a_clear_error():
    with pytest.raises(ValueError, match="not in toy-lm's vocabulary"):
        g.encode_words([g.Word(" zebra", "NOUN")])


def test_labels_line_up_with_tokens():
    data = g.sample_tokens_with_labels(200, seed=3, n_ctx=64)
    tok = g.tokenizer()
    strings = [tok.convert_ids_to_tokens(row) for row in data.tokens.tolist()]
    assert data.tokens.shape == data.pos.shape == data.role.shape == data.entropy.shape == (200, 64)
    names = {n.lower() for n in g.NAMES}
    singular = {pair[0] for pair in g.NOUNS + g.MAIN_VERBS + g.RC_VERBS}
    plural = {pair[1] for pair in g.NOUNS + g.MAIN_VERBS + g.RC_VERBS}
    seen = set()
    for i, row in enumerate(strings):
        assert row[0] == g.BOS and data.role[i, 0] == "bos" and data.pos[i, 0] == "BOS"
        for t, token in enumerate(row):
            role, number = data.role[i, t], data.number[i, t]
            seen.add(role)
            if role in ("io_name", "s_name", "name"):
                assert token in names
            if data.year[i, t] >= 0:
                assert token == f"{data.year[i, t].item():02d}" and role in ("start_year", "end_year")
            if role in ("subject", "attractor", "verb", "rc_verb") and data.kind[i, t] == "sva":
                assert token in (singular if number == "sg" else plural)
            if role == "end_year":
                assert data.year[i, t] > data.year[i, t - 5] and row[t - 1] == row[t - 6]  # later, same century
    assert {"io_name", "s_name", "subject", "attractor", "verb", "rc_verb", "start_year", "end_year", "repeat"} <= seen


def test_agreement_and_repeats_hold_in_sampled_sentences():
    rng = random.Random(5)
    for _ in range(500):
        s = g.sample_sentence(rng)
        roles = {w.role: w for w in s.words}
        if s.kind == "sva":
            assert roles["verb"].number == roles["subject"].number
            if "rc_verb" in roles:
                assert roles["rc_verb"].number == roles["attractor"].number
        if s.kind == "repeat":
            first = [w.text for w in s.words if w.repeat == 1]
            second = [w.text for w in s.words if w.repeat == 2]
            assert first == second and len(set(first)) == len(first)
        if s.kind == "ioi":
            names = [w.text.strip() for w in s.words if w.role in ("io_name", "s_name")]
            assert names.count(s.info["io"]) == 2 and names.count(s.info["s"]) == 2 and names[-1] == s.info["io"]


def _surprisal(s: g.Sentence) -> float:
    """-log P(sentence) from the choices that built it (independent of the per-token entropies)."""
    p = g.P_KIND[s.kind]
    w = [x.text.strip() for x in s.words]
    if s.kind == "ioi":
        p *= 1 / 3 / len(g.NAMES) / (len(g.NAMES) - 1) / len(g.PLACES) / 2 / len(g.OBJECTS)
    elif s.kind == "greater_than":
        p *= 1 / len(g.GT_NOUNS) / len(g.CENTURIES) / len(g.START_YEARS) / (99 - s.info["start"])
    elif s.kind == "sva":
        structure = s.info["structure"]
        p *= 1 / len(g.NOUNS) / 2 * g.P_SVA[structure] / len(g.MAIN_VERBS) / len(g.ADJECTIVES)
        if structure == "pp":
            p *= 1 / len(g.PREPOSITIONS) / (len(g.NOUNS) - 1) / 2
        if structure == "rc":
            p *= 1 / (len(g.NOUNS) - 1) / 2 / len(g.RC_VERBS)
    elif s.kind == "repeat":
        low, high = g.REPEAT_LENGTHS
        length = s.info["length"]
        p /= high - low + 1
        for i in range(length):
            p /= len(g.REPEAT_POOL) - i
    else:
        p *= 1 / len(g.NAMES) / 6 / len(g.PLACES if w[1] in g.MOTION_VERBS else g.OBJECTS)
    return -math.log(p)


def test_entropy_labels_agree_with_independent_sentence_probabilities():
    # E[sum of per-token entropies] = E[-log P(sentence)]; per sentence they differ, on average not.
    rng = random.Random(2024)
    diffs = torch.tensor([sum(w.entropy for w in s.words) - _surprisal(s) for s in (g.sample_sentence(rng) for _ in range(20000))])
    stderr = diffs.std() / math.sqrt(len(diffs))
    assert abs(diffs.mean()) < 4 * stderr + 1e-9, (diffs.mean(), stderr)


def test_entropy_rate_is_a_stable_estimate():
    a, b = g.entropy_rate(500, seed=1), g.entropy_rate(500, seed=2)
    assert 0.5 < a < 4 and abs(a - b) < 0.05
    assert g.entropy_rate(100, seed=1) == g.entropy_rate(100, seed=1)


def test_repeat_lengths_are_uniform():
    rng = random.Random(0)
    lengths = [g.sample_sentence(rng) for _ in range(6000)]
    counts = torch.bincount(torch.tensor([s.info["length"] for s in lengths if s.kind == "repeat"]))
    low, high = g.REPEAT_LENGTHS
    counts = counts[low : high + 1].float()
    assert counts.min() > 0.6 * counts.mean()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="ABBA"):
        g.ioi(0, "Mary", "John", "ABAB", "store", "drink")
    with pytest.raises(ValueError, match="start < end"):
        g.greater_than("war", 17, 50, 40)
    with pytest.raises(ValueError, match="distinct"):
        g.repeat(["key", "key", "dog"])
    with pytest.raises(ValueError, match="n >= 1"):
        g.sample_tokens_with_labels(0, seed=0)


def test_every_word_is_one_gpt2_token(gpt2_tokenizer):
    def ids(text):
        return gpt2_tokenizer.encode(text, add_special_tokens=False)

    assert ids(" Mary") == [5335] and ids(" John") == [1757] and ids(" 1741") == [1596, 3901]
    rng = random.Random(9)
    for _ in range(300):
        s = g.sample_sentence(rng)
        if s.kind == "greater_than":
            continue  # years are checked per year by mi_course.tasks
        assert [i for w in s.words for i in ids(w.text)] == ids(s.text)
        assert all(len(ids(w.text)) == 1 for w in s.words), s.text


def test_labelled_tokens_with_toy_lm_tokenizer_equal_the_default():
    default = g.sample_tokens_with_labels(30, seed=4, n_ctx=48)
    explicit = g.sample_tokens_with_labels(30, seed=4, n_ctx=48, tokenizer=g.tokenizer())
    assert torch.equal(default.tokens, explicit.tokens) and torch.equal(default.year, explicit.year)
    assert (default.pos == explicit.pos).all() and (default.role == explicit.role).all() and (default.kind == explicit.kind).all()


def test_labelled_tokens_with_gpt2_tokenizer_keep_one_label_per_token(gpt2_tokenizer):
    data = g.sample_tokens_with_labels(40, seed=1, n_ctx=64, tokenizer=gpt2_tokenizer)
    assert data.tokens.shape == data.pos.shape == data.role.shape == (40, 64)
    assert (data.tokens[:, 0] == gpt2_tokenizer.bos_token_id).all() and (data.pos[:, 0] == "BOS").all()
    names = {" " + n for n in g.NAMES}
    for i in range(40):
        strings = [gpt2_tokenizer.decode([t]) for t in data.tokens[i, 1:].tolist()]
        # the model sees its own tokenization: the document's text encodes to the same ids
        assert gpt2_tokenizer.encode("".join(strings), add_special_tokens=False) == data.tokens[i, 1:].tolist()
        for t, token in enumerate(strings, start=1):
            if data.role[i, t] in ("io_name", "s_name", "name"):
                assert token in names
            if data.year[i, t] >= 0:
                assert token == f"{data.year[i, t].item():02d}"
    assert {"NOUN", "VERB", "PROPN", "DET"} <= set(data.pos.reshape(-1))
    # every year that is kept splits as " CC" + "YY"
    assert (data.year >= 0).any()
