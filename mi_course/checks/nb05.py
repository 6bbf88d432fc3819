"""Checks of notebook 05 (the logit lens and the tuned lens).

The lens is checked on the notebook's example and on a fresh tiny model whose every parameter
is random (the final layer norm's weight and bias and the unembedding bias included, nothing
folded), so that forgetting any of them changes the answer. The prediction is graded against
the experiment, run inside the check; the control design by the properties that make it a
control, on the notebook's prompts and on fresh ones; the interpretations against sealed answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_course import lens
from mi_course.checks.core import CheckFailed, check_choice, check_seeded, fresh_seed, passed, separating_case
from mi_course.checks.nb01 import _check, random_model
from mi_course.tasks import make_task

__all__ = [
    "LENS_OPTIONS",
    "PATH_OPTIONS",
    "check_control_prompts",
    "check_lens_reading",
    "check_logit_lens_stack",
    "check_path_prediction",
    "check_top1_prediction",
    "random_case",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "05.1": ("mi_course.lens.decode", "mi_course.lens.logit_lens", "mi_course.lens.residual_stack"),
    "05.4": ("mi_course.lens.name_control",),
}


def random_case(seed: int) -> dict:
    """A random unfolded 2-layer model (LN weights and b_U random) and random tokens."""
    model = random_model(seed, fold=False)
    gen = torch.Generator().manual_seed(seed)
    return dict(model=model, tokens=torch.randint(0, model.cfg.d_vocab, (3, 8), generator=gen))


# 05.1 ---------------------------------------------------------------------------------


def _lens_resid(model, cache, resid, *, ln="fresh", weights=True, bias=True):
    if ln == "fresh":
        centred = resid - resid.mean(-1, keepdim=True)
        normed = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    elif ln == "cached":
        normed = (resid - resid.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
    else:
        normed = resid
    if weights and ln != "none":
        normed = normed * model.ln_final.w + model.ln_final.b
    return normed @ model.W_U + (model.b_U if bias else 0)


def _stack(model, tokens, *, entries="all", **how):
    _, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    names = {
        "all": lens.resid_hook_names(model),
        "pre": [f"blocks.{layer}.hook_resid_pre" for layer in range(n)],
        "post": [f"blocks.{layer}.hook_resid_post" for layer in range(n)],
    }[entries]
    return torch.stack([_lens_resid(model, cache, cache[name], **how) for name in names])


def _stack_reference(model, tokens):
    return lens.logit_lens(model, tokens)


_STACK_MISTAKES = {
    "you forgot the final layer norm: apply model.ln_final to each residual stream before the unembedding.": lambda **c: _stack(**c, ln="none"),
    "you used the final layer norm's scale from the cache (ln_final.hook_scale): that is the scale of the *final* residual. "
    "The logit lens recomputes the norm for each residual it reads (call model.ln_final on it).": lambda **c: _stack(**c, ln="cached"),
    "you forgot the unembedding bias: add model.b_U after multiplying by W_U.": lambda **c: _stack(**c, bias=False),
    "you normalised but left out the layer norm's weight and bias (model.ln_final.w, .b); calling model.ln_final does it all.": lambda **c: _stack(**c, weights=False),
}


def check_logit_lens_stack(learner: Callable, model: HookedTransformer, tokens: Tensor) -> None:
    """``logit_lens_stack(model, tokens)``: every entry of the residual stack decoded, ``[n_layers + 1, batch, pos, d_vocab]``."""
    cases = [dict(model=model, tokens=tokens)]
    cases.append(separating_case(random_case, _stack_reference, _STACK_MISTAKES.values(), fresh_seed()))

    def shape_hint(got, expected, case):
        n = case["model"].cfg.n_layers
        if len(got) == len(expected) and got[0] == n and got[1:] == expected[1:]:
            return (f"you decoded {n} residual streams; the stack has {n + 1}: the embeddings (what layer 0 reads), then the stream "
                    "after every layer, the last of which is the final one (it must give back the model's logits).")
        if got == expected[1:]:
            return "you decoded one residual stream: stack every entry, from the embeddings to the final stream, along a new first dimension."
        return None

    _check(
        "05.1",
        lambda **case: learner(**case),
        _stack_reference,
        cases,
        mistakes=_STACK_MISTAKES,
        hint="decode each residual stream (every layer's input, then the final output) with model.ln_final, then W_U and b_U.",
        success="your logit lens matches",
        shape_hint=shape_hint,
    )


# 05.2 ---------------------------------------------------------------------------------


def first_top1(model: HookedTransformer, tasks: Mapping) -> dict[str, int]:
    """Per task, the first entry of the residual stack where the median rank of the model's own answer is 1."""
    first = {}
    for name, task in tasks.items():
        logits = lens.logit_lens(model, task.clean_tokens, pos=-1)  # [entry, batch, d_vocab]
        predicted = logits[-1].argmax(-1)
        ranks = lens.answer_rank(logits, predicted.expand(logits.shape[0], -1)).float().median(-1).values
        first[name] = int((ranks == 1).nonzero()[0])
    return first


