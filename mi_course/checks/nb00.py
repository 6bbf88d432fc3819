"""Checks of notebook 00_mechanistic: what does "mechanistic" mean?"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
from collections.abc import Callable, Mapping

import torch
from jaxtyping import Int
from torch import Tensor

from mi_course.checks.core import CheckFailed, call_learner, check_choice, check_function, fresh_seed, passed
from mi_course.induction import k_composition_score

__all__ = [
    "COMPOSITION_OPTIONS",
    "DEFINITIONS",
    "SEALED",
    "check_baseline_prompts",
    "check_classification",
    "check_composition_reading",
    "check_normalised",
    "check_prediction",
    "k_composition_scores",
    "kept_after_ablation",
    "normalised",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "00.3": ("mi_course.checks.nb00.normalised",),
}

# ---------------------------------------------------------------- 00.1 four definitions

DEFINITIONS = {
    "NT": "narrow technical",
    "BT": "broad technical",
    "NC": "narrow cultural",
    "BC": "broad cultural",
}

# Which definitions call each study of the notebook "mechanistic", and why, sealed so that reading
# the package does not give the answers away: per study a salt, a check value of the right set of
# codes, and the explanation encrypted with a key made from the right set (:func:`_seal`). The check
# finds the right set among the 16 possible ones when it needs it for a hint.
SEALED: dict[str, tuple[str, str, str]] = {
    "A": ("b893ead9b13c6730", "e62ad375566c1e852b5c1e8098159ffd", "nn1Fftf0No8oQHZQVz1NADTYcxj57L5NQVAGNQcLa1oFOr0R89jfZWKYhkx6bPNgFhWasS7fFIBYk8eokBwyQlwrCDBcl1LLVIYqkztZBF3NsZkRzJAXvndJTweZTEGcCKbARqSA491uYMRNmL9femBb943D14dQ24sh6I/B2tJZr1bjxqOlUdu3ccMbqGrzLTtpWqi8sRy7CsuFP0OMHrkRCGom4KpbJZ8fRHSezPKt+HPtYhBPdUMlYNHhjdVdPyZ/6SBoxZlJ2uoDRN1cnrSFms5cvf3fmK5d6N0L0HUGTq15JTEvcGnxzOGVF+LBzEGZSYkTajbmo2LIs+QjJLj56iRXrdUB5byodk4TN79/PMweWZhBYPCWo+ks099pGJ3kdrq+"),
    "B": ("75f01a3767f5809b", "1055c9f4ed5d03ab461af037391680b3", "hjNaFF7zA+nm955CyUx+MIaSzEfrxIWMKEle6OJL+YcYsgh6han5Pcot7WDd38dw2sRLmeLGrEVanREckXJDLQoWGEHtF0FQ4y7+Yrv1IHEnZUFwt511tVK1DVtQxljP5zUkhY2tmF2xChsAK4sWEExB4qVXNd07Rb1pI6P5YW6URBVi9lo/GkgCiCUWS5v6KeUchqzHLmmPxVit0+h4J3ykTUevVYCY5Lz+Bdom9+9XZiegDU8hEMz9gbeppZzWIS7A0Mj/kRU7wwWw8Dwqm/6w1Qvk+FneanMrAMIu9LmdVXq+Ohp9FC8WhtA+nwlA0OS2ZACVopBAVAms3EKrfW6l1f9KbygUDekukVFkw2DxQ0ElpobTxRuFgJYL5xFT852A6NA3J/9LxKQRtljXnnMj/rWD35yKQ0g3YlDweBYNUaxVnB3EoyGB0MZ5ft+306TRmI7VwhcC3Q7yLpMI"),
    "C": ("0da3951f1fccc36d", "6201bc550575277376578e0a3a087c20", "CnV+Xw13kJl69IOYda/gTyAa7/iZ32D3J02Uds1qoj1yC+PHmjjbux46LEkAE8Tann+uL7b3d/WbAaohRvDDpm2rkWfo+x+7X4MM7v8tfB2+qQJrCrlLX20SjTq7Favt91t/159yWxn+cN3wjDDMe+izoIHcRNJ3anh5CXf29/hcHOcAyMz7Wbhec/p8wG01yhTIQEEhvh+QPOzak3/VO2swo/gfQjKRaNXArsfQxp1xEvNfjxtcSPIDHJdsMKfrAtYfr1ZQwJouuCgmXNRPFf4bxafR49kTSV+JO7bC35ETKMPwYAWeQIG8VWMbhqWWJ/1SEiHi0i1JmWwjvDO2P7/JDOdHIS51Ah6npfxOJVAkZY0Ju5klEFw="),
    "D": ("8cfa93d42eacbb27", "c89f7fe0ac94a25d587560820ac93887", "W8OUOlucmthzgvCV8DW2Ej1Q02qVubEpOlgNxLkoGGcnD+SzelM8qTYQhfuBAusB7oJw0OYq+qCI8NbrD254sfxNZQxqpeFQt/36xxQiab4JkWi6yvVROVqjTHfR07FKHWQE+Fg8MqDbty+vok2DbzBbE+TTTViptM6d2ftb5h+cZN+3CzubJvMbCIe+jrp5SX6xLAenSlCCAh902xKOHg5MfW0puQ3CUWk8p8tdR5olUVsvCuRDkdZu7m0rAmnT6iVWqX12EZuATGyl2MF4IdrxbHasyw/Fb77TS0kxSGgZULSaQJZRnalahbLptP75bvVbkEoDwcMwe6KU4Z7GiEmRpnohhhGTlWrQNUV20Q=="),
    "E": ("61de0de7b0545a77", "f3967808a6b81f0456b9d3aeb06846b6", "5/hLCvcM8EQZQW7xtuLoVMafO0cwZPM+zs3nN8TEWQBWlBRP1QnWdnzc5j48ivs9w0Z2tYwTaIATuzX/NepmHKdqU6ZPf2HbDSgtIJ1sYGQB2e8wMQskj0C2Sr1a0rY1EhM1VVYYwQNX8p7z/FyM6eoe8KAmGbCKyMXPBGajFPXC+y8siYu1BZQU/eGzktRFJWBiTn6B6eqyl0cN/xTVtsE4OHUJSPxEhVXKuA1/1xjewayW4xks2S+OarsDm+HL276D31jDge2WleIES1NtgRa0FzezDMAz9Gp3x6nPmYk79f3zGT5r9brr4V34tuQRoNmE3bhvOOberP4oHbr5+pa6YYiV0Jucqh6SMb6PAEUALYOrLdwngvVG8FIlC6coOrqWX+3OEuie02uaY/GDNq9O+zYOrmZ5V8KWNAC6sey1Pw5XoFqpLI9GZgnh9Cj+q+oC/5cXuVJEFjTUTQ=="),
    "F": ("5c63b98f53ac78d5", "8595180fcb6234073f04992f7d439c1b", "X7xy4LLKlfssiblbDiLsKDuSFkVW0PA4l5iLHwuiYZcV6f+05dkaY4TgvgiXUVeQRLPKVkgqOhEApkU7oClPaAglbTBlu6bsNDMnOtaOzmh5QZUminD84HI41p5hH0JLXkQENd6t3W29VX4g3DLsY0oJ331uLy5X2noiEXZ75YfeaGwf3X58SKg3+rp8SC9c2ngkdNR0NvjLHi07uKAUD/LNV304QSPecyFgLqrWslecE74s0GzwzCvkKmpmTB5bWMJNCc2hFKf9noMkweqMmdjI63mIiXxkynnx9VA6moDGCiJ2nMKJdzc9qs3nfkVAlrEH5rHhdMVSjryOEdKyUcYaiyjctG0o"),
    "G": ("f303e2855290fdbe", "1e482d77f9ad25076af32e3de1174649", "eIf7BesQOoNXYnedgtm73ohYasQPGWeOXOkLAFIqQwSyJma+rxxLi3WMUtw99QFIYmyNXoFGChx2HsLwRXRkeIpSqT4qQTDyQYvjUa3Pjhb4hmekisNlEEj0S4OjeyOxb59RJteMkSMn4F8gkTR9N+b1aApLI6e11TtHPuEAt7CNF0tDsGN7"),
}
STUDIES = tuple(SEALED)


def _key(study: str, salt: str, codes: frozenset[str]) -> bytes:
    return hashlib.sha256(f"mi-course 00.1|{study}|{salt}|{','.join(sorted(codes))}".encode()).digest()


def _keystream(key: bytes, n: int) -> bytes:
    blocks = (hashlib.sha256(key + i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))
    return b"".join(blocks)[:n]


def _is_answer(study: str, codes: frozenset[str]) -> bool:
    salt, check, _ = SEALED[study]
    return hmac.compare_digest(hashlib.sha256(b"answer" + _key(study, salt, codes)).hexdigest()[:32], check)


def _answer(study: str) -> tuple[frozenset[str], str]:
    """The right set of codes for ``study`` (found among the 16 possible sets) and why."""
    salt, _, sealed = SEALED[study]
    for n in range(len(DEFINITIONS) + 1):
        for codes in map(frozenset, itertools.combinations(sorted(DEFINITIONS), n)):
            if _is_answer(study, codes):
                data = base64.b64decode(sealed)
                return codes, bytes(a ^ b for a, b in zip(data, _keystream(_key(study, salt, codes), len(data)))).decode()
    raise RuntimeError(f"00.1: no set of codes matches the sealed answer of study {study}")


def _seal(study: str, codes: set[str], why: str) -> tuple[str, str, str]:
    """For course authors: the ``SEALED`` entry of a study whose answer is ``codes``, explained by ``why``."""
    salt = secrets.token_hex(8)
    key = _key(study, salt, frozenset(codes))
    data = why.encode()
    sealed = bytes(a ^ b for a, b in zip(data, _keystream(key, len(data))))
    return salt, hashlib.sha256(b"answer" + key).hexdigest()[:32], base64.b64encode(sealed).decode()


def _normalise_labels(study: str, labels) -> frozenset[str]:
    if isinstance(labels, str) or not isinstance(labels, (set, frozenset, list, tuple)):
        raise CheckFailed(
            "00.1", f"study {study}: give a set of codes such as {{'BT', 'BC'}} (or set() for none), not {labels!r}."
        )
    codes = frozenset(str(label).strip().upper() if isinstance(label, str) else repr(label) for label in labels)
    unknown = sorted(codes - set(DEFINITIONS))
    if unknown:
        raise CheckFailed("00.1", f"study {study}: unknown code(s) {unknown}; use only {sorted(DEFINITIONS)}.")
    return codes


def check_classification(answers: Mapping[str, set[str]] | None) -> None:
    """Check the four-definitions classification of the notebook's studies A to G."""
    if answers is None:
        raise CheckFailed("00.1", "no answer yet: fill in the exercise cell above.")
    if not isinstance(answers, dict):
        raise CheckFailed("00.1", f"expected a dict from study letter to a set of codes, got {type(answers).__name__}.")
    answers = dict(dict.items(answers))
    missing = sorted(set(STUDIES) - set(answers))
    if missing:
        raise CheckFailed("00.1", f"classify every study: {', '.join(missing)} missing from your dict.")
    given = {study: _normalise_labels(study, answers[study]) for study in STUDIES}
    wrong = [study for study in STUDIES if not _is_answer(study, given[study])]
    if wrong:
        study = wrong[0]
        expected, why = _answer(study)
        got = given[study]
        parts = []
        if expected - got:
            parts.append(f"it also counts as {', '.join(DEFINITIONS[c] for c in sorted(expected - got))}")
        if got - expected:
            parts.append(f"it does not count as {', '.join(DEFINITIONS[c] for c in sorted(got - expected))}")
        others = f" (also not right yet: {', '.join(wrong[1:])})" if len(wrong) > 1 else ""
        raise CheckFailed("00.1", f"study {study}: {'; '.join(parts)}. Why: {why}{others}")
    passed("00.1", f"all {len(STUDIES)} studies classified consistently with Saphra & Wiegreffe's four definitions.")


