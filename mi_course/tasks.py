"""The course's four tasks: clean and corrupted prompts, answers and metrics.

`make_task(name, model, n, seed)` builds `n` prompts of equal token length (so that patching
by position works; the answer is predicted at the last position) for

- ``"ioi"``: "When Mary and John went to the store, John gave a drink to" -> " Mary".
  Metric: logit(IO) - logit(S) at the last position. Corrupted ("ABC"): the three names
  replaced by three other names.
- ``"greater_than"``: "The war lasted from the year 1741 to the year 17" -> a year above 41.
  Metric: probability of the two-digit tokens above YY minus that of those at or below YY.
  Corrupted ("01"): YY replaced by 01.
- ``"sva"`` (``variant`` "simple", "pp", "rc_across" or "rc_within"): "The keys on the
  cabinet" -> " are". Metric: the logit of the correct-number verb form minus that of the
  wrong-number form, averaged over the verb pairs (is/are, was/were, ...). Corrupted: the
  subject's number flipped.
- ``"induction"``: BOS, L random tokens, then the same tokens again (the last one cut; its
  prediction is the answer). Metric: the mean log-probability of the correct next token at
  the L - 1 positions of the repeat that an induction head can predict (all but its first
  token). Corrupted: a different random first half. The tokens are words of the grammar's
  repeat pool when the model's vocabulary has them all, else random non-special tokens.

Prompts come from `mi_course.grammar` as text with GPT-2's leading-space convention, and are
tokenized with the model's own tokenizer one word at a time: any word that is not exactly one
token (and any year not split into two two-digit tokens) is left out, so the same code runs on
toy-lm and on GPT-2 small. All metrics follow ../shared/REFERENCE.md and are means over prompts;
`normalised_metric` maps the model's clean value to 1 and its corrupted value to 0.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_course import grammar

__all__ = ["SVA_VARIANTS", "TASK_NAMES", "Task", "TaskUnavailableError", "make_task"]

TASK_NAMES = ("induction", "ioi", "greater_than", "sva")
SVA_VARIANTS = ("simple", "pp", "rc_across", "rc_within")
_CHUNK = 32  # prompts per forward pass when make_task measures the clean and corrupted values


class TaskUnavailableError(ValueError):
    """The model's vocabulary cannot express the task (e.g. IOI needs names)."""


