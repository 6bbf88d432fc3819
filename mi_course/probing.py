"""Probes, the baselines that give them meaning, and interventions along a probe direction.

A probe is a small classifier trained to read a label (part of speech, grammatical number,
...) from a model's activations. High probe accuracy alone says little: the label may be
readable from the token's identity alone (embeddings-only baseline), from any random
network (random-weights baseline), or the probe may memorise word types. Hewitt & Liang
(2019) make the last point measurable with a control task: every word type gets a fixed
random label, with the same label distribution, and selectivity = task accuracy - control
accuracy. Expressive probes (MLPs) memorise control tasks well, so their selectivity is low.

Probing is correlational. To test whether the model *uses* a direction, intervene: reflect
or shift the residual stream along the probe's weight vector and watch the behaviour; or
remove the property with iterative nullspace projection (INLP, Ravfogel et al. 2020), the
tool of amnesic probing (Elazar et al. 2021).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mi_course.lens import resid_hook_names

__all__ = [
    "LinearProbe",
    "MLPProbe",
    "accuracy",
    "control_labels",
    "encode_labels",
    "inlp",
    "majority_accuracy",
    "predict",
    "probe_direction",
    "probe_intervention_hook",
    "projection_hook",
    "probe_selectivity",
    "randomize_weights",
    "residual_activations",
    "residual_activations_by_layer",
    "train_probe",
    "train_test_split",
]


class LinearProbe(nn.Module):
    """Multinomial logistic regression: one weight vector and bias per class."""

    def __init__(self, d_in: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(d_in, n_classes)

    def forward(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n n_classes"]:
        return self.linear(x)

    def penalised_weights(self) -> list[Tensor]:
        return [self.linear.weight]


class MLPProbe(nn.Module):
    """A one-hidden-layer ReLU network: a more expressive probe."""

    def __init__(self, d_in: int, n_classes: int, hidden: int = 128):
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n n_classes"]:
        return self.out(torch.relu(self.hidden(x)))

    def penalised_weights(self) -> list[Tensor]:
        return [self.hidden.weight, self.out.weight]


def encode_labels(labels: Sequence | np.ndarray | Tensor) -> tuple[Int[Tensor, "n"], list]:
    """Labels of any kind (strings, ints; flattened) as class indices 0..C-1, with the sorted class values."""
    classes, indices = np.unique(np.asarray(labels), return_inverse=True)
    return torch.as_tensor(indices.reshape(-1), dtype=torch.long), classes.tolist()


def train_test_split(
    n: int, test_fraction: float = 0.2, seed: int = 0, groups: Sequence | np.ndarray | Tensor | None = None
) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_test"]]:
    """A seeded random split of ``range(n)`` into train and test indices.

    With ``groups`` (one id per row, e.g. the prompt each token comes from) whole groups go
    to one side, so tokens of a test prompt are never seen in training.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        perm = torch.randperm(n, generator=gen)
        n_test = max(1, int(round(test_fraction * n)))
        return perm[n_test:], perm[:n_test]
    group_index, names = encode_labels(groups)
    if len(group_index) != n:
        raise ValueError(f"groups needs one id per row ({n}), got {len(group_index)}.")
    n_test = max(1, int(round(test_fraction * len(names))))
    is_test = torch.isin(group_index, torch.randperm(len(names), generator=gen)[:n_test])
    return (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)


def _check_xy(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be [n, d] (one row per token), got shape {tuple(x.shape)}; flatten with x.reshape(-1, x.shape[-1]).")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must hold one label per row of x ({x.shape[0]}), got shape {tuple(y.shape)}.")


def train_probe(
    x: Float[Tensor, "n d_in"],
    y: Int[Tensor, "n"],
    *,
    kind: str = "linear",
    n_classes: int | None = None,
    l2: float = 1e-4,
    hidden: int = 128,
    steps: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> LinearProbe | MLPProbe:
    """Fit a probe on (x, y) by minimising mean cross-entropy + ``l2``/2 * |weights|^2 (biases free).

    ``kind="linear"``: full-batch L-BFGS (default 100 iterations). With ``l2 = 1 / (C n)``
    this is scikit-learn's ``LogisticRegression(C=C)`` objective for three or more classes.
    ``kind="mlp"``: full-batch Adam (default 1000 steps, lr 1e-2).
    """
    _check_xy(x, y)
    if y.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"y must hold integer class indices, got {y.dtype}; use encode_labels(labels) first.")
    x, y = x.detach().float(), y.long()
    n_classes = n_classes or int(y.max()) + 1
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be class indices in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}; use encode_labels.")
    torch.manual_seed(seed)
    if kind == "linear":
        probe = LinearProbe(x.shape[1], n_classes)
    elif kind == "mlp":
        probe = MLPProbe(x.shape[1], n_classes, hidden)
    else:
        raise ValueError(f"kind must be 'linear' or 'mlp', got {kind!r}.")

    def objective() -> Tensor:
        penalty = sum(w.pow(2).sum() for w in probe.penalised_weights())
        return F.cross_entropy(probe(x), y) + l2 / 2 * penalty

    if kind == "linear":
        optimizer = torch.optim.LBFGS(
            probe.parameters(), lr=lr or 1.0, max_iter=steps or 100, tolerance_grad=1e-7, tolerance_change=1e-10,
            history_size=20, line_search_fn="strong_wolfe",
        )

        bar = tqdm(total=optimizer.defaults["max_eval"], desc="linear probe (L-BFGS evaluations)", disable=not progress)

        def closure() -> Tensor:
            bar.update()
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        optimizer.step(closure)
        bar.close()
    else:
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr or 1e-2)
        for _ in tqdm(range(steps or 1000), desc="MLP probe", disable=not progress):
            optimizer.zero_grad()
            objective().backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def predict(probe: nn.Module, x: Float[Tensor, "n d_in"]) -> Int[Tensor, "n"]:
    """The probe's most likely class for every row."""
    return probe(x.float()).argmax(-1)


