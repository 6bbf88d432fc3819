"""Checks of notebook 04 (edge patching and circuit discovery).

Each check runs the learner's code on the notebook's example and on fresh random inputs:
tiny random models (one attention-only, one with MLPs) with random clean and corrupted
tokens, random edges and random circuits of their graph, or made-up graphs with a made-up
score of each set of patched edges (``_SyntheticScore``), chosen so that every typical
mistake gives a different answer from the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.checks.core import CheckFailed, check_function, close, fresh_seed, passed, register_plain
from mi_course.circuits import (
    Circuit,
    Edge,
    PatchedMetric,
    acdc,
    edge_patching_hooks,
    faithfulness,
    graph,
    greedy_prune,
    helper_search,
    knock_out,
    knockout,
    run_with_edges_patched,
    sender_outputs,
    senders,
)
from mi_course.patching import metric_value

__all__ = [
    "check_faithfulness",
    "check_greedy_prune",
    "check_helper_search",
    "check_knockout_design",
    "check_patch_edge",
    "check_rule_prediction",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "04.1": ("mi_course.circuits.run_with_edges_patched",),
    "04.2": ("mi_course.circuits.faithfulness",),
    "04.3": ("mi_course.circuits.greedy_prune", "mi_course.circuits.acdc"),
    "04.5": ("mi_course.circuits.helper_search", "mi_course.circuits.wang_minimality"),
}

register_plain(Edge, lambda edge: ("Edge", edge.sender, edge.receiver))  # compared by value

_TRIES = 200  # fresh cases drawn before giving up on one that separates every mistake


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """A random integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=gen, dtype=torch.float64))


def _choice(gen: torch.Generator, items: Sequence) -> Any:
    return items[_randint(gen, 0, len(items) - 1)]


def _subset(gen: torch.Generator, items: Iterable, p: float) -> set:
    return {x for x in sorted(items) if float(torch.rand(1, generator=gen)) < p}


def _distinct(values: Sequence[Any], tol: float = 1e-3) -> bool:
    """Whether no two of `values` agree within `tol` (so a check can tell them apart)."""
    return not any(close(a, b, atol=tol, rtol=0) for i, a in enumerate(values) for b in values[i + 1 :])


def _random_model(gen: torch.Generator, *, attn_only: bool) -> HookedTransformer:
    """A tiny 2-layer model with LayerNorm whose every parameter (biases too) is random.

    The weights come from `gen` alone: the global random state is left untouched, so that a
    check cell does not change what the notebook's later cells draw.
    """
    d_model = _randint(gen, 16, 24)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=d_model, n_heads=_randint(gen, 2, 3), d_head=_randint(gen, 4, 8),
        d_mlp=None if attn_only else 2 * d_model, n_ctx=12, d_vocab=_randint(gen, 20, 40),
        act_fn="gelu", normalization_type="LN", attn_only=attn_only, init_weights=False,
    )
    with torch.random.fork_rng(devices=[]):
        model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if name.endswith(".w") else 0.3 * noise)
    return model.requires_grad_(False).eval()


def _random_tokens(gen: torch.Generator, model: HookedTransformer) -> tuple[Tensor, Tensor]:
    batch, pos, vocab = _randint(gen, 2, 4), _randint(gen, 5, 10), model.cfg.d_vocab
    clean = torch.randint(0, vocab, (batch, pos), generator=gen)
    corrupted = (clean + torch.randint(1, vocab, (batch, pos), generator=gen)) % vocab
    return clean, corrupted


def _fake_graph(gen: torch.Generator) -> frozenset[Edge]:
    """The edges of a made-up 2-layer model (2 or 3 heads, MLPs or not), as `graph` builds them."""
    n_heads, attn_only = _randint(gen, 2, 3), bool(_randint(gen, 0, 1))
    before, edges = ["embed"], set()
    for layer in range(2):
        heads = [f"L{layer}H{h}" for h in range(n_heads)]
        edges |= {Edge(s, f"{head}.{x}") for head in heads for x in "qkv" for s in before}
        before += heads
        if not attn_only:
            edges |= {Edge(s, f"MLP{layer}") for s in before}
            before.append(f"MLP{layer}")
    edges |= {Edge(s, "logits") for s in before}
    return frozenset(edges)


