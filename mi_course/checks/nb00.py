"""Checks of notebook 00_mechanistic: what does "mechanistic" mean?"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import types
from collections.abc import Callable, Mapping

import torch

from mi_course.checks.core import CheckFailed, check_function, fresh_seed, passed
from mi_course.induction import k_composition_score
from mi_course.patching import ablate_head_hook, normalised_effect

__all__ = [
    "DEFINITIONS",
    "SEALED",
    "check_ablate_head_hook",
    "check_classification",
    "check_k_composition_scores",
    "check_normalised_effect",
    "k_composition_scores",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "00.2": ("mi_course.checks.nb00.k_composition_scores",),
    "00.3": ("mi_course.patching.ablate_head_hook",),
    "00.4": ("mi_course.patching.normalised_effect",),
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


# ---------------------------------------------------------------- 00.2 K-composition


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


def _q_composition(W_V, W_O, W_Q, W_K):
    ov, qk = W_V @ W_O, W_Q @ W_K.transpose(-1, -2)
    return (ov[:, None] @ qk[None]).norm(dim=(-2, -1)) / (ov.norm(dim=(-2, -1))[:, None] * qk.norm(dim=(-2, -1))[None])


def _k_composition_unnormalised(W_V, W_O, W_Q, W_K):
    ov, qk = W_V @ W_O, W_Q @ W_K.transpose(-1, -2)
    return (ov[:, None] @ qk[None].transpose(-1, -2)).norm(dim=(-2, -1))


def _k_composition_one_norm(W_V, W_O, W_Q, W_K):
    ov = W_V @ W_O
    return _k_composition_unnormalised(W_V, W_O, W_Q, W_K) / ov.norm(dim=(-2, -1))[:, None]


def _composition_cases(example: Mapping[str, torch.Tensor] | None, n: int = 2) -> list[dict[str, torch.Tensor]]:
    cases = [dict(example)] if example is not None else []
    for _ in range(n):
        g = torch.Generator().manual_seed(fresh_seed())
        d_model, d_head, h0, h1 = 8, 3, 2, 3  # h0 != h1, so a transposed answer shows up as a shape error
        cases.append(
            dict(
                W_V=torch.randn(h0, d_model, d_head, generator=g),
                W_O=torch.randn(h0, d_head, d_model, generator=g),
                W_Q=torch.randn(h1, d_model, d_head, generator=g),
                W_K=torch.randn(h1, d_model, d_head, generator=g),
            )
        )
    return cases


def check_k_composition_scores(learner: Callable, example: Mapping[str, torch.Tensor] | None = None) -> None:
    """Check ``k_composition_scores(W_V, W_O, W_Q, W_K)`` on the notebook's weights and random ones."""
    check_function(
        "00.2",
        learner,
        k_composition_scores,
        _composition_cases(example),
        mistakes={
            "that is the Q-composition score: the earlier head's output reaches the later head's keys, so "
            "multiply W_OV by W_QK transposed (W_OV @ W_QK.T), not by W_QK.": _q_composition,
            "the score is not normalised: divide by the Frobenius norms of both W_OV and W_QK, so that "
            "scores lie in [0, 1] and heads with big weights do not win by size alone.": _k_composition_unnormalised,
            "divide by the norms of both matrices, W_OV's and W_QK's, not only W_OV's.": _k_composition_one_norm,
        },
        hint="your scores differ from |W_OV @ W_QK.T|_F / (|W_OV|_F |W_QK|_F) with W_OV = W_V @ W_O and W_QK = W_Q @ W_K.T.",
        success="K-composition scores match",
    )


# ---------------------------------------------------------------- 00.3 ablation hook

_HOOK = types.SimpleNamespace(name="blocks.1.attn.hook_z", layer=lambda: 1)


def _run_hook(factory: Callable, z: torch.Tensor, head: int, mode: str) -> torch.Tensor:
    """Build the hook with ``factory(head, mode)`` and apply it to ``z`` (the check's own copy)."""
    hook_fn = factory(head, mode)
    if not callable(hook_fn):
        raise CheckFailed(
            "00.3",
            f"ablate_head_hook(head, mode) must return a hook function (define `hook_fn(activation, hook)` "
            f"inside it and `return hook_fn`), not {type(hook_fn).__name__}.",
        )
    out = hook_fn(z, _HOOK)
    if out is None:
        raise CheckFailed(
            "00.3",
            "your hook function returns None: return the edited activation (`return activation`), "
            "so that the ablation is what flows on through the model.",
        )
    return out


def _mistake(edit: Callable[[torch.Tensor, torch.Tensor, int, str], None]) -> Callable:
    """A wrong hook that makes the edit ``edit(out, z, head, mode)`` on a copy."""

    def wrong(z: torch.Tensor, head: int, mode: str) -> torch.Tensor:
        out = z.clone()
        edit(out, z, head, mode)
        return out

    return wrong


def _every_head(out, z, head, mode):
    out[:] = 0.0 if mode == "zero" else z.mean(dim=0, keepdim=True)


def _position_axis(out, z, head, mode):
    out[:, head] = 0.0 if mode == "zero" else z[:, head].mean(dim=0, keepdim=True)


def _always_zero(out, z, head, mode):
    out[:, :, head] = 0.0


def _always_mean(out, z, head, mode):
    out[:, :, head] = z[:, :, head].mean(dim=0, keepdim=True)


