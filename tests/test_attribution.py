"""Attribution patching (AtP, EAP, EAP-IG) against exact patching and against each other."""

from __future__ import annotations

import pytest
import scipy.stats
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import attribution as A
from mi_course import patching as P
from mi_course.circuits import Edge, faithfulness, graph

ATOL = 1e-4


def model_of(seed: int = 0, **overrides) -> HookedTransformer:
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50, normalization_type="LN", act_fn="gelu", seed=seed)
    return HookedTransformer(HookedTransformerConfig(**{**cfg, **overrides})).eval()


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 1] - logits[:, -1, 2]).mean()


def prompts(seed: int, batch: int = 4, pos: int = 8, corrupt: slice = slice(2, 3)):
    """Random prompts and a corrupted copy that differs in the positions `corrupt` (like IOI's names)."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 50, (batch, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, corrupt] = torch.randint(0, 50, corrupted[:, corrupt].shape, generator=gen)
    return clean, corrupted


def exact_change(model, clean, corrupted, activation, by, direction="noising"):
    base = clean if direction == "noising" else corrupted
    patched = P.activation_patching(model, clean, corrupted, logit_diff, activation, by, direction=direction, progress=False)
    return patched - logit_diff(model(base)).item()


# --- where the metric is linear in the patched activation, AtP is exact ----------------------


@pytest.fixture(scope="module")
def linear_model():
    """One attention-only layer, no LayerNorm: logits are linear in each head's z and value."""
    return model_of(n_layers=1, attn_only=True, normalization_type=None)


@pytest.mark.parametrize("direction", ["noising", "denoising"])
@pytest.mark.parametrize("activation,by", [("z", ("layer", "head")), ("z", ("layer", "pos", "head")), ("v", ("layer", "head"))])
def test_atp_is_exact_when_the_metric_is_linear(linear_model, activation, by, direction):
    clean, corrupted = prompts(0, corrupt=slice(1, 6))
    exact = exact_change(linear_model, clean, corrupted, activation, by, direction)
    atp = A.attribution_patching(linear_model, clean, corrupted, logit_diff, activation, by, direction=direction)
    assert atp.shape == exact.shape
    assert exact.abs().max() > 1e-2
    torch.testing.assert_close(atp, exact, atol=ATOL, rtol=0)


def test_atp_is_exact_for_the_last_mlp_without_layernorm():
    model = model_of(n_layers=1, normalization_type=None)
    clean, corrupted = prompts(1, corrupt=slice(0, 8))
    exact = exact_change(model, clean, corrupted, "mlp_out", ("layer", "pos"))
    atp = A.attribution_patching(model, clean, corrupted, logit_diff, "mlp_out", ("layer", "pos"))
    assert exact.abs().max() > 1e-2
    torch.testing.assert_close(atp, exact, atol=ATOL, rtol=0)


def test_eap_is_exact_on_linear_edges(linear_model):
    """Edges into values and into the logits act linearly on the metric in this model."""
    clean, corrupted = prompts(2, corrupt=slice(1, 6))
    eap = A.edge_attribution_patching(linear_model, clean, corrupted, logit_diff)
    linear = [e for e in eap if e.receiver.endswith(".v") or e.receiver == "logits"]
    exact = A.edge_patching_effects(linear_model, clean, corrupted, logit_diff, linear, progress=False)
    assert len(linear) == 4 + 5 and max(abs(v) for v in exact.values()) > 1e-2
    for edge in linear:
        assert eap[edge] == pytest.approx(exact[edge], abs=ATOL), edge


# --- on a random model with LayerNorm and MLPs, AtP ranks components like exact patching -----

# Threshold: at initialisation one corrupted token moves each head's output little relative
# to the residual stream, so the metric is close to linear in it and only second-order terms
# separate AtP from exact patching. Observed head-level Spearman on seeds 0-4: 0.98-1.0
# (8 heads); by head and position 0.77-0.87 and over all 110 edges 0.85-0.99 (more entries of
# similar size, whose order the second-order terms can swap). The thresholds leave a margin
# below the observed range; unrelated scores would give about 0 (+- 0.35 for 8 entries).
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atp_and_eap_rank_like_exact_patching(seed):
    model = model_of(seed)
    clean, corrupted = prompts(seed)
    heads = A.attribution_patching(model, clean, corrupted, logit_diff, "z", ("layer", "head"))
    assert A.rank_correlation(heads, exact_change(model, clean, corrupted, "z", ("layer", "head"))) >= 0.9
    by_pos = A.attribution_patching(model, clean, corrupted, logit_diff, "z", ("layer", "pos", "head"))
    assert A.rank_correlation(by_pos, exact_change(model, clean, corrupted, "z", ("layer", "pos", "head"))) >= 0.7
    eap = A.edge_attribution_patching(model, clean, corrupted, logit_diff)
    exact = A.edge_patching_effects(model, clean, corrupted, logit_diff, progress=False)
    assert A.rank_correlation([eap[e] for e in exact], list(exact.values())) >= 0.8
    assert A.top_k_overlap([eap[e] for e in exact], list(exact.values()), 10) >= 0.5


