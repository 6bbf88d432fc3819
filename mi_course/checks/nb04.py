"""Checks of notebook 04 (edge patching and circuit discovery).

Each check runs the learner's code on the notebook's example and on fresh random inputs:
tiny random models (one attention-only, one with MLPs) with random clean and corrupted
tokens, random edges and random circuits of their graph, or made-up graphs with a made-up
score of each set of patched edges (``_SyntheticScore``), chosen so that every typical
mistake gives a different answer from the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.checks.core import CheckFailed, check_function, close, fresh_seed, register_plain
from mi_course.circuits import (
    Circuit,
    Edge,
    edge_drops,
    edge_patching_hooks,
    faithfulness,
    graph,
    greedy_prune,
    knock_out,
    knockout,
    receiver_node,
    run_with_edges_patched,
    sender_outputs,
    senders,
)
from mi_course.patching import metric_value

__all__ = [
    "check_faithfulness",
    "check_greedy_prune",
    "check_incompleteness",
    "check_minimality",
    "check_patch_edge",
    "check_roc_point",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "04.1": ("mi_course.circuits.run_with_edges_patched",),
    "04.2": ("mi_course.circuits.faithfulness",),
    "04.3": ("mi_course.circuits.greedy_prune", "mi_course.circuits.acdc"),
    "04.5": ("mi_course.circuits.edge_drops", "mi_course.circuits.minimality"),
    "04.6": ("mi_course.circuits.knockout", "mi_course.circuits.completeness"),
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
    "you used the signed change: an edge whose removal raises the score a lot matters too. Remove an edge only when |trial − current| < threshold.": _signed,
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


def _roc_point(found, truth, all_edges) -> tuple[float, float]:
    found, truth, all_edges = set(found), set(truth), set(all_edges)
    return len(found - truth) / len(all_edges - truth), len(found & truth) / len(truth)


_ROC_MISTAKES: dict[str, Callable] = {
    "you returned (tpr, fpr): return the false positive rate first, (fpr, tpr), the x and y of an ROC curve.": lambda found, truth, all_edges: _roc_point(found, truth, all_edges)[::-1],
    "you divided the false positives by all edges: the false positive rate divides by the number of negatives, |all_edges − truth|.": lambda found, truth, all_edges: (
        len(set(found) - set(truth)) / len(set(all_edges)),
        _roc_point(found, truth, all_edges)[1],
    ),
    "you divided the false positives by |found|: that is 1 − precision. The false positive rate divides by the number of negatives, |all_edges − truth|.": lambda found, truth, all_edges: (
        len(set(found) - set(truth)) / len(set(found)),
        _roc_point(found, truth, all_edges)[1],
    ),
}


def _roc_case(gen: torch.Generator) -> dict[str, Any]:
    for _ in range(_TRIES):
        all_edges = _fake_graph(gen)
        truth = _subset(gen, all_edges, _uniform(gen, 0.1, 0.3))
        found = _subset(gen, truth, _uniform(gen, 0.3, 0.9)) | _subset(gen, all_edges - truth, _uniform(gen, 0.05, 0.3))
        if not truth or not found:
            continue
        case = dict(found=found, truth=truth, all_edges=set(all_edges))
        answers = [_roc_point(**case)] + [wrong(**case) for wrong in _ROC_MISTAKES.values()]
        if _distinct(answers):
            return case
    raise RuntimeError("could not draw a fresh case for 04.4")


def check_roc_point(learner: Callable, found: set, truth: set, all_edges: set) -> None:
    """``roc_point(found, truth, all_edges)``: ``(fpr, tpr)`` of the found edges against the true circuit's."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(found=set(found), truth=set(truth), all_edges=set(all_edges))] + [_roc_case(gen) for _ in range(3)]
    check_function(
        "04.4",
        lambda found, truth, all_edges: learner(set(found), set(truth), set(all_edges)),
        _roc_point,
        cases,
        mistakes=_ROC_MISTAKES,
        hint="tpr = |found ∩ truth| / |truth|, fpr = |found − truth| / |all_edges − truth|; return (fpr, tpr).",
        success="a point of the ROC curve",
    )


# 04.5 ---------------------------------------------------------------------------------


def _drops(circuit, all_edges, score) -> dict:
    return edge_drops(frozenset(circuit), frozenset(all_edges), score)


def _in_full_model(circuit, all_edges, score) -> dict:
    full = score(frozenset())
    return {e: full - score(frozenset({e})) for e in circuit}


def _circuit_patched_drops(circuit, all_edges, score) -> dict:
    circuit = frozenset(circuit)
    return {e: score(circuit) - score(circuit - {e}) for e in circuit}


def _without_edge(circuit, all_edges, score) -> dict:
    rest = frozenset(all_edges) - frozenset(circuit)
    return {e: score(rest | {e}) for e in circuit}


_MINIMALITY_MISTAKES: dict[str, Callable] = {
    "you measured each edge in the full model, score(∅) − score({e}): that is the edge's effect in the full model, not in the circuit. "
    "Compare F(C) = score(all_edges − C) with F(C \\ {e}) = score((all_edges − C) ∪ {e}).": _in_full_model,
    "the sign is flipped: return F(C) − F(C \\ {e}), positive when the circuit does worse without the edge.": lambda circuit, all_edges, score: {e: -v for e, v in _drops(circuit, all_edges, score).items()},
    "you returned F(C \\ {e}) itself: subtract it from the circuit's own score, F(C) − F(C \\ {e}).": _without_edge,
    "you patched the circuit's edges: the circuit's score F(C) patches every edge OUTSIDE it, score(all_edges − C).": _circuit_patched_drops,
}


