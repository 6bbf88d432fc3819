"""The computational graph and edge patching, checked against hand-written hooks."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.circuits import (
    Circuit,
    Edge,
    PatchedMetric,
    acdc,
    acdc_order,
    completeness,
    faithfulness,
    graph,
    greedy_prune,
    helper_search,
    kl_to_clean,
    knock_out,
    minimality,
    receiver_node,
    run_path_patched,
    run_with_edges_patched,
    sender_outputs,
    senders,
    wang_minimality,
)
from mi_course.models import ground_truth, load_model
from mi_course.tasks import make_task

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


# --- circuit finding and evaluation -------------------------------------------------------------


def last_logit(logits):
    return logits[:, -1, 3].mean()


def test_patched_metric_starts_late_without_changing_the_result(model, tokens):
    """PatchedMetric starts each run at the first block that reads a patched edge; the result
    must equal a full patched forward pass."""
    clean, corrupted = tokens
    score = PatchedMetric(model, clean, corrupted, last_logit)
    for edges in ([], [Edge("L0H2", "L1H1.v")], [Edge("MLP1", "logits"), Edge("embed", "MLP1")], list(graph(model).edges)[:20]):
        with torch.no_grad():
            full = float(last_logit(run_with_edges_patched(model, clean, corrupted, edges)))
        assert score(edges) == pytest.approx((full - score.corrupted) / (score.clean - score.corrupted), abs=1e-5)


def test_acdc_order_goes_from_the_logits_backwards(model):
    order = acdc_order(model)
    assert sorted(order) == sorted(graph(model).edges) and len(set(order)) == len(order)
    assert order[0] == Edge("MLP1", "logits") and order[-1] == Edge("embed", "L0H0.q")
    position = {edge: i for i, edge in enumerate(order)}
    # Every edge into a node comes after every edge out of it: a node's outputs are settled first.
    for edge in order:
        node = receiver_node(edge.receiver)
        assert all(position[out] < position[edge] for out in order if out.sender == node)


def test_greedy_prune_compares_with_the_current_score():
    """Five edges that each cost 0.04: with threshold 0.05 each is harmless alone, but the greedy
    pass must stop once the accumulated loss makes the next removal cost too much."""
    edges = [Edge("embed", f"L0H{i}.q") for i in range(5)]

    def score(removed):
        n = len(removed)
        return 1 - 0.04 * n - (0.2 if n >= 3 else 0.0)

    removed, changes = greedy_prune(edges, score, threshold=0.05)
    assert removed == set(edges[:2])  # the third removal would cost 0.24
    assert changes[edges[2]] == pytest.approx(-0.24) and len(changes) == 5
    assert greedy_prune(edges, score, threshold=0.0)[0] == frozenset()
    with pytest.raises(ValueError, match="threshold"):
        greedy_prune(edges, score, threshold=-1)


def test_greedy_prune_keeps_edges_whose_removal_raises_the_score():
    edges = [Edge("embed", "L0H0.q"), Edge("embed", "L0H1.q")]
    removed, _ = greedy_prune(edges, lambda removed: 1 + 0.5 * (edges[0] in removed), threshold=0.1)
    assert removed == {edges[1]}


def test_one_sided_rule_removes_edges_whose_removal_raises_the_score():
    """Conmy et al.'s rule: remove when the score falls by less than the threshold, always when it rises."""
    edges = [Edge("embed", f"L0H{i}.q") for i in range(3)]
    effect = {edges[0]: +0.5, edges[1]: -0.05, edges[2]: -0.3}

    def score(removed):
        return 1 + sum(effect[e] for e in removed)

    assert greedy_prune(edges, score, 0.1, rule="absolute")[0] == {edges[1]}
    assert greedy_prune(edges, score, 0.1, rule="one-sided")[0] == {edges[0], edges[1]}
    with pytest.raises(ValueError, match="rule"):
        greedy_prune(edges, score, 0.1, rule="signed")


