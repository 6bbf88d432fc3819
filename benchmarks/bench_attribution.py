"""Time edge attribution patching (EAP, EAP-IG) against exact edge patching, in one run.

    python benchmarks/bench_attribution.py           # full: random models of 1-4 layers, and toy-lm on IOI
    python benchmarks/bench_attribution.py --quick   # a few seconds, for CI

Exact edge patching runs one forward pass per edge (`edge_patching_effects`); EAP scores
every edge from 2 forward passes without gradients and one with a backward pass, EAP-IG (5
steps) from 5 of those. So the speed ratio grows with the number of edges, which grows
with the square of the number of layers. Also prints how well EAP and EAP-IG rank the edges
(Spearman and top-20 overlap against exact patching), the faithfulness of their top-n circuits
on the last model, and node AtP against the batched activation patching of heads.
One torch thread, as on the course's shared CPUs. Exits 1 when EAP or EAP-IG ranks the
edges of a model with a Spearman correlation below 0.5 against exact patching.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import attribution as A
from mi_course import patching as P

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file, or by runpy in the tests
from setups import toy_lm_ioi  # noqa: E402
from table import Row, at_least, quick_cli, timing  # noqa: E402

MIN_SPEARMAN = 0.5  # EAP is an approximation; below this its ranking of the edges is not worth its speed


def random_setup(n_layers: int, seed: int = 0, batch: int = 8, pos: int = 12, d_model: int = 64):
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
        n_ctx=32, d_vocab=200, act_fn="gelu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 200, (batch, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [1, 3]] = torch.randint(0, 200, (batch, 2), generator=gen)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, 0] - logits[:, -1, 1]).mean()

    return model, clean, corrupted, metric, f"random {n_layers}-layer (d_model {d_model}, 4 heads)"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(quick: bool) -> list[Row]:
    """EAP and EAP-IG against exact edge patching on every model: a time row (with the ratio) and a Spearman row each."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if quick:
        setups = [random_setup(n, d_model=32, batch=4, pos=8) for n in (1, 2)]
    else:
        setups = [random_setup(n) for n in (1, 2, 3, 4)]
        setups.append(toy_lm_ioi(16))
    print("1 torch thread; times in seconds; speed-up = exact edge patching time / EAP time")
    rows, curves = [], []
    print("Spearman and top-20 overlap against exact edge patching: EAP / EAP-IG(5)")
    print(f"{'model':<38} {'edges':>6} {'exact':>7} {'EAP':>6} {'speed-up':>9} {'EAP-IG(5)':>10} {'speed-up':>9} {'Spearman':>13} {'top-20':>11}")
    for model, clean, corrupted, metric, desc in setups:
        exact_time, exact = timed(lambda: A.edge_patching_effects(model, clean, corrupted, metric, progress=False))
        eap_time, eap = timed(lambda: A.edge_attribution_patching(model, clean, corrupted, metric))
        ig_time, ig = timed(lambda: A.edge_attribution_patching_ig(model, clean, corrupted, metric, steps=5))
        truth = list(exact.values())
        ours, ours_ig = [eap[e] for e in exact], [ig[e] for e in exact]
        rho, rho_ig = A.rank_correlation(ours, truth), A.rank_correlation(ours_ig, truth)
        name = desc.split(" (")[0]  # "random 2-layer", "toy-lm"
        for method, seconds, correlation in (("EAP", eap_time, rho), ("EAP-IG(5)", ig_time, rho_ig)):
            rows.append(timing("attribution", f"{name}: {method} vs exact edge patching, time", seconds, exact_time))
            rows.append(at_least("attribution", f"{name}: {method} Spearman vs exact", correlation, MIN_SPEARMAN))
        overlap = f"{A.top_k_overlap(ours, truth, 20):.2f} / {A.top_k_overlap(ours_ig, truth, 20):.2f}"
        print(
            f"{desc:<38} {len(exact):>6} {exact_time:>7.2f} {eap_time:>6.3f} {exact_time / eap_time:>8.0f}x "
            f"{ig_time:>10.3f} {exact_time / ig_time:>8.0f}x {f'{rho:.3f} / {rho_ig:.3f}':>13} {overlap:>11}"
        )
        curves.append((desc, model, clean, corrupted, metric, eap, ig))
    model_desc, model, clean, corrupted, metric, eap, ig = curves[-1]
    sizes = [n for n in (10, 25, 50, 100, 200, 400) if n < len(eap)]
    print(f"\nfaithfulness (clean = 1, corrupted = 0) of the top-n edges, {model_desc}: EAP / EAP-IG(5)")
    eap_curve = A.faithfulness_curve(model, eap, clean, corrupted, metric, sizes, progress=False)
    ig_curve = A.faithfulness_curve(model, ig, clean, corrupted, metric, sizes, progress=False)
    print("  " + "  ".join(f"n={n}: {eap_curve[n]:.2f} / {ig_curve[n]:.2f}" for n in sizes))
    print("\nnode level, heads x positions: AtP vs batched activation patching (mi_course.patching)")
    for model, clean, corrupted, metric, desc in setups:
        with torch.no_grad():
            base = float(metric(model(clean)))
        patch_time, patched = timed(lambda: P.patch_head_out_by_pos(model, clean, corrupted, metric, direction="noising", progress=False))
        atp_time, atp = timed(lambda: A.attribution_patching(model, clean, corrupted, metric, "z", ("layer", "pos", "head")))
        print(
            f"{desc:<38} {patched.numel():>6} patches: patching {patch_time:.2f}s, AtP {atp_time:.3f}s "
            f"({patch_time / atp_time:.0f}x), Spearman {A.rank_correlation(atp, patched - base):.3f}"
        )
    return rows


def main() -> int:
    return quick_cli(run, __doc__, "1- and 2-layer models of d_model 32 only (CI)")


if __name__ == "__main__":
    sys.exit(main())
