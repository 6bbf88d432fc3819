"""Sparse autoencoders (SAEs): a small reference implementation, its metrics, and SAELens beside it.

An SAE rewrites an activation x (d_in numbers) as a sparse, non-negative combination of
d_sae > d_in learned directions (Bricken et al. 2023; Cunningham et al. 2023):

    f = act((x - b_dec) W_enc + b_enc),    x_hat = f W_dec + b_dec,

where each row of ``W_dec`` (a latent's decoder direction) has unit norm. The activation is
either a ReLU trained with an L1 penalty on f, or TopK (Gao et al. 2024), which keeps the
k largest pre-activations and needs no penalty. The decoder bias is also subtracted
before encoding (the "pre-encoder bias").

Metrics (see REFERENCE.md): L0 = mean number of active latents per token; explained
variance = 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 and FVU = 1 - explained variance;
CE loss score = (CE zero-ablated - CE with the SAE spliced in) / (CE zero-ablated - clean
CE); dead latents = latents that never fire over a window of tokens.

The metric functions accept any SAE with ``encode`` and ``decode`` (ours or SAELens's), and
so do the interventions: `run_with_latent_edit` splices the SAE in with its error term kept
(so that only the edit changes the model), `latent_attribution` estimates every latent's
ablation effect at once (attribution patching, notebook 06), and `matched_random_latents` draws
the control latents. `PCAReconstruction`, `token_identity_auc` and a random TopK SAE are the
baselines that keep the metrics and the latent scores honest.
Why SAEs are needed at all is shown by `train_toy_superposition`: a toy model of
superposition (Elhage et al. 2022) stores more sparse features than it has dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.stats import rankdata
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

__all__ = [
    "SAE",
    "LatentScore",
    "TopContext",
    "add_to_latent",
    "best_latent_heldout",
    "binary_auc",
    "ce_loss_score",
    "compare_with_saelens",
    "dead_latents",
    "edit_activation",
    "evaluate_sae",
    "explained_variance",
    "feature_dimensionality",
    "feature_recovery",
    "hook_activations",
    "l0",
    "latent_ablation_effects",
    "latent_activations",
    "latent_attribution",
    "matched_random_latents",
    "PCAReconstruction",
    "planted_features",
    "run_with_latent_edit",
    "score_latents",
    "superposition_stats",
    "token_identity_auc",
    "top_activating_contexts",
    "train_toy_superposition",
    "train_saelens_sae",
    "train_sae",
    "zero_latents",
]


class Autoencoder(Protocol):
    """Anything with ``encode`` and ``decode``: our `SAE` or a SAELens SAE."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, f: Tensor) -> Tensor: ...