def check_top1_prediction(prediction, model: HookedTransformer, tasks: Mapping, labels: list[str], *, graded: bool = True) -> None:
    """A prediction ``{task: entry label}``: where each task's answer first has median rank 1, graded against the lens run."""
    exercise = "05.2"
    truth = first_top1(model, tasks)
    if not graded:
        print(f"Exercise {exercise} is a prediction about toy-lm, not graded on this model; here: "
              + ", ".join(f"{name} {labels[i]}" for name, i in truth.items()) + ".")
        return
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed(exercise, "no prediction yet: fill in the exercise cell above.")
    if not isinstance(prediction, dict) or set(prediction) != set(tasks):
        raise CheckFailed(exercise, f"give a dict with one entry label per task, for the keys {sorted(tasks)}.")
    bad = [v for v in prediction.values() if v not in labels]
    if bad:
        raise CheckFailed(exercise, f"each value is one of the labels {labels}, not {bad[0]!r}.")
    guess = {name: labels.index(v) for name, v in prediction.items()}
    off = [f"{name} settles {'later' if truth[name] > guess[name] else 'earlier'}" for name in tasks if abs(guess[name] - truth[name]) > 1]
    if off:
        raise CheckFailed(exercise, "more than one entry off: " + ", ".join(off) + " than you predicted. Which tasks need only the context's tokens, "
                          "and which need a comparison or a number agreement?")
    order = [(a, b) for a in tasks for b in tasks if truth[a] < truth[b] and not guess[a] < guess[b]]
    if order:
        a, b = order[0]
        raise CheckFailed(exercise, f"close, but the order is off: {a} settles strictly before {b}.")
    passed(exercise, "within one entry for every task, in the right order: " + ", ".join(f"{name} {labels[i]}" for name, i in truth.items()))


# 05.4 ---------------------------------------------------------------------------------


def _names_of(task) -> Tensor:
    return torch.unique(torch.cat([task.answers[:, 0], task.wrong_answers[:, 0]]))


def check_control_prompts(learner: Callable, model: HookedTransformer, task) -> None:
    """``control_prompts(tokens, io, s, names, seed)``: IOI prompts for a lens control, checked by the properties of a control."""
    exercise = "05.4"
    fresh = make_task("ioi", model, n=12, seed=fresh_seed() % 10_000)
    cases = []
    for t in (task, fresh):
        cases.append(dict(tokens=t.clean_tokens, io=t.answers[:, 0], s=t.wrong_answers[:, 0], names=_names_of(task)))
    for case in cases:
        got = check_seeded(exercise, learner, seed=fresh_seed(), **case)
        tokens, io, s, names = case["tokens"], case["io"], case["s"], case["names"]
        try:
            got = torch.as_tensor(got)
        except Exception:
            raise CheckFailed(exercise, f"return the control prompts as a tensor of token ids, not {type(got).__name__}.") from None
        if got.shape != tokens.shape or got.dtype.is_floating_point:
            raise CheckFailed(exercise, f"return token ids of the prompts' shape {tuple(tokens.shape)}: one control prompt per clean prompt, the same length.")
        at_names = (tokens == io[:, None]) | (tokens == s[:, None])
        if not torch.equal(got[~at_names], tokens[~at_names]):
            raise CheckFailed(exercise, "your control changes tokens other than the two names: keep the template and the last token, so that "
                              "everything the lens reads apart from the names is the same as in the clean prompts.")
        if ((got == io[:, None]) | (got == s[:, None])).any():
            raise CheckFailed(exercise, "your control still contains a name of its clean prompt: the lens could then read the answer from the context.")
        if not torch.isin(got[at_names], names).all():
            raise CheckFailed(exercise, "replace the names by other names (from names), so that each control prompt is a sentence of the same kind.")
        for row in range(tokens.shape[0]):
            new_io, new_s = got[row][tokens[row] == io[row]], got[row][tokens[row] == s[row]]
            if len(set(new_io.tolist())) != 1 or len(set(new_s.tolist())) != 1 or int(new_io[0]) == int(new_s[0]):
                raise CheckFailed(exercise, "keep the prompt's structure: the repeated name stays repeated (one new name at all of its places), "
                                  "and the two new names differ, so that only the identity of the names changes.")
    passed(exercise, "only the two names change, consistently, and neither clean name is left in the context")


