"""Probes against scikit-learn, baselines and control tasks by construction, and the intervention hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.probing import (
    LinearProbe,
    accuracy,
    control_labels,
    encode_labels,
    inlp,
    majority_accuracy,
    predict,
    probe_direction,
    probe_intervention_hook,
    probe_selectivity,
    projection_hook,
    randomize_weights,
    residual_activations,
    residual_activations_by_layer,
    train_probe,
    train_test_split,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=0,
    )
    return HookedTransformer(cfg).eval()


def blobs(n: int, d: int, n_classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes around random centres: overlapping, so accuracy is well below 100%."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=gen)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return centres[y] + spread * torch.randn(n, d, generator=gen), y


@pytest.mark.parametrize("n_classes", [2, 4])
def test_linear_probe_matches_sklearn(n_classes):
    x, y = blobs(1200, 20, n_classes, spread=1.6, seed=n_classes)
    train, test = train_test_split(len(y), 0.3, seed=0)
    C = 0.5
    ours = train_probe(x[train], y[train], l2=1 / (C * len(train)))
    sk = LogisticRegression(C=C, max_iter=2000, tol=1e-8).fit(x[train].numpy(), y[train].numpy())
    sk_acc = sk.score(x[test].numpy(), y[test].numpy())
    our_acc = accuracy(ours, x[test], y[test])
    assert 0.6 < sk_acc < 0.97  # a task where the comparison means something
    assert our_acc == pytest.approx(sk_acc, abs=0.015)
    agree = (predict(ours, x[test]).numpy() == sk.predict(x[test].numpy())).mean()
    assert agree > 0.97
    if n_classes > 2:  # same objective exactly (sklearn's binary case uses one weight vector)
        np.testing.assert_allclose(ours.linear.weight.detach().numpy(), sk.coef_, atol=2e-3)


def test_linear_label_is_read_almost_perfectly():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 16, generator=gen)
    y = (x @ torch.randn(16, generator=gen) > 0).long()
    train, test = train_test_split(2000, seed=1)
    assert accuracy(train_probe(x[train], y[train]), x[test], y[test]) > 0.97


def test_mlp_probe_memorises_the_control_task_and_loses_selectivity():
    """Tokens of 150 word types in 16 dims, label linear in the type's vector: the linear probe
    reads the task but cannot memorise 150 random type labels; the MLP can."""
    gen = torch.Generator().manual_seed(2)
    type_vectors = torch.randn(150, 16, generator=gen)
    types = torch.randint(0, 150, (3000,), generator=gen)
    x = type_vectors[types] + 0.1 * torch.randn(3000, 16, generator=gen)
    y = (type_vectors[types] @ torch.randn(16, generator=gen) > 0).long()
    train, test = train_test_split(3000, seed=2)
    linear = probe_selectivity(x, y, types, train, test, kind="linear")
    mlp = probe_selectivity(x, y, types, train, test, kind="mlp", hidden=128, steps=600, l2=0.0)
    assert linear["task"] > 0.95 and mlp["task"] > 0.95
    assert mlp["control"] > linear["control"] + 0.2
    assert mlp["selectivity"] < linear["selectivity"] - 0.2
    assert linear["selectivity"] == pytest.approx(linear["task"] - linear["control"])


def test_control_labels_fixed_per_type_with_the_task_distribution():
    gen = torch.Generator().manual_seed(3)
    types = torch.randint(0, 500, (20_000,), generator=gen)
    y = (torch.rand(20_000, generator=gen) < 0.2).long()
    control = control_labels(types, y, seed=0)
    for t in range(0, 500, 50):
        assert control[types == t].unique().numel() == 1
    per_type = torch.stack([control[types == t][0] for t in types.unique()])
    assert per_type.float().mean().item() == pytest.approx(0.2, abs=0.05)
    assert not torch.equal(control, control_labels(types, y, seed=1))
    with pytest.raises(ValueError, match="one word type per label"):
        control_labels(types[:10], y)


def test_small_helpers_by_hand():
    y_idx, classes = encode_labels(np.array(["verb", "noun", "verb", "det"]))
    assert classes == ["det", "noun", "verb"] and y_idx.tolist() == [2, 1, 2, 0]
    assert majority_accuracy(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0, 1, 1])) == pytest.approx(0.6)
    train, test = train_test_split(10, 0.3, seed=0)
    assert sorted(train.tolist() + test.tolist()) == list(range(10)) and len(test) == 3
    assert torch.equal(test, train_test_split(10, 0.3, seed=0)[1])
    prompts = torch.arange(20).repeat_interleave(5)  # 20 prompts of 5 tokens
    train, test = train_test_split(100, 0.25, seed=1, groups=prompts)
    assert len(test) == 25 and sorted(train.tolist() + test.tolist()) == list(range(100))
    assert not set(prompts[train].tolist()) & set(prompts[test].tolist())
    with pytest.raises(ValueError, match="one id per row"):
        train_test_split(99, groups=prompts)
    with pytest.raises(ValueError, match="one label per row"):
        train_probe(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="encode_labels"):
        train_probe(torch.zeros(5, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="class indices in 0..1"):
        train_probe(torch.zeros(3, 3), torch.tensor([0, 1, 2]), n_classes=2)
    with pytest.raises(ValueError, match="'linear' or 'mlp'"):
        train_probe(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long), kind="svm")


def test_residual_activations_layers(model):
    toks = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(4))
    _, cache = model.run_with_cache(toks)
    torch.testing.assert_close(residual_activations(model, toks, 0), cache["hook_embed"] + cache["hook_pos_embed"])
    torch.testing.assert_close(residual_activations(model, toks, 1, batch_size=2), cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(residual_activations(model, toks, 2), cache["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match=r"between 0 \(embeddings\) and 2"):
        residual_activations(model, toks, 3)


def test_residual_activations_by_layer_equal_one_call_per_layer(model):
    toks = torch.randint(0, 50, (5, 10), generator=torch.Generator().manual_seed(6))
    stack = residual_activations_by_layer(model, toks, batch_size=2)
    assert stack.shape == (model.cfg.n_layers + 1, 5, 10, model.cfg.d_model)
    for layer in range(model.cfg.n_layers + 1):
        assert torch.equal(stack[layer], residual_activations(model, toks, layer, batch_size=2))
    with pytest.raises(ValueError, match="batch, pos"):
        residual_activations_by_layer(model, toks[0])


def test_randomize_weights(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b, c = randomize_weights(model, seed=1), randomize_weights(model, seed=1), randomize_weights(model, seed=2)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])  # original untouched
    torch.testing.assert_close(a.W_Q, b.W_Q)
    assert not torch.allclose(a.W_Q, c.W_Q) and not torch.allclose(a.W_E, model.W_E)
    assert (a.blocks[0].ln1.w == 1).all() and (a.b_in == 0).all()
    toks = torch.randint(0, 50, (2, 8))
    assert a(toks).shape == model(toks).shape


def test_reflection_flips_the_probe_at_chosen_positions_only(model):
    gen = torch.Generator().manual_seed(5)
    toks = torch.randint(0, 50, (200, 10), generator=gen)
    resid = residual_activations(model, toks, 1)
    projection = resid @ torch.randn(32, generator=gen)
    y = (projection > projection.median()).long()  # a linearly readable label
    probe = train_probe(resid.reshape(-1, 32), y.flatten())
    assert accuracy(probe, resid.reshape(-1, 32), y.flatten()) > 0.97
    w, b = probe_direction(probe)
    logit_diff = resid @ w + b
    torch.testing.assert_close(logit_diff, probe(resid)[..., 1] - probe(resid)[..., 0], atol=1e-4, rtol=0)

    captured = {}
    hooks = [
        ("blocks.1.hook_resid_pre", probe_intervention_hook(w, b, mode="reflect", positions=[3, 7])),
        ("blocks.1.hook_resid_pre", lambda act, hook: captured.setdefault("resid", act)),
    ]
    model.run_with_hooks(toks, fwd_hooks=hooks)
    after = captured["resid"] @ w + b
    torch.testing.assert_close(after[:, [3, 7]], -logit_diff[:, [3, 7]], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(captured["resid"][:, [0, 1, 2, 4, 5, 6, 8, 9]], resid[:, [0, 1, 2, 4, 5, 6, 8, 9]])
    assert (predict(probe, captured["resid"][:, 3]) != predict(probe, resid[:, 3])).all()

    per_prompt = torch.randint(0, 10, (200,), generator=gen)
    shifted = probe_intervention_hook(w, mode="shift", alpha=2.0, positions=per_prompt)(resid)
    rows = torch.arange(200)
    torch.testing.assert_close(shifted[rows, per_prompt] - resid[rows, per_prompt], (2.0 * w / w.norm()).expand(200, 32))
    assert (shifted != resid).any(-1).sum() == 200
    with pytest.raises(ValueError, match="different classes"):
        probe_direction(probe, 1, 1)
    with pytest.raises(ValueError, match="one position per prompt"):
        probe_intervention_hook(w, positions=per_prompt[:5])(resid)
    with pytest.raises(ValueError, match="'reflect' or 'shift'"):
        probe_intervention_hook(w, mode="flip")
    assert isinstance(probe, LinearProbe)


def test_reflection_strength_scales_the_probe_logit():
    """strength k sends the probe's logit difference m to -k m; k = 1 is the plain reflection."""
    gen = torch.Generator().manual_seed(6)
    resid, w = torch.randn(4, 6, 32, generator=gen), torch.randn(32, generator=gen)
    margin = resid @ w + 0.5
    plain = probe_intervention_hook(w, 0.5, positions=2)(resid)
    torch.testing.assert_close(plain, probe_intervention_hook(w, 0.5, positions=2, strength=1.0)(resid))
    pushed = probe_intervention_hook(w, 0.5, positions=2, strength=10.0)(resid)
    torch.testing.assert_close(pushed[:, 2] @ w + 0.5, -10 * margin[:, 2], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(pushed[:, [0, 1, 3, 4, 5]], resid[:, [0, 1, 3, 4, 5]])


def redundant_classes(n: int, d: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes whose means differ along several directions, in anisotropic noise: one probe direction is not enough."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    noise = (torch.randn(n, d, generator=gen) * torch.logspace(-0.5, 0.5, d)) @ basis.T
    centres = 0.8 * torch.randn(n_classes, d, generator=gen) @ basis.T
    return noise + centres[y], y


@pytest.mark.parametrize("n_classes", [2, 3])
def test_inlp_is_a_projection_that_leaves_a_fresh_probe_at_chance(n_classes):
    x, y = redundant_classes(900, 12, n_classes, seed=n_classes)
    majority = np.bincount(y.numpy()).max() / len(y)
    fresh = lambda data: LogisticRegression(max_iter=2000).fit(data, y.numpy()).score(data, y.numpy())  # independent probe
    assert fresh(x.numpy()) > majority + 0.2  # the label is readable to begin with
    one_round = inlp(x, y, 1)[0]
    assert fresh((x @ one_round).numpy()) > majority + 0.1  # one round is not enough here
    P, removed = inlp(x, y, 8)
    assert fresh((x @ P).numpy()) < majority + 0.05  # INLP: no linear probe reads the label any more
    k = removed.shape[0]
    assert 1 <= k <= 8 * (n_classes - 1)
    torch.testing.assert_close(removed @ removed.T, torch.eye(k), atol=1e-5, rtol=0)  # an orthonormal basis
    torch.testing.assert_close(P, P.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-5, rtol=0)  # idempotent
    torch.testing.assert_close(P @ removed.T, torch.zeros(12, k), atol=1e-5, rtol=0)  # the removed directions are gone
    assert float(torch.trace(P)) == pytest.approx(12 - k, abs=1e-4)
    # each round's probe direction lies in the removed subspace: the first one, recomputed independently
    w = probe_direction(train_probe(x, y), 1, 0)[0]
    assert (w @ P).norm() < 1e-4 * w.norm()
    with pytest.raises(ValueError, match="at least 1"):
        inlp(x, y, 0)


def test_projection_hook_edits_chosen_positions_around_the_mean():
    gen = torch.Generator().manual_seed(7)
    resid = torch.randn(4, 6, 10, generator=gen)
    u = torch.nn.functional.normalize(torch.randn(10, generator=gen), dim=0)
    P = torch.eye(10) - torch.outer(u, u)
    mean = torch.randn(10, generator=gen)
    out = projection_hook(P, mean, positions=[1, 4])(resid)
    keep = [0, 2, 3, 5]
    assert torch.equal(out[:, keep], resid[:, keep])
    torch.testing.assert_close(out[:, [1, 4]] @ u, (mean @ u).expand(4, 2))  # the removed direction set to its mean
    torch.testing.assert_close(out[:, [1, 4]] @ P, resid[:, [1, 4]] @ P)  # everything else kept
    torch.testing.assert_close(projection_hook(P)(resid) @ u, torch.zeros(4, 6), atol=1e-6, rtol=0)  # no mean: projected through the origin
    with pytest.raises(ValueError, match="10-dimensional"):
        projection_hook(P)(torch.zeros(2, 3, 8))
