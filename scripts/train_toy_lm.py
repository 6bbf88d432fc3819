"""Train toy-lm, the course's small GPT-style model, on the synthetic English of `mi_course.grammar`.

    python scripts/train_toy_lm.py                 # the shipped model (18 min on a busy 2-core CPU)
    python scripts/train_toy_lm.py --card-only     # re-evaluate the saved model and rewrite MODEL_CARD.md
    python scripts/train_toy_lm.py --tiny --steps 3 --out /tmp/toy   # smoke test of the pipeline

Training is deterministic given --seed (batches are drawn from the grammar with seeds derived
from the seed and the step). The model card records data, architecture, steps, seed, final
loss, the grammar's entropy, held-out task metrics and the training time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import grammar
from mi_course.models import ZOO, load_from_directory
from mi_course.training import next_token_loss, save_model, train

FULL = {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512, "n_ctx": 64}
TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "n_ctx": 64}


def build_model(arch: dict, seed: int) -> HookedTransformer:
    """An untrained toy-lm-shaped HookedTransformer with the grammar's tokenizer."""
    tok = grammar.tokenizer()
    cfg = HookedTransformerConfig(
        **arch,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="LN",
        model_name="toy-lm",
        seed=seed,
        default_prepend_bos=True,
    )
    return HookedTransformer(cfg, tokenizer=tok)


def batch_seed(seed: int, step: int) -> int:
    """The grammar seed of a training batch; held-out data in tests uses seeds below 1e6."""
    return 1_000_000 * (seed + 1) + step


def held_out_loss(model: HookedTransformer, n: int = 256, seed: int = 7) -> tuple[float, float]:
    """(model's mean next-token loss, grammar's mean entropy) on the same fresh documents."""
    data = grammar.sample_tokens_with_labels(n, seed, model.cfg.n_ctx)
    with torch.no_grad():
        loss = next_token_loss(model(data.tokens), data.tokens).item()
    return loss, data.entropy[:, 1:].mean().item()


def evaluate(model: HookedTransformer, seed: int = 7) -> dict[str, float]:
    """Held-out task metrics (new seeds) for the model card."""
    from mi_course.tasks import make_task

    out = {}
    loss, entropy = held_out_loss(model, seed=seed)
    out["held-out loss (nats/token)"] = loss
    out["grammar entropy (nats/token)"] = entropy
    ioi = make_task("ioi", model, n=200, seed=seed)
    out["IOI logit difference"] = ioi.clean_value
    out["IOI: IO preferred"] = ioi.accuracy(ioi.logits(model))
    out["IOI logit difference, ABC-corrupted"] = ioi.corrupted_value
    gt = make_task("greater_than", model, n=200, seed=seed)
    out["greater-than probability difference"] = gt.clean_value
    out["greater-than probability difference, 01-corrupted"] = gt.corrupted_value
    for variant in ("simple", "pp", "rc_across", "rc_within"):
        task = make_task("sva", model, n=200, seed=seed, variant=variant)
        out[f"SVA {variant}: logit difference"] = task.clean_value
        out[f"SVA {variant}: accuracy"] = task.accuracy(task.logits(model))
    ind = make_task("induction", model, n=200, seed=seed)
    out["induction: mean log-prob on the repeat (clean)"] = ind.clean_value
    out["induction: mean log-prob on the repeat (corrupted)"] = ind.corrupted_value
    return out


def card(model: HookedTransformer, info: dict, metrics: dict[str, float]) -> str:
    cfg = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics.items())
    mix, (low, high) = grammar.P_KIND, grammar.REPEAT_LENGTHS
    return f"""# toy-lm

A small GPT-style transformer trained by `scripts/train_toy_lm.py` on the synthetic English of
`mi_course.grammar`, so that its behaviour on IOI, greater-than, subject-verb agreement and
induction can be studied offline on a CPU.

## Data
Documents of {cfg.n_ctx} tokens (BOS + sentences, the last one cut) sampled from the grammar:
IOI sentences ({mix['ioi']:.0%}), greater-than year sentences ({mix['greater_than']:.0%}), subject-verb
agreement with simple, prepositional-phrase and relative-clause structures ({mix['sva']:.0%}),
repeated spans of {low}-{high} distinct words ({mix['repeat']:.0%}) and filler sentences ({mix['filler']:.0%}).
Word-level tokenizer ({cfg.d_vocab} tokens, lower case, years as two two-digit tokens).
Fresh documents every step (no epochs).

## Architecture
{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads of d_head {cfg.d_head}, d_mlp {cfg.d_mlp},
GELU, LayerNorm, learned positional embeddings, n_ctx {cfg.n_ctx}; {n_params:,} parameters.

## Training
{info['steps']} steps of batch {info['batch']}, AdamW (lr {info['lr']}, weight decay 0.01), 100 warmup
steps then cosine decay, seed {info['seed']}. Final training loss (mean of the last 50 steps):
{info['final_loss']:.3f} nats/token. Training time: {info['minutes']:.1f} min on {info['threads']} CPU thread(s)
of a shared 2-core machine.

## Held-out metrics (new seeds)
Computed by `mi_course.tasks.make_task` (200 prompts each) on seeds never used in training.
The grammar's entropy is the loss a perfect model would reach (exact per token, see
`mi_course.grammar`).

| metric | value |
| --- | --- |
{rows}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--tiny", action="store_true", help="a 1-layer d_model 16 model, for tests")
    parser.add_argument("--out", type=Path, default=ZOO / "toy-lm")
    parser.add_argument("--card-only", action="store_true", help="evaluate the saved model in --out and rewrite its card")
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be at least 1")
    torch.set_num_threads(args.threads)
    info_path = args.out / "training.json"

    if args.card_only:
        if not info_path.is_file():
            parser.error(f"--card-only needs {info_path}, written by a training run; train first (without --card-only).")
        model = load_from_directory(args.out)
        info = json.loads(info_path.read_text())
    else:
        model = build_model(TINY if args.tiny else FULL, args.seed)
        start = time.time()
        losses = train(
            model,
            lambda step: grammar.sample_tokens_with_labels(args.batch, batch_seed(args.seed, step), model.cfg.n_ctx).tokens,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
        )
        tail = losses[-50:]
        info = {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "final_loss": sum(tail) / len(tail),
            "minutes": (time.time() - start) / 60,
        }
        save_model(model, model.tokenizer, args.out, card(model, info, {}))
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    metrics = evaluate(model)
    save_model(model, model.tokenizer, args.out, card(model, info, metrics))
    for key, value in {**info, **metrics}.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