class SAE(nn.Module):
    """A ReLU or TopK sparse autoencoder; decoder rows (latent directions) are kept at unit norm."""

    def __init__(self, d_in: int, d_sae: int, *, k: int | None = None, seed: int = 0):
        super().__init__()
        if k is not None and not 0 < k <= d_sae:
            raise ValueError(f"k must be between 1 and d_sae={d_sae}, got {k}.")
        self.k = k
        gen = torch.Generator().manual_seed(seed)
        directions = torch.randn(d_sae, d_in, generator=gen)
        self.W_dec = nn.Parameter(directions / directions.norm(dim=-1, keepdim=True))
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latent activations: ReLU of the pre-activations, keeping only the top k when k is set."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"the SAE reads vectors of size d_in={self.d_in}, got shape {tuple(x.shape)}.")
        acts = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        if self.k is None:
            return acts
        top = acts.topk(self.k, dim=-1)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """The reconstruction: a sum of decoder directions weighted by the latents, plus b_dec."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm (so the L1 penalty cannot be dodged by shrinking f)."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)


def _check_activations(activations: Tensor) -> None:
    if activations.ndim != 2:
        raise ValueError(f"activations must be [n, d] (one row per token), got shape {tuple(activations.shape)}; flatten with x.reshape(-1, x.shape[-1]).")


def _minibatches(activations: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled minibatches of rows, reshuffled every epoch (``batch_size`` <= number of rows)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(activations.shape[0], generator=gen).split(batch_size):
            if len(idx) == batch_size:
                yield activations[idx]


def train_sae(
    activations: Float[Tensor, "n d_in"],
    d_sae: int,
    *,
    k: int | None = None,
    l1_coeff: float = 0.1,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    dead_window: int = 10_000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SAE, dict[str, list[float]]]:
    """Train an SAE with Adam on cached activations: ReLU + L1 (``k=None``) or TopK (``k`` given).

    Loss = squared error summed over d_in (mean over tokens) + ``l1_coeff`` * sum of latents
    (ReLU only); the right ``l1_coeff`` scales with the activations' norm, so sweep it and
    watch L0 against explained variance. The decoder bias starts at the data mean; decoder rows are renormalised after
    every step. Returns the SAE and a history of loss, L0 and the fraction of latents that have
    not fired for ``dead_window`` tokens.
    """
    _check_activations(activations)
    activations = activations.detach().float()
    sae = SAE(activations.shape[1], d_sae, k=k, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    tokens_since_fired = torch.zeros(d_sae)
    history: dict[str, list[float]] = {"loss": [], "l0": [], "dead_fraction": []}
    batches = _minibatches(activations, min(batch_size, activations.shape[0]), seed)
    for _ in tqdm(range(steps), desc="training SAE", disable=not progress):
        x = next(batches)
        f = sae.encode(x)
        loss = (sae.decode(f) - x).pow(2).sum(-1).mean()
        if k is None:
            loss = loss + l1_coeff * f.sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sae.normalize_decoder_()
        fired = (f > 0).any(0)
        tokens_since_fired = torch.where(fired, 0.0, tokens_since_fired + x.shape[0])
        history["loss"].append(loss.item())
        history["l0"].append(l0(f))
        history["dead_fraction"].append((tokens_since_fired >= dead_window).float().mean().item())
    return sae.eval(), history


def l0(acts: Float[Tensor, "... d_sae"]) -> float:
    """Mean number of active (non-zero) latents per token."""
    return (acts != 0).sum(-1).float().mean().item()


def explained_variance(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 over all tokens and dimensions (FVU = 1 - this)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x and its reconstruction must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}.")
    x, x_hat = x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1])
    return 1 - ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def dead_latents(acts: Float[Tensor, "n d_sae"]) -> Bool[Tensor, "d_sae"]:
    """Latents that never fire on any of the ``n`` tokens given (the window)."""
    return ~(acts.reshape(-1, acts.shape[-1]) > 0).any(0)


@torch.no_grad()
def evaluate_sae(sae: Autoencoder, activations: Float[Tensor, "n d_in"], batch_size: int = 4096) -> dict[str, float]:
    """L0, explained variance, FVU, mean squared error and dead-latent fraction on ``activations``."""
    _check_activations(activations)
    acts, recons = [], []
    for chunk in activations.split(batch_size):
        f = sae.encode(chunk)
        acts.append(f)
        recons.append(sae.decode(f))
    f, x_hat = torch.cat(acts), torch.cat(recons)
    ev = explained_variance(activations, x_hat)
    return {
        "L0": l0(f),
        "explained variance": ev,
        "FVU": 1 - ev,
        "MSE": (activations - x_hat).pow(2).sum(-1).mean().item(),
        "dead fraction": dead_latents(f).float().mean().item(),
    }


def _mean_ce(model: HookedTransformer, tokens: Tensor, hook_name: str, replace, batch_size: int) -> float:
    """Mean next-token loss with ``replace`` applied to the activation at ``hook_name`` (None: clean)."""
    hooks = [] if replace is None else [(hook_name, lambda act, hook: replace(act))]
    total = 0.0
    for chunk in tokens.split(batch_size):
        total += model.run_with_hooks(chunk, return_type="loss", fwd_hooks=hooks).item() * chunk.shape[0]
    return total / tokens.shape[0]


@torch.no_grad()
def ce_loss_score(
    model: HookedTransformer, sae: Autoencoder, tokens: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 32
) -> dict[str, float]:
    """How much of the loss the SAE keeps when spliced in at ``hook_name``: 1 = all, 0 = like zero ablation.

    score = (CE zero-ablated - CE spliced) / (CE zero-ablated - CE clean).
    """
    _check_hook(model, hook_name)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    clean = _mean_ce(model, tokens, hook_name, None, batch_size)
    zero = _mean_ce(model, tokens, hook_name, torch.zeros_like, batch_size)
    spliced = _mean_ce(model, tokens, hook_name, lambda act: sae.decode(sae.encode(act)).to(act.dtype), batch_size)
    return {"CE clean": clean, "CE zero ablation": zero, "CE spliced": spliced, "CE loss score": (zero - spliced) / (zero - clean)}


def _check_hook(model: HookedTransformer, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        raise KeyError(f"unknown hook {hook_name!r}; e.g. {list(model.hook_dict)[:4]} (see model.hook_dict).")


@torch.no_grad()
def hook_activations(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 32
) -> Float[Tensor, "batch pos d"]:
    """The model's activations at ``hook_name`` for every token, in batches (the SAE's training data)."""
    _check_hook(model, hook_name)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    out = []
    stop = _stop_layer(model, hook_name)
    for chunk in tqdm(tokens.split(batch_size), desc="caching activations", disable=len(tokens) <= 4 * batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=hook_name, stop_at_layer=stop)
        out.append(cache[hook_name])
    return torch.cat(out)


def _stop_layer(model: HookedTransformer, hook_name: str) -> int | None:
    """Where a forward pass can stop when only ``hook_name`` is needed (None: run it all, unembedding included).

    The activation is the same either way; skipping the later blocks and the unembedding only
    saves time (most of it on a wide model such as GPT-2 small).
    """
    parts = hook_name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) < model.cfg.n_layers:
        return int(parts[1]) + 1
    return None


@torch.no_grad()
def latent_activations(
    model: HookedTransformer, sae: Autoencoder, tokens: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 32
) -> Float[Tensor, "batch pos d_sae"]:
    """The SAE's latents on the model's activations at ``hook_name`` for every token."""
    return sae.encode(hook_activations(model, tokens, hook_name, batch_size))


class TopContext(NamedTuple):
    """One of a latent's top-activating tokens, with the tokens before it."""

    activation: float
    batch: int
    pos: int
    context: list[str]
    token: str


