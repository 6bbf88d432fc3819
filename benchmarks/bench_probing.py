"""Fit our linear probe and scikit-learn's LogisticRegression on the same features and labels, in one run.

    python benchmarks/bench_probing.py           # full: every residual layer, 200 documents of 64 tokens
    python benchmarks/bench_probing.py --quick   # notebook 08's data at one layer, for CI

The task is notebook 08's part-of-speech probe on toy-lm's residual stream (grammar
documents, split by document). Both minimise the same objective, mean cross-entropy +
|W|^2 / (2 C n) with C = 1: ours with full-batch L-BFGS (`train_probe`, 100 iterations),
scikit-learn's with its lbfgs solver (max_iter 300, as in the notebook). Prints the test
accuracy of each, how often their predictions agree, the objective each reached, the fit
times and their ratio (scikit-learn / ours). One thread for torch and for scikit-learn's
BLAS. Exits 1 when the probes agree on fewer than 95% of test tokens or their accuracies
differ by more than 0.02.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import Tensor

from mi_course import load_model
from mi_course.grammar import sample_tokens_with_labels
from mi_course.probing import accuracy, encode_labels, predict, residual_activations, train_probe, train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file, or imported by run_all
from table import Row, agreement, at_least, quick_cli, timing  # noqa: E402

C = 1.0
SKLEARN_MAX_ITER = 300


def objective(weight: Float[Tensor, "classes d"], bias: Float[Tensor, "classes"], x: Float[Tensor, "n d"], y: Int[Tensor, "n"]) -> float:
    """The objective both probes minimise: mean cross-entropy + |W|^2 / (2 C n)."""
    return (F.cross_entropy(x @ weight.T + bias, y) + weight.pow(2).sum() / (2 * C * len(y))).item()


def run(quick: bool) -> list[Row]:
    """Both probes at every layer: fit time (with the ratio), test accuracy, agreement and the objective each reached."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_model("toy-lm")
    docs, n_ctx = (100, 32) if quick else (200, 64)
    layers = [2] if quick else range(model.cfg.n_layers + 1)
    data = sample_tokens_with_labels(docs, seed=0, n_ctx=n_ctx)
    y, classes = encode_labels(data.pos.reshape(-1))
    train, test = train_test_split(len(y), 0.25, seed=0, groups=torch.arange(docs).repeat_interleave(n_ctx))
    print(f"toy-lm part of speech ({len(classes)} classes): {len(train)} training and {len(test)} test tokens; C = {C}; 1 thread")
    print(f"{'residual':<9} {'ours s':>7} {'sklearn s':>10} {'ratio':>6} {'ours acc':>9} {'sklearn acc':>12} {'agree':>7} {'ours obj':>9} {'sklearn obj':>12}")
    rows = []
    for layer in layers:
        x = residual_activations(model, data.tokens, layer).reshape(-1, model.cfg.d_model)
        start = time.perf_counter()
        ours = train_probe(x[train], y[train], l2=1 / (C * len(train)), n_classes=len(classes))
        our_time = time.perf_counter() - start
        start = time.perf_counter()
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # its objective is printed beside ours instead
            sk = LogisticRegression(C=C, max_iter=SKLEARN_MAX_ITER).fit(x[train].numpy(), y[train].numpy())
        sk_time = time.perf_counter() - start
        sk_pred = torch.as_tensor(sk.predict(x[test].numpy()))
        our_acc, sk_acc = accuracy(ours, x[test], y[test]), (sk_pred == y[test]).float().mean().item()
        agree = (predict(ours, x[test]) == sk_pred).float().mean().item()
        our_obj = objective(ours.linear.weight.detach(), ours.linear.bias.detach(), x[train], y[train])
        sk_obj = objective(torch.as_tensor(sk.coef_).float(), torch.as_tensor(sk.intercept_).float(), x[train], y[train])
        name = "embed" if layer == 0 else f"after L{layer - 1}"
        print(f"{name:<9} {our_time:>7.2f} {sk_time:>10.2f} {sk_time / our_time:>5.1f}x {our_acc:>9.4f} {sk_acc:>12.4f} {agree:>7.2%} {our_obj:>9.4f} {sk_obj:>12.4f}")
        rows += [
            timing("probing", f"{name} vs scikit-learn: fit time", our_time, sk_time),
            agreement("probing", f"{name}: test accuracy", our_acc, sk_acc, 0.02),
            at_least("probing", f"{name}: same prediction as scikit-learn", agree, 0.95),
            Row("probing", f"{name}: objective reached (lower is better)", our_obj, sk_obj),
        ]
    return rows


def main() -> int:
    return quick_cli(run, __doc__, "notebook 08's 100 documents of 32 tokens, layer 2 only (CI)")


if __name__ == "__main__":
    sys.exit(main())