def accuracy(probe: nn.Module, x: Float[Tensor, "n d_in"], y: Int[Tensor, "n"]) -> float:
    """Fraction of rows the probe classifies correctly."""
    _check_xy(x, y)
    return (predict(probe, x) == y).float().mean().item()


def majority_accuracy(y_train: Int[Tensor, "n_train"], y_test: Int[Tensor, "n_test"]) -> float:
    """Test accuracy of always predicting the most common training label: the floor for any probe."""
    return (y_test == torch.mode(y_train).values).float().mean().item()


def control_labels(
    word_types: Sequence | np.ndarray | Tensor, labels: Sequence | np.ndarray | Tensor, seed: int = 0
) -> Int[Tensor, "n"]:
    """Hewitt & Liang's control task: each word type gets one fixed label drawn from the labels' distribution.

    ``word_types`` identifies the word at every row (e.g. token ids); ``labels`` are the real
    task's labels (class indices), whose empirical distribution the random labels follow.
    """
    type_index, types = encode_labels(word_types)
    labels = torch.as_tensor(np.asarray(labels))
    if len(type_index) != len(labels):
        raise ValueError(f"need one word type per label, got {len(type_index)} types and {len(labels)} labels.")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(labels), (len(types),), generator=gen)
    return labels[draws][type_index].long()


def probe_selectivity(
    x: Float[Tensor, "n d_in"],
    y: Int[Tensor, "n"],
    word_types: Sequence | np.ndarray | Tensor,
    train_idx: Int[Tensor, "n_train"],
    test_idx: Int[Tensor, "n_test"],
    seed: int = 0,
    **probe_kwargs,
) -> dict[str, float]:
    """Train the same probe on the task and on its control task; report both accuracies and selectivity."""
    control = control_labels(word_types, y, seed=seed)
    n_classes = int(y.max()) + 1
    task = train_probe(x[train_idx], y[train_idx], n_classes=n_classes, seed=seed, **probe_kwargs)
    ctrl = train_probe(x[train_idx], control[train_idx], n_classes=n_classes, seed=seed, **probe_kwargs)
    task_acc = accuracy(task, x[test_idx], y[test_idx])
    control_acc = accuracy(ctrl, x[test_idx], control[test_idx])
    return {"task": task_acc, "control": control_acc, "selectivity": task_acc - control_acc}