def top_activating_contexts(
    latent_acts: Float[Tensor, "batch pos"], tokens: Int[Tensor, "batch pos"], model: HookedTransformer, k: int = 10, window: int = 8
) -> list[TopContext]:
    """The ``k`` tokens where one latent fires most, each with up to ``window`` tokens before it."""
    if latent_acts.shape != tokens.shape:
        raise ValueError(f"latent_acts {tuple(latent_acts.shape)} must match tokens {tuple(tokens.shape)}; pass acts[..., latent].")
    values, flat = latent_acts.flatten().topk(min(k, latent_acts.numel()))
    contexts = []
    for value, index in zip(values.tolist(), flat.tolist()):
        b, p = divmod(index, tokens.shape[1])
        strings = model.to_str_tokens(tokens[b, max(0, p - window) : p + 1])
        contexts.append(TopContext(value, b, p, list(strings[:-1]), strings[-1]))
    return contexts


class LatentScore(NamedTuple):
    """The latent that best detects one label value, with its AUC and the precision/recall of "latent > 0"."""

    label: str
    latent: int
    auc: float
    precision: float
    recall: float
    count: int


def score_latents(
    acts: Float[Tensor, "n d_sae"], labels: Sequence | np.ndarray, min_count: int = 10
) -> list[LatentScore]:
    """For every label value (seen at least ``min_count`` times), the latent with the highest one-vs-rest AUC.

    AUC is the probability that a random token with the label activates the latent more
    than a random token without it (ties count half), computed from ranks.
    """
    labels = np.asarray(labels)
    if acts.ndim != 2 or acts.shape[0] != len(labels):
        raise ValueError(f"need acts [n, d_sae] and n labels, got acts {tuple(acts.shape)} and {len(labels)} labels; flatten both the same way.")
    x = acts.detach().cpu().numpy()
    ranks = rankdata(x, axis=0)
    scores = []
    for value in np.unique(labels):
        positive = labels == value
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos < min_count or n_neg == 0:
            continue
        auc = (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        best = int(auc.argmax())
        fires = x[:, best] > 0
        precision = float((fires & positive).sum() / max(fires.sum(), 1))
        recall = float((fires & positive).sum() / n_pos)
        scores.append(LatentScore(str(value), best, float(auc[best]), precision, recall, n_pos))
    return sorted(scores, key=lambda s: -s.auc)


def planted_features(
    n: int, d: int, n_features: int, *, p_active: float = 0.05, noise: float = 0.01, seed: int = 0
) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n_features d"], Float[Tensor, "n n_features"]]:
    """Synthetic activations with known features: sparse non-negative codes @ a random unit dictionary + noise.

    Each feature is active independently with probability ``p_active`` at a magnitude drawn
    uniformly from [0.5, 1.5]. Returns (activations, dictionary, codes).
    """
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_features, d, generator=gen)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    active = torch.rand(n, n_features, generator=gen) < p_active
    codes = active * (0.5 + torch.rand(n, n_features, generator=gen))
    activations = codes @ dictionary + noise * torch.randn(n, d, generator=gen)
    return activations, dictionary, codes


