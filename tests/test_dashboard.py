"""Latent dashboards: logit weights by hand, the page's contents, the explorer and its static fallback."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import dashboard
from mi_course.models import word_level_tokenizer


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=20, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg, tokenizer=word_level_tokenizer([f"w{i}" for i in range(18)])).eval()
    with torch.no_grad():
        model.ln_final.w.copy_(torch.rand(16) + 0.5)
    return model


def test_logit_weights_by_hand(model):
    direction = torch.randn(16, generator=torch.Generator().manual_seed(0))
    expected = ((direction - direction.mean()) * model.ln_final.w) @ model.W_U
    assert torch.allclose(dashboard.logit_weights(model, direction), expected, atol=1e-5)
    # a direction along the all-ones vector is removed by the layer norm's centring
    assert dashboard.logit_weights(model, torch.ones(16)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="d_model=16"):
        dashboard.logit_weights(model, torch.ones(3))


def test_dashboard_shows_top_contexts_histogram_and_logits(model):
    tokens = torch.randint(1, 19, (3, 8), generator=torch.Generator().manual_seed(1))
    acts = torch.zeros(3, 8)
    acts[1, 5], acts[2, 2], acts[0, 7] = 4.0, 2.0, 1.0
    direction = model.W_U[:, 7] - model.W_U[:, 7].mean()
    page = dashboard.latent_dashboard(model, acts, tokens, direction, title="latent 3", k=2)
    assert page.stats["fires"] == pytest.approx(3 / 24) and page.stats["max"] == 4.0
    assert page.stats["top_logits"][0] == int(dashboard.logit_weights(model, direction).argmax())
    html = page._repr_html_()
    assert "data:image/png;base64," in html and "latent 3" in html
    strongest = model.to_str_tokens(tokens[1, 5:6])[0]
    assert f"<b><span title=\"4.00\"" in html and strongest in html
    assert html.count("<tr>") == 2  # k = 2 contexts
    silent = dashboard.latent_dashboard(model, torch.zeros(3, 8), tokens, direction)
    assert "never fires" in silent.html
    with pytest.raises(ValueError, match="must match tokens"):
        dashboard.latent_dashboard(model, acts[:2], tokens, direction)


def test_explorer_and_static_fallback(model, monkeypatch):
    tokens = torch.randint(1, 19, (2, 6), generator=torch.Generator().manual_seed(2))
    acts = torch.relu(torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(3)))
    W_dec = torch.randn(5, 16)
    explorer = dashboard.explore_latents(model, acts, tokens, W_dec, latents=[2], mode="inline")
    assert isinstance(explorer, dashboard.LatentExplorer) and explorer.latent.max == 4 and "latent 2" in explorer.page.value
    explorer.latent.value = 4
    assert "latent 4" in explorer.page.value
    monkeypatch.setenv("MI_COURSE_VIZ", "static")
    static = dashboard.explore_latents(model, acts, tokens, W_dec, latents=[1, 3])
    assert "latent 1" in static.data and "latent 3" in static.data and "latent 2" not in static.data
    with pytest.raises(ValueError, match="batch, pos, d_sae"):
        dashboard.LatentExplorer(model, acts[:1], tokens, W_dec)