class _SyntheticScore:
    """A made-up score of the model with the edges ``patched``:
    1 − Σ w_e over the patched edges + Σ u_ef over the pairs of patched edges that interact.

    Weights come in three sizes relative to `scale` (large, small, about zero, of either
    sign), so that small effects add up, some removals raise the score, and pairs of edges
    matter together but not alone. Like ``PatchedMetric``, it accepts any iterable of edges.
    """

    def __init__(self, gen: torch.Generator, edges: Iterable[Edge], scale: float, pairs_per_edge: float = 0.5):
        self.edges = frozenset(edges)
        ordered = sorted(self.edges)
        self.w: dict[Edge, float] = {}
        for e in ordered:
            kind, sign = _randint(gen, 0, 9), 1.0 if _randint(gen, 0, 3) else -1.0
            if kind < 3:  # large
                self.w[e] = sign * _uniform(gen, 2.0, 5.0) * scale
            elif kind < 7:  # small, mostly positive: several of them add up past the threshold
                self.w[e] = sign * _uniform(gen, 0.2, 0.6) * scale
            else:  # about zero
                self.w[e] = _uniform(gen, -0.1, 0.1) * scale
        self.u: dict[tuple[Edge, Edge], float] = {}
        for _ in range(max(1, round(pairs_per_edge * len(ordered)))):
            e, f = _choice(gen, ordered), _choice(gen, ordered)
            if e != f:
                sign = 1.0 if _randint(gen, 0, 1) else -1.0
                self.u[min(e, f), max(e, f)] = sign * _uniform(gen, 1.5, 4.0) * scale

    def quantise(self, steps: int) -> None:
        """Round every weight to a multiple of 1 / steps, so that the score's sums are exact."""
        self.w = {e: round(w * steps) / steps for e, w in self.w.items()}
        self.u = {pair: round(u * steps) / steps for pair, u in self.u.items()}

    def __call__(self, patched: Iterable[Edge]) -> float:
        patched = set(patched)
        unknown = patched - self.edges
        if unknown:
            raise ValueError(f"score got edges that are not in the graph: {sorted(map(repr, unknown))[:3]}.")
        value = 1.0 - sum(self.w[e] for e in sorted(patched))
        return value + sum(u for (e, f), u in sorted(self.u.items()) if e in patched and f in patched)

    def __repr__(self) -> str:
        return f"<score of {len(self.edges)} edges>"


# 04.1 ---------------------------------------------------------------------------------


def _patch_edge(model, clean_tokens, corrupted_tokens, sender, receiver) -> Tensor:
    with torch.no_grad():
        return run_with_edges_patched(model, clean_tokens, corrupted_tokens, [Edge(sender, receiver)])


def _by_hand(model, clean_tokens, corrupted_tokens, sender, receiver, *, mode: str = "add", every_head: bool = False) -> Tensor:
    """Patch by hand with a hook on ``hook_{q,k,v}_input``; `mode` is "add" (corrupted − clean),
    "subtract" (clean − corrupted) or "replace" (the slice becomes the corrupted output)."""
    node, kind = receiver.split(".")
    layer, head = (int(x) for x in node[1:].split("H"))
    index = senders(model).index(sender)
    clean_out = sender_outputs(model, clean_tokens)[index]
    corrupted_out = sender_outputs(model, corrupted_tokens)[index]
    heads = slice(None) if every_head else slice(head, head + 1)

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        if mode == "replace":
            act[:, :, heads] = corrupted_out[:, :, None]
        else:
            delta = corrupted_out - clean_out if mode == "add" else clean_out - corrupted_out
            act[:, :, heads] = act[:, :, heads] + delta[:, :, None]
        return act

    with edge_patching_hooks(model), torch.no_grad():
        return model.run_with_hooks(clean_tokens, fwd_hooks=[(f"blocks.{layer}.hook_{kind}_input", hook)])