def feature_recovery(decoder: Float[Tensor, "d_sae d"], dictionary: Float[Tensor, "n_features d"]) -> Float[Tensor, "n_features"]:
    """For every true feature, the highest cosine similarity of any decoder direction with it."""
    if decoder.shape[-1] != dictionary.shape[-1]:
        raise ValueError(f"decoder rows ({decoder.shape[-1]}) and dictionary rows ({dictionary.shape[-1]}) must live in the same space.")
    dec = decoder / decoder.norm(dim=-1, keepdim=True)
    true = dictionary / dictionary.norm(dim=-1, keepdim=True)
    return (true @ dec.T).max(-1).values


def train_saelens_sae(
    activations: Float[Tensor, "n d_in"],
    d_sae: int,
    *,
    k: int | None = None,
    l1_coeff: float = 0.1,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
):
    """Train SAELens's own training SAE (standard = ReLU + L1, or TopK) with SAELens's ``SAETrainer``.

    SAELens's runner wants a model and a hub dataset; its ``SAETrainer`` only needs an
    iterator of activation batches, so it is fed shuffled minibatches of the in-memory tensor.
    Two settings are adapted to short in-memory runs, as for our SAE: the decoder bias starts
    at the data mean (SAELens starts it at 0), and a latent counts as dead for TopK's
    auxiliary loss after a tenth of the run (SAELens's default, 1000 steps, is longer than
    a typical run here).
    """
    from sae_lens import LoggingConfig, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    _check_activations(activations)
    activations = activations.detach().float()
    batch_size = min(batch_size, activations.shape[0])
    torch.manual_seed(seed)
    d_in = activations.shape[1]
    if k is None:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=l1_coeff))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(0))
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        device="cpu",
        dead_feature_window=max(1, steps // 10),
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg=cfg, sae=sae, data_provider=_minibatches(activations, batch_size, seed)).fit().eval()


