"""The reference SAE and its metrics, against hand computations, scikit-learn and SAELens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score, roc_auc_score
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.models import word_level_tokenizer
from mi_course.sae import (
    SAE,
    ce_loss_score,
    compare_with_saelens,
    dead_latents,
    evaluate_sae,
    explained_variance,
    feature_recovery,
    hook_activations,
    l0,
    latent_activations,
    planted_features,
    score_latents,
    superposition_stats,
    top_activating_contexts,
    train_saelens_sae,
    train_sae,
    train_toy_superposition,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=0,
    )
    words = [f"w{i}" for i in range(49)]
    return HookedTransformer(cfg, tokenizer=word_level_tokenizer(words)).eval()


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 50, (n, 12), generator=torch.Generator().manual_seed(seed))


class Identity:
    """A perfect "SAE": its latents are the activation itself."""

    def encode(self, x):
        return x

    def decode(self, f):
        return f


class Zero(Identity):
    def decode(self, f):
        return torch.zeros_like(f)


def test_encode_decode_by_hand():
    sae = SAE(4, 6, seed=1)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(5, 4)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = sae.encode(x)
    torch.testing.assert_close(f, pre.clamp(min=0))
    torch.testing.assert_close(sae(x), f @ sae.W_dec + sae.b_dec)
    sae.k = 2
    f = sae.encode(x)
    assert ((f > 0).sum(-1) <= 2).all()
    for row, p in zip(f, pre):
        kept = p.topk(2).indices
        torch.testing.assert_close(row[kept], p[kept].clamp(min=0))
    with pytest.raises(ValueError, match="d_in=4"):
        sae.encode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="k must be"):
        SAE(4, 6, k=7)


def test_metrics_by_hand_and_against_sklearn():
    gen = torch.Generator().manual_seed(3)
    x, x_hat = torch.randn(50, 6, generator=gen), torch.randn(50, 6, generator=gen)
    expected = r2_score(x.numpy(), x_hat.numpy(), multioutput="variance_weighted")
    assert explained_variance(x, x_hat) == pytest.approx(expected, abs=1e-5)
    assert explained_variance(x, x) == pytest.approx(1)
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0, abs=1e-6)
    acts = torch.tensor([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0]])
    assert l0(acts) == 1.5
    assert dead_latents(acts).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="same shape"):
        explained_variance(x, x_hat[:, :5])


def test_training_deterministic_and_decoder_unit_norm():
    x, _, _ = planted_features(2000, 16, 24, seed=4)
    sae, history = train_sae(x, 48, l1_coeff=0.3, steps=300, progress=False)
    again, _ = train_sae(x, 48, l1_coeff=0.3, steps=300, progress=False)
    torch.testing.assert_close(sae.W_dec, again.W_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(48))
    assert np.mean(history["loss"][-20:]) < 0.5 * np.mean(history["loss"][:20])
    assert len(history["l0"]) == len(history["dead_fraction"]) == 300
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        train_sae(x.reshape(40, 50, 16), 48)


def test_evaluate_matches_direct_computation_for_a_saelens_sae():
    x, _, _ = planted_features(1000, 16, 24, seed=5)
    sae = train_saelens_sae(x, 32, k=3, steps=20, batch_size=100)
    metrics = evaluate_sae(sae, x)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    assert metrics["L0"] == pytest.approx(3.0)
    assert metrics["explained variance"] == pytest.approx(explained_variance(x, x_hat), abs=1e-6)
    assert metrics["FVU"] == pytest.approx(1 - metrics["explained variance"])
    assert metrics["dead fraction"] == pytest.approx(dead_latents(f).float().mean().item())
    small = train_saelens_sae(x[:50], 32, k=3, steps=2, batch_size=100)  # fewer rows than a batch: still trains
    assert small.W_dec.shape == (32, 16)


def test_ce_loss_score_endpoints_and_zero_ablation_by_hand(model):
    toks = tokens(6, 6)
    hook = "blocks.0.hook_resid_post"
    perfect = ce_loss_score(model, Identity(), toks, hook)
    zero = ce_loss_score(model, Zero(), toks, hook)
    assert perfect["CE loss score"] == pytest.approx(1, abs=1e-5)
    assert zero["CE loss score"] == pytest.approx(0, abs=1e-5)
    logits = model.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: a * 0)])
    logp = logits[:, :-1].log_softmax(-1).gather(-1, toks[:, 1:, None])
    assert zero["CE zero ablation"] == pytest.approx(-logp.mean().item(), abs=1e-4)
    assert perfect["CE clean"] == pytest.approx(model(toks, return_type="loss").item(), abs=1e-5)
    with pytest.raises(KeyError, match="unknown hook"):
        ce_loss_score(model, Identity(), toks, "blocks.7.hook_resid_post")


def test_latent_activations_and_top_contexts(model):
    toks = tokens(4, 7)
    sae = SAE(32, 20, seed=8)
    acts = latent_activations(model, sae, toks, "blocks.1.hook_resid_pre", batch_size=3)
    _, cache = model.run_with_cache(toks)
    torch.testing.assert_close(acts, sae.encode(cache["blocks.1.hook_resid_pre"]))
    torch.testing.assert_close(hook_activations(model, toks, "blocks.0.hook_mlp_out", batch_size=3), cache["blocks.0.hook_mlp_out"])
    with pytest.raises(KeyError, match="unknown hook"):
        hook_activations(model, toks, "blocks.0.mlp_out")
    planted = torch.zeros(4, 12)
    planted[2, 5], planted[0, 1], planted[3, 9] = 3.0, 2.0, 1.0
    top = top_activating_contexts(planted, toks, model, k=2, window=3)
    assert [(c.batch, c.pos, c.activation) for c in top] == [(2, 5, 3.0), (0, 1, 2.0)]
    assert top[0].token == f"w{toks[2, 5] - 1}"
    assert top[0].context == [f"w{t - 1}" for t in toks[2, 2:5].tolist()]
    assert top[1].context == [f"w{toks[0, 0] - 1}"]
    with pytest.raises(ValueError, match="must match tokens"):
        top_activating_contexts(acts, toks, model)


def test_hook_activations_skip_later_blocks_with_the_same_result(model, monkeypatch):
    toks = tokens(5, 3)
    _, cache = model.run_with_cache(toks)
    stops = []
    run_with_cache = model.run_with_cache
    monkeypatch.setattr(model, "run_with_cache", lambda *a, **kw: stops.append(kw.get("stop_at_layer")) or run_with_cache(*a, **kw))
    for hook in ("blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "hook_embed", "ln_final.hook_normalized"):
        torch.testing.assert_close(hook_activations(model, toks, hook, batch_size=2), cache[hook], rtol=0, atol=0)
    assert stops == [1] * 6 + [2] * 3 + [None] * 6  # 3 batches each; after the last block only the unembedding is skipped


def test_score_latents_against_sklearn():
    gen = torch.Generator().manual_seed(9)
    labels = np.array(["noun", "verb", "det"])[torch.randint(0, 3, (300,), generator=gen).numpy()]
    acts = torch.relu(torch.randn(300, 8, generator=gen))
    acts[:, 5] = torch.tensor(labels == "verb", dtype=torch.float) * (1 + torch.rand(300, generator=gen))  # a perfect verb detector
    scores = {s.label: s for s in score_latents(acts, labels)}
    assert scores["verb"].latent == 5
    assert (scores["verb"].auc, scores["verb"].precision, scores["verb"].recall) == (1.0, 1.0, 1.0)
    for label in ("noun", "det"):
        best = max(range(8), key=lambda j: roc_auc_score(labels == label, acts[:, j].numpy()))
        assert scores[label].latent == best
        assert scores[label].auc == pytest.approx(roc_auc_score(labels == label, acts[:, best].numpy()))
        assert scores[label].count == (labels == label).sum()
    with pytest.raises(ValueError, match="n labels"):
        score_latents(acts, labels[:10])


def test_feature_recovery_by_hand():
    dictionary = torch.eye(4)[:3]
    decoder = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    torch.testing.assert_close(feature_recovery(decoder, dictionary), torch.tensor([0.5**0.5, 1.0, 0.0]))


@pytest.mark.parametrize("k,l1", [(None, 0.3), (4, 0.0)], ids=["relu_l1", "topk"])
def test_ours_and_saelens_recover_planted_features(k, l1):
    x, dictionary, codes = planted_features(10_000, 32, 64, p_active=0.04, noise=0.01, seed=0)
    result = compare_with_saelens(x, 128, k=k, l1_coeff=l1, steps=1000, dictionary=dictionary)
    ours, theirs = result["metrics"]["ours"], result["metrics"]["SAELens"]
    assert ours["explained variance"] > 0.85 and theirs["explained variance"] > 0.85
    assert abs(ours["explained variance"] - theirs["explained variance"]) < 0.05
    assert ours["features recovered"] > 0.8 and theirs["features recovered"] > 0.8
    assert ours["L0"] < 16 and theirs["L0"] < 16  # sparse: the data has ~2.6 active features per row


def test_compare_reports_the_ce_loss_score_of_both_saes(model):
    toks = tokens(8, 10)
    hook = "blocks.1.hook_resid_pre"
    acts = hook_activations(model, tokens(40, 11), hook).reshape(-1, 32)
    result = compare_with_saelens(acts, 64, k=8, steps=20, model=model, tokens=toks, hook_name=hook)
    assert set(result["metrics"]) == set(result["saes"]) == {"ours", "SAELens"}
    for name, sae in result["saes"].items():
        expected = ce_loss_score(model, sae, toks, hook)["CE loss score"]
        assert result["metrics"][name]["CE loss score"] == pytest.approx(expected, abs=1e-6)
        assert result["metrics"][name]["L0"] <= 8
    with pytest.raises(ValueError, match="all of model, tokens and hook_name"):
        compare_with_saelens(acts, 64, model=model, hook_name=hook)


def test_toy_model_superposes_only_sparse_features():
    """Elhage et al.'s setting: dense features get d_hidden orthogonal directions (the most
    important ones); sparse features are packed in superposition, more of them than dimensions."""
    W, b = train_toy_superposition(20, 5, (1.0, 0.01), progress=False)
    assert W.shape == (2, 5, 20) and b.shape == (2, 20)
    stats = superposition_stats(W)
    assert stats["represented"].tolist()[0] == 5
    dense_norms = stats["norm"][0]
    assert (dense_norms[:5] > 0.9).all() and (dense_norms[5:] < 0.3).all()
    assert (stats["interference"][0, :5] < 0.05).all()
    assert stats["represented"][1] >= 8
    with pytest.raises(ValueError, match="fewer dimensions than features"):
        train_toy_superposition(4, 4)


def test_superposition_stats_by_hand():
    W = torch.tensor([[[1.0, 0.0, 0.6], [0.0, 2.0, 0.8]]])  # features at (1,0), (0,2), (0.6,0.8)
    stats = superposition_stats(W)
    torch.testing.assert_close(stats["norm"], torch.tensor([[1.0, 2.0, 1.0]]))
    torch.testing.assert_close(stats["interference"], torch.tensor([[0.0 + 0.36, 0.0 + 0.64, 0.36 + 1.6**2]]))
    assert stats["represented"].tolist() == [3]


# Interventions on latents and honest baselines


@pytest.fixture(scope="module")
def spliced(model):
    tokens = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    hook = "blocks.1.hook_resid_pre"
    acts = hook_activations(model, tokens, hook).reshape(-1, 32)
    sae = SAE(32, 64, k=6, seed=2)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
        sae.b_enc.add_(0.1)
    return sae, tokens, hook


def test_splice_with_error_term_is_exact_and_ablation_zeroes_the_latent(model, spliced):
    from mi_course.sae import add_to_latent, edit_activation, run_with_latent_edit, zero_latents

    sae, tokens, hook = spliced
    clean = model(tokens)
    with torch.no_grad():
        assert torch.equal(run_with_latent_edit(model, sae, hook, tokens, lambda f: f), clean)
        assert torch.equal(run_with_latent_edit(model, sae, hook, tokens, add_to_latent(3, 0.0)), clean)
        x = hook_activations(model, tokens, hook)
        f = sae.encode(x)
        latent = int((f > 0).float().sum((0, 1)).argmax())
        # independently: the SAE's reconstruction with the latent zeroed, plus the untouched error x - x_hat
        g = f.clone()
        g[..., latent] = 0
        by_hand = g @ sae.W_dec + sae.b_dec + (x - (f @ sae.W_dec + sae.b_dec))
        assert torch.allclose(edit_activation(sae, x, zero_latents(latent)), by_hand, atol=1e-5)
        # the model with that activation patched in by hand
        patched = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: by_hand)])
        assert torch.allclose(run_with_latent_edit(model, sae, hook, tokens, zero_latents(latent)), patched, atol=1e-4)
        assert not torch.allclose(patched, clean, atol=1e-3)
        # steering adds amount times the decoder direction, at the positions given only
        pos = torch.tensor([0, 4, 9])
        steered = edit_activation(sae, x, add_to_latent(latent, 2.5), positions=pos)
        expected = x.clone()
        expected[torch.arange(3), pos] += 2.5 * sae.W_dec[latent]
        assert torch.allclose(steered, expected, atol=1e-5)
        with pytest.raises(ValueError, match="one position per prompt"):
            edit_activation(sae, x, zero_latents(0), positions=torch.tensor([0, 1]))


def test_latent_attribution_is_the_first_order_term_of_exact_ablation(model, spliced):
    from mi_course.sae import latent_ablation_effects, latent_attribution

    sae, tokens, hook = spliced

    def metric(logits):
        return logits[:, -1, 7].mean()

    estimate = latent_attribution(model, sae, hook, tokens, metric)
    with torch.no_grad():
        f = sae.encode(hook_activations(model, tokens, hook))
    live = (f > 0).reshape(-1, 64).any(0).nonzero().flatten().tolist()
    dead = sorted(set(range(64)) - set(live))
    assert estimate.shape == (64,) and (estimate[dead] == 0).all()
    # a tiny ablation (scale the latent by 1 - eps) is first order: its change / eps equals the estimate
    from mi_course.sae import run_with_latent_edit

    eps = 1e-3
    for j in live[:4]:
        def shrink(g, j=j):
            g = g.clone()
            g[..., j] *= 1 - eps
            return g

        with torch.no_grad():
            change = (metric(run_with_latent_edit(model, sae, hook, tokens, shrink)) - metric(model(tokens))).item() / eps
        assert change == pytest.approx(estimate[j].item(), abs=2e-2 * (1 + abs(change)))
    exact = latent_ablation_effects(model, sae, hook, tokens, metric, live[:3])
    assert exact.shape == (3,)


def test_matched_random_latents():
    from mi_course.sae import matched_random_latents

    acts = torch.zeros(5, 6)
    acts[:, 0] = 1.0
    acts[:2, 1] = 1.5  # mean where it fires 1.5
    acts[0, 2] = 10.0  # too large
    acts[:, 3] = 0.6
    # latent 4 dead, latent 5 tiny
    acts[0, 5] = 0.01
    assert matched_random_latents(acts, 0, 2) == [1, 3]
    with pytest.raises(ValueError, match="only 2 latents"):
        matched_random_latents(acts, 0, 3)
    with pytest.raises(ValueError, match="never fires"):
        matched_random_latents(acts, 4, 1)
    assert matched_random_latents(acts, 0, 3, factor=20) in ([1, 2, 3], [1, 3, 5], [1, 2, 5], [2, 3, 5])


def test_pca_reconstruction_against_sklearn():
    from sklearn.decomposition import PCA

    from mi_course.sae import PCAReconstruction

    gen = torch.Generator().manual_seed(0)
    train = torch.randn(200, 8, generator=gen) @ torch.randn(8, 8, generator=gen) + 3
    test = torch.randn(50, 8, generator=gen) @ torch.randn(8, 8, generator=gen)
    pca = PCAReconstruction(train, 3)
    ours = pca.decode(pca.encode(test))
    theirs = PCA(3).fit(train.double().numpy())
    expected = theirs.inverse_transform(theirs.transform(test.double().numpy()))
    assert np.allclose(ours.numpy(), expected, atol=1e-3)
    full = PCAReconstruction(train, 8)
    assert torch.allclose(full.decode(full.encode(test)), test, atol=1e-3)
    with pytest.raises(ValueError, match="k must be"):
        PCAReconstruction(train, 9)


def test_token_identity_auc_and_heldout_scores_against_sklearn():
    from mi_course.sae import best_latent_heldout, binary_auc, token_identity_auc

    rng = np.random.default_rng(0)
    train_tokens, test_tokens = torch.from_numpy(rng.integers(0, 5, 300)), torch.from_numpy(rng.integers(0, 6, 100))
    train_labels, test_labels = train_tokens.numpy() == 2, test_tokens.numpy() == 2
    assert token_identity_auc(train_tokens, train_labels, test_tokens, test_labels) == 1.0  # the word decides
    noisy = rng.random(300) < 0.5
    test_noisy = rng.random(100) < 0.5
    # by hand: the score is each word's training rate of the label (unseen word 5: the overall rate)
    rates = {t: noisy[train_tokens.numpy() == t].mean() for t in range(5)}
    score = [rates.get(t, noisy.mean()) for t in test_tokens.tolist()]
    assert token_identity_auc(train_tokens, noisy, test_tokens, test_noisy) == pytest.approx(roc_auc_score(test_noisy, score))
    acts = torch.from_numpy(rng.random((300, 7))).float()
    acts[:, 4] += torch.from_numpy(noisy).float()
    test_acts = torch.from_numpy(rng.random((100, 7))).float()
    test_acts[:, 4] += torch.from_numpy(test_noisy).float()
    latent, train_auc, test_auc = best_latent_heldout(acts, noisy, test_acts, test_noisy)
    assert latent == 4 and train_auc == pytest.approx(roc_auc_score(noisy, acts[:, 4].numpy()))
    assert test_auc == pytest.approx(roc_auc_score(test_noisy, test_acts[:, 4].numpy()))
    assert binary_auc(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both positive and negative"):
        binary_auc(np.ones(3), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="need both labels"):
        best_latent_heldout(acts, np.zeros(300, dtype=bool), test_acts, test_noisy)


def test_feature_dimensionality_counts_the_dimensions_each_feature_gets():
    from mi_course.sae import feature_dimensionality

    e = torch.eye(3)
    # features 0 and 1 alone on their dimensions, 2 and 3 an antipodal pair, 4 not represented
    W = torch.stack([e[0] * 2.0, e[1], e[2], -e[2], torch.zeros(3)], dim=1)
    assert torch.allclose(feature_dimensionality(W), torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0]))
    # three features at 120 degrees in a plane share its 2 dimensions equally
    angles = torch.tensor([0.0, 2.0944, 4.1888])
    tri = torch.stack([angles.cos(), angles.sin()])
    assert torch.allclose(feature_dimensionality(tri), torch.full((3,), 2 / 3), atol=1e-4)
    # against the definition written out, on a batch of random embeddings
    W = torch.randn(4, 5, 9, generator=torch.Generator().manual_seed(0))
    d = feature_dimensionality(W)
    for b in range(4):
        for i in range(9):
            wi = W[b, :, i]
            want = wi.dot(wi) / sum((wi / wi.norm()).dot(W[b, :, j]) ** 2 for j in range(9))
            assert torch.isclose(d[b, i], want, rtol=1e-4)
    assert (d.sum(-1) <= 5 + 1e-4).all()  # never more than the space has (Cauchy-Schwarz with the features' Gram matrix)