# --- EAP, node AtP and EAP-IG agree with each other --------------------------------------------


@pytest.fixture(scope="module")
def setup():
    model = model_of(3)
    clean, corrupted = prompts(3, corrupt=slice(1, 4))
    return model, clean, corrupted


def test_eap_scores_of_a_sender_sum_to_its_node_attribution(setup):
    model, clean, corrupted = setup
    eap = A.edge_attribution_patching(model, clean, corrupted, logit_diff)
    assert set(eap) == graph(model).edges
    nodes = A.node_attribution(model, clean, corrupted, logit_diff)
    sums = {name: sum(v for e, v in eap.items() if e.sender == name) for name in nodes}
    for name, value in nodes.items():
        assert sums[name] == pytest.approx(value, abs=ATOL), name
    # node AtP is the same estimate as the head / MLP sweeps of attribution_patching
    heads = A.attribution_patching(model, clean, corrupted, logit_diff, "z", ("layer", "head"))
    mlps = A.attribution_patching(model, clean, corrupted, logit_diff, "mlp_out", ("layer",))
    for layer in range(2):
        assert nodes[f"MLP{layer}"] == pytest.approx(mlps[layer].item(), abs=ATOL)
        for head in range(4):
            assert nodes[f"L{layer}H{head}"] == pytest.approx(heads[layer, head].item(), abs=ATOL)
    assert max(abs(v) for v in nodes.values()) > 1e-2


def test_eap_ig_with_one_step_is_eap(setup):
    model, clean, corrupted = setup
    eap = A.edge_attribution_patching(model, clean, corrupted, logit_diff)
    ig = A.edge_attribution_patching_ig(model, clean, corrupted, logit_diff, steps=1)
    assert ig == pytest.approx(eap, abs=1e-6)
    ig5 = A.edge_attribution_patching_ig(model, clean, corrupted, logit_diff, steps=5)
    assert max(abs(ig5[e] - eap[e]) for e in eap) > 1e-3


def test_eap_ig_of_the_embedding_converges_to_the_total_effect(setup):
    """Integrated gradients are complete: summed over the embedding's edges, EAP-IG tends to
    metric(corrupted) - metric(clean) as the number of steps grows (error ~ 1/steps)."""
    model, clean, corrupted = setup
    total = logit_diff(model(corrupted)).item() - logit_diff(model(clean)).item()
    errors = {}
    for steps in (1, 8, 64):
        ig = A.edge_attribution_patching_ig(model, clean, corrupted, logit_diff, steps=steps)
        errors[steps] = abs(sum(v for e, v in ig.items() if e.sender == "embed") - total)
    assert errors[64] < errors[8] < errors[1]
    assert errors[64] < 0.05 * abs(total)


def test_model_flags_and_gradients_are_left_alone(setup):
    model, clean, corrupted = setup
    cfg = model.cfg
    cfg.use_attn_result = True  # a caller's own setting must survive
    model.requires_grad_(False)
    try:
        eap = A.edge_attribution_patching(model, clean, corrupted, logit_diff)
        assert (cfg.use_split_qkv_input, cfg.use_attn_result, cfg.use_hook_mlp_in) == (False, True, False)
        assert max(abs(v) for v in eap.values()) > 1e-3  # gradients flowed without parameter gradients

        def failing(logits):
            raise RuntimeError("metric failed")

        with pytest.raises(RuntimeError, match="metric failed"):
            A.edge_attribution_patching(model, clean, corrupted, failing)
        assert (cfg.use_split_qkv_input, cfg.use_attn_result, cfg.use_hook_mlp_in) == (False, True, False)
    finally:
        cfg.use_attn_result = False
        model.requires_grad_(True)
    assert all(p.grad is None for p in model.parameters())


# --- circuits from scores ----------------------------------------------------------------------