def compare_with_saelens(
    activations: Float[Tensor, "n d_in"],
    d_sae: int,
    *,
    k: int | None = None,
    l1_coeff: float = 0.1,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    test_fraction: float = 0.2,
    dictionary: Float[Tensor, "n_features d_in"] | None = None,
    model: HookedTransformer | None = None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    hook_name: str | None = None,
) -> dict:
    """Train our SAE and SAELens's with the same settings on the same activations; evaluate both alike.

    Metrics are computed by this module on a held-out ``test_fraction`` of the rows. With a
    known ``dictionary`` the fraction of features recovered (max cosine > 0.9) is added; with
    ``model``, ``tokens`` and ``hook_name`` the CE loss score too. Returns
    ``{"metrics": {"ours": {...}, "SAELens": {...}}, "saes": {"ours": sae, "SAELens": sae}}``.
    """
    _check_activations(activations)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    if (model is None) != (tokens is None) or (model is None) != (hook_name is None):
        raise ValueError("for the CE loss score pass all of model, tokens and hook_name (or none of them).")
    perm = torch.randperm(activations.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(test_fraction * activations.shape[0])
    train, test = activations[perm[n_test:]], activations[perm[:n_test]]
    settings = dict(k=k, l1_coeff=l1_coeff, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    ours, _ = train_sae(train, d_sae, **settings)
    saes = {"ours": ours, "SAELens": train_saelens_sae(train, d_sae, **settings)}
    metrics = {}
    for name, sae in saes.items():
        metrics[name] = evaluate_sae(sae, test)
        if dictionary is not None:
            metrics[name]["features recovered"] = (feature_recovery(sae.W_dec.detach(), dictionary) > 0.9).float().mean().item()
        if model is not None:
            metrics[name]["CE loss score"] = ce_loss_score(model, sae, tokens, hook_name)["CE loss score"]
    return {"metrics": metrics, "saes": saes}


def train_toy_superposition(
    n_features: int = 20,
    d_hidden: int = 5,
    feature_probs: Sequence[float] = (1.0, 0.1, 0.01),
    *,
    importance_decay: float = 0.7,
    steps: int = 1000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Float[Tensor, "instance d_hidden n_features"], Float[Tensor, "instance n_features"]]:
    """Elhage et al.'s toy model x' = ReLU(W^T W x + b), one instance per feature probability, trained together.

    Each feature is present with probability p (sparsity 1 - p) at a value uniform in [0, 1];
    feature i's squared error is weighted by importance ``importance_decay ** i``. Returns W
    (columns are the features' embeddings) and b.
    """
    if d_hidden >= n_features:
        raise ValueError(f"superposition needs fewer dimensions than features, got d_hidden={d_hidden} >= n_features={n_features}.")
    probs = torch.tensor(list(feature_probs), dtype=torch.float)[:, None, None]
    if not ((probs > 0) & (probs <= 1)).all():
        raise ValueError(f"feature probabilities must be in (0, 1], got {list(feature_probs)}.")
    gen = torch.Generator().manual_seed(seed)
    W = nn.Parameter(torch.randn(len(probs), d_hidden, n_features, generator=gen) * (2 / (d_hidden + n_features)) ** 0.5)
    b = nn.Parameter(torch.zeros(len(probs), n_features))
    importance = importance_decay ** torch.arange(n_features, dtype=torch.float)
    optimizer = torch.optim.Adam([W, b], lr=lr)
    for _ in tqdm(range(steps), desc="toy model", disable=not progress):
        shape = (len(probs), batch_size, n_features)
        x = torch.rand(shape, generator=gen) * (torch.rand(shape, generator=gen) < probs)
        x_hat = torch.relu(x @ W.transpose(1, 2) @ W + b[:, None])
        loss = (importance * (x - x_hat).pow(2)).mean(1).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return W.detach(), b.detach()


def superposition_stats(W: Float[Tensor, "instance d_hidden n_features"]) -> dict[str, Tensor]:
    """Per feature: its embedding's norm (about 1 = represented) and its interference sum_j (w_i/|w_i| . w_j)^2, j != i.

    Interference is meaningful for represented features only (an unused feature's direction is
    arbitrary). Also the number of represented features (norm > 0.5) per instance: above
    d_hidden means superposition.
    """
    norms = W.norm(dim=1)
    unit = W / norms.clamp(min=1e-8)[:, None]
    overlaps = (unit.transpose(1, 2) @ W).pow(2)
    interference = overlaps.sum(-1) - overlaps.diagonal(dim1=1, dim2=2)
    return {"norm": norms, "interference": interference, "represented": (norms > 0.5).sum(-1)}


def feature_dimensionality(W: Float[Tensor, "... d_hidden n_features"]) -> Float[Tensor, "... n_features"]:
    """How many hidden dimensions each feature gets (Elhage et al. 2022): its squared norm over
    the squared overlaps of its direction with every feature's embedding, itself included.

    1 for a feature alone on its own dimension, 1/2 for each of an antipodal pair, 0 for a
    feature that is not represented. Summed over features: the dimensions in use.
    """
    norms = W.norm(dim=-2)
    unit = W / norms.clamp(min=1e-8).unsqueeze(-2)
    overlaps = (unit.transpose(-1, -2) @ W).pow(2).sum(-1)
    return torch.where(norms > 1e-6, norms.pow(2) / overlaps.clamp(min=1e-12), torch.zeros_like(norms))


# Interventions on latents -------------------------------------------------------------------------------
#
# An SAE spliced into a model changes its output, because the reconstruction is not exact. To ask
# what one latent does, keep the SAE's error term: the activation becomes x + decode(f') - decode(f),
# where f are the latents of x and f' the edited latents. With no edit it is x itself (exactly), so
# every difference comes from the edit.

LatentEdit = Callable[[Tensor], Tensor]


def zero_latents(latents: int | Sequence[int]) -> LatentEdit:
    """An edit that ablates ``latents`` (sets them to 0 wherever they fire)."""
    index = [latents] if isinstance(latents, int) else list(latents)

    def edit(f: Tensor) -> Tensor:
        f = f.clone()
        f[..., index] = 0
        return f

    return edit


def add_to_latent(latent: int, amount: float) -> LatentEdit:
    """An edit that steers: adds ``amount`` to one latent (moves the activation along its decoder direction)."""

    def edit(f: Tensor) -> Tensor:
        f = f.clone()
        f[..., latent] += amount
        return f

    return edit


def edit_activation(
    sae: Autoencoder, x: Float[Tensor, "... d_in"], edit: LatentEdit, positions: Int[Tensor, " batch"] | None = None
) -> Float[Tensor, "... d_in"]:
    """``x`` with its latents edited and the SAE's error term kept: x + decode(edit(f)) - decode(f).

    ``positions`` (one per row of a ``[batch, pos, d]`` activation) limits the edit to those
    tokens; ``None`` edits every token. With an edit that changes nothing, ``x`` comes back unchanged.
    """
    if positions is not None:
        if x.ndim != 3 or positions.shape != (x.shape[0],):
            raise ValueError(f"positions must give one position per prompt of a [batch, pos, d] activation, got {tuple(positions.shape)} for {tuple(x.shape)}.")
        rows = torch.arange(x.shape[0])
        out = x.clone()
        out[rows, positions] = edit_activation(sae, x[rows, positions], edit)
        return out
    f = sae.encode(x)
    return x + (sae.decode(edit(f)) - sae.decode(f)).to(x.dtype)


def run_with_latent_edit(
    model: HookedTransformer,
    sae: Autoencoder,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    edit: LatentEdit,
    positions: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's logits with the SAE spliced in at ``hook_name`` (error term kept) and its latents edited."""
    _check_hook(model, hook_name)
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: edit_activation(sae, act, edit, positions))])