# ---------------------------------------------------------------- K-composition (computed in the notebook, 00.5)


def k_composition_scores(W_V: torch.Tensor, W_O: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor) -> torch.Tensor:
    """K-composition score of every (earlier head, later head) pair (Elhage et al. 2021).

    ``W_V``, ``W_O``: the earlier layer's ``[n_heads, d_model, d_head]`` and
    ``[n_heads, d_head, d_model]``; ``W_Q``, ``W_K``: the later layer's. Each pair's score is
    `mi_course.induction.k_composition_score` of ``W_QK = W_Q @ W_K.T`` and ``W_OV = W_V @ W_O``.
    Returns ``[n_heads_earlier, n_heads_later]``.
    """
    ov = W_V @ W_O
    qk = W_Q @ W_K.transpose(-1, -2)
    return torch.tensor([[k_composition_score(q, o) for q in qk] for o in ov])


# ---------------------------------------------------------------- 00.2 baseline prompts (design)

_DESIGN_HINTS = {
    "shape": "return one baseline prompt per clean prompt, an integer tensor of the same shape as clean_tokens.",
    "bos": "keep the first token, <bos>, as it is: the baseline should differ from the clean prompts only where the behaviour needs it.",
    "repeat": "you changed the second half: the metric scores the same next tokens at the same positions of the repeat, so the "
    "baseline must keep them, or the clean and baseline values measure different things. Change only the first half.",
    "letters": "use only letters from `letters` in the first half (no <bos> or other tokens the clean prompts never contain there).",
    "distinct": "the clean prompts' first halves have distinct letters; give the baseline prompts distinct letters too, so that "
    "they differ from the clean ones only in what the behaviour needs.",
    "permuted": "your first half reuses the clean prompt's letters in another order: an induction mechanism still finds an "
    "earlier copy of the current letter and copies the letter after it, now a wrong one. That misleads the model instead of "
    "leaving it nothing to copy, and the baseline falls far below 'behaviour absent'. Use letters that the clean prompt does not contain.",
    "overlap": "some letters of your first half also occur in the clean prompt's first half (and so in its repeat): at those "
    "positions the model can still copy, so part of the behaviour survives in your baseline. Use only letters that the clean prompt does not contain.",
}


