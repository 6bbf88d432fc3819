"""Activation patching sweeps against transformer_lens.patching and hand-written hooks."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import patching as P

ATOL = 1e-4


def small_model(seed: int = 0, **overrides) -> HookedTransformer:
    """A random 2-layer model with MLPs and LayerNorm (the issue's test configuration)."""
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50, normalization_type="LN", act_fn="gelu", seed=seed)
    return HookedTransformer(HookedTransformerConfig(**{**cfg, **overrides})).eval()


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 1] - logits[:, -1, 2]).mean()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (3, 7), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 1:4] = torch.randint(0, 50, (3, 3), generator=gen)
    return model, clean, corrupted


PEERS = [
    (P.patch_resid_pre, tlp.get_act_patch_resid_pre),
    (P.patch_resid_mid, tlp.get_act_patch_resid_mid),
    (P.patch_attn_out, tlp.get_act_patch_attn_out),
    (P.patch_mlp_out, tlp.get_act_patch_mlp_out),
    (P.patch_head_out, tlp.get_act_patch_attn_head_out_all_pos),
    (P.patch_head_out_by_pos, tlp.get_act_patch_attn_head_out_by_pos),
    (P.patch_head_q, tlp.get_act_patch_attn_head_q_all_pos),
    (P.patch_head_k, tlp.get_act_patch_attn_head_k_all_pos),
    (P.patch_head_v, tlp.get_act_patch_attn_head_v_all_pos),
    (P.patch_head_q_by_pos, tlp.get_act_patch_attn_head_q_by_pos),
    (P.patch_head_k_by_pos, tlp.get_act_patch_attn_head_k_by_pos),
    (P.patch_head_v_by_pos, tlp.get_act_patch_attn_head_v_by_pos),
    (P.patch_head_pattern, tlp.get_act_patch_attn_head_pattern_all_pos),
    (P.patch_head_pattern_by_dest, tlp.get_act_patch_attn_head_pattern_by_pos),
]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("ours,peer", PEERS, ids=[ours.__name__ for ours, _ in PEERS])
def test_equals_transformer_lens(setup, ours, peer, direction):
    model, clean, corrupted = setup
    # transformer_lens runs its first argument and patches in activations of the cached run
    base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    _, cache = model.run_with_cache(source)
    expected = peer(model, base, cache, logit_diff)
    result = ours(model, clean, corrupted, logit_diff, direction=direction, progress=False, patches_per_pass=5)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected.to(result.dtype), atol=ATOL, rtol=0)
    assert result.std() > 1e-3  # the patches do different things, so the comparison means something


@pytest.mark.parametrize(
    "overrides",
    [dict(positional_embedding_type="rotary", rotary_dim=8), dict(positional_embedding_type="shortformer"), dict(attn_only=True)],
    ids=["rotary", "shortformer", "attn_only"],
)
@pytest.mark.parametrize("ours,peer", [(P.patch_head_out_by_pos, tlp.get_act_patch_attn_head_out_by_pos), (P.patch_head_k_by_pos, tlp.get_act_patch_attn_head_k_by_pos)])
def test_other_architectures_equal_transformer_lens(setup, overrides, ours, peer):
    """Positional schemes change how a run can start midway (rotary keys, shortformer's separate positions)."""
    _, clean, corrupted = setup
    model = small_model(seed=1, **overrides)
    _, cache = model.run_with_cache(clean)
    expected = peer(model, corrupted, cache, logit_diff)
    result = ours(model, clean, corrupted, logit_diff, progress=False, patches_per_pass=3)
    torch.testing.assert_close(result, expected.to(result.dtype), atol=ATOL, rtol=0)
    assert result.std() > 1e-3