def latent_attribution(
    model: HookedTransformer,
    sae: Autoencoder,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    positions: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, " d_sae"]:
    """Attribution patching on latents (notebook 06): the first-order change of ``metric`` when each latent is ablated.

    With the SAE spliced in (error term kept), the estimate for latent j is
    sum over tokens of (0 - f_j) * d metric / d f_j: one forward and one backward pass for all latents.
    """
    _check_hook(model, hook_name)
    captured: dict[str, Tensor] = {}

    def hook(act: Tensor, hook) -> Tensor:
        f = sae.encode(act).detach()
        if positions is not None:
            f = f[torch.arange(act.shape[0]), positions]
        f.requires_grad_(True)
        captured["f"] = f
        delta = sae.decode(f) - sae.decode(f.detach())  # zero in value, carries the gradient to f
        if positions is None:
            return act + delta
        out = act.clone()
        out[torch.arange(act.shape[0]), positions] += delta
        return out

    with torch.enable_grad():
        value = metric(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)]))
        (grad,) = torch.autograd.grad(value, captured["f"])
    f = captured["f"].detach()
    return (-f * grad).reshape(-1, f.shape[-1]).sum(0)


@torch.no_grad()
def latent_ablation_effects(
    model: HookedTransformer,
    sae: Autoencoder,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    latents: Sequence[int],
    positions: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, " n_latents"]:
    """The exact change of ``metric`` when each of ``latents`` is ablated (one forward pass each)."""
    base = metric(model(tokens)).item()
    effects = [
        metric(run_with_latent_edit(model, sae, hook_name, tokens, zero_latents(j), positions)).item() - base
        for j in tqdm(latents, desc="ablating latents", disable=len(latents) < 50)
    ]
    return torch.tensor(effects)