def _design_case(seed: int, letters: Tensor) -> dict:
    """Fresh clean prompts in the task's format: <bos>, L distinct letters, the first L - 1 of them again."""
    g = torch.Generator().manual_seed(seed)
    length = int(torch.randint(5, 9, (1,), generator=g))
    n = int(torch.randint(4, 9, (1,), generator=g))
    rows = []
    for _ in range(n):
        first = letters[torch.randperm(len(letters), generator=g)[:length]]
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), first, first[:-1]]))
    return dict(clean_tokens=torch.stack(rows), letters=letters.clone())


def _design_problem(got: object, clean: Tensor, letters: Tensor) -> str | None:
    """What makes ``got`` an invalid baseline for ``clean`` (a key of _DESIGN_HINTS), or None."""
    if not isinstance(got, Tensor) or got.shape != clean.shape or got.is_floating_point() or got.is_complex():
        return "shape"
    half = clean.shape[1] // 2
    if not torch.equal(got[:, 0], clean[:, 0]):
        return "bos"
    if not torch.equal(got[:, half + 1 :], clean[:, half + 1 :]):
        return "repeat"
    allowed = set(letters.tolist())
    for row, clean_row in zip(got.tolist(), clean.tolist()):
        first, clean_first = row[1 : half + 1], clean_row[1 : half + 1]
        if not set(first) <= allowed:
            return "letters"
        if sorted(first) == sorted(clean_first):
            return "permuted"
        if set(first) & set(clean_first):
            return "overlap"
        if len(set(first)) != len(first):
            return "distinct"
    return None


