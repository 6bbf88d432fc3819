"""Attribution patching: gradient estimates of activation and edge patching, for all at once.

Patching a component from its clean value a to its corrupted value a' changes the metric by
about (a' - a) . dM/da, the gradient taken on the clean run (a first-order Taylor expansion).
One forward and one backward pass give the gradient for every component, so

- `attribution_patching` (AtP, Nanda 2023) estimates a whole `activation_patching` sweep,
  and `node_attribution` the effect of every node of `mi_course.circuits.graph`;
- `edge_attribution_patching` (EAP, Syed et al. 2023) estimates the effect of patching every
  edge A -> B: (A's corrupted output - A's clean output) . (gradient at B's input);
- `edge_attribution_patching_ig` (EAP-IG, Hanna et al. 2024) averages that gradient over
  m inputs on the way from the corrupted to the clean embeddings (integrated gradients).

All scores are changes of the metric in the noising direction (clean run, one component
corrupted): compare them with ``activation_patching(..., direction="noising") - metric(clean)``
or with `edge_patching_effects`. The approximation fails where the metric is far from linear
in the activation, e.g. when an attention pattern is saturated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mi_course.circuits import (
    Circuit,
    Edge,
    PatchedMetric,
    edge_patching_hooks,
    graph,
    run_with_edges_patched,
    sender_outputs,
    senders,
)
from mi_course.patching import ACTIVATIONS, DIRECTIONS, Metric, _check_by, check_tokens, hook_name, metric_value

__all__ = [
    "attribution_patching",
    "circuit_from_scores",
    "edge_attribution_patching",
    "edge_attribution_patching_ig",
    "edge_patching_effects",
    "faithfulness_curve",
    "frozen_head_patching",
    "node_attribution",
    "rank_correlation",
    "top_k_overlap",
    "validation_sample",
]

FREEZABLE = ("attention", "layernorm")


def _gradients(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    names: Sequence[str],
    embed: Float[Tensor, "batch pos d_model"] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Activations at the hooks `names` on `tokens` and the gradient of the metric with respect to them.

    The token embedding is replaced by a leaf tensor (`embed`, or the model's own), so gradients
    flow even when the parameters do not require them, and no parameter gradient is kept.
    """
    acts: dict[str, Tensor] = {}
    leaf = (model.embed(tokens) if embed is None else embed).detach().requires_grad_(True)

    def store(act: Tensor, hook) -> None:
        acts[hook.name] = act

    hooks = [("hook_embed", lambda act, hook: leaf)] + [(name, store) for name in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric_value(metric, model(tokens))
        missing = [name for name in names if name not in acts]
        if missing:
            raise ValueError(f"no activation reached the hooks {missing}; check the hook names against model.hook_dict.")
        if not value.requires_grad:
            raise ValueError(
                "the metric's value has no gradient with respect to the logits (an accuracy, a .item() or a "
                "torch.no_grad() inside it?); attribution patching needs a differentiable metric such as a logit difference."
            )
        grads = torch.autograd.grad(value, [acts[name] for name in names], allow_unused=True)
    return (
        {name: acts[name].detach() for name in names},
        {name: torch.zeros_like(acts[name]) if g is None else g for name, g in zip(names, grads)},
    )


def _atp_terms(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    names: Sequence[str],
    direction: str,
) -> dict[str, Tensor]:
    """(other activation - base activation) * gradient at base, summed over the batch, for each hook.

    Noising: base = clean, other = corrupted; denoising: the reverse. One forward and backward
    pass on the base prompts and one forward pass on the other prompts.
    """
    check_tokens(clean_tokens, corrupted_tokens)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}.")
    base, other = (clean_tokens, corrupted_tokens) if direction == "noising" else (corrupted_tokens, clean_tokens)
    acts, grads = _gradients(model, base, metric, names)
    with torch.no_grad():
        _, cache = model.run_with_cache(other, names_filter=list(names))
    return {name: ((cache[name] - acts[name]) * grads[name]).sum(dim=0) for name in names}


