"""The computational graph and edge patching, checked against hand-written hooks."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.circuits import (
    Circuit,
    Edge,
    faithfulness,
    graph,
    run_with_edges_patched,
    sender_outputs,
    senders,
)
from mi_course.models import load_model

torch.set_num_threads(1)
L, H = 2, 3


@pytest.fixture(scope="module")
def model():
    """Random weights, MLPs, LayerNorm and nonzero biases: nothing is conveniently zero."""
    cfg = HookedTransformerConfig(
        n_layers=L, d_model=16, n_ctx=10, d_head=4, n_heads=H, d_mlp=24, act_fn="gelu", d_vocab=20, normalization_type="LN", seed=0
    )
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", ".b")):
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 20, (4, 10), generator=g), torch.randint(0, 20, (4, 10), generator=g)


def test_graph_structure(model):
    full = graph(model)
    assert senders(model) == ["embed", "L0H0", "L0H1", "L0H2", "MLP0", "L1H0", "L1H1", "L1H2", "MLP1"]
    assert full.nodes == set(senders(model)) | {"logits"}
    # A receiver in layer l reads embed and everything in earlier layers; an MLP also reads its
    # own layer's heads; the logits read everything.
    before = [1 + layer * (H + 1) for layer in range(L)]
    expected = sum(3 * H * n + (n + H) for n in before) + 1 + L * (H + 1)
    assert len(full.edges) == expected
    assert Edge("L0H1", "L1H0.q") in full and Edge("L0H1", "MLP0") in full and Edge("MLP0", "L1H2.v") in full
    assert Edge("L0H0", "L0H1.k") not in full  # heads of one layer run in parallel
    assert Edge("MLP0", "L0H0.q") not in full and Edge("L1H0", "MLP0") not in full
    assert Edge("logits", "MLP1") not in full


def test_attention_only_models_have_no_mlp_nodes():
    model = load_model("handwired-induction")
    assert not any(node.startswith("MLP") for node in graph(model).nodes)
    assert len(graph(model).edges) == 2 * 3 * 1 + 2 * 3 * 3 + 5


def test_senders_add_up_to_the_residual_stream(model, tokens):
    """The linearity edge patching relies on: final residual = sum of senders + the biases b_O."""
    clean, _ = tokens
    outputs = sender_outputs(model, clean)
    _, cache = model.run_with_cache(clean)
    biases = sum(block.attn.b_O for block in model.blocks)
    assert torch.allclose(outputs.sum(0) + biases, cache[f"blocks.{L - 1}.hook_resid_post"], atol=1e-5)


def test_no_edges_gives_clean_and_all_edges_gives_corrupted(model, tokens):
    clean, corrupted = tokens
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, []), model(clean), atol=1e-4)
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, graph(model).edges), model(corrupted), atol=1e-4)


def test_the_same_holds_on_the_handwired_model():
    model = load_model("handwired-induction")
    g = torch.Generator().manual_seed(5)
    clean, corrupted = (torch.randint(1, 27, (3, 30), generator=g) for _ in range(2))
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, []), model(clean), atol=1e-4)
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, graph(model).edges), model(corrupted), atol=1e-4)


def test_patching_every_edge_into_the_logits_gives_corrupted_logits(model, tokens):
    clean, corrupted = tokens
    into_logits = [e for e in graph(model).edges if e.receiver == "logits"]
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, into_logits), model(corrupted), atol=1e-4)


def test_config_flags_are_restored(model, tokens):
    clean, corrupted = tokens
    run_with_edges_patched(model, clean, corrupted, [Edge("embed", "L0H0.q")])
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_attn_result and not model.cfg.use_hook_mlp_in
    with pytest.raises(ValueError):
        run_with_edges_patched(model, clean, corrupted, [Edge("L1H0", "L0H0.q")])
    assert not model.cfg.use_split_qkv_input


def test_two_edges_match_hand_written_hooks(model, tokens):
    """embed -> L0H0.v and L0H0 -> L1H1.k by hand: the second edge removes L0H0's output of
    this run (already changed by the first edge) and adds its corrupted output."""
    clean, corrupted = tokens
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    try:
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)

        def embed(cache):
            return cache["hook_embed"] + cache["hook_pos_embed"]

        seen = {}

        def patch_v(act, hook):
            act[:, :, 0] += embed(corrupted_cache) - embed(clean_cache)
            return act

        def record(act, hook):
            seen["L0H0"] = act[:, :, 0].clone()

        def patch_k(act, hook):
            act[:, :, 1] += corrupted_cache["blocks.0.attn.hook_result"][:, :, 0] - seen["L0H0"]
            return act

        expected = model.run_with_hooks(
            clean,
            fwd_hooks=[
                ("blocks.0.hook_v_input", patch_v),
                ("blocks.0.attn.hook_result", record),
                ("blocks.1.hook_k_input", patch_k),
            ],
        )
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_attn_result(False)
    got = run_with_edges_patched(model, clean, corrupted, [Edge("embed", "L0H0.v"), Edge("L0H0", "L1H1.k")])
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model(clean), atol=1e-3)


def test_an_mlp_edge_matches_a_hand_written_hook(model, tokens):
    clean, corrupted = tokens
    model.cfg.use_hook_mlp_in = True
    try:
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
        delta = corrupted_cache["blocks.0.hook_mlp_out"] - clean_cache["blocks.0.hook_mlp_out"]
        expected = model.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_mlp_in", lambda act, hook: act + delta)])
    finally:
        model.cfg.use_hook_mlp_in = False
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, [Edge("MLP0", "MLP1")]), expected, atol=1e-5)


def test_corrupted_outputs_can_be_reused(model, tokens):
    clean, corrupted = tokens
    edges = [Edge("L0H2", "MLP1"), Edge("embed", "logits")]
    reused = run_with_edges_patched(model, clean, None, edges, corrupted_outputs=sender_outputs(model, corrupted))
    assert torch.allclose(reused, run_with_edges_patched(model, clean, corrupted, edges))


def test_faithfulness_of_the_full_and_the_empty_circuit(model, tokens):
    clean, corrupted = tokens

    def metric(logits):
        return logits[:, -1, 3].mean()

    full = graph(model)
    assert faithfulness(model, full, clean, corrupted, metric) == pytest.approx(1.0, abs=1e-4)
    empty = Circuit(frozenset(), frozenset())
    assert faithfulness(model, empty, clean, corrupted, metric) == pytest.approx(0.0, abs=1e-3)
    half = Circuit.from_edges(e for e in full if e.receiver == "logits")
    assert abs(faithfulness(model, half, clean, corrupted, metric)) > 1e-3


def test_bad_inputs_are_explained(model, tokens):
    clean, corrupted = tokens
    with pytest.raises(ValueError, match="same shape"):
        run_with_edges_patched(model, clean, corrupted[:, :5], [])
    with pytest.raises(ValueError, match="not an edge of this model"):
        run_with_edges_patched(model, clean, corrupted, [Edge("L0H0", "L0H1.q")])
    with pytest.raises(ValueError, match="not an edge of this model"):
        run_with_edges_patched(model, clean, corrupted, [Edge("L7H0", "logits")])
    with pytest.raises(ValueError, match="scalar"):
        faithfulness(model, graph(model), clean, corrupted, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match="cannot be normalised"):
        faithfulness(model, graph(model), clean, clean, lambda logits: logits[:, -1, 0].mean())
    with pytest.raises(ValueError, match="not in the circuit's nodes"):
        Circuit(frozenset({"embed"}), frozenset({Edge("embed", "L0H0.q")}))


def test_circuit_helpers():
    circuit = Circuit.from_edges([Edge("L0H0", "L1H0.k"), Edge("embed", "L0H0.v")])
    assert circuit.nodes == {"embed", "L0H0", "L1H0"}
    assert Edge("L0H0", "L1H0.k") in circuit and "L1H0" in circuit and "logits" not in circuit
    assert len(circuit) == 2
    assert list(circuit) == [Edge("embed", "L0H0.v"), Edge("L0H0", "L1H0.k")]
    assert repr(circuit) == "Circuit(3 nodes, 2 edges: embed->L0H0.v, L0H0->L1H0.k)"
    assert circuit.describe().splitlines()[1:] == ["    embed -> L0H0.v", "     L0H0 -> L1H0.k", "     L1H0"]