def test_helper_search_finds_the_backup_that_leave_one_out_misses():
    """Two redundant edges a and b: the score drops only when both are patched. Leave-one-out
    (no helpers) gives each a change of 0; with the other one as helper, the change is 1."""
    a, b, c, d = Edge("L0H0", "L1H0.k"), Edge("L0H1", "L1H0.k"), Edge("L1H0", "logits"), Edge("embed", "L0H2.v")
    edges = frozenset({a, b, c, d})

    def score(patched):
        return 0.0 if c in patched or {a, b} <= patched else 1.0

    circuit = frozenset({a, b, c})
    assert helper_search(a, circuit, edges, score, max_helpers=0) == (frozenset(), 0.0)
    assert helper_search(a, circuit, edges, score) == (frozenset({b}), 1.0)
    assert helper_search(b, circuit, edges, score) == (frozenset({a}), 1.0)
    assert helper_search(c, circuit, edges, score) == (frozenset(), 1.0)  # needed alone: no helper improves on it
    with pytest.raises(ValueError, match="not in the circuit"):
        helper_search(d, circuit, edges, score)


def test_helper_search_is_greedy_and_stops_when_nothing_helps():
    """Three redundant edges: the drop appears only when all three are gone, so one helper is not
    enough and the greedy search (which never improves at the first step) stops at K = {}."""
    e = [Edge("embed", f"L0H{i}.v") for i in range(3)]

    def score(patched):
        return 0.0 if set(e) <= patched else 1.0

    assert helper_search(e[0], frozenset(e), frozenset(e), score, max_helpers=2) == (frozenset(), 0.0)
    # With graded redundancy (each missing copy costs a little) the greedy search does get there.

    def graded(patched):
        return {0: 1.0, 1: 0.9, 2: 0.7, 3: 0.0}[len(set(e) & patched)]

    helpers, change = helper_search(e[0], frozenset(e), frozenset(e), graded, max_helpers=2)
    assert helpers == {e[1], e[2]} and change == pytest.approx(0.7)
    assert helper_search(e[0], frozenset(e), frozenset(e), graded, max_helpers=1) == (frozenset({e[1]}), pytest.approx(0.2))