def check_baseline_prompts(
    learner: Callable,
    clean_tokens: Int[Tensor, "batch pos"],
    letters: Int[Tensor, " n_letters"],
    metric: Callable[[Tensor], Tensor] | None = None,
    model: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """``baseline_prompts(clean_tokens, letters)``: prompts on which induction is impossible and nothing else changes.

    Runs the design on the notebook's prompts and on fresh prompts of another length; with
    ``model`` and ``metric``, also reports the model's metric on the learner's baseline prompts.
    """
    cases = [dict(clean_tokens=clean_tokens, letters=letters)]
    cases += [_design_case(fresh_seed(), letters) for _ in range(2)]
    answers = []
    for i, case in enumerate(cases):
        got = call_learner("00.2", learner, **case)
        problem = _design_problem(got, case["clean_tokens"], case["letters"])
        if problem is not None:
            where = "on the notebook's prompts" if i == 0 else f"on fresh prompts of length {case['clean_tokens'].shape[1]}"
            raise CheckFailed("00.2", f"{where}: {_DESIGN_HINTS[problem]}", problem)
        answers.append(got)
    said = ""
    if model is not None and metric is not None:
        with torch.no_grad():
            clean_value, baseline_value = (float(metric(model(t))) for t in (clean_tokens, answers[0]))
        said = f"; the model's metric: clean {clean_value:.2f}, on your baseline prompts {baseline_value:.2f}"
    passed(
        "00.2",
        f"your baseline prompts keep <bos> and the repeat and leave nothing to copy (the notebook's prompts and "
        f"{len(cases) - 1} fresh sets){said}.",
    )


# ---------------------------------------------------------------- 00.3 normalised metric


def normalised(clean: float, intervened: float, baseline: float) -> float:
    """The share of the clean-to-baseline gap that survives an intervention: 1 = clean behaviour, 0 = baseline.

    The convention of the whole course (notebook 03's normalised metric): an ablation reports
    the share of the behaviour it leaves. Works for metrics where higher is better (a logit
    difference, a log-probability) and lower is better (a loss) alike.
    """
    return float((intervened - baseline) / (clean - baseline))


def _normalised_cases(example: Mapping | None) -> list[dict]:
    """Losses and log-probabilities; shares inside (0, 1), below 0 (past the baseline) and above 1 (better than clean)."""
    cases = [dict(example)] if example is not None else []
    g = torch.Generator().manual_seed(fresh_seed())
    low, high = sorted((0.1 + torch.rand(2, generator=g)).tolist())
    middle = low + (high - low) * (0.2 + 0.6 * float(torch.rand(1, generator=g)))
    cases.append(dict(clean=low, intervened=middle, baseline=5 * high))  # a loss: lower is better
    cases.append(dict(clean=10 * high, intervened=5 * middle, baseline=-low))  # a logit difference
    cases.append(dict(clean=-low, intervened=-3 * middle, baseline=-2 * high))  # a log-probability: all negative
    cases.append(dict(clean=low, intervened=8 * high, baseline=5 * high))  # a loss pushed past the baseline: below 0
    cases.append(dict(clean=5 * middle, intervened=10 * high, baseline=-low))  # a logit difference it raises: above 1
    return cases


NORMALISED_MISTAKES = {
    "that is the share of the behaviour that is lost (1 = behaviour gone). The course reports the share that "
    "survives: 1 when the intervened run behaves like the clean one, 0 when it behaves like the baseline.": lambda clean,
    intervened, baseline: (clean - intervened) / (clean - baseline),
    "you did not normalise: divide by the whole gap between the clean and the baseline value, so that the "
    "clean run scores 1 whatever the metric's units.": lambda clean, intervened, baseline: intervened - baseline,
    "a ratio to the clean value depends on where the metric's zero lies (a loss, a log-probability): measure "
    "how far the intervened value is from the baseline, as a share of the clean-to-baseline gap.": lambda clean,
    intervened, baseline: intervened / clean,
    "an unchanged run must score 1, not 0: measure the intervened value from the baseline, not from the clean "
    "value.": lambda clean, intervened, baseline: (intervened - clean) / (clean - baseline),
    "the sign is flipped: with intervened = clean you get -1. Divide by (clean - baseline), the gap in the "
    "direction of the behaviour.": lambda clean, intervened, baseline: (intervened - baseline) / (baseline - clean),
}


def check_normalised(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``normalised_metric(clean, intervened, baseline)`` on losses, log-probabilities and logit differences."""
    check_function(
        "00.3",
        learner,
        normalised,
        _normalised_cases(example),
        mistakes=NORMALISED_MISTAKES,
        hint="expected the share of the clean-to-baseline gap that the intervened run keeps: (intervened - baseline) / (clean - baseline).",
        success="normalised values match, for a loss, a log-probability and a logit difference",
    )


# ---------------------------------------------------------------- 00.4 prediction: which heads matter


def _heads_of(prediction: object, n_layers: int, n_heads: int) -> frozenset[tuple[int, int]]:
    """The learner's prediction as a set of (layer, head), or a hint."""
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed("00.4", "no prediction yet: fill in the exercise cell above.")
    if isinstance(prediction, (str, bytes)) or not isinstance(prediction, (set, frozenset, list, tuple)):
        raise CheckFailed("00.4", f"give a set of (layer, head) pairs such as {{(0, 1)}} (set() for none), not {prediction!r}.")
    heads = set()
    for item in prediction:
        if isinstance(item, str) and item.upper().startswith("L") and "H" in item.upper():
            layer, _, head = item.upper()[1:].partition("H")
            item = (layer, head)
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise CheckFailed("00.4", f"each head is a (layer, head) pair of ints such as (0, 1), not {item!r}.") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise CheckFailed("00.4", f"the model has layers 0 to {n_layers - 1} and heads 0 to {n_heads - 1}; there is no head {(layer, head)}.")
        heads.add((layer, head))
    return frozenset(heads)


def kept_after_ablation(model, task) -> Tensor:
    """The normalised metric (1 = clean, 0 = corrupted) with each head mean-ablated in turn: [layer, head]."""
    from mi_course.patching import ablation_sweep

    return ablation_sweep(model, task.clean_tokens, task.normalised_metric, "z", by=("layer", "head"), mode="mean", progress=False)


def check_prediction(prediction: object, model, task) -> None:
    """Grade the set of heads predicted to keep less than half of the behaviour when mean-ablated, by running the ablations."""
    cfg = model.cfg
    predicted = _heads_of(prediction, cfg.n_layers, cfg.n_heads)
    with torch.no_grad():
        kept = kept_after_ablation(model, task)
    truth = frozenset((layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads) if kept[layer, head] < 0.5)
    if predicted == truth:
        passed("00.4", f"your prediction holds: mean-ablating exactly these {len(truth)} heads keeps less than half of the behaviour. The next cells show the figures.")
        return
    said = []
    if truth - predicted:
        said.append(
            f"{len(truth - predicted)} head(s) you left out matter: a head can matter without writing the answer itself, "
            "when a later head reads what it writes (what must an induction head know about each earlier position?)."
        )
    if predicted - truth:
        said.append(
            f"{len(predicted - truth)} head(s) you picked can be ablated almost for free: a sharp or striking pattern shows "
            "where a head reads from, not that anything the model uses depends on what it writes."
        )
    raise CheckFailed("00.4", " ".join(said))


# ---------------------------------------------------------------- 00.5 reading the composition scores

COMPOSITION_OPTIONS = {
    "A": "L1H0's keys can read what L0H0 writes.",
    "B": "The scores show that ablating L0H0 will remove the induction behaviour.",
    "C": "A score of 0.19 is far from 1, so L0H0 to L1H0 is a weak path.",
    "D": "Whatever L0H1 writes, L1H0's keys do not read it.",
}
SEALED_COMPOSITION = (
    "727100c3272f396a",
    "30a518867317508291dd0f37f8bd441a",
    "AoOj/4/IUVLc1I3FDn2tBV5lW/8uS2VmWleg2I81LEb4qwt40jxlDWUMlmzBYXCItIDPTpiTPNCiOsJx07qH52r0h7+GzPDpyEGVLsq7IGZRt1bZ2QcidG6MAP1t6ieec67Lyad0NwDw5RL8xQkaLNQg7SU+kU/ZNM1fQDJwd6uAPbMB6EsqB9/4BEXF/3OZjuFb5iSlz3F7yI+F5i9S2VxmJ2seIZFgLoZzhhza1mM0EO9F4gqYJO6JDrJ2rai6fgNB3m8FbkxZC9K2K6/0En74zMBLFJGj2i1NGG9NMHbvt7gCyWU0cFWz/AARv/GYkSumg2/mw0WRHaUOFy+TfgKUjXDLDfYe0mEUXIuP4o2r",
)
COMPOSITION_HINTS = {
    "A": "a nonzero K-composition score means that the later head's keys read part of what the earlier head writes.",
    "B": "weights are static: they say what could flow from one head to another, not what does on the data, nor that "
    "the behaviour depends on it. Only an intervention can show that.",
    "C": "a score compares pairs; it is not a strength on an absolute scale. Two matrices that act as the identity on r "
    "dimensions score at most one over the square root of r, however strongly they compose.",
    "D": "a score of exactly 0 means that the later head's keys ignore the earlier head's output entirely.",
}


def check_composition_reading(got: object) -> None:
    """Which statements the K-composition scores of the hand-set model support (a set of letters)."""
    check_choice("00.5", got, COMPOSITION_OPTIONS, SEALED_COMPOSITION, several=True, hints=COMPOSITION_HINTS)
