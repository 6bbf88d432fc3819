"""The computational graph of a transformer, circuits as subgraphs, and edge patching.

Every component reads the residual stream, the sum of the outputs of the components before
it, and adds its own output to it. So the graph has

- nodes (senders): ``"embed"`` (token + positional embedding), ``"L{l}H{h}"`` (attention
  head h of layer l), ``"MLP{l}"``, and the final ``"logits"``;
- receiver inputs: ``"L{l}H{h}.q"``, ``".k"``, ``".v"`` (a head reads the residual stream
  three times), ``"MLP{l}"`` and ``"logits"``;
- an edge from every sender to every receiver input that comes after it (heads of one layer
  run in parallel, so they do not feed each other; an MLP reads the heads of its own layer).

Patching an edge A -> B replaces A's contribution to B's input by A's output on the
corrupted prompt, and nothing else: B's input becomes its input in this run, minus A's
output in this run, plus A's corrupted output. Biases (attention b_O, LayerNorm) are not
senders and stay as they are. Edges that are kept carry the sender's output in the patched
run, so a corrupted edge upstream still reaches the logits through kept edges (as in ACDC).
"""

from __future__ import annotations

import re
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mi_course.patching import Metric, check_tokens, metric_value

__all__ = [
    "Circuit",
    "Edge",
    "GreedySearch",
    "Knockout",
    "PatchedMetric",
    "acdc",
    "acdc_order",
    "completeness",
    "edge_drops",
    "edge_patching_hooks",
    "faithfulness",
    "greedy_prune",
    "helper_search",
    "kl_to_clean",
    "knock_out",
    "knockout",
    "minimality",
    "graph",
    "receiver_node",
    "run_path_patched",
    "run_with_edges_patched",
    "sender_outputs",
    "senders",
    "wang_minimality",
]

_HEAD = re.compile(r"L(\d+)H(\d+)")
_MLP = re.compile(r"MLP(\d+)")


def receiver_node(receiver: str) -> str:
    """The node a receiver input belongs to: ``"L1H0.k"`` -> ``"L1H0"``; ``"MLP0"`` -> ``"MLP0"``."""
    return receiver.split(".")[0]


def _sort_key(name: str) -> tuple[int, int, int, str]:
    """Order nodes and receivers as the forward pass computes them."""
    node, _, part = name.partition(".")
    if node == "embed":
        return (-1, 0, 0, part)
    if node == "logits":
        return (10**9, 0, 0, part)
    if m := _HEAD.fullmatch(node):
        return (int(m[1]), 0, int(m[2]), part)
    if m := _MLP.fullmatch(node):
        return (int(m[1]), 1, 0, part)
    return (10**9 + 1, 0, 0, name)


@dataclass(frozen=True, order=True)
class Edge:
    """A connection from a sender node to a receiver input, e.g. ``Edge("L0H0", "L1H0.k")``."""

    sender: str
    receiver: str

    def __repr__(self) -> str:
        return f"{self.sender}->{self.receiver}"