@torch.no_grad()
def residual_activations(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], layer: int, batch_size: int = 64
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after ``layer`` layers: 0 = embeddings only, n_layers = final residual."""
    names = resid_hook_names(model)
    if not 0 <= layer < len(names):
        raise ValueError(f"layer must be between 0 (embeddings) and {len(names) - 1} (final residual), got {layer}.")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    out = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=names[layer], stop_at_layer=min(layer + 1, model.cfg.n_layers))
        out.append(cache[names[layer]])
    return torch.cat(out)


@torch.no_grad()
def residual_activations_by_layer(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], batch_size: int = 64
) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
    """The residual stream after every number of layers, 0 (embeddings) to n_layers, in one forward pass per batch.

    Entry ``i`` equals ``residual_activations(model, tokens, i)``; on a deep model this is much
    faster than one call per layer, each of which runs the model up to that layer.
    """
    names = resid_hook_names(model)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    out = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=lambda name: name in names, stop_at_layer=model.cfg.n_layers)
        out.append(torch.stack([cache[name] for name in names]))
    return torch.cat(out, dim=1)


def randomize_weights(model: HookedTransformer, seed: int = 0) -> HookedTransformer:
    """A copy of ``model`` with freshly initialised weights: the "same architecture, random weights" baseline.

    Weight matrices are drawn by TransformerLens's own initialisation with ``seed``; biases
    are zeroed and layer-norm weights set to 1. The original model is left untouched.
    """
    random_model = copy.deepcopy(model)
    random_model.cfg.seed = seed
    with torch.no_grad():
        for name, p in random_model.named_parameters():
            if not name.split(".")[-1].startswith("W_"):
                p.fill_(1.0 if name.endswith(".w") else 0.0)
    random_model.init_weights()
    return random_model.eval()


def probe_direction(probe: LinearProbe, positive: int = 1, negative: int = 0) -> tuple[Float[Tensor, "d_in"], float]:
    """The direction w and offset b with w.h + b = logit(positive) - logit(negative) under the probe."""
    if not isinstance(probe, LinearProbe):
        raise TypeError("only a LinearProbe has a single direction; train with kind='linear'.")
    n_classes = probe.linear.out_features
    if not (0 <= positive < n_classes and 0 <= negative < n_classes) or positive == negative:
        raise ValueError(f"positive and negative must be two different classes in 0..{n_classes - 1}, got {positive} and {negative}.")
    weight, bias = probe.linear.weight.detach(), probe.linear.bias.detach()
    return weight[positive] - weight[negative], float(bias[positive] - bias[negative])


def probe_intervention_hook(
    direction: Float[Tensor, "d_model"],
    offset: float = 0.0,
    *,
    mode: str = "reflect",
    alpha: float = 1.0,
    positions: int | Sequence[int] | Int[Tensor, "batch"] | None = None,
    strength: float = 1.0,
) -> Callable[..., Tensor]:
    """A hook that moves the residual along a probe direction at chosen positions (None: all).

    ``mode="reflect"``: mirror h in the probe's decision boundary w.h + b = 0, which flips the
    sign of the probe's logit difference and keeps its size; with ``strength`` k, h lands k
    times as far on the other side (logit difference multiplied by -k; 1: a true reflection,
    larger: an exaggerated push, off the activations' natural range). ``mode="shift"``: add
    ``alpha`` times the unit vector w / |w|. ``positions`` may be one position, a list used
    for every prompt, or a tensor with one position per prompt.
    """
    if mode not in ("reflect", "shift"):
        raise ValueError(f"mode must be 'reflect' or 'shift', got {mode!r}.")
    w = direction.detach()

    def hook(resid: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        if resid.shape[-1] != w.shape[0]:
            raise ValueError(f"the probe direction has {w.shape[0]} dimensions but the hooked activation has {resid.shape[-1]}.")
        if mode == "reflect":
            change = -(1 + strength) * ((resid @ w + offset) / w.dot(w))[..., None] * w
        else:
            change = (alpha * w / w.norm()).expand_as(resid)
        mask = torch.zeros(resid.shape[:2], dtype=resid.dtype, device=resid.device)
        if positions is None:
            mask[:] = 1
        elif isinstance(positions, Tensor):
            if positions.shape != (resid.shape[0],):
                raise ValueError(f"positions as a tensor needs one position per prompt ({resid.shape[0]}), got shape {tuple(positions.shape)}.")
            mask[torch.arange(resid.shape[0]), positions] = 1
        else:
            mask[:, positions] = 1
        return resid + mask[..., None] * change

    return hook


def inlp(
    x: Float[Tensor, "n d"], y: Int[Tensor, "n"], n_iterations: int = 10, *, l2: float = 1e-4, seed: int = 0
) -> tuple[Float[Tensor, "d d"], Float[Tensor, "k d"]]:
    """Iterative nullspace projection (Ravfogel et al. 2020): remove every direction a linear probe finds.

    Each round fits a linear probe on the data projected so far and adds its directions (the
    rows of its weight matrix, less their mean: the C - 1 directions that change its decision)
    to the removed set; the projection is onto the orthogonal complement of everything removed,
    so later probes must find the label elsewhere. Returns the projection P (symmetric,
    idempotent; apply it as x @ P) and an orthonormal basis of the removed subspace.
    """
    _check_xy(x, y)
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be at least 1, got {n_iterations}.")
    x, y = x.detach().float(), y.long()
    d = x.shape[1]
    removed = torch.zeros(0, d)
    projection = torch.eye(d)
    for i in range(n_iterations):
        probe = train_probe(x @ projection, y, n_classes=int(y.max()) + 1, l2=l2, seed=seed + i)
        weight = probe.linear.weight.detach()
        directions = (weight - weight.mean(0)) @ projection  # stay inside what is left
        u, s, vh = torch.linalg.svd(torch.cat([removed, directions]), full_matrices=False)
        removed = vh[s > s.max() * 1e-6]
        projection = torch.eye(d) - removed.T @ removed
    return projection, removed


def projection_hook(
    projection: Float[Tensor, "d_model d_model"],
    mean: Float[Tensor, "d_model"] | None = None,
    positions: int | Sequence[int] | None = None,
) -> Callable[..., Tensor]:
    """A hook that projects the residual with ``projection`` at chosen positions (None: all).

    With ``mean`` (e.g. the training activations' mean), h becomes mean + P (h - mean): the
    removed directions are set to their average value, not to zero, so the edit stays near
    the activations' natural range (a mean ablation of a subspace).
    """
    centre = torch.zeros(projection.shape[0]) if mean is None else mean.detach()

    def hook(resid: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        if resid.shape[-1] != projection.shape[0]:
            raise ValueError(f"the projection is {projection.shape[0]}-dimensional but the hooked activation has {resid.shape[-1]}.")
        edited = centre + (resid - centre) @ projection
        out = resid.clone()
        if positions is None:
            return edited
        out[:, positions] = edited[:, positions]
        return out

    return hook