def _minimality_case(gen: torch.Generator) -> dict[str, Any]:
    for _ in range(_TRIES):
        all_edges = _fake_graph(gen)
        circuit = _subset(gen, all_edges, _uniform(gen, 0.1, 0.3))
        if len(circuit) < 3:
            continue
        case = dict(circuit=circuit, all_edges=set(all_edges), score=_SyntheticScore(gen, all_edges, 0.05, pairs_per_edge=1.0))
        answers = [_drops(**case)] + [wrong(**case) for wrong in _MINIMALITY_MISTAKES.values()]
        if _distinct(answers):
            return case
    raise RuntimeError("could not draw a fresh case for 04.5")


def check_minimality(learner: Callable, circuit: set[Edge], all_edges: set[Edge], score: Callable) -> None:
    """``minimality_scores(circuit, all_edges, score)``: for each edge e of the circuit,
    F(C) − F(C \\ {e}), where F(C) = score(all_edges − C); a dict from edge to float."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(circuit=set(circuit), all_edges=set(all_edges), score=score)] + [_minimality_case(gen) for _ in range(3)]

    def call(circuit, all_edges, score):
        return learner(set(circuit), set(all_edges), score)  # values may be floats or 0-d tensors

    check_function(
        "04.5",
        call,
        _drops,
        cases,
        mistakes=_MINIMALITY_MISTAKES,
        hint="for each edge e of the circuit, score(all_edges − C) − score((all_edges − C) ∪ {e}); return a dict {edge: drop}.",
        success="the minimality score of every edge",
    )


# 04.6 ---------------------------------------------------------------------------------


def _gap(circuit, all_edges, nodes, score) -> float:
    return knockout(frozenset(circuit), frozenset(all_edges), nodes, score).gap


def _signed_gap(circuit, all_edges, nodes, score) -> float:
    k = knockout(frozenset(circuit), frozenset(all_edges), nodes, score)
    return k.circuit - k.model


def _against_intact(circuit, all_edges, nodes, score) -> float:
    return abs(knockout(frozenset(circuit), frozenset(all_edges), nodes, score).circuit - score(frozenset()))


def _into_nodes(circuit, all_edges, nodes, score) -> float:
    knocked = frozenset(e for e in all_edges if receiver_node(e.receiver) in set(nodes))
    return abs(score(frozenset(all_edges) - frozenset(circuit) | knocked) - score(knocked))


_INCOMPLETENESS_MISTAKES: dict[str, Callable] = {
    "you compared with the intact model, score(∅): knock the same nodes out of the full model too, F(M \\ K) = score(knocked).": _against_intact,
    "you knocked out the edges INTO the nodes: a node is knocked out by patching every edge it SENDS (edge.sender in nodes).": _into_nodes,
    "you returned a signed difference: take the absolute value, |F(C \\ K) − F(M \\ K)|.": _signed_gap,
    "you returned F(M \\ K) − F(C \\ K), a signed difference: take the absolute value, |F(C \\ K) − F(M \\ K)|.": lambda **case: -_signed_gap(**case),
}


def _incompleteness_case(gen: torch.Generator, sign: float) -> dict[str, Any]:
    """A random case whose signed difference F(C \\ K) − F(M \\ K) has the sign `sign`."""
    for _ in range(_TRIES):
        all_edges = _fake_graph(gen)
        circuit = _subset(gen, all_edges, _uniform(gen, 0.2, 0.5))
        sending = sorted({e.sender for e in circuit})
        if not sending:
            continue
        nodes = {_choice(gen, sending) for _ in range(_randint(gen, 1, 2))}
        case = dict(circuit=circuit, all_edges=set(all_edges), nodes=nodes, score=_SyntheticScore(gen, all_edges, 0.05, pairs_per_edge=1.0))
        answers = [_gap(**case)] + [wrong(**case) for wrong in list(_INCOMPLETENESS_MISTAKES.values())[:2]]
        if _signed_gap(**case) * sign > 1e-3 and _distinct(answers):
            return case
    raise RuntimeError("could not draw a fresh case for 04.6")


def check_incompleteness(learner: Callable, circuit: set[Edge], all_edges: set[Edge], nodes: set[str], score: Callable) -> None:
    """``incompleteness(circuit, all_edges, nodes, score)``: |F(C \\ K) − F(M \\ K)| with the nodes K
    knocked out (every edge they send patched) of the circuit and of the full model (a float)."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(circuit=set(circuit), all_edges=set(all_edges), nodes=set(nodes), score=score)]
    cases += [_incompleteness_case(gen, -1.0), _incompleteness_case(gen, 1.0), _incompleteness_case(gen, -1.0)]
    check_function(
        "04.6",
        lambda circuit, all_edges, nodes, score: learner(set(circuit), set(all_edges), set(nodes), score),
        _gap,
        cases,
        mistakes=_INCOMPLETENESS_MISTAKES,
        hint="knocked = the edges whose sender is in `nodes`; return |score((all_edges − circuit) ∪ knocked) − score(knocked)|.",
        success="the incompleteness score of one knockout",
    )