_PATCH_EDGE_MISTAKES: dict[str, Callable] = {
    "your logits are the clean run's: the hook never changed anything. Hook `blocks.{l}.hook_{kind}_input` "
    "(e.g. blocks.1.hook_k_input) and run the model inside `with edge_patching_hooks(model):`, which switches these hook points on.": lambda model, clean_tokens, corrupted_tokens, sender, receiver: model(clean_tokens),
    "you added the difference to every head of that layer: add it to head h's slice only, act[:, :, h].": lambda **case: _by_hand(**case, every_head=True),
    "you replaced head h's input by the sender's corrupted output: the input is a sum over all senders, "
    "so add (corrupted − clean) to swap only this sender's part and keep the rest.": lambda **case: _by_hand(**case, mode="replace"),
    "you added clean − corrupted: the sign is flipped. Patching swaps the sender's clean contribution for its corrupted one, so add corrupted − clean.": lambda **case: _by_hand(**case, mode="subtract"),
    "you patched the sender node, which changes every edge out of it: only the receiver's input should see the corrupted output; "
    "every other receiver keeps the sender's clean output.": lambda model, clean_tokens, corrupted_tokens, sender, receiver: run_with_edges_patched(
        model, clean_tokens, corrupted_tokens, knock_out({sender}, graph(model).edges)
    ),
}


def _one_kind(kind: str) -> Callable:
    """Patches the head's `kind` input (q, k or v), whatever the receiver's kind."""

    def wrong(model, clean_tokens, corrupted_tokens, sender, receiver):
        return _patch_edge(model, clean_tokens, corrupted_tokens, sender, f"{receiver.split('.')[0]}.{kind}")

    return wrong


_ONE_KIND_MISTAKES: dict[str, Callable] = {
    f"you always patched the head's {kind} input: the receiver's last letter says which input to patch "
    f"(blocks.{{l}}.hook_{{kind}}_input with kind = receiver.split('.')[1], q, k or v).": _one_kind(kind)
    for kind in "qkv"
}
_PATCH_EDGE_MISTAKES.update(_ONE_KIND_MISTAKES)


def _patch_edge_case(gen: torch.Generator, *, attn_only: bool, kind: str) -> dict[str, Any]:
    """A random model, tokens and edge into a layer-1 head's `kind` input whose mistakes all differ
    (patching another kind of the same head's input included)."""
    for _ in range(_TRIES):
        model = _random_model(gen, attn_only=attn_only)
        clean, corrupted = _random_tokens(gen, model)
        edges = sorted(e for e in graph(model).edges if e.receiver.endswith(f".{kind}") and not e.receiver.startswith("L0"))
        edge = _choice(gen, edges)
        case = dict(model=model, clean_tokens=clean, corrupted_tokens=corrupted, sender=edge.sender, receiver=edge.receiver)
        wrongs = [wrong for wrong in _PATCH_EDGE_MISTAKES.values() if wrong is not _ONE_KIND_MISTAKES_BY_KIND[kind]]
        answers = [_patch_edge(**case)] + [wrong(**case) for wrong in wrongs]
        if _distinct(answers):
            return case
    raise RuntimeError("could not draw a fresh case for 04.1")


_ONE_KIND_MISTAKES_BY_KIND = dict(zip("qkv", _ONE_KIND_MISTAKES.values()))