def test_left_padded_prompts_equal_transformer_lens(setup):
    """With an attention mask the run cannot skip the prompt's start; results must not change."""
    from mi_course.models import word_level_tokenizer

    _, clean, corrupted = setup
    model = HookedTransformer(small_model().cfg, tokenizer=word_level_tokenizer([f"w{i}" for i in range(49)])).eval()
    model.tokenizer.padding_side = "left"
    clean, corrupted = clean.clone(), corrupted.clone()
    clean[0, :2] = corrupted[0, :2] = model.tokenizer.pad_token_id
    assert model.input_to_embed(clean)[3] is not None  # the padding mask is in use
    _, cache = model.run_with_cache(clean)
    expected = tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff)
    result = P.patch_head_out_by_pos(model, clean, corrupted, logit_diff, progress=False)
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("per_pass", [1, 2, 7, None])
def test_batching_does_not_change_results(setup, per_pass):
    model, clean, corrupted = setup
    one_by_one = P.patch_head_out_by_pos(model, clean, corrupted, logit_diff, patches_per_pass=1, progress=False)
    batched = P.patch_head_out_by_pos(model, clean, corrupted, logit_diff, patches_per_pass=per_pass, progress=False)
    torch.testing.assert_close(batched, one_by_one, atol=ATOL, rtol=0)


@pytest.mark.parametrize("ours", [P.patch_head_out_by_pos, P.patch_resid_pre, P.patch_head_pattern_by_dest], ids=lambda f: f.__name__)
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_positions_patch_only_those_positions(setup, ours, direction):
    """The swept positions match the full sweep; the others hold the unpatched run's metric."""
    model, clean, corrupted = setup
    full = ours(model, clean, corrupted, logit_diff, direction=direction, progress=False)
    some = ours(model, clean, corrupted, logit_diff, direction=direction, progress=False, positions=[2, -1])
    axis = 2 if ours is P.patch_head_pattern_by_dest else 1
    kept = torch.zeros(clean.shape[1], dtype=torch.bool)
    kept[[2, clean.shape[1] - 1]] = True
    torch.testing.assert_close(some.index_select(axis, kept.nonzero().flatten()), full.index_select(axis, kept.nonzero().flatten()), atol=ATOL, rtol=0)
    unpatched = logit_diff(model(corrupted if direction == "denoising" else clean)).item()
    rest = some.index_select(axis, (~kept).nonzero().flatten())
    torch.testing.assert_close(rest, torch.full_like(rest, unpatched), atol=ATOL, rtol=0)
    assert full.index_select(axis, (~kept).nonzero().flatten()).std() > 1e-3  # the positions left out would have differed


def test_axis_order_follows_by(setup):
    model, clean, corrupted = setup
    by_pos = P.activation_patching(model, clean, corrupted, logit_diff, "z", ("layer", "pos", "head"), progress=False)
    by_head = P.activation_patching(model, clean, corrupted, logit_diff, "z", ("layer", "head", "pos"), progress=False)
    torch.testing.assert_close(by_head, by_pos.transpose(1, 2))


def test_whole_layer_patch_matches_a_hand_written_hook(setup):
    model, clean, corrupted = setup
    result = P.activation_patching(model, clean, corrupted, logit_diff, "mlp_out", ("layer",), progress=False)
    _, clean_cache = model.run_with_cache(clean)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_mlp_out"
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, lambda act, hook: clean_cache[hook.name])])
        assert result[layer].item() == pytest.approx(logit_diff(logits).item(), abs=ATOL)


def test_noising_and_denoising_reach_the_endpoints(setup):
    """Denoising the last residual stream everywhere gives the clean metric; noising it, the corrupted one."""
    model, clean, corrupted = setup
    clean_value, corrupted_value = logit_diff(model(clean)).item(), logit_diff(model(corrupted)).item()
    assert abs(clean_value - corrupted_value) > 1e-2
    last = model.cfg.n_layers - 1
    denoised = P.activation_patching(model, clean, corrupted, logit_diff, "resid_post", ("layer",), progress=False)
    noised = P.activation_patching(model, clean, corrupted, logit_diff, "resid_post", ("layer",), direction="noising", progress=False)
    assert denoised[last].item() == pytest.approx(clean_value, abs=ATOL)
    assert noised[last].item() == pytest.approx(corrupted_value, abs=ATOL)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_matches_ablate_head_hook(setup, mode):
    model, clean, _ = setup
    result = P.ablation_sweep(model, clean, logit_diff, "z", ("layer", "head"), mode=mode, progress=False)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            hook = (f"blocks.{layer}.attn.hook_z", P.ablate_head_hook(head, mode))
            expected = logit_diff(model.run_with_hooks(clean, fwd_hooks=[hook])).item()
            assert result[layer, head].item() == pytest.approx(expected, abs=ATOL)