def test_circuit_from_scores_takes_the_largest_absolute_scores():
    scores = {Edge("embed", "logits"): 0.1, Edge("L0H0", "logits"): -3.0, Edge("embed", "L0H0.q"): 2.0}
    circuit = A.circuit_from_scores(scores, 2)
    assert circuit.edges == {Edge("L0H0", "logits"), Edge("embed", "L0H0.q")}
    assert circuit.nodes == {"embed", "L0H0", "logits"}
    with pytest.raises(ValueError, match="n_edges"):
        A.circuit_from_scores(scores, 4)


def test_faithfulness_curve(setup):
    model, clean, corrupted = setup
    eap = A.edge_attribution_patching(model, clean, corrupted, logit_diff)
    sizes = [0, 5, 40, len(eap)]
    curve = A.faithfulness_curve(model, eap, clean, corrupted, logit_diff, sizes, progress=False)
    assert list(curve) == sizes
    assert curve[0] == pytest.approx(0.0, abs=ATOL)  # every edge corrupted: the corrupted run
    assert curve[len(eap)] == pytest.approx(1.0, abs=ATOL)  # nothing corrupted: the clean run
    expected = faithfulness(model, A.circuit_from_scores(eap, 40), clean, corrupted, logit_diff)
    assert curve[40] == pytest.approx(expected, abs=1e-6)
    assert abs(curve[40] - curve[5]) > 1e-3


# --- comparison helpers and errors -------------------------------------------------------------