def check_patch_edge(
    learner: Callable,
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    sender: str,
    receiver: str,
) -> None:
    """``patch_edge(model, clean_tokens, corrupted_tokens, sender, receiver)``: the logits
    ``[batch, pos, d_vocab]`` on the clean tokens with the one edge sender -> receiver patched,
    where `sender` is "embed", "L{l}H{h}" or "MLP{l}" and `receiver` is "L{l}H{h}.q", ".k" or ".v"."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(model=model, clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, sender=sender, receiver=receiver)]
    kinds = ["q", "k", "v"]
    order = torch.randperm(3, generator=gen).tolist()  # every kind of head input, in a random order
    cases += [_patch_edge_case(gen, attn_only=i != 1, kind=kinds[j]) for i, j in enumerate(order)]
    check_function(
        "04.1",
        lambda model, clean_tokens, corrupted_tokens, sender, receiver: learner(model, clean_tokens, corrupted_tokens, sender, receiver),
        _patch_edge,
        cases,
        mistakes=_PATCH_EDGE_MISTAKES,
        hint="inside `with edge_patching_hooks(model):`, hook blocks.{l}.hook_{kind}_input and add "
        "(sender's corrupted output − sender's clean output) to head h's slice act[:, :, h].",
        success="one edge patched",
    )


# 04.2 ---------------------------------------------------------------------------------


def _metric_with(model, clean_tokens, corrupted_tokens, metric, patched) -> float:
    with torch.no_grad():
        return float(metric_value(metric, run_with_edges_patched(model, clean_tokens, corrupted_tokens, patched)))


def _ends(model, clean_tokens, corrupted_tokens, metric) -> tuple[float, float]:
    with torch.no_grad():
        return float(metric_value(metric, model(clean_tokens))), float(metric_value(metric, model(corrupted_tokens)))


def _raw_faithfulness(model, circuit, clean_tokens, corrupted_tokens, metric) -> float:
    return _metric_with(model, clean_tokens, corrupted_tokens, metric, graph(model).edges - circuit.edges)


def _circuit_patched(model, circuit, clean_tokens, corrupted_tokens, metric) -> float:
    clean, corrupted = _ends(model, clean_tokens, corrupted_tokens, metric)
    return (_metric_with(model, clean_tokens, corrupted_tokens, metric, circuit.edges) - corrupted) / (clean - corrupted)


def _over_clean(model, circuit, clean_tokens, corrupted_tokens, metric) -> float:
    clean, _ = _ends(model, clean_tokens, corrupted_tokens, metric)
    return _raw_faithfulness(model, circuit, clean_tokens, corrupted_tokens, metric) / clean


_FAITHFULNESS_MISTAKES: dict[str, Callable] = {
    "you patched the circuit's edges: patch every edge OUTSIDE the circuit, graph(model).edges − circuit.edges, and keep the circuit's edges clean.": _circuit_patched,
    "you returned the raw metric: normalise it, (patched − corrupted) / (clean − corrupted), so that the clean model scores 1 and the corrupted one 0.": _raw_faithfulness,
    "you divided by the clean metric only: subtract the corrupted model's metric first, (patched − corrupted) / (clean − corrupted).": _over_clean,
}


def _logit_diff(a: int, b: int) -> Callable[[Tensor], Tensor]:
    def metric(logits: Tensor) -> Tensor:
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    return metric


def _faithfulness_case(gen: torch.Generator, *, attn_only: bool) -> dict[str, Any]:
    for _ in range(_TRIES):
        model = _random_model(gen, attn_only=attn_only)
        clean_tokens, corrupted_tokens = _random_tokens(gen, model)
        a = _randint(gen, 0, model.cfg.d_vocab - 1)
        b = (a + _randint(gen, 1, model.cfg.d_vocab - 1)) % model.cfg.d_vocab
        metric = _logit_diff(a, b)
        clean, corrupted = _ends(model, clean_tokens, corrupted_tokens, metric)
        if abs(clean - corrupted) < 0.2:  # a well-defined normalisation
            continue
        circuit = Circuit.from_edges(_subset(gen, graph(model).edges, _uniform(gen, 0.3, 0.8)))
        case = dict(model=model, circuit=circuit, clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, metric=metric)
        answers = [faithfulness(**case)] + [wrong(**case) for wrong in _FAITHFULNESS_MISTAKES.values()]
        if _distinct(answers, 1e-2):
            return case
    raise RuntimeError("could not draw a fresh case for 04.2")


def check_faithfulness(
    learner: Callable,
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
) -> None:
    """``circuit_faithfulness(model, circuit, clean_tokens, corrupted_tokens, metric)``: the metric with
    every edge outside `circuit` patched, normalised to clean = 1 and corrupted = 0 (a float)."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(model=model, circuit=circuit, clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, metric=metric)]
    cases += [_faithfulness_case(gen, attn_only=True), _faithfulness_case(gen, attn_only=False)]
    check_function(
        "04.2",
        lambda model, circuit, clean_tokens, corrupted_tokens, metric: learner(model, circuit, clean_tokens, corrupted_tokens, metric),
        faithfulness,
        cases,
        mistakes=_FAITHFULNESS_MISTAKES,
        hint="patch graph(model).edges − circuit.edges with run_with_edges_patched, take the metric, "
        "and normalise: (patched − corrupted) / (clean − corrupted).",
        success="the circuit's faithfulness",
    )