@dataclass(frozen=True)
class Circuit:
    """A subgraph: a set of nodes and a set of edges between them."""

    nodes: frozenset[str]
    edges: frozenset[Edge]

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", frozenset(self.nodes))
        object.__setattr__(self, "edges", frozenset(self.edges))
        for edge in self.edges:
            if not isinstance(edge, Edge):
                raise TypeError(f"Circuit edges must be Edge objects, got {edge!r}.")
            missing = {edge.sender, receiver_node(edge.receiver)} - self.nodes
            if missing:
                raise ValueError(f"edge {edge!r} uses node(s) {sorted(missing)} that are not in the circuit's nodes.")

    @classmethod
    def from_edges(cls, edges: Iterable[Edge]) -> Circuit:
        """The circuit made of `edges` and the nodes they touch."""
        edges = frozenset(edges)
        nodes = {e.sender for e in edges} | {receiver_node(e.receiver) for e in edges}
        return cls(frozenset(nodes), edges)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Edge):
            return item in self.edges
        return item in self.nodes

    def __len__(self) -> int:
        return len(self.edges)

    def __iter__(self) -> Iterator[Edge]:
        return iter(sorted(self.edges, key=lambda e: (_sort_key(e.sender), _sort_key(e.receiver))))

    def __repr__(self) -> str:
        shown = ", ".join(map(repr, list(self)[:8]))
        more = f", ... ({len(self.edges) - 8} more)" if len(self.edges) > 8 else ""
        return f"Circuit({len(self.nodes)} nodes, {len(self.edges)} edges: {shown}{more})"

    def describe(self) -> str:
        """One line per node, in forward order, with the receiver inputs it feeds."""
        lines = [f"Circuit with {len(self.nodes)} nodes and {len(self.edges)} edges"]
        for node in sorted(self.nodes, key=_sort_key):
            targets = [e.receiver for e in self if e.sender == node]
            lines.append(f"  {node:>7} -> {', '.join(targets)}" if targets else f"  {node:>7}")
        return "\n".join(lines)


def senders(model: HookedTransformer) -> list[str]:
    """The sender nodes in forward order: embed, then each layer's heads and its MLP."""
    cfg = model.cfg
    unsupported = {
        "parallel attention and MLP (GPT-J style)": cfg.parallel_attn_mlp,
        "shortformer positions": cfg.positional_embedding_type == "shortformer",
        "grouped-query attention": cfg.n_key_value_heads not in (None, cfg.n_heads),
    }
    for what, present in unsupported.items():
        if present:
            raise ValueError(f"Models with {what} are not supported by mi_course.circuits.")
    names = ["embed"]
    for layer in range(cfg.n_layers):
        names += [f"L{layer}H{head}" for head in range(cfg.n_heads)]
        if not cfg.attn_only:
            names.append(f"MLP{layer}")
    return names


def _receivers(model: HookedTransformer) -> list[tuple[str, int]]:
    """Each receiver input with the number of senders (a prefix of `senders`) that feed it."""
    cfg = model.cfg
    receivers = []
    n_before = 1  # embed
    for layer in range(cfg.n_layers):
        receivers += [(f"L{layer}H{head}.{x}", n_before) for head in range(cfg.n_heads) for x in "qkv"]
        n_before += cfg.n_heads
        if not cfg.attn_only:
            receivers.append((f"MLP{layer}", n_before))
            n_before += 1
    receivers.append(("logits", n_before))
    return receivers


def graph(model: HookedTransformer) -> Circuit:
    """The full computational graph of `model`: every node and every edge."""
    names = senders(model)
    edges = frozenset(Edge(s, receiver) for receiver, n in _receivers(model) for s in names[:n])
    return Circuit(frozenset(names) | {"logits"}, edges)


@contextmanager
def edge_patching_hooks(model: HookedTransformer) -> Iterator[None]:
    """Temporarily switch on the per-head q/k/v inputs and the MLP inputs as hooks.

    The config flags are restored on exit, so the model behaves as before for the caller.
    """
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    cfg.use_split_qkv_input = True
    cfg.use_hook_mlp_in = not cfg.attn_only
    try:
        yield
    finally:
        cfg.use_split_qkv_input, cfg.use_hook_mlp_in = saved


def _output_hooks(model: HookedTransformer, outputs: list[Tensor]) -> list[tuple[str, Callable]]:
    """Hooks that append each sender's output ([batch, pos, d_model]) to `outputs`, in sender order."""
    hooks = []
    if model.cfg.positional_embedding_type == "standard":
        embed_parts: list[Tensor] = []

        def token_embed(act: Tensor, hook) -> None:
            embed_parts.append(act)

        def pos_embed(act: Tensor, hook) -> None:
            outputs.append(embed_parts.pop() + act)

        hooks += [("hook_embed", token_embed), ("hook_pos_embed", pos_embed)]
    else:  # rotary or shortformer: the positions never enter the residual stream

        def token_only(act: Tensor, hook) -> None:
            outputs.append(act)

        hooks.append(("hook_embed", token_only))

    def head_results(z: Float[Tensor, "batch pos head d_head"], hook) -> None:
        # Each head's output z_h W_O[h] (TransformerLens's hook_result, computed as one batched
        # matmul instead of its memory-hungry broadcast product).
        W_O = model.blocks[int(hook.name.split(".")[1])].attn.W_O
        outputs.extend(torch.einsum("bphd,hdm->hbpm", z, W_O).unbind(dim=0))

    def mlp_out(act: Float[Tensor, "batch pos d_model"], hook) -> None:
        outputs.append(act)

    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_z", head_results))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_out", mlp_out))
    return hooks


