"""Time mi_course.patching against transformer_lens.patching on the same sweeps, in one run.

    python benchmarks/bench_patching.py           # full: toy-lm on IOI
    python benchmarks/bench_patching.py --quick   # a few seconds, for CI

Each sweep runs both implementations on the same inputs, checks that they agree to 1e-4 and
prints the speed ratio (transformer_lens time / ours); the headline is the full head x
position sweep, whose target is >= 3x. One torch thread, as on the course's shared CPUs.
Exits 1 when the results disagree or the headline misses its target (full mode only).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from collections.abc import Callable

import torch
import transformer_lens.patching as tlp
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import patching as P

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file, or by runpy in the tests
from setups import toy_lm_ioi  # noqa: E402
from table import Row, at_most, quick_cli, timing  # noqa: E402

HEADLINE_SPEEDUP = 3.0  # the target of the full head x position sweep on toy-lm


def random_setup(n_layers: int, d_model: int, n_heads: int, d_mlp: int, d_vocab: int, batch: int, pos: int, seed: int = 0):
    """A random-init model and random prompts; the corrupted prompts differ in 3 positions (like IOI's names)."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp,
        n_ctx=max(pos, 32), d_vocab=d_vocab, act_fn="gelu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, d_vocab, (batch, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [1, 3, pos - 3]] = torch.randint(0, d_vocab, (batch, 3), generator=gen)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, 0] - logits[:, -1, 1]).mean()

    desc = f"random model ({n_layers} layers, d_model {d_model}, {n_heads} heads, d_mlp {d_mlp}, vocab {d_vocab}), batch {batch}, {pos} positions"
    return model, clean, corrupted, metric, desc


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def run(quick: bool) -> list[Row]:
    """Every sweep by both implementations on the same inputs: a time row (with the ratio) and a max-|diff| row each."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if quick:
        setup, repeats = random_setup(2, 32, 4, 64, 50, batch=8, pos=10), 1
    else:
        setup, repeats = toy_lm_ioi(16), 3
    model, clean, corrupted, metric, desc = setup
    print(f"setup: {desc}; best of {repeats}; 1 torch thread")
    sweeps = [
        ("head x position (z)", P.patch_head_out_by_pos, tlp.get_act_patch_attn_head_out_by_pos),
        ("head, all positions (z)", P.patch_head_out, tlp.get_act_patch_attn_head_out_all_pos),
        ("residual stream x position", P.patch_resid_pre, tlp.get_act_patch_resid_pre),
        ("MLP output x position", P.patch_mlp_out, tlp.get_act_patch_mlp_out),
    ]
    rows = []
    print(f"{'sweep':<28} {'patches':>7} {'transformer_lens':>17} {'mi_course':>10} {'speed-up':>9} {'max |diff|':>11}")
    with torch.no_grad():
        for label, ours, peer in sweeps:

            def run_peer() -> torch.Tensor:
                _, cache = model.run_with_cache(clean)  # part of the peer's cost, as our own clean run is
                return peer(model, corrupted, cache, metric)

            peer_time, expected = best_time(run_peer, repeats)
            our_time, result = best_time(lambda: ours(model, clean, corrupted, metric, progress=False), repeats)
            diff = (result - expected.to(result.dtype)).abs().max().item()
            headline = not quick and label == sweeps[0][0]  # the target is set on toy-lm, not on the small random model
            rows.append(timing("patching", f"{label} vs transformer_lens: time", our_time, peer_time, HEADLINE_SPEEDUP if headline else None))
            rows.append(at_most("patching", f"{label}: max |diff|", diff, 1e-4))
            print(f"{label:<28} {result.numel():>7} {peer_time:>16.2f}s {our_time:>9.2f}s {peer_time / our_time:>8.1f}x {diff:>11.1e}")
    return rows


def main() -> int:
    return quick_cli(run, __doc__, "a small random model and one repeat (CI)")


if __name__ == "__main__":
    sys.exit(main())