# 04.3 ---------------------------------------------------------------------------------


def _greedy(edges, score, threshold) -> frozenset:
    return frozenset(greedy_prune(list(edges), score, threshold)[0])


def _against_full_model(edges, score, threshold) -> frozenset:
    removed: set = set()
    full = score(frozenset())
    for edge in edges:
        if abs(score(removed | {edge}) - full) < threshold:
            removed.add(edge)
    return frozenset(removed)


def _signed(edges, score, threshold) -> frozenset:
    removed: set = set()
    current = score(frozenset())
    for edge in edges:
        trial = score(removed | {edge})
        if current - trial < threshold:
            removed.add(edge)
            current = trial
    return frozenset(removed)


def _each_alone(edges, score, threshold) -> frozenset:
    full = score(frozenset())
    return frozenset(edge for edge in edges if abs(score({edge}) - full) < threshold)


_GREEDY_MISTAKES: dict[str, Callable] = {
    "you compared each trial with the full model's score, score(∅): compare it with the current score, "
    "after the removals so far, and update the current score whenever you remove an edge.": _against_full_model,
    "you removed every edge whose removal raises the score: that is the one-sided rule, which section 4 compares later. "
    "Here implement the absolute rule: remove an edge only when |trial − current| < threshold.": _signed,
    "you tested each edge alone, score({edge}) against score(∅): ACDC removes edges one after another, "
    "so test score(removed ∪ {edge}) against the current score.": _each_alone,
    "you returned the edges that were kept: return the set of REMOVED edges.": lambda edges, score, threshold: frozenset(edges) - _greedy(edges, score, threshold),
}


def _at_threshold(edges, score, threshold) -> frozenset:
    """Removes an edge also when its change equals the threshold (<= instead of <)."""
    removed: set = set()
    current = score(frozenset())
    for edge in edges:
        trial = score(removed | {edge})
        if abs(trial - current) <= threshold:
            removed.add(edge)
            current = trial
    return frozenset(removed)


_GREEDY_MISTAKES["a change exactly equal to the threshold keeps the edge: remove it only when |trial − current| < threshold (strictly)."] = _at_threshold


def _greedy_case(gen: torch.Generator) -> dict[str, Any]:
    """A random ordered edge list and a made-up score in which one edge's removal changes the score by
    exactly the threshold (weights are multiples of 2^-12, so the sums are exact), whose mistakes all differ."""
    for _ in range(_TRIES):
        all_edges = sorted(_fake_graph(gen))
        order = torch.randperm(len(all_edges), generator=gen)[: _randint(gen, 12, 20)].tolist()
        edges = [all_edges[i] for i in order]
        threshold = _randint(gen, 205, 615) / 4096  # about 0.05 to 0.15
        score = _SyntheticScore(gen, edges, threshold)
        score.quantise(4096)
        boundary = edges[_randint(gen, 0, len(edges) - 1)]
        score.u = {pair: u for pair, u in score.u.items() if boundary not in pair}
        score.w[boundary] = threshold if _randint(gen, 0, 1) else -threshold
        case = dict(edges=edges, score=score, threshold=threshold)
        answers = [_greedy(**case)] + [wrong(**case) for wrong in _GREEDY_MISTAKES.values()]
        if _distinct(answers):
            return case
    raise RuntimeError("could not draw a fresh case for 04.3")


