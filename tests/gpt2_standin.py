"""A stand-in for GPT-2 small in a Hugging Face cache, so that tests and benchmarks load "gpt2" offline.

`build_gpt2_standin(hf_home)` writes ``hf_home/hub/models--gpt2/`` in the hub's cache layout
(``refs/main`` naming a commit, ``snapshots/<commit>/`` holding the files) with the files the
hub serves for ``gpt2``: its config.json format, random weights saved by transformers as
safetensors, generation_config.json, and GPT-2's real tokenizer (vocab.json and merges.txt
from the shared fixture, tokenizer.json built from them, the hub's tokenizer_config.json).
The weights are random, so the model computes nothing useful, but every loading path and
every tokenization is GPT-2's. By default it is narrower and shallower than GPT-2 small;
``--full-size`` gives GPT-2 small's shapes (12 layers, width 768, 12 heads) for benchmarks.

    python tests/gpt2_standin.py HF_HOME [--full-size]

builds one and prints the snapshot folder. Load it with HF_HOME=HF_HOME in the environment
(huggingface_hub reads HF_HOME when it is imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO_FOLDER = "models--gpt2"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
FULL_SIZE = {"n_layer": 12, "n_embd": 768, "n_head": 12}
EOS = "<|endoftext|>"
EOS_ID = 50256


def _tokenizer_fixture() -> Path:
    env = os.environ.get("MI_COURSE_GPT2_TOKENIZER")
    return Path(env) if env else ROOT.parent / "shared" / "fixtures" / "gpt2-tokenizer"


def gpt2_tokenizer_dir() -> Path | None:
    """../shared/fixtures/gpt2-tokenizer, or $MI_COURSE_GPT2_TOKENIZER; None if absent."""
    path = _tokenizer_fixture()
    return path if (path / "vocab.json").exists() else None


def hub_config(*, n_layer: int, n_embd: int, n_head: int) -> dict:
    """GPT-2's config.json as the hub serves it for ``gpt2``, with the given depth and width."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": EOS_ID,
        "embd_pdrop": 0.1,
        "eos_token_id": EOS_ID,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": EOS_ID + 1,
    }


def _write_tokenizer(snapshot: Path, tokenizer_dir: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer

    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, snapshot / name)
    bpe = ByteLevelBPETokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))
    bpe.add_special_tokens([EOS])
    if bpe.token_to_id(EOS) != EOS_ID:
        raise ValueError(f"{tokenizer_dir} is not GPT-2's vocabulary: {EOS!r} has id {bpe.token_to_id(EOS)}, not {EOS_ID}.")
    bpe.save(str(snapshot / "tokenizer.json"))
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))


def build_gpt2_standin(
    hf_home: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> Path:
    """Write a random-weight "gpt2" into the hub cache under `hf_home`; return its snapshot folder.

    `tokenizer_dir` holds GPT-2's vocab.json and merges.txt (default: `gpt2_tokenizer_dir()`).
    The same arguments give the same files (weights seeded by `seed`).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer_dir = Path(tokenizer_dir or _tokenizer_fixture())
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"GPT-2's tokenizer files are needed: {', '.join(missing)} not found in {tokenizer_dir} "
            "(set MI_COURSE_GPT2_TOKENIZER to a folder with vocab.json and merges.txt)."
        )
    if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
        raise ValueError(f"need n_layer, n_embd, n_head >= 1 with n_embd divisible by n_head; got {n_layer}, {n_embd}, {n_head}.")
    config = hub_config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    commit = hashlib.sha1(json.dumps([config, seed], sort_keys=True).encode()).hexdigest()
    repo = Path(hf_home) / "hub" / REPO_FOLDER
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config))
    model.save_pretrained(snapshot)  # model.safetensors (and transformers' own config files, replaced below)
    (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"_from_model_config": True, "bos_token_id": EOS_ID, "eos_token_id": EOS_ID}
    (snapshot / "generation_config.json").write_text(json.dumps(generation, indent=2))
    _write_tokenizer(snapshot, tokenizer_dir)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a random-weight stand-in for GPT-2 into a Hugging Face cache.")
    parser.add_argument("hf_home", type=Path, help="the HF_HOME folder (the model goes to HF_HOME/hub/models--gpt2)")
    parser.add_argument("--full-size", action="store_true", help="GPT-2 small's shapes: 12 layers, width 768, 12 heads")
    args = parser.parse_args(argv)
    try:
        snapshot = build_gpt2_standin(args.hf_home, **(FULL_SIZE if args.full_size else {}))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(snapshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