@dataclass
class Task:
    """Clean and corrupted prompts of one task, with answers, named positions and metrics.

    answers / wrong_answers: token ids per prompt, shape (n, k); -1 pads ragged sets (the
    greater-than years above / at or below YY). For induction, wrong_answers has k = 0.
    positions: named token positions per prompt (IOI: "IO", "S1", "S2"; SVA: "subject" and
    "attractor"; greater-than: "YY"; all: "end", the last position).
    clean_value / corrupted_value: the model's metric on the clean / corrupted prompts.
    """

    name: str
    clean_tokens: Int[Tensor, "n pos"]
    corrupted_tokens: Int[Tensor, "n pos"]
    answers: Int[Tensor, "n k"]
    wrong_answers: Int[Tensor, "n k_wrong"]
    positions: dict[str, Int[Tensor, " n"]]
    prompts: list[str]
    clean_value: float = float("nan")
    corrupted_value: float = float("nan")
    info: dict = field(default_factory=dict)
    _score: Callable[[Tensor, slice], Tensor] = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.clean_tokens.shape[0]

    def _check(self, logits: Tensor) -> None:
        n, pos = self.clean_tokens.shape
        if not isinstance(logits, Tensor) or logits.ndim < 3 or logits.shape[-3:-1] != (n, pos):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"{self.name} metric expects logits of shape (..., n={n}, pos={pos}, d_vocab), as returned by "
                f"model(task.clean_tokens); got {got}. Run the model on all {n} prompts, every position."
            )

    def per_prompt_metric(self, logits: Float[Tensor, "... n pos d_vocab"]) -> Float[Tensor, "... n"]:
        """The task's metric for each prompt (leading batch dimensions are kept)."""
        self._check(logits)
        return self._score(logits, slice(None))

    def metric(self, logits: Float[Tensor, "... n pos d_vocab"]) -> Float[Tensor, "..."]:
        """The task's metric, averaged over prompts (a scalar for model(task.clean_tokens))."""
        return self.per_prompt_metric(logits).mean(-1)

    def normalised_metric(self, logits: Float[Tensor, "... n pos d_vocab"]) -> Float[Tensor, "..."]:
        """(metric - corrupted value) / (clean value - corrupted value): 1 = clean behaviour, 0 = corrupted."""
        gap = self.clean_value - self.corrupted_value
        if not abs(gap) > 1e-6:
            raise ValueError(
                f"the model's clean and corrupted {self.name} metrics are equal ({self.clean_value:.4g}): "
                "it does not do this task, so the normalised metric is undefined. Use a trained model."
            )
        return (self.metric(logits) - self.corrupted_value) / gap

    def accuracy(self, logits: Float[Tensor, "n pos d_vocab"]) -> float:
        """Fraction of prompts whose metric is positive (IO over S, later years, correct number).

        Not meaningful for induction, whose metric is a log-probability (always negative).
        """
        return (self.per_prompt_metric(logits) > 0).float().mean().item()

    def logits(self, model: HookedTransformer, corrupted: bool = False) -> Float[Tensor, "n pos d_vocab"]:
        """The model's logits on the clean (or corrupted) prompts, without gradients."""
        with torch.no_grad():
            return model(self.corrupted_tokens if corrupted else self.clean_tokens)

    def mix(self, role: str, into: str = "clean") -> Int[Tensor, "n pos"]:
        """The clean (or, with ``into="corrupted"``, the corrupted) prompts with the token at `role` from the other set.

        ``task.mix("S2")`` corrupts only the second mention of the subject; ``task.mix("IO",
        into="corrupted")`` puts the clean indirect object back into the corrupted prompts.
        The role's position is taken prompt by prompt (IO and S1 swap places between orders).
        """
        if into not in ("clean", "corrupted"):
            raise ValueError(f"into must be 'clean' or 'corrupted', not {into!r}.")
        if role not in self.positions:
            raise ValueError(f"task {self.name!r} has no position {role!r}; its positions are: {', '.join(self.positions)}.")
        base, other = (self.clean_tokens, self.corrupted_tokens) if into == "clean" else (self.corrupted_tokens, self.clean_tokens)
        rows, cols = torch.arange(self.n), self.positions[role]
        mixed = base.clone()
        mixed[rows, cols] = other[rows, cols]
        return mixed

    def with_corrupted(self, model: HookedTransformer, corrupted_tokens: Int[Tensor, "n pos"]) -> Task:
        """The same clean prompts with another corruption; its metric value is measured on `model`."""
        if not isinstance(corrupted_tokens, Tensor) or corrupted_tokens.shape != self.clean_tokens.shape:
            got = tuple(corrupted_tokens.shape) if isinstance(corrupted_tokens, Tensor) else type(corrupted_tokens).__name__
            raise ValueError(f"corrupted_tokens must have the clean prompts' shape {tuple(self.clean_tokens.shape)}, got {got}.")
        value = _mean_score(model, corrupted_tokens, self._score)
        return replace(self, corrupted_tokens=corrupted_tokens.clone(), corrupted_value=value)


class _Vocab:
    """Word -> token id for a model's tokenizer, keeping only words that are exactly one token."""

    def __init__(self, model: HookedTransformer):
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise TaskUnavailableError("the model has no tokenizer (model.tokenizer is None); tasks are built from text.")
        if tok.bos_token_id is None:
            raise TaskUnavailableError("the model's tokenizer has no BOS token; every prompt starts with BOS.")
        self.tok = tok
        self.bos = tok.bos_token_id
        self.specials = set(tok.all_special_ids)
        self._cache: dict[str, int | None] = {}

    def ids(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text, add_special_tokens=False)
        except Exception:  # a WordLevel model without UNK raises a bare Exception on unknown words
            return []

    def id(self, text: str) -> int | None:
        if text not in self._cache:
            ids = self.ids(text)
            # Decoding back catches unknown words mapped to an unregistered UNK token.
            ok = len(ids) == 1 and ids[0] not in self.specials and self.tok.decode(ids).strip().lower() == text.strip().lower()
            self._cache[text] = ids[0] if ok else None
        return self._cache[text]

    def keep(self, words, *, what: str, task: str, need: int = 1, space: bool = True) -> list:
        """The words (or tuples of words) all of whose forms are single tokens; error if fewer than `need`."""
        kept = [w for w in words if all(self.id((" " if space else "") + x) is not None for x in ((w,) if isinstance(w, str) else w))]
        if len(kept) < need:
            raise TaskUnavailableError(
                f"task {task!r} needs at least {need} {what} that are single tokens of this model's tokenizer; "
                f"found {len(kept)} of {len(words)} (e.g. {words[0]!r} -> {self.ids(' ' + (words[0] if isinstance(words[0], str) else words[0][0]))}). "
                "Use a model with an English vocabulary: 'toy-lm' or 'gpt2-small'."
            )
        return kept

    def encode(self, words: list[grammar.Word]) -> list[int]:
        ids = [self.id(w.text) for w in words]
        if None in ids:
            bad = words[ids.index(None)].text
            raise TaskUnavailableError(f"{bad!r} is not a single token of this model's tokenizer.")
        return [self.bos] + ids


