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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

__all__ = [
    "Circuit",
    "Edge",
    "edge_patching_hooks",
    "faithfulness",
    "graph",
    "receiver_node",
    "run_with_edges_patched",
    "sender_outputs",
    "senders",
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
    if cfg.parallel_attn_mlp:
        raise ValueError("Models with parallel attention and MLP (GPT-J style) are not supported by mi_course.circuits.")
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
    """Temporarily switch on the per-head q/k/v inputs, per-head results and MLP inputs as hooks.

    The config flags are restored on exit, so the model behaves as before for the caller.
    """
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_attn_result, cfg.use_hook_mlp_in)
    cfg.use_split_qkv_input = True
    cfg.use_attn_result = True
    cfg.use_hook_mlp_in = not cfg.attn_only
    try:
        yield
    finally:
        cfg.use_split_qkv_input, cfg.use_attn_result, cfg.use_hook_mlp_in = saved


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

    def head_results(act: Float[Tensor, "batch pos head d_model"], hook) -> None:
        outputs.extend(act.unbind(dim=2))

    def mlp_out(act: Float[Tensor, "batch pos d_model"], hook) -> None:
        outputs.append(act)

    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_result", head_results))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_out", mlp_out))
    return hooks


def sender_outputs(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "sender batch pos d_model"]:
    """What every sender (in `senders(model)` order) adds to the residual stream on `tokens`."""
    outputs: list[Tensor] = []
    with edge_patching_hooks(model), torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=_output_hooks(model, outputs), stop_at_layer=model.cfg.n_layers)
    return torch.stack(outputs)


def _check_tokens(model: HookedTransformer, clean: Tensor, corrupted: Tensor | None) -> None:
    if not isinstance(clean, Tensor) or clean.ndim != 2:
        raise ValueError(f"clean tokens must be an integer tensor of shape (batch, pos), got {getattr(clean, 'shape', clean)!r}.")
    if corrupted is not None and corrupted.shape != clean.shape:
        raise ValueError(
            f"clean and corrupted tokens must have the same shape, got {tuple(clean.shape)} and {tuple(corrupted.shape)}; "
            "pair every clean prompt with a corrupted prompt of the same length."
        )


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
    _check_tokens(model, clean_tokens, corrupted_tokens)
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
    outputs: list[Tensor] = []  # sender outputs of this run, appended as they are computed

    def correction(mask: Float[Tensor, "sender ..."]) -> Float[Tensor, "batch pos ..."]:
        """Sum over senders of mask * (corrupted output - output in this run)."""
        n = mask.shape[0]
        delta = corrupted_outputs[:n] - torch.stack(outputs[:n])
        return torch.einsum("sbpd,s...->bp...d", delta, mask)

    def patch_heads(kind: str, layer: int) -> Callable:
        names = [f"L{layer}H{head}.{kind}" for head in range(model.cfg.n_heads)]

        def hook(act: Float[Tensor, "batch pos head d_model"], hook) -> Tensor:
            n = next(masks[name].shape[0] for name in names if name in masks)
            mask = torch.stack([masks.get(name, torch.zeros(n).to(act)) for name in names], dim=1)
            return act + correction(mask)

        return hook

    def patch_one(name: str) -> Callable:
        def hook(act: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
            return act + correction(masks[name])

        return hook

    hooks = _output_hooks(model, outputs)
    for layer in range(model.cfg.n_layers):
        for kind in "qkv":
            if any(f"L{layer}H{head}.{kind}" in masks for head in range(model.cfg.n_heads)):
                hooks.append((f"blocks.{layer}.hook_{kind}_input", patch_heads(kind, layer)))
        if f"MLP{layer}" in masks:
            hooks.append((f"blocks.{layer}.hook_mlp_in", patch_one(f"MLP{layer}")))
    if "logits" in masks:
        hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", patch_one("logits")))
    with edge_patching_hooks(model):
        return model.run_with_hooks(clean_tokens, fwd_hooks=hooks)


def faithfulness(
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]],
) -> float:
    """The metric with every edge outside `circuit` patched to corrupted, normalised so that the
    clean model scores 1 and the corrupted model 0."""
    _check_tokens(model, clean_tokens, corrupted_tokens)
    full = graph(model)
    unknown = circuit.edges - full.edges
    if unknown:
        raise ValueError(f"the circuit has edges that are not in the model's graph: {sorted(unknown)[:5]}.")

    def score(logits: Tensor) -> float:
        value = metric(logits)
        if isinstance(value, Tensor) and value.numel() != 1:
            raise ValueError(f"metric must return a scalar (e.g. a mean over the batch), got shape {tuple(value.shape)}.")
        return float(value)

    with torch.no_grad():
        clean = score(model(clean_tokens))
        corrupted = score(model(corrupted_tokens))
        patched = score(run_with_edges_patched(model, clean_tokens, corrupted_tokens, full.edges - circuit.edges))
    if abs(clean - corrupted) < 1e-8:
        raise ValueError(
            f"the metric is the same on clean and corrupted prompts ({clean:.4g}), so it cannot be normalised; "
            "choose a corruption that changes the model's answer."
        )
    return (patched - corrupted) / (clean - corrupted)
