"""Train our SAE and SAELens's on the same activations with the same settings, in one run.

    python benchmarks/bench_sae.py           # full: notebook 07's activations, 2000 steps
    python benchmarks/bench_sae.py --quick   # a few seconds, for CI

The activations are toy-lm's residual stream before block 2 (``blocks.2.hook_resid_pre``)
on grammar documents, as in notebook 07; both SAEs have 256 latents and train for the same
steps on the same batches: TopK (k = 16) and ReLU + L1 (coefficient 5, as in the notebook).
Each is timed (the speed ratio is SAELens time / ours) and evaluated by `mi_course.sae` on
held-out documents: explained variance, L0 and the CE loss score. One torch thread. Exits 1
when the two disagree by more than 0.05 in explained variance or 0.02 in CE loss score.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from mi_course import grammar, load_model, sae

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file, or imported by run_all
from table import Row, agreement, quick_cli, timing  # noqa: E402

HOOK = "blocks.2.hook_resid_pre"
D_SAE = 256
KINDS = {"TopK (k=16)": dict(k=16), "ReLU + L1 (5.0)": dict(l1_coeff=5.0)}
TRAINERS = {"ours": lambda *args, **kwargs: sae.train_sae(*args, **kwargs)[0], "SAELens": sae.train_saelens_sae}  # ours also returns a history


def run(quick: bool) -> list[Row]:
    """Both SAEs of every kind: a training-time row (with the ratio), explained variance, L0 and CE loss score."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    docs, n_ctx, steps = (60, 32, 200) if quick else (250, 64, 2000)
    model = load_model("toy-lm")
    tokens = grammar.sample_tokens_with_labels(docs, seed=0, n_ctx=n_ctx).tokens
    n_train = docs * 4 // 5
    acts = sae.hook_activations(model, tokens, HOOK, batch_size=64)
    x_train, x_test = (a.reshape(-1, model.cfg.d_model) for a in (acts[:n_train], acts[n_train:]))
    print(f"toy-lm {HOOK}: {x_train.shape[0]} training and {x_test.shape[0]} held-out activations; {D_SAE} latents, {steps} steps; 1 torch thread")
    print(f"{'SAE':<16} {'library':<8} {'train s':>8} {'L0':>6} {'expl. var.':>11} {'CE score':>9} {'dead':>6}")
    rows = []
    for kind, settings in KINDS.items():
        seconds, metrics = {}, {}
        for library, train in TRAINERS.items():
            start = time.perf_counter()
            with torch.enable_grad():
                trained = train(x_train, D_SAE, steps=steps, seed=0, **settings)
            seconds[library] = time.perf_counter() - start
            metrics[library] = sae.evaluate_sae(trained, x_test) | sae.ce_loss_score(model, trained, tokens[n_train:], HOOK)
            m = metrics[library]
            print(f"{kind:<16} {library:<8} {seconds[library]:>8.2f} {m['L0']:>6.1f} {m['explained variance']:>11.3f} {m['CE loss score']:>9.3f} {m['dead fraction']:>6.2f}")
        ours, peer = metrics["ours"], metrics["SAELens"]
        rows += [
            timing("sae", f"{kind} vs SAELens: training time", seconds["ours"], seconds["SAELens"]),
            agreement("sae", f"{kind}: explained variance", ours["explained variance"], peer["explained variance"], 0.05),
            Row("sae", f"{kind}: L0", ours["L0"], peer["L0"]),
            agreement("sae", f"{kind}: CE loss score", ours["CE loss score"], peer["CE loss score"], 0.02),
        ]
    return rows


def main() -> int:
    return quick_cli(run, __doc__, "60 short documents and 200 steps (CI)")


if __name__ == "__main__":
    sys.exit(main())