def _stack(rows: list[list[int]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.long)


def _pad(rows: list[list[int]]) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def _last(logits: Tensor) -> Tensor:
    return logits[..., -1, :]


def _ioi(vocab: _Vocab, n: int, rng: random.Random) -> dict:
    names = vocab.keep(list(grammar.NAMES), what="names", task="ioi", need=5)
    places = vocab.keep(list(grammar.PLACES), what="places", task="ioi")
    objects = vocab.keep(list(grammar.OBJECTS), what="objects", task="ioi")
    templates = [
        i for i, (first, phrase, verb) in enumerate(grammar.IOI_TEMPLATES)
        if all(vocab.id(" " + w) is not None for w in (first, *phrase, verb, "and", "a", "to"))
    ]  # fmt: skip
    if not templates:
        raise TaskUnavailableError("task 'ioi': no IOI template is made of single tokens of this model's tokenizer.")
    clean, corrupted, io_ids, s_ids, prompts, orders = [], [], [], [], [], []
    pos = {"IO": [], "S1": [], "S2": []}
    for _ in range(n):
        io, s, *others = rng.sample(names, 5)
        order = rng.choice(("ABBA", "BABA"))
        words = list(grammar.ioi(rng.choice(templates), io, s, order, rng.choice(places), rng.choice(objects)).words[:-2])
        abc = iter(others)
        replaced = [w._replace(text=" " + next(abc)) if w.role in ("io_name", "s_name") else w for w in words]
        clean.append(vocab.encode(words))
        corrupted.append(vocab.encode(replaced))
        io_ids.append([vocab.id(" " + io)])
        s_ids.append([vocab.id(" " + s)])
        roles = ["bos"] + [w.role for w in words]
        s_at = [i for i, r in enumerate(roles) if r == "s_name"]
        pos["IO"].append(roles.index("io_name"))
        pos["S1"].append(s_at[0])
        pos["S2"].append(s_at[1])
        prompts.append("".join(w.text for w in words))
        orders.append(order)
    answers, wrong = _stack(io_ids), _stack(s_ids)

    def score(logits: Tensor, rows: slice) -> Tensor:
        last = _last(logits)
        rows_n = torch.arange(last.shape[-2], device=last.device)
        return last[..., rows_n, answers[rows, 0].to(last.device)] - last[..., rows_n, wrong[rows, 0].to(last.device)]

    return dict(clean=clean, corrupted=corrupted, answers=answers, wrong=wrong, positions=pos, prompts=prompts, score=score, info={"order": orders})


def _greater_than(vocab: _Vocab, n: int, rng: random.Random) -> dict:
    year_ids = [vocab.id(f"{y:02d}") for y in range(100)]
    if None in year_ids:
        raise TaskUnavailableError(
            "task 'greater_than' needs the 100 two-digit numbers '00'..'99' as single tokens; "
            f"{f'{year_ids.index(None):02d}'!r} is not one. Use 'toy-lm' or 'gpt2-small'."
        )
    nouns = vocab.keep(list(grammar.GT_NOUNS), what="nouns", task="greater_than")
    vocab.keep(["The", "lasted", "from", "the", "year", "to"], what="template words", task="greater_than", need=6)

    def splits(cc: int, yy: int) -> bool:
        # " 1741" must be " 17" + "41" as one string too, not just word by word (GPT-2 merges some).
        return vocab.ids(f" {cc}{yy:02d}") == [vocab.id(f" {cc}"), year_ids[yy]] and vocab.id(f" {cc}") is not None

    # Start years 02..98 as in Hanna et al.: above the corruption 01, and some year above each.
    pairs = [(cc, yy) for cc in grammar.CENTURIES for yy in range(2, 99) if splits(cc, yy) and splits(cc, 1)]
    if not pairs:
        raise TaskUnavailableError("task 'greater_than': no year 'CCYY' of the grammar splits into ' CC' + 'YY' tokens here.")
    clean, corrupted, yys, prompts = [], [], [], []
    for _ in range(n):
        cc, yy = rng.choice(pairs)
        words = list(grammar.greater_than(rng.choice(nouns), cc, yy, 99).words[:12])
        clean.append(vocab.encode(words))
        corrupted.append(vocab.encode([w._replace(text="01", year=1) if w.role == "start_year" else w for w in words]))
        yys.append(yy)
        prompts.append("".join(w.text for w in words))
    yy = torch.tensor(yys)
    years = torch.tensor(year_ids)
    above = torch.arange(100)[None, :] > yy[:, None]  # (n, 100)
    answers = _pad([[year_ids[y] for y in range(v + 1, 100)] for v in yys])
    wrong = _pad([[year_ids[y] for y in range(v + 1)] for v in yys])

    def score(logits: Tensor, rows: slice) -> Tensor:
        probs = _last(logits).softmax(-1)[..., years.to(logits.device)]  # (..., n, 100)
        sign = above[rows].to(probs) * 2 - 1
        return (probs * sign).sum(-1)

    slot = 1 + 7  # BOS + "The noun lasted from the year CC" -> YY
    return dict(clean=clean, corrupted=corrupted, answers=answers, wrong=wrong, positions={"YY": [slot] * n}, prompts=prompts, score=score, info={"YY": yys})


def _sva(vocab: _Vocab, n: int, rng: random.Random, variant: str) -> dict:
    if variant not in SVA_VARIANTS:
        raise ValueError(f"sva variant must be one of {SVA_VARIANTS}, got {variant!r}.")
    kept_nouns = vocab.keep(list(grammar.NOUNS), what="noun pairs", task="sva", need=2)
    nouns = [i for i, pair in enumerate(grammar.NOUNS) if pair in kept_nouns]
    preps = vocab.keep(list(grammar.PREPOSITIONS), what="prepositions", task="sva")
    vocab.keep(["The", "the", "that"], what="function words", task="sva", need=3)
    main = [grammar.MAIN_VERBS.index(p) for p in vocab.keep(list(grammar.MAIN_VERBS), what="verb pairs", task="sva")]
    rc = [grammar.RC_VERBS.index(p) for p in vocab.keep(list(grammar.RC_VERBS), what="verb pairs", task="sva")]
    # The verb forms scored: the clause's verb within a relative clause, else the main verb.
    verb_pairs = [grammar.RC_VERBS[i] for i in rc] if variant == "rc_within" else [grammar.MAIN_VERBS[i] for i in main]
    structure = {"simple": "simple", "pp": "pp", "rc_across": "rc", "rc_within": "rc"}[variant]
    cut = {"simple": 2, "pp": 5, "rc_across": 6, "rc_within": 5}[variant]
    subject_role = "attractor" if variant == "rc_within" else "subject"
    other_role = "subject" if variant == "rc_within" else "attractor"
    forms = [[vocab.id(" " + w) for w in pair] for pair in verb_pairs]  # (k, 2): singular, plural
    clean, corrupted, plural, prompts, mismatch = [], [], [], [], []
    pos = {"subject": [], "attractor": []} if structure != "simple" else {"subject": []}
    for _ in range(n):
        subject, attractor = rng.sample(nouns, 2)
        args = dict(attractor=attractor, preposition=rng.choice(preps), rc_verb=rng.choice(rc))
        sg_pl = [rng.random() < 0.5, rng.random() < 0.5]  # subject, attractor
        flipped = sg_pl.copy()
        which = 1 if variant == "rc_within" else 0
        flipped[which] = not flipped[which]
        verb = rng.choice(main)
        words = list(grammar.sva(subject, sg_pl[0], structure, verb, "old", attractor_plural=sg_pl[1], **args).words[:cut])
        words_c = list(grammar.sva(subject, flipped[0], structure, verb, "old", attractor_plural=flipped[1], **args).words[:cut])
        clean.append(vocab.encode(words))
        corrupted.append(vocab.encode(words_c))
        plural.append(sg_pl[which])
        mismatch.append(structure != "simple" and sg_pl[0] != sg_pl[1])
        roles = ["bos"] + [w.role for w in words]
        pos["subject"].append(roles.index(subject_role))
        if structure != "simple":
            pos["attractor"].append(roles.index(other_role))
        prompts.append("".join(w.text for w in words))
    answers = _stack([[f[p] for f in forms] for p in plural])
    wrong = _stack([[f[not p] for f in forms] for p in plural])

    def score(logits: Tensor, rows: slice) -> Tensor:
        last = _last(logits)  # (..., n, vocab)
        right = last.gather(-1, answers[rows].to(last.device).expand(*last.shape[:-2], -1, -1))
        bad = last.gather(-1, wrong[rows].to(last.device).expand(*last.shape[:-2], -1, -1))
        return (right - bad).mean(-1)

    info = {"variant": variant, "plural": plural, "attractor_mismatch": mismatch}
    return dict(clean=clean, corrupted=corrupted, answers=answers, wrong=wrong, positions=pos, prompts=prompts, score=score, info=info)


def _induction(vocab: _Vocab, n: int, rng: random.Random, length: int, d_vocab: int) -> dict:
    pool = [vocab.id(" " + w) for w in grammar.REPEAT_POOL]
    if None not in pool:
        source = "grammar repeat pool"
    else:
        pool = [i for i in range(d_vocab) if i not in vocab.specials]
        source = "random tokens"
    if len(pool) < 2 * length:
        raise TaskUnavailableError(f"task 'induction' with length {length} needs {2 * length} distinct tokens; the vocabulary has {len(pool)}.")
    clean, corrupted, answers, prompts = [], [], [], []
    for _ in range(n):
        words = rng.sample(pool, 2 * length)
        first, other = words[:length], words[length:]
        clean.append([vocab.bos] + first + first[:-1])
        corrupted.append([vocab.bos] + other + first[:-1])
        answers.append([first[-1]])
        prompts.append(vocab.tok.decode(clean[-1][1:]))
    answers_t = _stack(answers)
    targets = torch.cat([_stack(clean)[:, length + 2 :], answers_t], dim=1)  # (n, length - 1)

    def score(logits: Tensor, rows: slice) -> Tensor:
        logprobs = logits[..., length + 1 :, :].log_softmax(-1)
        tgt = targets[rows].to(logits.device).expand(*logprobs.shape[:-3], -1, -1)
        return logprobs.gather(-1, tgt[..., None])[..., 0].mean(-1)

    wrong = torch.empty(n, 0, dtype=torch.long)
    positions = {"repeat_start": [length + 1] * n}
    return dict(clean=clean, corrupted=corrupted, answers=answers_t, wrong=wrong, positions=positions, prompts=prompts, score=score, info={"length": length, "tokens": source})


def make_task(
    name: str,
    model: HookedTransformer,
    n: int = 100,
    seed: int = 0,
    *,
    variant: str = "pp",
    length: int | None = None,
) -> Task:
    """`n` prompts of task `name` for `model`, with the model's clean and corrupted metric values.

    variant: the SVA structure ("simple", "pp", "rc_across", "rc_within"). length: the
    induction span (default 10, or less if the context is short).
    """
    if name not in TASK_NAMES:
        close = difflib.get_close_matches(str(name), TASK_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown task {name!r}.{hint} The tasks are: {', '.join(map(repr, TASK_NAMES))}.")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of prompts) must be a positive integer, got {n!r}.")
    vocab = _Vocab(model)
    rng = random.Random(f"{name}-{variant if name == 'sva' else ''}-{seed}")
    if name == "ioi":
        built = _ioi(vocab, n, rng)
    elif name == "greater_than":
        built = _greater_than(vocab, n, rng)
    elif name == "sva":
        built = _sva(vocab, n, rng, variant)
    else:
        length = min(10, model.cfg.n_ctx // 2) if length is None else length
        if length < 2 or 2 * length > model.cfg.n_ctx:
            raise ValueError(f"induction length must be 2 to n_ctx/2 = {model.cfg.n_ctx // 2}, got {length}.")
        built = _induction(vocab, n, rng, length, model.cfg.d_vocab)
    clean, corrupted = _stack(built["clean"]), _stack(built["corrupted"])
    if clean.shape[1] > model.cfg.n_ctx:
        raise TaskUnavailableError(f"task {name!r} prompts have {clean.shape[1]} tokens, more than the model's n_ctx={model.cfg.n_ctx}.")
    if clean.max() >= model.cfg.d_vocab:
        raise TaskUnavailableError(f"the tokenizer produced ids >= the model's d_vocab={model.cfg.d_vocab}: tokenizer and model do not match.")
    task = Task(
        name=name,
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answers=built["answers"],
        wrong_answers=built["wrong"],
        positions={k: torch.tensor(v) for k, v in built["positions"].items()} | {"end": torch.full((n,), clean.shape[1] - 1)},
        prompts=built["prompts"],
        info=built["info"],
        _score=built["score"],
    )
    task.clean_value, task.corrupted_value = (_mean_score(model, tokens, built["score"]) for tokens in (clean, corrupted))
    return task


def _mean_score(model: HookedTransformer, tokens: Int[Tensor, "n pos"], score: Callable[[Tensor, slice], Tensor]) -> float:
    """The task's metric on `tokens`, averaged over prompts, in chunks of _CHUNK prompts."""
    device = model.cfg.device
    with torch.no_grad():
        scores = [score(model(tokens[i : i + _CHUNK].to(device)).float().cpu(), slice(i, i + _CHUNK)) for i in range(0, len(tokens), _CHUNK)]
    return torch.cat(scores).mean().item()