def test_rank_correlation_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, generator=gen)
    b = a + torch.randn(40, generator=gen)
    a[:12], b[5:15] = 0.0, 1.0
    assert A.rank_correlation(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert A.rank_correlation(a, -a) == pytest.approx(-1.0)


def test_top_k_overlap():
    assert A.top_k_overlap([5.0, -4.0, 0.1, 0.2], [-1.0, 0.0, 3.0, 2.0], 2) == 0.0
    assert A.top_k_overlap([5.0, -4.0, 0.1, 0.2], [9.0, 0.0, -3.0, 2.0], 2) == 0.5
    with pytest.raises(ValueError, match="k"):
        A.top_k_overlap([1.0], [1.0], 2)


def test_bad_input_gets_clear_errors(setup):
    model, clean, corrupted = setup
    with pytest.raises(ValueError, match="same shape"):
        A.edge_attribution_patching(model, clean, corrupted[:2], logit_diff)
    with pytest.raises(ValueError, match="must return a scalar"):
        A.attribution_patching(model, clean, corrupted, lambda logits: logits[:, -1, 0], "z", ("layer", "head"))
    with pytest.raises(ValueError, match="must return a scalar"):
        A.edge_attribution_patching(model, clean, corrupted, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match="unknown activation"):
        A.attribution_patching(model, clean, corrupted, logit_diff, "hook_zz", ("layer",))
    with pytest.raises(ValueError, match="direction"):
        A.attribution_patching(model, clean, corrupted, logit_diff, "z", ("layer", "head"), direction="sideways")
    with pytest.raises(ValueError, match="differentiable metric"):
        A.node_attribution(model, clean, corrupted, lambda logits: (logits[:, -1].argmax(-1) == 1).float().mean())
    with pytest.raises(ValueError, match="steps"):
        A.edge_attribution_patching_ig(model, clean, corrupted, logit_diff, steps=0)


def test_head_atp_on_toy_lm_ioi():
    """The issue's target, Spearman >= 0.9 between head AtP and head patching on toy-lm's IOI.

    Met in the denoising direction (observed 0.97-0.99 for 32 prompts, seeds 0-2). In the
    noising direction head-level AtP ranks heads poorly on this model (Spearman 0.0-0.3,
    with the gradient itself exact: see the finite-difference check): corrupting a whole head's
    output moves the metric far outside the region where it is linear. Notebook 06 shows why.
    """
    from mi_course import load_model
    from mi_course.models import MissingWeightsError
    from mi_course.tasks import make_task

    try:
        model = load_model("toy-lm")
    except MissingWeightsError:
        pytest.skip("toy-lm is not in the zoo yet")
    task = make_task("ioi", model, n=32, seed=0)
    clean, corrupted, metric = task.clean_tokens, task.corrupted_tokens, task.metric
    exact = P.patch_head_out(model, clean, corrupted, metric, progress=False) - task.corrupted_value
    atp = A.attribution_patching(model, clean, corrupted, metric, "z", ("layer", "head"), direction="denoising")
    assert A.rank_correlation(atp, exact) >= 0.9
    # the AtP term is the directional derivative: compare with a finite difference
    noising = A.attribution_patching(model, clean, corrupted, metric, "z", ("layer", "head"))
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    eps = 1e-3
    for layer, head in [(0, 0), (1, 2), (3, 1)]:
        name = f"blocks.{layer}.attn.hook_z"

        def nudge(act, hook):
            act = act.clone()
            act[:, :, head] += eps * (corrupted_cache[name][:, :, head] - clean_cache[name][:, :, head])
            return act

        with torch.no_grad():
            finite_difference = (metric(model.run_with_hooks(clean, fwd_hooks=[(name, nudge)])).item() - task.clean_value) / eps
        assert noising[layer, head].item() == pytest.approx(finite_difference, rel=0.02, abs=0.02)


def test_benchmark_quick_mode(root, monkeypatch, capsys):
    """benchmarks/bench_attribution.py --quick (the CI run) times EAP against exact edge patching."""
    import runpy

    monkeypatch.setattr("sys.argv", ["bench_attribution.py", "--quick"])
    bench = runpy.run_path(str(root / "benchmarks" / "bench_attribution.py"))
    threads = torch.get_num_threads()
    try:
        assert bench["main"]() == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread
    assert "speed-up" in capsys.readouterr().out


# --- frozen nonlinearities and validation samples ---------------------------------------------


def test_frozen_head_patching_without_freezing_is_atp_and_exact_patching():
    model = model_of(3, n_layers=2)
    clean, corrupted = prompts(3, corrupt=slice(1, 6))
    estimate, exact = A.frozen_head_patching(model, clean, corrupted, logit_diff)
    torch.testing.assert_close(estimate, A.attribution_patching(model, clean, corrupted, logit_diff, "z", ("layer", "head")), atol=ATOL, rtol=0)
    torch.testing.assert_close(exact, exact_change(model, clean, corrupted, "z", ("layer", "head")), atol=ATOL, rtol=0)


def test_freezing_every_nonlinearity_of_an_attention_only_model_makes_atp_exact():
    """Attention patterns and layer-norm scales pinned: the logits are linear in every head's output."""
    model = model_of(4, n_layers=3, attn_only=True)
    clean, corrupted = prompts(4, corrupt=slice(0, 7))
    estimate, exact = A.frozen_head_patching(model, clean, corrupted, logit_diff)
    assert (estimate - exact).abs().max() > 1e-2, "unfrozen, the model is not linear in the heads' outputs"
    estimate, exact = A.frozen_head_patching(model, clean, corrupted, logit_diff, freeze=("attention", "layernorm"))
    assert exact.abs().max() > 1e-2
    torch.testing.assert_close(estimate, exact, atol=ATOL, rtol=0)
    # an independent computation of one frozen patch: the last layer's head, whose output reaches
    # the logits only through the frozen final norm: its change times W_O, / clean scale * w, @ W_U
    _, cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    layer, head = 2, 1
    delta = (corrupted_cache["z", layer][:, :, head] - cache["z", layer][:, :, head]) @ model.W_O[layer, head]
    delta = delta - delta.mean(-1, keepdim=True)
    logits = (delta[:, -1] / cache["ln_final.hook_scale"][:, -1]) * model.ln_final.w @ model.W_U
    assert abs(float((logits[:, 1] - logits[:, 2]).mean().detach()) - float(exact[layer, head])) < ATOL


def test_frozen_head_patching_rejects_unknown_nonlinearities():
    model = model_of(0)
    clean, corrupted = prompts(0)
    with pytest.raises(ValueError, match="can freeze only"):
        A.frozen_head_patching(model, clean, corrupted, logit_diff, freeze=("mlp",))


def test_validation_sample_keeps_the_top_and_draws_the_rest():
    scores = torch.tensor([0.1, -5.0, 0.0, 2.0, 0.3, -0.2, 4.0, 0.05, 0.0, 1.0])
    sample = A.validation_sample(scores, 5, seed=0)
    assert len(sample) == len(set(sample)) == 5
    assert sample[:3] == [1, 6, 3], "the three largest |score| first"
    assert set(sample[3:]) <= set(range(10)) - {1, 6, 3}
    assert sample == A.validation_sample(scores, 5, seed=0)
    draws = {tuple(A.validation_sample(scores, 5, seed=s)[3:]) for s in range(20)}
    assert len(draws) > 5, "the rest changes with the seed"
    with pytest.raises(ValueError, match="budget"):
        A.validation_sample(scores, 11, seed=0)
