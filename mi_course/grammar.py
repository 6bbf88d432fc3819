"""A seeded generator of the course's synthetic English, with a label on every token.

toy-lm is trained on documents made of five kinds of sentences, each built so that one
mechanism from the literature is needed to predict it:

- ``ioi``: indirect-object identification, "When Mary and John went to the store, John gave
  a drink to Mary." (ABBA and BABA orders, three templates of the same length);
- ``greater_than``: "The war lasted from the year 1741 to the year 1789." (end year drawn
  uniformly above the start year, same century);
- ``sva``: subject-verb agreement, simple ("The keys are old."), across a prepositional
  phrase ("The keys on the cabinet are old.") and with a relative clause ("The key that the
  men see is old.": "see" agrees within the clause, "is" across it);
- ``repeat``: a span of distinct random words followed by its exact repeat (induction), with
  a random length from 3 to 10, so no head can find the repeat by position alone;
- ``filler``: "Mary walked to the park." and "John found a coin."

Text is written with GPT-2's leading-space convention (" Mary", " 17" + "41" for 1741), so
the same strings tokenize one word to one token with the word-level `tokenizer()` here and,
for the words chosen, with GPT-2's BPE (see `mi_course.tasks`). `sample_tokens_with_labels`
with ``tokenizer=model.tokenizer`` encodes the labelled documents for another model (GPT-2
small): every word stays one token, so every label stays on one token.

Every token carries labels (`Word`): part of speech, grammatical number, role, year digits,
position in a repeat, sentence kind and the grammar's entropy of that token given everything
before it. The grammar is built so that the prefix always determines which choices remain:
every sentence kind has its own first tokens (the two kinds that start with "The" split at
the next token), every random choice shows at one token, and repeated words are distinct, so
the first reappearance of the span's first word marks where the repeat starts. The entropy
labels are therefore exact, and their mean is the loss a perfect model would reach.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from torch import Tensor
from transformers import PreTrainedTokenizerFast

__all__ = [
    "ADJECTIVES",
    "BOS",
    "CENTURIES",
    "GETTING_VERBS",
    "GT_NOUNS",
    "IOI_TEMPLATES",
    "KINDS",
    "MAIN_VERBS",
    "MOTION_VERBS",
    "NAMES",
    "NOUNS",
    "OBJECTS",
    "P_KIND",
    "P_SVA",
    "PLACES",
    "PREPOSITIONS",
    "RC_VERBS",
    "REPEAT_LENGTHS",
    "REPEAT_POOL",
    "ROLES",
    "START_YEARS",
    "LabelledTokens",
    "Sentence",
    "Word",
    "document_words",
    "encode_words",
    "entropy_rate",
    "filler",
    "greater_than",
    "ioi",
    "repeat",
    "sample_document",
    "sample_sentence",
    "sample_tokens_with_labels",
    "sva",
    "tokenizer",
    "vocabulary",
]

BOS = "<bos>"
UNK = "<unk>"

# Every word below is one GPT-2 token with its leading space (tests/test_grammar.py checks).
NAMES = tuple(
    "Mary John Tom James Dan Sarah Paul Mark Anna Alice Bob Emma David Michael Kate Lisa "
    "Peter Jack Sam Joe Ben Adam Ryan Jane Laura Rachel Steve Chris George Frank".split()
)
PLACES = tuple("store park school beach office station garden restaurant hospital market church hotel farm museum".split())
OBJECTS = tuple("drink book ball gift letter flower ring cake bag coin pen hat bottle ticket toy card".split())
GT_NOUNS = tuple("war siege drought famine reign expedition journey project strike trial festival plague".split())
# (singular, plural) pairs.
NOUNS = tuple(
    tuple(pair.split("/"))
    for pair in (
        "key/keys dog/dogs cat/cats boy/boys girl/girls man/men woman/women teacher/teachers "
        "doctor/doctors friend/friends car/cars house/houses tree/trees bird/birds student/students "
        "king/kings farmer/farmers cabinet/cabinets table/tables box/boxes door/doors window/windows "
        "road/roads author/authors"
    ).split()
)
MAIN_VERBS = (("is", "are"), ("was", "were"), ("seems", "seem"), ("looks", "look"))
RC_VERBS = (("sees", "see"), ("likes", "like"), ("knows", "know"), ("finds", "find"), ("helps", "help"), ("loves", "love"))
PREPOSITIONS = tuple("on near behind under above beside".split())
ADJECTIVES = tuple("old new small large red green quiet happy broken clean famous strange".split())
MOTION_VERBS = ("walked", "drove", "ran")
GETTING_VERBS = ("bought", "found", "lost")
# (first word, verb phrase before the place, giving verb): all 14 tokens up to the answer.
IOI_TEMPLATES = (
    ("When", ("went", "to", "the"), "gave"),
    ("After", ("arrived", "at", "the"), "handed"),
    ("While", ("were", "at", "the"), "passed"),
)
CENTURIES = tuple(range(11, 20))
START_YEARS = tuple(range(0, 99))  # 00..98, so that a later year exists; 01 is the tasks' corruption
REPEAT_LENGTHS = (3, 10)  # inclusive range of the repeated span's length
# Words a repeated span is made of: none of them can start another kind of sentence.
REPEAT_POOL = tuple(
    dict.fromkeys(
        [w for pair in NOUNS for w in pair] + list(PLACES) + list(OBJECTS) + list(GT_NOUNS) + list(ADJECTIVES)
    )
)

KINDS = ("ioi", "greater_than", "sva", "repeat", "filler")
# How often each kind of sentence starts; the SVA structures; the filler frames.
P_KIND = {"ioi": 0.30, "greater_than": 0.20, "sva": 0.25, "repeat": 0.12, "filler": 0.13}
P_SVA = {"simple": 0.2, "pp": 0.4, "rc": 0.4}


class Word(NamedTuple):
    """One token of the grammar's text with its labels.

    text: the token's text with GPT-2's leading-space convention (" Mary", " 17", "41", ",").
    pos: part of speech (NOUN, PROPN, VERB, AUX, DET, ADP, ADJ, NUM, PUNCT, SCONJ, CCONJ, PRON, PART).
    number: "sg", "pl" or "none". role: what the token does in its sentence (see `ROLES`).
    year: the two-digit value for year digits, else -1. repeat: 1 / 2 in the first / second
    occurrence of a repeated span, else 0. entropy: the grammar's entropy (nats) of this token
    given all earlier tokens of the document.
    """

    text: str
    pos: str
    number: str = "none"
    role: str = "other"
    year: int = -1
    repeat: int = 0
    entropy: float = 0.0


# io_name / s_name: every mention of the IOI indirect object / subject; name: a filler's name;
# subject: the SVA subject (or the greater-than noun); attractor: the other noun of an SVA
# sentence (the relative clause's subject in "rc"); verb: the main verb agreeing with the
# subject; rc_verb: the clause verb agreeing with the attractor; century, start_year, end_year:
# the year tokens; repeat: a word of a repeated span (see Word.repeat for which occurrence).
ROLES = (
    "bos", "other", "io_name", "s_name", "name", "subject", "attractor", "verb", "rc_verb",
    "century", "start_year", "end_year", "repeat",
)  # fmt: skip


@dataclass(frozen=True)
class Sentence:
    """A sentence of one kind (see `KINDS`), its words, and what was chosen to build it."""

    kind: str
    words: tuple[Word, ...]
    info: dict

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.words)


def _mixture_entropy(branches: list[tuple[float, int]]) -> float:
    """Entropy of a choice among branches (probability, number of equally likely tokens), disjoint supports."""
    return sum(p * (math.log(k) - math.log(p)) for p, k in branches if p > 0)


N_NOUN_FORMS = 2 * len(NOUNS)
# Entropy of the first token of a sentence: three IOI openers, "The" (greater-than or SVA),
# a name (filler), or a word of the repeat pool.
H_START = _mixture_entropy(
    [(P_KIND["ioi"] / len(IOI_TEMPLATES), 1)] * len(IOI_TEMPLATES)
    + [(P_KIND["greater_than"] + P_KIND["sva"], 1), (P_KIND["filler"], len(NAMES)), (P_KIND["repeat"], len(REPEAT_POOL))]
)
# After "The": a greater-than noun or an SVA subject (number and noun).
_P_GT = P_KIND["greater_than"] / (P_KIND["greater_than"] + P_KIND["sva"])
H_AFTER_THE = _mixture_entropy([(_P_GT, len(GT_NOUNS)), (1 - _P_GT, N_NOUN_FORMS)])
# After the SVA subject: a main verb form (simple), a preposition (pp) or "that" (rc).
H_AFTER_SUBJECT = _mixture_entropy([(P_SVA["simple"], len(MAIN_VERBS)), (P_SVA["pp"], len(PREPOSITIONS)), (P_SVA["rc"], 1)])
H_ATTRACTOR = math.log(N_NOUN_FORMS - 2)  # any noun form except the subject's two


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def ioi(template: int, io: str, s: str, order: str, place: str, obj: str) -> Sentence:
    """An IOI sentence: order "ABBA" ("When IO and S ..., S gave a obj to IO.") or "BABA" (S first)."""
    if order not in ("ABBA", "BABA"):
        raise ValueError(f"order must be 'ABBA' or 'BABA', got {order!r}.")
    if io == s:
        raise ValueError(f"the IO and S names must differ, got {io!r} twice.")
    first, phrase, verb = IOI_TEMPLATES[template]
    a, b = (io, s) if order == "ABBA" else (s, io)
    role = {io: "io_name", s: "s_name"}
    words = [
        Word(" " + first, "SCONJ", entropy=H_START),
        Word(" " + a, "PROPN", "sg", role[a], entropy=math.log(len(NAMES))),
        Word(" and", "CCONJ"),
        Word(" " + b, "PROPN", "sg", role[b], entropy=math.log(len(NAMES) - 1)),
        Word(" " + phrase[0], "VERB" if phrase[0] != "were" else "AUX"),
        Word(" " + phrase[1], "ADP"),
        Word(" " + phrase[2], "DET"),
        Word(" " + place, "NOUN", "sg", entropy=math.log(len(PLACES))),
        Word(",", "PUNCT"),
        Word(" " + s, "PROPN", "sg", "s_name", entropy=math.log(2)),
        Word(" " + verb, "VERB"),
        Word(" a", "DET"),
        Word(" " + obj, "NOUN", "sg", entropy=math.log(len(OBJECTS))),
        Word(" to", "ADP"),
        Word(" " + io, "PROPN", "sg", "io_name"),
        Word(".", "PUNCT"),
    ]
    return Sentence("ioi", tuple(words), {"template": template, "io": io, "s": s, "order": order})


def greater_than(noun: str, century: int, start: int, end: int) -> Sentence:
    """ "The {noun} lasted from the year {century}{start} to the year {century}{end}." with end > start."""
    if not (0 <= start < end <= 99):
        raise ValueError(f"need 0 <= start < end <= 99 (two-digit years), got start={start}, end={end}.")
    cc = f"{century:02d}"
    words = [
        Word(" The", "DET", entropy=H_START),
        Word(" " + noun, "NOUN", "sg", "subject", entropy=H_AFTER_THE),
        Word(" lasted", "VERB"),
        Word(" from", "ADP"),
        Word(" the", "DET"),
        Word(" year", "NOUN", "sg"),
        Word(" " + cc, "NUM", role="century", entropy=math.log(len(CENTURIES))),
        Word(f"{start:02d}", "NUM", role="start_year", year=start, entropy=math.log(len(START_YEARS))),
        Word(" to", "ADP"),
        Word(" the", "DET"),
        Word(" year", "NOUN", "sg"),
        Word(" " + cc, "NUM", role="century"),
        Word(f"{end:02d}", "NUM", role="end_year", year=end, entropy=math.log(99 - start)),
        Word(".", "PUNCT"),
    ]
    return Sentence("greater_than", tuple(words), {"century": century, "start": start, "end": end})


def sva(
    subject: int,
    plural: bool,
    structure: str,
    verb: int,
    adjective: str,
    *,
    attractor: int = 0,
    attractor_plural: bool = False,
    preposition: str = "on",
    rc_verb: int = 0,
) -> Sentence:
    """An agreement sentence; `subject`, `attractor` index `NOUNS`, `verb` `MAIN_VERBS`, `rc_verb` `RC_VERBS`.

    structure "simple": "The keys are old."; "pp": "The keys on the cabinet are old.";
    "rc": "The keys that the man sees are old." (the clause's verb agrees with the attractor).
    """
    if structure not in P_SVA:
        raise ValueError(f"structure must be one of {list(P_SVA)}, got {structure!r}.")
    if structure != "simple" and attractor == subject:
        raise ValueError("the attractor noun must differ from the subject noun.")
    num = "pl" if plural else "sg"
    a_num = "pl" if attractor_plural else "sg"
    words = [
        Word(" The", "DET", entropy=H_START),
        Word(" " + NOUNS[subject][plural], "NOUN", num, "subject", entropy=H_AFTER_THE),
    ]
    h_next = H_AFTER_SUBJECT
    if structure == "pp":
        words += [
            Word(" " + preposition, "ADP", entropy=h_next),
            Word(" the", "DET"),
            Word(" " + NOUNS[attractor][attractor_plural], "NOUN", a_num, "attractor", entropy=H_ATTRACTOR),
        ]
        h_next = math.log(len(MAIN_VERBS))
    elif structure == "rc":
        words += [
            Word(" that", "PRON", entropy=h_next),
            Word(" the", "DET"),
            Word(" " + NOUNS[attractor][attractor_plural], "NOUN", a_num, "attractor", entropy=H_ATTRACTOR),
            Word(" " + RC_VERBS[rc_verb][attractor_plural], "VERB", a_num, "rc_verb", entropy=math.log(len(RC_VERBS))),
        ]
        h_next = math.log(len(MAIN_VERBS))
    else:
        # The main verb itself reveals "simple" (its entropy is the mixture's).
        pass
    words += [
        Word(" " + MAIN_VERBS[verb][plural], "AUX" if verb < 2 else "VERB", num, "verb", entropy=h_next),
        Word(" " + adjective, "ADJ", entropy=math.log(len(ADJECTIVES))),
        Word(".", "PUNCT"),
    ]
    info = {"structure": structure, "plural": plural, "attractor_plural": attractor_plural if structure != "simple" else None}
    return Sentence("sva", tuple(words), info)


def _repeat_entropy(position: int, n_pool: int) -> float:
    """Entropy of the token after `position` distinct words of a span (the repeat may start)."""
    low, high = REPEAT_LENGTHS
    remaining = n_pool - position
    if position < low:
        return math.log(remaining)
    hazard = 1 / (high - position + 1)  # P(the span ends here | it has not ended), so lengths are uniform
    if hazard == 1:
        return 0.0
    return -hazard * math.log(hazard) - (1 - hazard) * math.log((1 - hazard) / remaining)


def repeat(words: list[str]) -> Sentence:
    """A span of distinct words from `REPEAT_POOL` followed by its repeat, then "."."""
    low, high = REPEAT_LENGTHS
    if not (low <= len(words) <= high) or len(set(words)) != len(words):
        raise ValueError(f"a repeated span has {low} to {high} distinct words, got {words!r}.")
    first = [Word(" " + w, "NOUN", role="repeat", repeat=1, entropy=_repeat_entropy(i, len(REPEAT_POOL))) for i, w in enumerate(words)]
    first[0] = first[0]._replace(entropy=H_START)
    second = [Word(" " + w, "NOUN", role="repeat", repeat=2) for w in words]
    second[0] = second[0]._replace(entropy=_repeat_entropy(len(words), len(REPEAT_POOL)))
    return Sentence("repeat", tuple(first + second + [Word(".", "PUNCT")]), {"length": len(words)})


def filler(name: str, verb: str, noun: str) -> Sentence:
    """ "Mary walked to the park." (motion verb + place) or "Mary found a coin." (getting verb + object)."""
    motion = verb in MOTION_VERBS
    if not motion and verb not in GETTING_VERBS:
        raise ValueError(f"verb must be one of {MOTION_VERBS + GETTING_VERBS}, got {verb!r}.")
    words = [
        Word(" " + name, "PROPN", "sg", "name", entropy=H_START),
        Word(" " + verb, "VERB", entropy=math.log(len(MOTION_VERBS) + len(GETTING_VERBS))),
    ]
    if motion:
        words += [Word(" to", "ADP"), Word(" the", "DET"), Word(" " + noun, "NOUN", "sg", entropy=math.log(len(PLACES)))]
    else:
        words += [Word(" a", "DET"), Word(" " + noun, "NOUN", "sg", entropy=math.log(len(OBJECTS)))]
    return Sentence("filler", tuple(words + [Word(".", "PUNCT")]), {})


def sample_sentence(rng: random.Random) -> Sentence:
    """One random sentence, with the grammar's probabilities (`P_KIND`, `P_SVA`)."""
    kind = rng.choices(KINDS, weights=[P_KIND[k] for k in KINDS])[0]
    if kind == "ioi":
        io, s = rng.sample(NAMES, 2)
        return ioi(rng.randrange(len(IOI_TEMPLATES)), io, s, rng.choice(("ABBA", "BABA")), rng.choice(PLACES), rng.choice(OBJECTS))
    if kind == "greater_than":
        start = rng.choice(START_YEARS)
        return greater_than(rng.choice(GT_NOUNS), rng.choice(CENTURIES), start, rng.randint(start + 1, 99))
    if kind == "sva":
        subject, attractor = rng.sample(range(len(NOUNS)), 2)
        return sva(
            subject,
            rng.random() < 0.5,
            rng.choices(list(P_SVA), weights=list(P_SVA.values()))[0],
            rng.randrange(len(MAIN_VERBS)),
            rng.choice(ADJECTIVES),
            attractor=attractor,
            attractor_plural=rng.random() < 0.5,
            preposition=rng.choice(PREPOSITIONS),
            rc_verb=rng.randrange(len(RC_VERBS)),
        )
    if kind == "repeat":
        low, high = REPEAT_LENGTHS
        return repeat(rng.sample(REPEAT_POOL, rng.randint(low, high)))
    verb = rng.choice(MOTION_VERBS + GETTING_VERBS)
    return filler(rng.choice(NAMES), verb, rng.choice(PLACES if verb in MOTION_VERBS else OBJECTS))


def sample_document(rng: random.Random, n_tokens: int = 64) -> list[Sentence]:
    """Sentences until the document (BOS included) has at least `n_tokens` tokens."""
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be at least 2 (BOS and one word), got {n_tokens}.")
    sentences, length = [], 1
    while length < n_tokens:
        sentences.append(sample_sentence(rng))
        length += len(sentences[-1].words)
    return sentences


def document_words(sentences: list[Sentence]) -> list[Word]:
    """The words of a document, BOS first (the model's position 0)."""
    return [Word(BOS, "BOS", role="bos")] + [w for s in sentences for w in s.words]


def vocabulary() -> list[str]:
    """The word-level vocabulary: BOS, UNK, punctuation, the 100 two-digit tokens, then all words (lower case)."""
    words = [BOS, UNK, ",", "."] + [f"{i:02d}" for i in range(100)]
    words += [w.lower() for w in NAMES] + list(PLACES) + list(OBJECTS) + list(GT_NOUNS)
    words += [w for pair in NOUNS + MAIN_VERBS + RC_VERBS for w in pair] + list(PREPOSITIONS) + list(ADJECTIVES)
    words += list(MOTION_VERBS + GETTING_VERBS)
    words += [w.lower() for t in IOI_TEMPLATES for w in (t[0], *t[1], t[2])]
    words += "the a and to that lasted from year".split()
    return list(dict.fromkeys(words))


_VOCAB_INDEX = {w: i for i, w in enumerate(vocabulary())}


def tokenizer() -> PreTrainedTokenizerFast:
    """toy-lm's tokenizer: lower case, one token per word or punctuation mark, years split in two digits."""
    from mi_course.models import wrap_tokenizer

    tok = Tokenizer(WordLevel(dict(_VOCAB_INDEX), unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated")]
    )
    tok.add_special_tokens([BOS, UNK])
    return wrap_tokenizer(tok, bos_token=BOS, unk_token=UNK, name="toy-lm")


def encode_words(words: list[Word]) -> list[int]:
    """toy-lm token ids of `words` (one per word; equal to `tokenizer()` on the joined text)."""
    try:
        return [_VOCAB_INDEX[w.text.strip().lower()] for w in words]
    except KeyError as err:
        raise ValueError(f"word {err.args[0]!r} is not in toy-lm's vocabulary.") from None


@dataclass
class LabelledTokens:
    """Token ids (toy-lm's, or the given tokenizer's) and per-token labels, all of shape (n, n_ctx); position 0 is BOS.

    The string labels are numpy arrays (ready for scikit-learn); `entropy[i, t]` is the grammar's
    entropy of token t given tokens < t (0 at BOS, which is never predicted).
    """

    tokens: Int[Tensor, "n n_ctx"]
    pos: np.ndarray
    number: np.ndarray
    role: np.ndarray
    kind: np.ndarray
    year: Int[Tensor, "n n_ctx"]
    repeat: Int[Tensor, "n n_ctx"]
    entropy: Float[Tensor, "n n_ctx"]


class _WordTokens:
    """Word -> token id with a model's tokenizer, for words (and sentences) that are one token per word."""

    def __init__(self, tokenizer):
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no BOS token; every document starts with BOS.")
        self.tok = tokenizer
        self.bos = tokenizer.bos_token_id
        self.specials = set(tokenizer.all_special_ids)
        self._ids: dict[str, int | None] = {}

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text, add_special_tokens=False)
        except Exception:  # a WordLevel tokenizer without UNK raises a bare Exception on unknown words
            return []

    def id(self, text: str) -> int | None:
        """The word's token id if it is exactly one token (not UNK or another special), else None."""
        if text not in self._ids:
            ids = self.encode(text)
            ok = len(ids) == 1 and ids[0] not in self.specials and self.tok.decode(ids).strip().lower() == text.strip().lower()
            self._ids[text] = ids[0] if ok else None
        return self._ids[text]

    def sentence(self, s: Sentence) -> list[int] | None:
        """One id per word, if every word is one token and the sentence's text tokenizes to exactly those ids."""
        ids = [self.id(w.text) for w in s.words]
        if None in ids or self.encode(s.text) != ids:
            return None  # e.g. GPT-2 merges " 17" + "41" of some years into other tokens
        return ids


def sample_tokens_with_labels(n: int, seed: int, n_ctx: int = 64, tokenizer=None) -> LabelledTokens:
    """`n` random documents of exactly `n_ctx` tokens (BOS + sentences, the last one cut), labelled.

    ``tokenizer`` (e.g. ``model.tokenizer`` of GPT-2 small): encode the documents with it
    instead of toy-lm's vocabulary. Only sentences whose every word is exactly one of its
    tokens, and whose text it tokenizes to those same tokens, are kept (others are redrawn),
    so each label stays on one token and the model sees its own tokenization. All the
    grammar's words are one GPT-2 token; a few years are not (GPT-2 merges some "17" + "41").
    With toy-lm's tokenizer every sentence is kept, and the result equals the default. (The
    entropy labels are those of the unfiltered grammar.)
    """
    if n < 1 or n_ctx < 2:
        raise ValueError(f"need n >= 1 documents and n_ctx >= 2 tokens, got n={n}, n_ctx={n_ctx}.")
    rng = random.Random(seed)
    vocab = None if tokenizer is None else _WordTokens(tokenizer)
    rows, kinds, ids = [], [], []
    for _ in range(n):
        if vocab is None:
            sentences = sample_document(rng, n_ctx)
        else:
            sentences, doc_ids = [], [vocab.bos]
            while len(doc_ids) < n_ctx:
                s, tries = sample_sentence(rng), 1
                while (s_ids := vocab.sentence(s)) is None:
                    if tries >= 1000:
                        raise ValueError(f"the tokenizer does not encode the grammar one token per word (e.g. {s.text!r}).")
                    s, tries = sample_sentence(rng), tries + 1
                sentences.append(s)
                doc_ids += s_ids
            ids.append(doc_ids[:n_ctx])
        rows.append(document_words(sentences)[:n_ctx])
        kinds.append((["bos"] + [s.kind for s in sentences for _ in s.words])[:n_ctx])
    return LabelledTokens(
        tokens=torch.tensor([encode_words(r) for r in rows] if vocab is None else ids),
        pos=np.array([[w.pos for w in r] for r in rows]),
        number=np.array([[w.number for w in r] for r in rows]),
        role=np.array([[w.role for w in r] for r in rows]),
        kind=np.array(kinds),
        year=torch.tensor([[w.year for w in r] for r in rows]),
        repeat=torch.tensor([[w.repeat for w in r] for r in rows]),
        entropy=torch.tensor([[w.entropy for w in r] for r in rows], dtype=torch.float64),
    )


def entropy_rate(n: int = 2000, seed: int = 0, n_ctx: int = 64) -> float:
    """The grammar's mean entropy (nats) per predicted token of `n` documents: a perfect model's loss.

    Exact per token (see the module docstring); the mean over documents is an estimate with a
    standard error of about 0.01 nats for n = 2000.
    """
    labels = sample_tokens_with_labels(n, seed, n_ctx)
    return labels.entropy[:, 1:].mean().item()