def test_path_patching_matches_hand_written_hooks(model, tokens):
    """Path embed -> L0H1.v -> L1H2.k -> logits, computed independently with TransformerLens hooks:
    L0H1 reads the corrupted embedding in its value input only; the change of its output reaches
    only L1H2's key; the change of L1H2's output reaches only the final residual stream."""
    clean, corrupted = tokens
    path = [{Edge("embed", "L0H1.v")}, {Edge("L0H1", "L1H2.k")}, {Edge("L1H2", "logits")}]
    got = run_path_patched(model, clean, corrupted, path)

    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)

    def embed(cache):
        return cache["hook_embed"] + cache["hook_pos_embed"]

    def head_out(z, layer, head):
        return z[:, :, head] @ model.blocks[layer].attn.W_O[head]

    def z_with(hook_name, head, delta, layer):
        """z of `layer` when one head's input at `hook_name` gets `delta` added."""
        store = {}

        def add(act, hook):
            act[:, :, head] = act[:, :, head] + delta
            return act

        def keep(z, hook):
            store["z"] = z.clone()

        model.cfg.use_split_qkv_input = True
        try:
            model.run_with_hooks(clean, fwd_hooks=[(hook_name, add), (f"blocks.{layer}.attn.hook_z", keep)])
        finally:
            model.cfg.use_split_qkv_input = False
        return store["z"]

    z0 = z_with("blocks.0.hook_v_input", 1, embed(corrupted_cache) - embed(clean_cache), 0)
    delta0 = head_out(z0, 0, 1) - head_out(clean_cache["blocks.0.attn.hook_z"], 0, 1)
    z1 = z_with("blocks.1.hook_k_input", 2, delta0, 1)
    delta1 = head_out(z1, 1, 2) - head_out(clean_cache["blocks.1.attn.hook_z"], 1, 2)
    expected = model.unembed(model.ln_final(clean_cache[f"blocks.{L - 1}.hook_resid_post"] + delta1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # ACDC's single edge embed -> L0H1.v reaches the logits through every path: a different answer.
    edge = run_with_edges_patched(model, clean, corrupted, [Edge("embed", "L0H1.v")])
    assert (edge - got).abs().max() > 1e-3


def test_path_patching_of_one_edge_into_the_logits_is_edge_patching(model, tokens):
    clean, corrupted = tokens
    edge = Edge("L1H0", "logits")
    torch.testing.assert_close(run_path_patched(model, clean, corrupted, [{edge}]), run_with_edges_patched(model, clean, corrupted, [edge]))


def test_path_patching_explains_bad_paths(model, tokens):
    clean, corrupted = tokens
    with pytest.raises(ValueError, match="non-empty"):
        run_path_patched(model, clean, corrupted, [])
    with pytest.raises(ValueError, match="stage before it ends at"):
        run_path_patched(model, clean, corrupted, [{Edge("embed", "L0H0.v")}, {Edge("L0H1", "L1H0.k")}])
    with pytest.raises(ValueError, match="only the last stage"):
        run_path_patched(model, clean, corrupted, [{Edge("L1H0", "logits")}, {Edge("L1H0", "logits")}])
    with pytest.raises(ValueError, match="not an edge"):
        run_path_patched(model, clean, corrupted, [{Edge("L1H0", "L0H0.q")}])


def test_kl_to_clean_is_zero_on_the_clean_run_and_normalises(model, tokens):
    clean, corrupted = tokens
    metric = kl_to_clean(model, clean)
    assert float(metric(model(clean))) == pytest.approx(0.0, abs=1e-6)
    assert float(metric(model(corrupted))) > 0.01
    score = PatchedMetric(model, clean, corrupted, metric)
    assert score(frozenset()) == pytest.approx(1.0, abs=1e-5) and score(score.edges) == pytest.approx(0.0, abs=1e-5)
    found = acdc(model, clean, corrupted, "kl", threshold=0.05, progress=False)
    assert found.faithfulness == pytest.approx(faithfulness(model, found.circuit, clean, corrupted, metric), abs=1e-5)
    with pytest.raises(ValueError, match="'kl'"):
        acdc(model, clean, corrupted, "KL divergence", threshold=0.05)


def test_a_node_without_inputs_sends_its_corrupted_output(model, tokens):
    """Why acdc may drop the edges out of a node whose inputs are all removed: patching them
    changes nothing, since the node already computes its corrupted output."""
    clean, corrupted = tokens
    full = graph(model).edges
    inputs = {e for e in full if receiver_node(e.receiver) == "L0H1"}
    outputs = {e for e in full if e.sender == "L0H1"}
    without_inputs = run_with_edges_patched(model, clean, corrupted, inputs)
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, inputs | outputs), without_inputs, atol=1e-5)
    assert not torch.allclose(without_inputs, model(clean), atol=1e-3)


def test_acdc_extremes_on_a_random_model(model, tokens):
    clean, corrupted = tokens
    everything = acdc(model, clean, corrupted, last_logit, threshold=0.0, progress=False)
    assert everything.circuit.edges == graph(model).edges and everything.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert everything.forward_passes == len(graph(model).edges) + 1
    nothing = acdc(model, clean, corrupted, last_logit, threshold=1e9, progress=False)
    assert nothing.circuit.edges == frozenset() and nothing.faithfulness == pytest.approx(0.0, abs=1e-5)
    assert nothing.forward_passes < len(graph(model).edges)  # edges into unused nodes are not tested


def test_acdc_result_is_what_faithfulness_measures(model, tokens):
    clean, corrupted = tokens
    found = acdc(model, clean, corrupted, last_logit, threshold=0.05, progress=False)
    assert 0 < len(found.circuit) < len(graph(model).edges)
    assert found.faithfulness == pytest.approx(faithfulness(model, found.circuit, clean, corrupted, last_logit), abs=1e-5)
    # No node in the circuit is cut off from the inputs or from the logits.
    for node in found.circuit.nodes - {"embed", "logits"}:
        assert any(e.sender == node for e in found.circuit) and any(receiver_node(e.receiver) == node for e in found.circuit)


@pytest.fixture(scope="module")
def induction():
    """handwired-induction on repeated letters; the corruption is another repeated sequence."""
    model = load_model("handwired-induction")
    task = make_task("induction", model, n=20, seed=0)
    return model, task, make_task("induction", model, n=20, seed=1).clean_tokens