def test_resample_ablation_uses_other_prompts(setup):
    model, clean, corrupted = setup
    index = P.resample_index(len(clean), seed=3)
    assert (index != torch.arange(len(clean))).all()
    assert torch.equal(index, P.resample_index(len(clean), seed=3))
    result = P.ablation_sweep(model, clean, logit_diff, "mlp_out", ("layer", "pos"), mode="resample", seed=3, progress=False)
    _, donor = model.run_with_cache(clean[index])
    name = "blocks.1.hook_mlp_out"

    def hook(act, hook):
        act = act.clone()
        act[:, 4] = donor[name][:, 4]
        return act

    expected = logit_diff(model.run_with_hooks(clean, fwd_hooks=[(name, hook)])).item()
    assert result[1, 4].item() == pytest.approx(expected, abs=ATOL)
    # with a reference set, donors come from it
    reference = torch.cat([corrupted, corrupted])
    index = P.resample_index(len(clean), len(reference), seed=0)
    assert index.max() < len(reference)
    from_reference = P.ablation_sweep(model, clean, logit_diff, "mlp_out", ("layer",), mode="resample", reference_tokens=reference, progress=False)
    _, donor = model.run_with_cache(reference[index])
    expected = logit_diff(model.run_with_hooks(clean, fwd_hooks=[(name, lambda act, hook: donor[name])])).item()
    assert from_reference[1].item() == pytest.approx(expected, abs=ATOL)


def test_mean_ablation_of_a_whole_batch_layer_is_not_zero_ablation(setup):
    model, clean, _ = setup
    zero = P.ablation_sweep(model, clean, logit_diff, "z", ("layer", "head"), mode="zero", progress=False)
    mean = P.ablation_sweep(model, clean, logit_diff, "z", ("layer", "head"), mode="mean", progress=False)
    assert (zero - mean).abs().max() > 1e-3


def test_bad_input_gets_clear_errors(setup):
    model, clean, corrupted = setup
    with pytest.raises(ValueError, match="unknown activation 'zz'"):
        P.activation_patching(model, clean, corrupted, logit_diff, "zz")
    with pytest.raises(ValueError, match="same shape"):
        P.patch_resid_pre(model, clean, corrupted[:, :-1], logit_diff)
    with pytest.raises(ValueError, match="must return a scalar"):
        P.patch_resid_pre(model, clean, corrupted, lambda logits: logits[:, -1, 0], progress=False)
    with pytest.raises(ValueError, match="by must be"):
        P.activation_patching(model, clean, corrupted, logit_diff, "pattern", ("layer", "pos"))
    with pytest.raises(ValueError, match="direction"):
        P.patch_head_out(model, clean, corrupted, logit_diff, direction="backwards")
    with pytest.raises(ValueError, match="mode"):
        P.ablation_sweep(model, clean, logit_diff, "z", ("layer", "head"), mode="gaussian")
    with pytest.raises(ValueError, match="integer tensor"):
        P.patch_resid_pre(model, clean.float(), corrupted, logit_diff)
    with pytest.raises(ValueError, match="patches_per_pass"):
        P.patch_resid_pre(model, clean, corrupted, logit_diff, patches_per_pass=0)
    with pytest.raises(ValueError, match="positions needs a 'pos' axis"):
        P.patch_head_out(model, clean, corrupted, logit_diff, positions=[1])
    with pytest.raises(ValueError, match="positions must be positions of the prompts"):
        P.patch_resid_pre(model, clean, corrupted, logit_diff, positions=[7])
    with pytest.raises(ValueError, match="reference_tokens must have shape"):
        P.ablation_sweep(model, clean, logit_diff, "z", ("layer", "head"), mode="mean", reference_tokens=clean[:, :3])
    attn_only = small_model(attn_only=True)
    with pytest.raises(ValueError, match="no hook 'blocks.0.hook_mlp_out'.*attention-only"):
        P.patch_mlp_out(attn_only, clean, corrupted, logit_diff)


def test_benchmark_quick_mode(root, monkeypatch, capsys):
    """benchmarks/bench_patching.py --quick (the CI run) agrees with the peer and prints the ratios."""
    import runpy

    monkeypatch.setattr("sys.argv", ["bench_patching.py", "--quick"])
    bench = runpy.run_path(str(root / "benchmarks" / "bench_patching.py"))
    threads = torch.get_num_threads()
    try:
        assert bench["main"]() == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread
    assert "head x position (z)" in capsys.readouterr().out