def _as_edge_set(result: Any) -> Any:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], (set, frozenset)):
        raise CheckFailed("04.3", "return only the set of removed edges, not a tuple.")
    return frozenset(result) if isinstance(result, (set, frozenset, list)) else result


def check_greedy_prune(learner: Callable, edges: Sequence[Edge], score: Callable, threshold: float) -> None:
    """``greedy_prune(edges, score, threshold)``: the set of edges removed by trying each edge of
    `edges` in order and keeping it removed when |score(removed ∪ {edge}) − current| < threshold."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(edges=list(edges), score=score, threshold=threshold)] + [_greedy_case(gen) for _ in range(3)]
    check_function(
        "04.3",
        lambda edges, score, threshold: _as_edge_set(learner(list(edges), score, threshold)),
        _greedy,
        cases,
        mistakes=_GREEDY_MISTAKES,
        hint="start with removed = ∅ and current = score(removed); for each edge in order, trial = score(removed ∪ {edge}); "
        "if |trial − current| < threshold, add the edge to removed and set current = trial. Return removed.",
        success="the greedy pruning step of ACDC",
    )


# 04.4 ---------------------------------------------------------------------------------


def _heads(circuit: Circuit) -> set[str]:
    return {n for n in circuit.nodes if n not in ("embed", "logits") and not n.startswith("MLP")}


def check_rule_prediction(
    prediction: Any, model: HookedTransformer, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Callable, threshold: float
) -> None:
    """The heads in the circuit that ACDC finds with the absolute rule but not with the one-sided
    rule, predicted before the run; graded by running both searches on the model at hand."""
    absolute = acdc(model, clean_tokens, corrupted_tokens, metric, threshold, progress=False)
    one_sided = acdc(model, clean_tokens, corrupted_tokens, metric, threshold, rule="one-sided", progress=False)
    truth = _heads(absolute.circuit) - _heads(one_sided.circuit)
    heads = [n for n in senders(model) if n != "embed" and not n.startswith("MLP")]
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed("04.4", "set prediction to a set of head names, e.g. an empty set if you think the rules agree.")
    if isinstance(prediction, str) or not isinstance(prediction, (set, frozenset, list, tuple)):
        raise CheckFailed("04.4", f"prediction should be a set of head names such as {{'{heads[0]}'}}, got {type(prediction).__name__}.")
    unknown = sorted(str(h) for h in prediction if h not in heads)
    if unknown:
        raise CheckFailed("04.4", f"{unknown} are not heads of this model; its heads are {heads}.")
    prediction = set(prediction)
    if prediction != truth:
        missing, extra = truth - prediction, prediction - truth
        parts = []
        if missing:
            parts.append(
                "a head is missing from your set: the rules disagree only on a removal that RAISES the metric. "
                "Which head's output works against the correct letter, so that the metric rises without it?"
            )
        if extra:
            parts.append(
                f"{sorted(extra)}: the rules agree on every removal that lowers the metric or leaves it unchanged, "
                "so a head whose removal never raises the metric ends up in both circuits or in neither."
            )
        raise CheckFailed("04.4", " ".join(parts))
    passed("04.4", f"the rules disagree on {sorted(truth)} (both searches run on this model)")


# 04.5 ---------------------------------------------------------------------------------


def _helper_change(edge, circuit, all_edges, score, max_helpers) -> float:
    return helper_search(edge, frozenset(circuit), frozenset(all_edges), score, max_helpers)[1]


def _greedy_helpers(change: Callable, edge, circuit, max_helpers: int, *, stop: bool = True) -> float:
    """The greedy helper search around `change(helpers)`; without `stop` it goes on adding edges
    when none helps and returns the change at the last step."""
    helpers: frozenset = frozenset()
    best = last = change(helpers)
    for _ in range(max_helpers):
        candidates = sorted(frozenset(circuit) - helpers - {edge})
        if not candidates:
            break
        value, extra = max(((change(helpers | {e}), e) for e in candidates), key=lambda pair: pair[0])
        if stop and value <= best:
            break
        helpers, last, best = helpers | {extra}, value, max(best, value)
    return best if stop else last


def _leave_one_out(edge, circuit, all_edges, score, max_helpers) -> float:
    return _helper_change(edge, circuit, all_edges, score, 0)


def _in_full_model(edge, circuit, all_edges, score, max_helpers) -> float:
    return _greedy_helpers(lambda k: abs(score(k) - score(k | {edge})), edge, circuit, max_helpers)


def _signed_change(edge, circuit, all_edges, score, max_helpers) -> float:
    outside = frozenset(all_edges) - frozenset(circuit)
    return _greedy_helpers(lambda k: score(outside | k) - score(outside | k | {edge}), edge, circuit, max_helpers)


def _never_stops(edge, circuit, all_edges, score, max_helpers) -> float:
    outside = frozenset(all_edges) - frozenset(circuit)
    return _greedy_helpers(lambda k: abs(score(outside | k) - score(outside | k | {edge})), edge, circuit, max_helpers, stop=False)


def _one_helper(edge, circuit, all_edges, score, max_helpers) -> float:
    return _helper_change(edge, circuit, all_edges, score, min(max_helpers, 1))


_HELPER_MISTAKES: dict[str, Callable] = {
    "you returned the leave-one-out change (K = ∅) only: add helper edges of the circuit to K one at a time, "
    "each time the one that makes the change largest.": _leave_one_out,
    "you measured the changes in the full model: the circuit's faithfulness patches every edge OUTSIDE the circuit as well, "
    "F(C \\ K) = score((all_edges − C) ∪ K) and F(C \\ (K ∪ {v})) = score((all_edges − C) ∪ K ∪ {v}).": _in_full_model,
    "you used the signed change: Wang et al. ask whether removing v changes F a lot, in either direction; take |F(C \\ K) − F(C \\ (K ∪ {v}))|.": _signed_change,
    "your search goes on when no edge makes the change larger, and returns the last change: stop as soon as the best "
    "new helper does not raise the change, and return the largest change found.": _never_stops,
    "you stopped after one helper: keep adding helpers (up to max_helpers) while the change keeps growing.": _one_helper,
}


def _helper_case(gen: torch.Generator, sign: float) -> dict[str, Any]:
    """A made-up graph and score, and a circuit of four edges: the edge v and three others. Removing
    v alone changes the score a little; on top of h1 more, on top of h1 and h2 more still; h3
    works the other way. One edge outside the circuit interacts with v too. With `sign` -1 every
    change is negative, so that the signed and the absolute change pick different helpers."""
    for _ in range(_TRIES):
        all_edges = sorted(_fake_graph(gen))
        picks = torch.randperm(len(all_edges), generator=gen)[:5].tolist()
        v, h1, h2, h3, outside = (all_edges[i] for i in picks)
        score = _SyntheticScore(gen, all_edges, 0.05, pairs_per_edge=0.3)
        score.u = {pair: u for pair, u in score.u.items() if v not in pair}
        score.w[v] = sign * _uniform(gen, 0.04, 0.06)
        for other, value in [(h1, -_uniform(gen, 0.25, 0.4)), (h2, -_uniform(gen, 0.1, 0.2)), (h3, _uniform(gen, 0.1, 0.2))]:
            score.u[min(v, other), max(v, other)] = sign * value
        score.u[min(v, outside), max(v, outside)] = _uniform(gen, 0.01, 0.03) * (1.0 if _randint(gen, 0, 1) else -1.0)
        case = dict(edge=v, circuit={v, h1, h2, h3}, all_edges=set(all_edges), score=score, max_helpers=3)
        # with positive changes the signed mistake gives the right answer; the negative cases catch it
        answers = [_helper_change(**case)] + [wrong(**case) for wrong in _HELPER_MISTAKES.values() if sign < 0 or wrong is not _signed_change]
        if _distinct(answers):
            return case
    raise RuntimeError("could not draw a fresh case for 04.5")


def check_helper_search(learner: Callable, circuit: set[Edge], all_edges: set[Edge], score: Callable, edges: Iterable[Edge], max_helpers: int = 1) -> None:
    """``minimality_with_helpers(edge, circuit, all_edges, score, max_helpers)``: Wang et al.'s
    minimality of one edge v, the largest |F(C \\ K) − F(C \\ (K ∪ {v}))| found by the greedy
    search for a helper set K (see ``mi_course.circuits.helper_search``); a float."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(edge=e, circuit=set(circuit), all_edges=set(all_edges), score=score, max_helpers=max_helpers) for e in edges]
    cases += [_helper_case(gen, sign) for sign in (-1.0, 1.0, -1.0)]

    def call(edge, circuit, all_edges, score, max_helpers):
        result = learner(edge, set(circuit), set(all_edges), score, max_helpers)
        if isinstance(result, tuple) and len(result) == 2:
            raise CheckFailed("04.5", "return only the largest change (a number), not the helper set with it.")
        return result

    check_function(
        "04.5",
        call,
        _helper_change,
        cases,
        mistakes=_HELPER_MISTAKES,
        hint="outside = all_edges − circuit; change(K) = |score(outside ∪ K) − score(outside ∪ K ∪ {edge})|. Start with K = ∅; "
        "at each step try every other circuit edge w, keep the one with the largest change(K ∪ {w}), stop when it is not larger "
        "than the best so far or after max_helpers steps; return the best change.",
        success="Wang et al.'s minimality with a greedy helper search",
    )