@pytest.mark.parametrize("threshold", [0.01, 0.1, 0.5])
def test_acdc_recovers_the_planted_circuit(induction, threshold):
    model, task, other = induction
    found = acdc(model, task.clean_tokens, other, task.metric, threshold, progress=False)
    assert found.circuit.edges == ground_truth("handwired-induction").edges
    assert found.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert found.forward_passes < len(graph(model).edges)


def test_what_acdc_can_find_depends_on_the_corruption(induction):
    """With the task's own corruption (only the first half differs), the current token at the
    induction head's query is the same in both runs, so embed -> L1H0.q is invisible."""
    model, task, _ = induction
    found = acdc(model, task.clean_tokens, task.corrupted_tokens, task.metric, 0.01, progress=False)
    assert found.circuit.edges == ground_truth("handwired-induction").edges - {Edge("embed", "L1H0.q")}


def test_minimality_of_the_planted_circuit(induction):
    model, task, other = induction
    truth = ground_truth("handwired-induction")
    padded = Circuit.from_edges(truth.edges | {Edge("L0H1", "L1H1.v")})
    drops = minimality(model, padded, task.clean_tokens, other, task.metric)
    assert set(drops) == padded.edges
    assert drops[Edge("L0H1", "L1H1.v")] == pytest.approx(0.0, abs=1e-4)  # the decoy edge is not needed
    assert all(drops[e] > 0.5 for e in truth.edges)


def test_completeness_finds_a_missing_edge(induction):
    model, task, other = induction
    truth = ground_truth("handwired-induction")
    complete = completeness(model, truth, task.clean_tokens, other, task.metric, progress=False)
    assert len(complete) == 1 + len(truth.nodes) - 1 + 10 and complete[0].nodes == frozenset() and max(k.gap for k in complete) < 1e-3
    # Without its value input the induction head copies nothing: intact model 1, circuit about 0.
    broken = Circuit.from_edges(truth.edges - {Edge("embed", "L1H0.v")})
    gap = completeness(model, broken, task.clean_tokens, other, task.metric, knockouts=[{"L0H1"}], progress=False)[0]
    assert gap.model == pytest.approx(1.0, abs=1e-3) and gap.gap > 0.9
    # A knockout is the circuit with every edge out of the knocked-out nodes removed.
    k = completeness(model, truth, task.clean_tokens, other, task.metric, knockouts=[{"L0H0"}], progress=False)[0]
    without = Circuit.from_edges(truth.edges - knock_out({"L0H0"}, truth.edges))
    assert k.circuit == pytest.approx(faithfulness(model, without, task.clean_tokens, other, task.metric), abs=1e-5)
    with pytest.raises(ValueError, match="not sender nodes"):
        completeness(model, truth, task.clean_tokens, other, task.metric, knockouts=[{"L5H0"}])


def test_wang_minimality_keeps_redundant_edges_that_leave_one_out_calls_padding():
    """handwired-backup: two identical previous-token heads. Leave-one-out gives every edge of
    either head about 0; Wang's minimality, with the other head's edge as helper, keeps them."""
    from mi_course.handwired import backup_truth, build_backup, correct_logit, repeated_letters, unrelated_letters

    model = build_backup()
    clean = repeated_letters(4, 8, seed=0)
    corrupted = unrelated_letters(clean, seed=1)
    metric, truth = correct_logit(clean), backup_truth()
    loo = minimality(model, truth, clean, corrupted, metric)
    wang = wang_minimality(model, truth, clean, corrupted, metric)
    redundant = {e for e in truth.edges if "L0H" in e.sender or e.receiver.startswith("L0H")}
    assert len(redundant) == 6 and all(abs(loo[e]) < 1e-3 for e in redundant)
    assert all(change > 0.5 for _, change in wang.values())
    for edge in redundant:
        helpers, _ = wang[edge]
        other_head = "L0H1" if "L0H0" in repr(edge) else "L0H0"
        assert len(helpers) == 1 and other_head in repr(next(iter(helpers)))  # the helper is an edge of the twin head
    zero = wang_minimality(model, truth, clean, corrupted, metric, max_helpers=0)
    assert all(zero[e][1] == pytest.approx(abs(loo[e]), abs=1e-6) for e in truth.edges)