def _mean_over_positions(out, z, head, mode):
    out[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean(dim=(0, 1), keepdim=True)


def _mean_over_d_head(out, z, head, mode):
    out[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean(dim=-1, keepdim=True)


def _mean_over_heads(out, z, head, mode):
    out[:, :, head] = 0.0 if mode == "zero" else z.mean(dim=2)


HOOK_MISTAKES = {
    "you ablated every head of the layer: change only index `head` of the head axis (axis 2 of "
    "[batch, pos, head_index, d_head]) and leave the other heads as they were.": _every_head,
    "you indexed axis 1, which is the position axis: heads are axis 2 of [batch, pos, head_index, "
    "d_head], so write activation[:, :, head].": _position_axis,
    "with mode='mean' you wrote zeros: mean ablation replaces the head's output by its average over "
    "the batch, which keeps it on the distribution the later layers expect.": _always_zero,
    "with mode='zero' you still wrote the mean: look at `mode` and write zeros in that case.": _always_mean,
    "you averaged over positions as well: average over the batch only (dim=0), keeping one mean per "
    "position, because what a head writes depends on the position.": _mean_over_positions,
    "you averaged over d_head (the last axis): average over the batch (dim=0) so that each component "
    "of the head's output keeps its own mean.": _mean_over_d_head,
    "you averaged over the heads: the replacement must be the same head's own output, averaged over "
    "the batch (dim=0).": _mean_over_heads,
}


def _reference_hook(z: torch.Tensor, head: int, mode: str) -> torch.Tensor:
    return ablate_head_hook(head, mode)(z.clone(), _HOOK)


def _hook_cases(example: Mapping | None) -> list[dict]:
    cases = [dict(example)] if example is not None else []
    for mode in ("mean", "zero", "mean"):
        g = torch.Generator().manual_seed(fresh_seed())
        n_heads = int(torch.randint(2, 6, (1,), generator=g))
        z = torch.randn(int(torch.randint(3, 7, (1,), generator=g)), 5, n_heads, 4, generator=g)
        cases.append(dict(z=z, head=int(torch.randint(0, n_heads, (1,), generator=g)), mode=mode))
    return cases


def check_ablate_head_hook(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``ablate_head_hook(head, mode)``: the hook it returns, applied to ``hook_z``-shaped tensors."""
    if not callable(learner):
        raise CheckFailed("00.3", f"expected a function, got {type(learner).__name__}.")
    check_function(
        "00.3",
        lambda z, head, mode: _run_hook(learner, z, head, mode),
        _reference_hook,
        _hook_cases(example),
        mistakes={hint: _mistake(edit) for hint, edit in HOOK_MISTAKES.items()},
        unchanged=("z",),
        unchanged_hint="your hook edits the activation it receives in place: edit a copy (`out = activation.clone()`), "
        "return the copy, and leave the cache's tensor as it was (later cells still read it).",
        hint="your ablated activation differs from the reference: only head `head` changes, to its batch "
        "mean at each position (mode='mean') or to zero (mode='zero').",
        success="the hook ablates exactly one head, by mean or by zero",
    )


# ---------------------------------------------------------------- 00.4 normalised effect


def _effect_cases(example: Mapping | None) -> list[dict]:
    """Losses and logit differences; effects inside (0, 1), negative (the intervention helps) and above 1 (it overshoots the baseline)."""
    cases = [dict(example)] if example is not None else []
    g = torch.Generator().manual_seed(fresh_seed())
    low, high = sorted((0.1 + torch.rand(2, generator=g)).tolist())
    middle = low + (high - low) * (0.2 + 0.6 * float(torch.rand(1, generator=g)))
    cases.append(dict(clean=low, intervened=middle, baseline=5 * high))  # a loss: lower is better
    cases.append(dict(clean=10 * high, intervened=5 * middle, baseline=-low))  # a logit difference
    cases.append(dict(clean=middle, intervened=low, baseline=5 * high))  # a loss that the intervention lowers: effect < 0
    cases.append(dict(clean=5 * middle, intervened=10 * high, baseline=-low))  # a logit difference it raises: effect < 0
    cases.append(dict(clean=low, intervened=8 * high, baseline=5 * high))  # past the baseline: effect > 1
    return cases


def check_normalised_effect(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``normalised_effect(clean, intervened, baseline)`` on losses and logit differences."""
    check_function(
        "00.4",
        learner,
        normalised_effect,
        _effect_cases(example),
        mistakes={
            "your effect has the wrong sign: measure the move from clean towards the baseline, "
            "(clean - intervened) / (clean - baseline), so a harmful ablation gives a positive effect.": lambda clean,
            intervened,
            baseline: (intervened - clean) / (clean - baseline),
            "you did not normalise: divide the change by the whole clean-to-baseline gap (clean - baseline), "
            "so that 1 means 'all of the behaviour is gone'.": lambda clean, intervened, baseline: clean - intervened,
            "that is the fraction of the behaviour that survives the intervention (1 - effect); the effect is "
            "the fraction that is lost.": lambda clean, intervened, baseline: (intervened - baseline) / (clean - baseline),
            "you divided by the clean value (a relative change); divide by the clean-to-baseline gap "
            "instead.": lambda clean, intervened, baseline: (clean - intervened) / clean,
        },
        hint="expected (clean - intervened) / (clean - baseline).",
        success="normalised effects match, for a loss and for a logit difference",
    )