# 04.6 ---------------------------------------------------------------------------------


def check_knockout_design(knocked_out: Any, model: HookedTransformer, circuit: Circuit, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Callable) -> None:
    """A set of nodes K whose knockout shows that `circuit` is incomplete: the circuit and the
    model respond differently, |F(C \\ K) − F(M \\ K)| > 0.5, graded by running the knockout."""
    names = [n for n in senders(model)]
    if knocked_out is None or knocked_out is Ellipsis:
        raise CheckFailed("04.6", "set knocked_out to a set of node names to knock out.")
    if isinstance(knocked_out, str) or not isinstance(knocked_out, (set, frozenset, list, tuple)):
        raise CheckFailed("04.6", f"knocked_out should be a set of node names such as {{'{names[1]}'}}, got {type(knocked_out).__name__}.")
    unknown = sorted(str(n) for n in knocked_out if n not in names)
    if unknown:
        raise CheckFailed("04.6", f"{unknown} cannot be knocked out: the nodes are {names} (the logits send nothing).")
    nodes = frozenset(knocked_out)
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    result = knockout(circuit.edges, score.edges, nodes, score)
    if not nodes:
        raise CheckFailed("04.6", f"with nothing knocked out the gap is 1 − faithfulness, {result.gap:.2f} here: knock something out.")
    if result.gap > 0.5:
        passed("04.6", f"knocking out {sorted(nodes)} gives the circuit {result.circuit:.2f} and the model {result.model:.2f}: the circuit is incomplete")
        return
    if result.model < 0.5:  # the model lost the behaviour (0) or worse
        raise CheckFailed("04.6", f"this knockout removes the behaviour from the model too (F(M \\ K) = {result.model:.2f}, F(C \\ K) = {result.circuit:.2f}): "
                          "the model had no spare for what you knocked out. Knock out something the model can do without.")
    raise CheckFailed("04.6", f"the circuit and the model respond alike (F(C \\ K) = {result.circuit:.2f}, F(M \\ K) = {result.model:.2f}): "
                      "knock out a component of the circuit whose job the model can also do in another way.")