def attribution_patching(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    activation: str,
    by: Sequence[str] = ("layer", "pos"),
    *,
    direction: str = "noising",
) -> Tensor:
    """AtP estimate of the metric change of each patch of an `activation_patching` sweep.

    Same `activation` and `by` as `mi_course.patching.activation_patching`, same output shape;
    each entry estimates ``patched metric - base metric`` (base: clean for noising, corrupted
    for denoising), from 2 forward passes and 1 backward pass instead of one pass per patch.
    """
    by = _check_by(activation, by)
    names = [hook_name(model, activation, layer) for layer in range(model.cfg.n_layers)]
    terms = _atp_terms(model, clean_tokens, corrupted_tokens, metric, names, direction)
    axes = ACTIVATIONS[activation][1]
    keep = [axes[axis] - 1 for axis in by[1:]]  # dimensions of a term, which has no batch dimension
    per_layer = []
    for name in names:
        term = terms[name]
        summed = term.sum(dim=[d for d in range(term.ndim) if d not in keep]) if len(keep) < term.ndim else term
        order = sorted(keep)
        per_layer.append(summed.permute([order.index(d) for d in keep]))
    return torch.stack(per_layer)


def node_attribution(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
) -> dict[str, float]:
    """AtP estimate of the effect of corrupting each sender node of `graph(model)` (every position).

    "embed" uses the token embedding (the positional one is the same on both prompts), a head
    its ``hook_z``, an MLP its output; 2 forward passes and 1 backward pass for all of them.
    """
    cfg = model.cfg
    names = ["hook_embed"] + [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    if not cfg.attn_only:
        names += [f"blocks.{layer}.hook_mlp_out" for layer in range(cfg.n_layers)]
    terms = _atp_terms(model, clean_tokens, corrupted_tokens, metric, names, "noising")
    scores = {"embed": float(terms["hook_embed"].sum())}
    for layer in range(cfg.n_layers):
        per_head = terms[f"blocks.{layer}.attn.hook_z"].sum(dim=(0, 2))
        scores.update({f"L{layer}H{head}": float(s) for head, s in enumerate(per_head)})
        if not cfg.attn_only:
            scores[f"MLP{layer}"] = float(terms[f"blocks.{layer}.hook_mlp_out"].sum())
    return {name: scores[name] for name in senders(model)}


def _receiver_hooks(model: HookedTransformer) -> list[tuple[str, str, int | None]]:
    """(receiver, hook name, head index or None) for every receiver input of `graph(model)`."""
    cfg = model.cfg
    receivers = []
    for layer in range(cfg.n_layers):
        receivers += [(f"L{layer}H{head}.{x}", f"blocks.{layer}.hook_{x}_input", head) for head in range(cfg.n_heads) for x in "qkv"]
        if not cfg.attn_only:
            receivers.append((f"MLP{layer}", f"blocks.{layer}.hook_mlp_in", None))
    receivers.append(("logits", f"blocks.{cfg.n_layers - 1}.hook_resid_post", None))
    return receivers


def edge_attribution_patching_ig(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    steps: int = 5,
    *,
    progress: bool = False,
) -> dict[Edge, float]:
    """EAP-IG: the EAP score with the receiver's gradient averaged over `steps` interpolated inputs.

    Step k = 1..m runs the clean prompts with token embeddings corrupted + k/m (clean -
    corrupted) (a Riemann sum of the integrated gradient, as in Hanna et al. 2024), so
    ``steps=1`` is plain EAP. Cost: 2 forward passes + `steps` x (forward + backward).
    """
    check_tokens(clean_tokens, corrupted_tokens)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    delta = sender_outputs(model, corrupted_tokens) - sender_outputs(model, clean_tokens)
    receivers = _receiver_hooks(model)
    names = sorted({name for _, name, _ in receivers})
    with torch.no_grad():
        clean_embed, corrupted_embed = model.embed(clean_tokens), model.embed(corrupted_tokens)
    total = {name: 0.0 for name in names}
    with edge_patching_hooks(model):
        for k in tqdm(range(1, steps + 1), desc="EAP-IG", disable=not progress):
            embed = corrupted_embed + k / steps * (clean_embed - corrupted_embed)
            _, grads = _gradients(model, clean_tokens, metric, names, embed=embed)
            total = {name: total[name] + grads[name] / steps for name in names}
    receiver_grads = torch.stack([total[name] if head is None else total[name][:, :, head] for _, name, head in receivers])
    scores = torch.einsum("sbpd,rbpd->sr", delta, receiver_grads)
    sender_index = {name: i for i, name in enumerate(senders(model))}
    receiver_index = {receiver: i for i, (receiver, _, _) in enumerate(receivers)}
    return {edge: float(scores[sender_index[edge.sender], receiver_index[edge.receiver]]) for edge in sorted(graph(model).edges)}


def edge_attribution_patching(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
) -> dict[Edge, float]:
    """EAP: for every edge A -> B, (A's corrupted - clean output) . (dM/d B's input on the clean run).

    Estimates ``edge_patching_effects`` for all edges from 2 forward passes without gradients
    and 1 forward + backward pass. Summed over B, the scores of a sender A equal its
    `node_attribution` (the gradient of A's output is the sum of its receivers' gradients).
    """
    return edge_attribution_patching_ig(model, clean_tokens, corrupted_tokens, metric, steps=1)


def edge_patching_effects(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    edges: Iterable[Edge] | None = None,
    *,
    progress: bool = True,
) -> dict[Edge, float]:
    """Exact metric change from patching each edge alone to corrupted: one forward pass per edge.

    The ground truth that EAP estimates; `edges` defaults to every edge of `graph(model)`.
    """
    check_tokens(clean_tokens, corrupted_tokens)
    edges = sorted(graph(model).edges if edges is None else edges)
    with torch.no_grad():
        clean = float(metric_value(metric, model(clean_tokens)))
        corrupted_outputs = sender_outputs(model, corrupted_tokens)
        return {
            edge: float(metric_value(metric, run_with_edges_patched(model, clean_tokens, None, [edge], corrupted_outputs=corrupted_outputs))) - clean
            for edge in tqdm(edges, desc="edge patching", disable=not progress)
        }


def circuit_from_scores(scores: dict[Edge, float], n_edges: int) -> Circuit:
    """The circuit of the `n_edges` edges with the largest absolute scores (ties: forward order)."""
    if not 0 <= n_edges <= len(scores):
        raise ValueError(f"n_edges must be between 0 and the number of scored edges ({len(scores)}), got {n_edges}.")
    ranked = sorted(scores, key=lambda edge: -abs(scores[edge]))
    return Circuit.from_edges(ranked[:n_edges])


def faithfulness_curve(
    model: HookedTransformer,
    scores: dict[Edge, float],
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    sizes: Sequence[int],
    *,
    progress: bool = True,
) -> dict[int, float]:
    """Faithfulness (`mi_course.circuits.faithfulness`: clean = 1, corrupted = 0) of the top-n circuit for each n.

    The clean and corrupted runs are shared by all sizes: one patched forward pass per size.
    """
    score = PatchedMetric(model, clean_tokens, corrupted_tokens, metric)
    curve = {}
    for n in tqdm(sizes, desc="faithfulness", disable=not progress):
        circuit = circuit_from_scores(scores, n)
        score.check(circuit)
        curve[n] = score(score.edges - circuit.edges)  # = faithfulness(model, circuit, ...)
    return curve


def _ranks(x: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks from 0, tied values sharing the mean of their ranks (as scipy.stats.rankdata)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    mean_rank = torch.cumsum(counts, 0).to(torch.float64) - (counts.to(torch.float64) + 1) / 2
    return mean_rank[inverse]


def rank_correlation(a: Tensor | Sequence[float], b: Tensor | Sequence[float]) -> float:
    """Spearman rank correlation of two score lists of the same length (tied values share their mean rank)."""
    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"need two score lists of the same length >= 2, got {a.numel()} and {b.numel()} values.")
    ra, rb = _ranks(a) - (a.numel() - 1) / 2, _ranks(b) - (b.numel() - 1) / 2
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def top_k_overlap(a: Tensor | Sequence[float], b: Tensor | Sequence[float], k: int) -> float:
    """The fraction of the k largest entries of |a| that are also among the k largest of |b|."""
    a, b = torch.as_tensor(a).flatten(), torch.as_tensor(b).flatten()
    if a.shape != b.shape or not 1 <= k <= a.numel():
        raise ValueError(f"need two score lists of the same length and 1 <= k <= length, got {a.numel()}, {b.numel()} and k={k}.")
    top_a, top_b = set(a.abs().topk(k).indices.tolist()), set(b.abs().topk(k).indices.tolist())
    return len(top_a & top_b) / k


def _frozen_hooks(model: HookedTransformer, cache: dict[str, Tensor], freeze: Sequence[str]) -> list:
    """Hooks that pin every attention pattern and/or layer-norm scale to its value in `cache`.

    The pinned value is a constant: no gradient flows through it, and a patch upstream cannot move it.
    """
    unknown = sorted(set(freeze) - set(FREEZABLE))
    if unknown:
        raise ValueError(f"can freeze only {FREEZABLE}, not {unknown}.")
    names = []
    if "attention" in freeze:
        names += [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    if "layernorm" in freeze:
        names += [name for name in model.hook_dict if name.endswith("hook_scale")]
    return [(name, lambda act, hook: cache[hook.name]) for name in names]


def frozen_head_patching(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    freeze: Sequence[str] = (),
) -> tuple[Float[Tensor, "layer head"], Float[Tensor, "layer head"]]:
    """AtP estimate and exact effect of noising each head's output, with nonlinearities frozen in both.

    ``freeze`` names the nonlinearities ("attention": every attention pattern, "layernorm": every
    layer norm's scale) held at their clean-run values, in the gradient and in the patched runs
    alike. If the AtP error drops when one of them is frozen, the curvature of that nonlinearity
    caused it. With nothing frozen this is `attribution_patching` on ``hook_z`` and the exact
    noising sweep; with every nonlinearity of an attention-only model frozen, the metric is
    linear in each head's output and the two agree. 1 backward and n_layers x n_heads + 3 forward passes.
    """
    check_tokens(clean_tokens, corrupted_tokens)
    cfg = model.cfg
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens)
        _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=z_names)
    hooks = _frozen_hooks(model, clean_cache.cache_dict, freeze)
    with model.hooks(fwd_hooks=hooks):
        acts, grads = _gradients(model, clean_tokens, metric, z_names)
        estimate = torch.stack([((corrupted_cache[n] - acts[n]) * grads[n]).sum(dim=(0, 1, 3)) for n in z_names])
    exact = torch.zeros(cfg.n_layers, cfg.n_heads)
    with torch.no_grad():
        base = float(metric_value(metric, model(clean_tokens)))
        for layer, name in enumerate(z_names):
            for head in range(cfg.n_heads):

                def patch(z: Tensor, hook, head: int = head) -> Tensor:
                    z = z.clone()
                    z[:, :, head] = corrupted_cache[hook.name][:, :, head]
                    return z

                logits = model.run_with_hooks(clean_tokens, fwd_hooks=[(name, patch)] + hooks)
                exact[layer, head] = float(metric_value(metric, logits)) - base
    return estimate, exact


def validation_sample(scores: Tensor | Sequence[float], budget: int, seed: int) -> list[int]:
    """Which components to patch exactly, with `budget` forward passes, to check an attribution ranking.

    Half of the budget (rounded up) goes to the components with the largest |score|, the ones a
    circuit would keep; the rest is drawn at random (seeded) from all the others, where a false
    negative would hide. Returns flat indices into ``scores``.
    """
    scores = torch.as_tensor(scores).flatten()
    if not 1 <= budget <= scores.numel():
        raise ValueError(f"budget must be between 1 and the number of components ({scores.numel()}), got {budget}.")
    order = scores.abs().argsort(descending=True, stable=True)
    n_top = (budget + 1) // 2
    rest = order[n_top:]
    drawn = rest[torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed))[: budget - n_top]]
    return order[:n_top].tolist() + sorted(drawn.tolist())