def matched_random_latents(
    acts: Float[Tensor, "n d_sae"], latent: int, n: int, *, factor: float = 2.0, seed: int = 0
) -> list[int]:
    """The control for a latent intervention: ``n`` other latents whose mean activation (over the tokens
    where they fire) is within ``factor`` of ``latent``'s, drawn at random.

    Raises if fewer than ``n`` latents qualify: widen ``factor`` or use more tokens.
    """
    acts = acts.reshape(-1, acts.shape[-1])
    fires = acts > 0
    size = (acts * fires).sum(0) / fires.sum(0).clamp(min=1)
    target = size[latent]
    if target <= 0:
        raise ValueError(f"latent {latent} never fires on these tokens; pick a live latent.")
    ok = (size >= target / factor) & (size <= target * factor)
    ok[latent] = False
    candidates = ok.nonzero().flatten()
    if len(candidates) < n:
        raise ValueError(f"only {len(candidates)} latents have a mean activation within a factor {factor} of latent {latent}'s; need {n}.")
    gen = torch.Generator().manual_seed(seed)
    return sorted(candidates[torch.randperm(len(candidates), generator=gen)[:n]].tolist())


# Baselines that keep the metrics honest -----------------------------------------------------------------


class PCAReconstruction:
    """The best k-dimensional linear code of activations, learned from ``train``: its top-k principal components.

    The baseline for an SAE at L0 = k: k numbers per token, but the same k directions for every
    token. It has ``encode`` and ``decode``, so the SAE metrics (and the CE loss score) apply to it.
    """

    def __init__(self, train: Float[Tensor, "n d"], k: int):
        _check_activations(train)
        if not 0 < k <= train.shape[1]:
            raise ValueError(f"k must be between 1 and d={train.shape[1]}, got {k}.")
        self.mean = train.mean(0)
        self.basis = torch.linalg.svd(train - self.mean, full_matrices=False)[2][:k]

    def encode(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... k"]:
        return (x - self.mean) @ self.basis.T

    def decode(self, codes: Float[Tensor, "... k"]) -> Float[Tensor, "... d"]:
        return codes @ self.basis + self.mean


def token_identity_auc(
    train_tokens: Int[Tensor, " n"], train_labels: np.ndarray, test_tokens: Int[Tensor, " m"], test_labels: np.ndarray
) -> float:
    """How well the word alone predicts a binary label: AUC on held-out tokens of the score
    "fraction of this token's training occurrences that had the label" (unseen tokens: the overall rate).

    A latent's AUC means something about context only where it beats this baseline.
    """
    train_labels, test_labels = np.asarray(train_labels, dtype=bool), np.asarray(test_labels, dtype=bool)
    if len(train_tokens) != len(train_labels) or len(test_tokens) != len(test_labels):
        raise ValueError("need one label per token, in the same order, for both the training and the held-out tokens.")
    rate: dict[int, list[int]] = {}
    for token, label in zip(train_tokens.tolist(), train_labels.tolist()):
        rate.setdefault(token, []).append(label)
    prior = float(train_labels.mean())
    score = np.array([np.mean(rate[t]) if t in rate else prior for t in test_tokens.tolist()])
    return binary_auc(score, test_labels)


def binary_auc(score: np.ndarray | Tensor, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    score = score.detach().cpu().numpy() if isinstance(score, Tensor) else np.asarray(score, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the AUC needs both positive and negative tokens.")
    ranks = rankdata(score)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_latent_heldout(
    train_acts: Float[Tensor, "n d_sae"], train_labels: np.ndarray, test_acts: Float[Tensor, "m d_sae"], test_labels: np.ndarray
) -> tuple[int, float, float]:
    """Pick the latent with the highest AUC for a binary label on training tokens; score it on held-out tokens.

    Returns (latent, training AUC, held-out AUC). Picking and scoring on the same tokens would
    reward the luckiest of thousands of latents.
    """
    train_labels = np.asarray(train_labels, dtype=bool)
    if train_labels.all() or not train_labels.any():
        raise ValueError("the training tokens need both labels (some True, some False) to pick a latent.")
    scores = score_latents(train_acts, train_labels, min_count=1)
    best = next(s for s in scores if s.label == "True")
    return best.latent, best.auc, binary_auc(test_acts[:, best.latent], test_labels)