def sender_outputs(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "sender batch pos d_model"]:
    """What every sender (in `senders(model)` order) adds to the residual stream on `tokens`."""
    outputs: list[Tensor] = []
    with edge_patching_hooks(model), torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=_output_hooks(model, outputs), stop_at_layer=model.cfg.n_layers)
    return torch.stack(outputs)


def _patch_matrices(model: HookedTransformer, edges: Iterable[Edge]) -> dict[str, Tensor]:
    """For each receiver input touched by `edges`, a 0/1 vector over the senders that feed it."""
    fed_by = dict(_receivers(model))
    index = {name: i for i, name in enumerate(senders(model))}
    masks: dict[str, Tensor] = {}
    for edge in edges:
        if not isinstance(edge, Edge):
            raise TypeError(f"edges must be Edge objects, got {edge!r}.")
        if edge.receiver not in fed_by or index.get(edge.sender, len(index)) >= fed_by[edge.receiver]:
            raise ValueError(f"{edge!r} is not an edge of this model; list the valid ones with graph(model).edges.")
        mask = masks.setdefault(edge.receiver, torch.zeros(fed_by[edge.receiver]))
        mask[index[edge.sender]] = 1.0
    return masks


def run_with_edges_patched(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"] | None,
    edges: Iterable[Edge],
    *,
    corrupted_outputs: Float[Tensor, "sender batch pos d_model"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits on `clean_tokens` with every edge in `edges` patched to the corrupted run, in one pass.

    Pass `corrupted_outputs = sender_outputs(model, corrupted_tokens)` (and corrupted_tokens=None)
    to reuse the corrupted run across many calls.
    """
    check_tokens(clean_tokens, clean_tokens if corrupted_tokens is None else corrupted_tokens)
    if corrupted_outputs is None:
        if corrupted_tokens is None:
            raise ValueError("give corrupted_tokens or corrupted_outputs (from sender_outputs).")
        corrupted_outputs = sender_outputs(model, corrupted_tokens)
    n_senders = len(senders(model))
    if corrupted_outputs.shape != (n_senders, *clean_tokens.shape, model.cfg.d_model):
        raise ValueError(
            f"corrupted_outputs has shape {tuple(corrupted_outputs.shape)}, expected "
            f"{(n_senders, *clean_tokens.shape, model.cfg.d_model)} (senders, batch, pos, d_model)."
        )
    masks = {name: m.to(corrupted_outputs) for name, m in _patch_matrices(model, edges).items()}
    return _run_patched(model, clean_tokens, masks, corrupted_outputs)


def _layer(receiver: str, n_layers: int) -> int:
    """The block whose forward pass reads `receiver` (the logits read the last block's output)."""
    node = receiver_node(receiver)
    if node == "logits":
        return n_layers - 1
    return int((_HEAD.fullmatch(node) or _MLP.fullmatch(node))[1])


def _run_patched(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    masks: dict[str, Tensor],
    corrupted_outputs: Float[Tensor, "sender batch pos d_model"],
    start: tuple[int, Tensor, Tensor] | None = None,
    record: list[Tensor] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """The patched forward pass. `start = (layer, resid_pre, outputs)` begins at block `layer`
    from its residual input, with `outputs` the senders' outputs before it (valid only when no
    receiver before that block is patched, so that everything before it is unchanged).
    `record`, if given, receives the senders' outputs in this run."""
    outputs: list[Tensor] = [] if record is None else record  # sender outputs of this run, appended as they are computed
    start_layer = 0
    if start is not None:
        start_layer, resid, before = start
        if any(_layer(name, model.cfg.n_layers) < start_layer for name in masks):
            raise ValueError(f"cannot start at block {start_layer}: a receiver before it is patched.")
        outputs += before.unbind(0)
    deltas = torch.empty_like(corrupted_outputs)  # corrupted - this run's output, per sender, filled as they run
    filled = 0

    def correction(mask: Float[Tensor, "sender ..."]) -> Float[Tensor, "batch pos ..."]:
        """Sum over senders of mask * (corrupted output - output in this run)."""
        nonlocal filled
        n = mask.shape[0]
        for i in range(filled, n):
            deltas[i] = corrupted_outputs[i] - outputs[i]
        filled = max(filled, n)
        return torch.einsum("sbpd,s...->bp...d", deltas[:n], mask)

    resid_pre: dict[int, Tensor] = {}

    def record_resid(act: Float[Tensor, "batch pos d_model"], hook) -> None:
        resid_pre[int(hook.name.split(".")[1])] = act

    def patch_heads(kind: str, layer: int) -> Callable:
        """Recompute q, k or v of the heads whose input is patched, from their own input.

        Only those heads get a separate copy of the residual stream, which is much cheaper than
        TransformerLens's use_split_qkv_input (a copy for every head of every layer)."""
        heads = [h for h in range(model.cfg.n_heads) if f"L{layer}H{h}.{kind}" in masks]
        block = model.blocks[layer]
        W = getattr(block.attn, f"W_{kind.upper()}")[heads]
        b = getattr(block.attn, f"b_{kind.upper()}")[heads]
        mask = torch.stack([masks[f"L{layer}H{h}.{kind}"] for h in heads], dim=1)

        def hook(act: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
            head_input = resid_pre[layer][:, :, None, :] + correction(mask)
            act[:, :, heads] = torch.einsum("bphm,hmd->bphd", block.ln1(head_input), W) + b
            return act

        return hook

    def patch_one(name: str) -> Callable:
        def hook(act: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
            return act + correction(masks[name])

        return hook

    hooks = _output_hooks(model, outputs)
    for layer in range(model.cfg.n_layers):
        patched = [kind for kind in "qkv" if any(f"L{layer}H{head}.{kind}" in masks for head in range(model.cfg.n_heads))]
        if patched:
            hooks.append((f"blocks.{layer}.hook_resid_pre", record_resid))
        hooks += [(f"blocks.{layer}.attn.hook_{kind}", patch_heads(kind, layer)) for kind in patched]
        if f"MLP{layer}" in masks:
            hooks.append((f"blocks.{layer}.hook_mlp_in", patch_one(f"MLP{layer}")))
    if "logits" in masks:
        hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", patch_one("logits")))
    cfg = model.cfg
    saved = cfg.use_hook_mlp_in
    cfg.use_hook_mlp_in = not cfg.attn_only
    try:
        if start is None:
            return model.run_with_hooks(tokens, fwd_hooks=hooks)
        return model.run_with_hooks(resid, start_at_layer=start_layer, fwd_hooks=hooks)
    finally:
        cfg.use_hook_mlp_in = saved


def run_path_patched(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    path: Sequence[Iterable[Edge]],
) -> Float[Tensor, "batch pos d_vocab"]:
    """Path patching in the style of Wang et al. (2023): the effect of the corrupted prompt
    through one path only, every other component frozen at its clean value.

    `path` is a list of stages, each a set of edges: the first stage's senders send their
    corrupted outputs along its edges only; each later stage sends, from the receivers of the
    stage before, the outputs they had in that run, along its own edges only. While a stage's
    receivers are recorded, every edge out of them is frozen to its clean value, so nothing else
    in the model sees the change. After the last stage the forward pass runs freely (a last stage
    into the logits makes the whole route explicit).

    Compare `run_with_edges_patched`, ACDC's convention: there a patched edge's effect reaches
    the logits through every path downstream of its receiver.
    """
    check_tokens(clean_tokens, corrupted_tokens)
    stages = [frozenset(stage) for stage in path]
    if not stages or not all(stages):
        raise ValueError("path must be a non-empty list of non-empty sets of edges, e.g. [{Edge('L0H0', 'L1H0.k')}, {Edge('L1H0', 'logits')}].")
    for i, stage in enumerate(stages):
        _patch_matrices(model, stage)  # unknown edges raise a clear error
        sending, receiving = {e.sender for e in stage}, {receiver_node(e.receiver) for e in stage}
        if sending & receiving:
            raise ValueError(f"stage {i} of the path both sends from and receives at {sorted(sending & receiving)}; split it into two stages.")
        if i and not sending <= {receiver_node(e.receiver) for e in stages[i - 1]}:
            raise ValueError(f"stage {i} sends from {sorted(sending)}, but the stage before it ends at {sorted({receiver_node(e.receiver) for e in stages[i - 1]})}.")
        if "logits" in receiving and i < len(stages) - 1:
            raise ValueError("only the last stage of a path can end at the logits.")
    index = {name: i for i, name in enumerate(senders(model))}
    edges = graph(model).edges
    with torch.no_grad():
        clean_outputs = sender_outputs(model, clean_tokens)
        values = sender_outputs(model, corrupted_tokens)
        for stage in stages[:-1]:
            receiving = sorted({receiver_node(e.receiver) for e in stage})
            frozen = frozenset(e for e in edges if e.sender in receiving)
            replacement = values.clone()
            replacement[[index[n] for n in receiving]] = clean_outputs[[index[n] for n in receiving]]
            masks = {name: m.to(replacement) for name, m in _patch_matrices(model, stage | frozen).items()}
            record: list[Tensor] = []
            _run_patched(model, clean_tokens, masks, replacement, record=record)
            values = torch.stack(record)
        return run_with_edges_patched(model, clean_tokens, None, stages[-1], corrupted_outputs=values)


def kl_to_clean(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], positions: int | slice = -1
) -> Metric:
    """ACDC's default metric: the KL divergence from the clean model's next-token distribution
    to the patched model's, at `positions` (default: the last), averaged over prompts and positions.
    It is 0 on the clean run; normalised (clean 1, corrupted 0) it is 1 − KL / KL(corrupted run)."""
    with torch.no_grad():
        clean = model(clean_tokens)[:, positions].log_softmax(-1)

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        patched = logits[:, positions].log_softmax(-1)
        return (clean.exp() * (clean - patched)).sum(-1).mean()

    return metric


class PatchedMetric:
    """The normalised metric (clean model = 1, corrupted model = 0) of the model with a set of
    edges patched: ``score(edges)``. It reuses one corrupted run for every call, and starts each patched run at
    the first block that reads a patched edge (the blocks before it compute the clean run)."""

    def __init__(self, model: HookedTransformer, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Metric):
        check_tokens(clean_tokens, corrupted_tokens)
        self.model, self.clean_tokens, self.metric = model, clean_tokens, metric
        self.edges = graph(model).edges
        self.calls = 0
        n_layers = model.cfg.n_layers
        with torch.no_grad():
            self.corrupted_outputs = sender_outputs(model, corrupted_tokens)
            self.clean_outputs = sender_outputs(model, clean_tokens)
            clean_logits, cache = model.run_with_cache(clean_tokens, names_filter=lambda name: name.endswith("hook_resid_pre"))
            self.clean = float(metric_value(metric, clean_logits))
            self.corrupted = float(metric_value(metric, model(corrupted_tokens)))
        self.resid_pre = [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n_layers)]
        per_layer = model.cfg.n_heads + (0 if model.cfg.attn_only else 1)
        self.senders_before = [1 + layer * per_layer for layer in range(n_layers)]
        if abs(self.clean - self.corrupted) < 1e-8:
            raise ValueError(
                f"the metric is the same on clean and corrupted prompts ({self.clean:.4g}), so it cannot be normalised; "
                "choose a corruption that changes the model's answer."
            )

    def check(self, circuit: Circuit) -> None:
        """Raise a clear error if `circuit` has edges that the model does not have."""
        unknown = circuit.edges - self.edges
        if unknown:
            raise ValueError(f"the circuit has edges that are not in the model's graph: {sorted(unknown)[:5]}.")

    def normalise(self, value: float) -> float:
        """A raw metric value on the scale clean = 1, corrupted = 0."""
        return (float(value) - self.corrupted) / (self.clean - self.corrupted)

    def __call__(self, patched: Iterable[Edge]) -> float:
        """Normalised metric with the edges `patched` to corrupted and every other edge clean."""
        self.calls += 1
        masks = {name: m.to(self.corrupted_outputs) for name, m in _patch_matrices(self.model, patched).items()}
        n_layers = self.model.cfg.n_layers
        layer = min((_layer(name, n_layers) for name in masks), default=n_layers - 1)
        start = (layer, self.resid_pre[layer], self.clean_outputs[: self.senders_before[layer]])
        with torch.no_grad():
            logits = _run_patched(self.model, self.clean_tokens, masks, self.corrupted_outputs, start)
        return (float(metric_value(self.metric, logits)) - self.corrupted) / (self.clean - self.corrupted)


def faithfulness(
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
) -> float:
    """The metric with every edge outside `circuit` patched to corrupted, normalised so that the
    clean model scores 1 and the corrupted model 0."""
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    score.check(circuit)
    return score(score.edges - circuit.edges)


Score = Callable[[frozenset[Edge]], float]


def edge_drops(circuit: frozenset[Edge], edges: frozenset[Edge], score: Score) -> dict[Edge, float]:
    """For each edge of `circuit`, F(C) - F(C without the edge), where F(C) = score(edges - C)
    scores the circuit (every other edge of the graph `edges` patched)."""
    circuit, edges = frozenset(circuit), frozenset(edges)
    base = score(edges - circuit)
    return {edge: base - score(edges - circuit | {edge}) for edge in circuit}


def minimality(
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
) -> dict[Edge, float]:
    """For each edge of `circuit`, how much its faithfulness drops when that edge alone is removed.

    This is the leave-one-out test: an edge with a backup (another edge that does the same job)
    scores about 0 here although the circuit needs one of the two. `wang_minimality` searches
    for such helper sets, as Wang et al. (2023) define minimality. A negative value means the
    circuit does better without the edge.
    """
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    score.check(circuit)
    return dict(sorted(edge_drops(circuit.edges, score.edges, score).items()))


def helper_search(
    edge: Edge, circuit: frozenset[Edge], edges: frozenset[Edge], score: Score, max_helpers: int = 1, *, tol: float = 1e-4
) -> tuple[frozenset[Edge], float]:
    """Wang et al.'s minimality test of one edge v of a circuit C: look for a set K of other edges
    of C such that removing v on top of K changes faithfulness a lot,
    |F(C \\ K) − F(C \\ (K ∪ {v}))|, where F(C) = score(edges − C).

    Greedy: start from K = ∅ (leave-one-out); at each step add the edge of C \\ {v} that makes the
    change largest (the first in sorted order among those within `tol` of the largest, so that
    rounding never decides); stop after `max_helpers` edges or when no edge makes it larger by
    more than `tol`. Returns the best K and its change.
    """
    circuit, edges = frozenset(circuit), frozenset(edges)
    if edge not in circuit:
        raise ValueError(f"{edge!r} is not in the circuit.")
    outside = edges - circuit

    def change(helpers: frozenset[Edge]) -> float:
        return abs(score(outside | helpers) - score(outside | helpers | {edge}))

    helpers: frozenset[Edge] = frozenset()
    best = change(helpers)
    for _ in range(max_helpers):
        candidates = sorted(circuit - helpers - {edge})
        if not candidates:
            break
        values = {e: change(helpers | {e}) for e in candidates}
        value = max(values.values())
        if value <= best + tol:
            break
        extra = next(e for e in candidates if values[e] >= value - tol)
        helpers, best = helpers | {extra}, values[extra]
    return helpers, best


def wang_minimality(
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    max_helpers: int = 1,
) -> dict[Edge, tuple[frozenset[Edge], float]]:
    """Minimality as Wang et al. (2023) define it: for each edge, the helper set K found by
    `helper_search` and the change |F(C \\ K) − F(C \\ (K ∪ {v}))|. An edge is needed when some K
    makes this large; with `max_helpers=0` it is the leave-one-out test of `minimality`.
    Each set of patched edges is scored once (the edges share many of them)."""
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    score.check(circuit)
    memo: dict[frozenset[Edge], float] = {}

    def cached(patched: frozenset[Edge]) -> float:
        if patched not in memo:
            memo[patched] = score(patched)
        return memo[patched]

    return {edge: helper_search(edge, circuit.edges, score.edges, cached, max_helpers) for edge in sorted(circuit.edges)}


def knock_out(nodes: Iterable[str], edges: Iterable[Edge]) -> frozenset[Edge]:
    """The edges to patch to knock `nodes` out: every edge they send."""
    nodes = set(nodes)
    return frozenset(e for e in edges if e.sender in nodes)


@dataclass(frozen=True)
class Knockout:
    """One completeness test: the nodes K knocked out, and the faithfulness F(C \\ K) of the
    circuit and F(M \\ K) of the full model without them."""

    nodes: frozenset[str]
    circuit: float
    model: float

    @property
    def gap(self) -> float:
        """Wang et al.'s incompleteness score |F(C \\ K) - F(M \\ K)|: small for a complete circuit."""
        return abs(self.circuit - self.model)


def knockout(circuit: frozenset[Edge], edges: frozenset[Edge], nodes: Iterable[str], score: Score) -> Knockout:
    """Knock `nodes` out of the circuit and out of the full graph `edges`, and score both."""
    nodes = frozenset(nodes)
    removed = knock_out(nodes, edges)
    return Knockout(nodes, circuit=score(frozenset(edges) - frozenset(circuit) | removed), model=score(removed))


def completeness(
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    knockouts: Iterable[Iterable[str]] | None = None,
    *,
    n_random: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> list[Knockout]:
    """Knock the same nodes out of the circuit and out of the full model, and compare.

    A circuit that misses a component (say a backup head that takes over when the main one is
    knocked out) behaves differently from the model once the main one is gone: a large gap
    (Wang et al. 2023). `knockouts` defaults to the empty set (whose gap is 1 - faithfulness),
    each node of the circuit alone, and `n_random` random subsets of its nodes.
    """
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    score.check(circuit)
    if knockouts is None:
        nodes = sorted(circuit.nodes - {"logits"}, key=_sort_key)
        rng = random.Random(seed)
        knockouts = [set()] + [{n} for n in nodes] + [set(rng.sample(nodes, rng.randint(1, len(nodes)))) for _ in range(n_random if nodes else 0)]
    knockouts = [frozenset(k) for k in knockouts]
    valid = set(senders(model))
    for k in knockouts:
        if not k <= valid:
            raise ValueError(f"cannot knock out {sorted(k - valid)}: not sender nodes of this model (see senders(model)).")
    return [knockout(circuit.edges, score.edges, k, score) for k in tqdm(knockouts, desc="completeness", disable=not progress)]


def greedy_prune(
    edges: Sequence[Edge],
    score: Score,
    threshold: float,
    *,
    skip: Callable[[Edge, frozenset[Edge]], bool] | None = None,
    rule: Literal["absolute", "one-sided"] = "absolute",
) -> tuple[frozenset[Edge], dict[Edge, float]]:
    """The greedy step of ACDC: try removing each edge in turn, and keep it removed when the
    score moves by less than `threshold`.

    `rule="absolute"` removes an edge when |change| < threshold (edges whose removal raises
    the score a lot are kept); `rule="one-sided"` removes it when the score falls by less than
    the threshold, and always when it rises (Conmy et al.'s rule, stated for a KL divergence
    that must not rise by τ).

    `score(removed)` scores the model with the edges `removed` patched. Each edge is compared
    with the current score (after the removals so far), not with the full model's. Edges for
    which `skip(edge, removed)` is true are removed without a test. Returns the removed edges
    and, for each tested edge, the score change its removal caused.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}.")
    if rule not in ("absolute", "one-sided"):
        raise ValueError(f"rule must be 'absolute' or 'one-sided', got {rule!r}.")
    removed: frozenset[Edge] = frozenset()
    current = score(removed)
    changes: dict[Edge, float] = {}
    for edge in edges:
        if skip is not None and skip(edge, removed):
            removed |= {edge}
            continue
        trial = score(removed | {edge})
        changes[edge] = trial - current
        if (abs(trial - current) if rule == "absolute" else current - trial) < threshold:
            removed, current = removed | {edge}, trial
    return removed, changes


def acdc_order(model: HookedTransformer) -> list[Edge]:
    """Every edge in the order ACDC visits them: receiver inputs from the logits backwards, and
    the edges into each from the latest sender back."""
    names = senders(model)
    return [Edge(s, r) for r, n in reversed(_receivers(model)) for s in reversed(names[:n])]


@dataclass(frozen=True)
class GreedySearch:
    """What `acdc` found: the circuit, its faithfulness, the score change each tested edge caused
    when it was tried, and the number of forward passes it took."""

    circuit: Circuit
    faithfulness: float
    changes: dict[Edge, float] = field(repr=False)
    forward_passes: int
    threshold: float


def acdc(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric | Literal["kl"],
    threshold: float,
    *,
    rule: Literal["absolute", "one-sided"] = "absolute",
    progress: bool = True,
) -> GreedySearch:
    """Find a circuit greedily, in the spirit of ACDC (Conmy et al. 2023).

    Start from the full graph and visit the edges in `acdc_order`; remove an edge when that
    moves the normalised metric (clean = 1, corrupted = 0) by less than `threshold`. Edges into
    a node that no longer feeds anything are removed without a test (they cannot matter).
    Finally drop the edges out of nodes that have no inputs left: such a node sends its
    corrupted output either way. One forward pass per tested edge.

    `metric="kl"` uses ACDC's default metric, the KL divergence to the clean output at the last
    position (`kl_to_clean`; pass `kl_to_clean(model, clean_tokens, positions)` for others).
    `rule` is the removal rule of `greedy_prune`: by default the absolute change, so that edges
    whose removal raises a task metric (negative components) stay in the circuit; "one-sided"
    is Conmy et al.'s rule, which with a task metric drops such components.
    """
    if isinstance(metric, str):
        if metric != "kl":
            raise ValueError(f"metric must be a function of the logits or 'kl', got {metric!r}.")
        metric = kl_to_clean(model, clean_tokens)
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    edges = acdc_order(model)
    with tqdm(total=len(edges) + 1, desc="ACDC", unit="edge", disable=not progress) as bar:

        def evaluate(removed: frozenset[Edge]) -> float:
            bar.update(1)
            return score(removed)

        def unused(edge: Edge, removed: frozenset[Edge]) -> bool:
            node = receiver_node(edge.receiver)
            if node == "logits" or any(e.sender == node and e not in removed for e in score.edges):
                return False
            bar.update(1)
            return True

        removed, changes = greedy_prune(edges, evaluate, threshold, skip=unused, rule=rule)
    kept = set(score.edges - removed)
    while dangling := {e for e in kept if e.sender != "embed" and not any(receiver_node(k.receiver) == e.sender for k in kept)}:
        kept -= dangling
    circuit, passes = Circuit.from_edges(kept), score.calls
    return GreedySearch(circuit, score(score.edges - circuit.edges), changes, passes, threshold)