# 05.3 and 05.5 -------------------------------------------------------------------------

LENS_OPTIONS = {
    "A": "toy-lm decides greater-than only in its last layer; the earlier layers do nothing for the task.",
    "B": "after layer 1 the stream already favours the years above YY as a set, while the single most likely year is not settled; when the model decides, and which layers do the work, the lens cannot say.",
    "C": "layers 2 and 3 are not needed for greater-than, since most of the probability difference is in place after layer 1.",
    "D": "the logit lens is unreliable before the last layer, so these curves carry no information.",
}
_LENS_SEALED = ('738a94a6effac8ea', '850a0df0e0cb4a91386e0f08fd6c52c4', 'l1du7PZW2U8HeJvwlQji5ygtsWnKLLrh/LuJcV7g3ou4NNP6hRVZJEY4Ei3wWgRC3mcmisXHmuSdQ4B0oRzl9VgqG1Id0MrUe+YVOMvNle1DqPK0zMpiaLEc4cX+4EvFM5D+TwpuuQ3aaSMxMKD7ZA6BOFtORj22LGYR/0Hl9ZgFXXBgqjhvUP1qCh6Q6LftytjvcaX/3GxpymoryMZotQhJFb1iInDaROAcaJe4wAmZnPf65OjpvfjFrh3ymodC+7lH9n8cdnIpjATr2yAQg+ze5R9UeKfuTNJXOR3N81/fVmEbvFK/R19MF8yYtM8BXgYBQJNZ3L6W1zLUDry5YEAa9xirYX3qL3MX7jXpKR4uqt1N13BOk6X1vRoz2fPL3ssrHyQGDVZb09TTEg==')


def check_lens_reading(answer) -> str:
    """What the greater-than lens curves show, among ``LENS_OPTIONS``."""
    return check_choice(
        "05.3", answer, LENS_OPTIONS, _LENS_SEALED,
        hints={
            "A": "the task metric is three quarters of the way after layer 1: would a model that does nothing before its last layer show that?",
            "C": "a readout says what is decodable, not what is needed: what experiment would show that layers 2 and 3 are not needed?",
            "D": "the last entry is exact, and the curves change smoothly and consistently across prompts: unreliable for what question?",
        },
    )


PATH_OPTIONS = {
    "A": "The probability difference barely changes: the head acts directly on the logits or through later heads.",
    "B": "The probability difference drops about as much as with the full ablation, and the MLPs' edge at YY weakens.",
    "C": "The probability difference drops, and the MLPs stop favouring later years at all: their overall above-minus-below score collapses.",
    "D": "The probability difference rises: the MLPs work better without the head.",
}
_PATH_SEALED = ('c2debb0bb32c88bf', '3e941acc81c3b870bd82917b1b3f1489', '/RQxElv/UUagWBluxSQxIfzuYB6YrRhN40/j3gVqArQHlnOeYImiMjL1fjGONYJCWU0UHlRSdnxsq6G3IZhlUfq3AYMflUdURT6jD4sclgJY+H98X5ABqcZRcf2gpq0VHNy6EfQusoCB98C2UeWmD3NHj9iB/YqY0z/7rG2E4XyFRtbBBLwnuE0/to/kNccAMHnFpcS6abpgxv7e9h5kTh7DuQ6varFrH0+obIMm8pQ1kxoRCORe9DTC/sHnunK1HrzesmL/J121HUvL7D9MguHCUQR1smjE1iWwsEMKV3ugDFY/QkagIBuAH1mXDGQOuuxQasNQnK2EI8qrYdwfmPYvzUGURxVHpCkQ5FodngmB0NLIKx7HA9Vkh3zoA1Q=')


def check_path_prediction(answer) -> str:
    """A prediction about toy-lm, among ``PATH_OPTIONS``: what ablating the YY head only in the MLPs' inputs does."""
    return check_choice(
        "05.5", answer, PATH_OPTIONS, _PATH_SEALED,
        hints={
            "A": "the head's own output writes nothing year-like (its direct score is near zero): where else could its effect go?",
            "C": "the head reads YY: would the MLPs lose their preference for later years in general, or only the knowledge of where YY is?",
            "D": "the full ablation lowered the metric: why would removing the same information from only some readers raise it?",
        },
    )
