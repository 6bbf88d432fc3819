"""Attention views render offline without probing the internet; plots and the explorer work."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch
from matplotlib.figure import Figure

import mi_course
from mi_course import induction, viz

TOKENS = ["<bos>", "A", "$B", "<script>", "A", "$B"]
PATTERN = induction.random_causal_patterns(1, 2, len(TOKENS), seed=0)[0]


@pytest.fixture(autouse=True)
def no_internet_probe(monkeypatch):
    """CircuitsVis's RenderedHTML probes google.com at every display; our views must not."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("the attention view tried to reach the internet")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("MI_COURSE_VIZ", raising=False)


def _props(html: str) -> dict:
    """The JSON properties passed to CircuitsVis.render in a view's HTML."""
    return json.loads(re.search(r"CircuitsVis\.AttentionHeads,\s*(\{.*\})\s*\)", html, re.S)[1])


def test_script_safe_keeps_the_script_whole():
    html = '<div/><script>lib("</script>");\nrender("id", X, {"tokens": ["</script>", "<bos>"]})\n</script>'
    safe = viz.script_safe(html)
    assert safe.count("</script>") == 2  # the library's own text is left alone; the props no longer close the tag
    assert '["<\\/script>", "<bos>"]' in safe and safe.endswith("</script>")


def test_inline_view_carries_the_bundle_and_the_tokens_as_text():
    view = viz.attention_view(TOKENS, PATTERN, ["L0H0", "L0H1"], mode="inline")
    bundle = view._repr_mimebundle_()
    html = bundle["text/html"]
    assert len(html) > 1_000_000  # the JavaScript bundle is inlined: shows offline
    assert "unpkg.com" not in html
    props = _props(html)
    assert props["tokens"] == TOKENS  # shown as text by React: no HTML escaping
    assert props["attentionHeadNames"] == ["L0H0", "L0H1"]
    assert torch.allclose(torch.tensor(props["attention"]), PATTERN, atol=1e-4)
    assert view._repr_mimebundle_() is bundle  # rendered once, not at every display


def test_cdn_view_is_small():
    html = viz.attention_view(TOKENS, PATTERN, mode="cdn")._repr_mimebundle_()["text/html"]
    assert "unpkg.com/circuitsvis" in html and len(html) < 20_000
    assert _props_cdn(html)["tokens"][0] == "<bos>"


def _props_cdn(html: str) -> dict:
    return json.loads(re.search(r"AttentionHeads,\s*(\{.*\})\s*\)", html, re.S)[1])


def test_static_view_is_a_small_png():
    bundle = viz.attention_view(TOKENS, PATTERN[0], ["L1H0"], mode="static")._repr_mimebundle_()
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG") and len(png) < 150_000
    assert "text/html" not in bundle and "L1H0" in bundle["text/plain"]


def test_view_rejects_mismatched_shapes_and_modes():
    with pytest.raises(ValueError, match="do not fit"):
        viz.attention_view(TOKENS[:-1], PATTERN, mode="static")
    with pytest.raises(ValueError, match="mode must be one of"):
        viz.attention_view(TOKENS, PATTERN, mode="html")


def test_default_mode(monkeypatch):
    monkeypatch.delenv("MI_COURSE_VIZ", raising=False)
    assert viz.default_mode() == "inline"
    monkeypatch.setenv("MI_COURSE_VIZ", "cdn")
    assert viz.default_mode() == "cdn"
    monkeypatch.setenv("MI_COURSE_VIZ", "fancy")
    with pytest.raises(ValueError, match="MI_COURSE_VIZ"):
        viz.default_mode()


def test_plots_return_figures():
    scores = {name: torch.rand(2, 3) for name in induction.SCORE_NAMES}
    assert isinstance(viz.plot_head_scores(scores, "title"), Figure)
    assert isinstance(viz.plot_per_token_loss({"model": torch.rand(4, 12)}, seq_len=6), Figure)
    assert isinstance(viz.plot_matrix(torch.randn(5, 5), "QK"), Figure)
    assert isinstance(viz.plot_attention(PATTERN[0], TOKENS), Figure)
    assert isinstance(viz.plot_composition(torch.rand(2), torch.rand(5), torch.rand(50)), Figure)
    assert isinstance(viz.plot_attribution_scatter({"a": (torch.randn(6), torch.randn(6))}, list("abcdef")), Figure)
    assert isinstance(viz.plot_curves({"x": ([1, 2], [0.1, 0.9]), "-- y": ([1, 2], [0.0, 1.0])}, hline=0.8), Figure)


def test_explorer_updates_scores_and_switches_models():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    handwired = mi_course.load_model("handwired-induction")
    cfg = HookedTransformerConfig(n_layers=3, d_model=16, n_ctx=40, d_head=4, n_heads=4, d_vocab=27, attn_only=True, act_fn=None, seed=0)
    loads = []

    def load_random():
        loads.append(1)
        return HookedTransformer(cfg, tokenizer=handwired.tokenizer).eval()

    explorer = viz.AttentionExplorer(
        {"handwired-induction": handwired, "random": load_random}, prompts={"handwired-induction": ["A B C A B C"]}
    )
    assert (explorer.layer.max, explorer.head.max) == (1, 1)
    explorer.layer.value, explorer.head.value = 1, 0
    assert explorer.scores["induction"] > 0.99  # L1H0 of the hand-wired model on a repeated sequence
    explorer.layer.value = 0
    assert explorer.scores["previous_token"] > 0.99 and "L0H0" in explorer.scores_text.value
    explorer.input_picker.value = "A B C A B C"
    assert explorer.scores["previous_token"] > 0.99
    explorer.prompt.value = "A B C D"
    explorer._prompt_submitted()
    assert explorer.input_picker.value == "A B C D" and torch.isnan(torch.tensor(explorer.scores["induction"]))
    assert "n/a" in explorer.scores_text.value
    explorer.prompt.value = "not a letter"
    explorer._prompt_submitted()
    assert explorer.scores == {} and "cannot run this input" in explorer.scores_text.value
    explorer.model_picker.value = "random"
    assert loads == [1] and (explorer.layer.max, explorer.head.max) == (2, 3)
    assert explorer.input_picker.options == (explorer.REPEATED,) and "induction" in explorer.scores
    explorer.model_picker.value = "handwired-induction"
    explorer.model_picker.value = "random"
    assert loads == [1]  # loaded once


def test_plot_circuit_draws_every_edge_and_marks_differences_from_the_truth():
    from matplotlib.patches import FancyArrowPatch

    from mi_course.circuits import Circuit, Edge, senders
    from mi_course.models import ground_truth, load_model

    model = load_model("handwired-induction")
    truth = ground_truth("handwired-induction")
    found = Circuit.from_edges(set(truth.edges) - {Edge("embed", "L1H0.q")} | {Edge("L0H1", "L1H0.k")})
    fig = viz.plot_circuit(found, senders(model), truth=truth)
    ax = fig.axes[0]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == len(found.edges) + 1  # the found edges and the one missed edge
    assert sum(a.get_linestyle() == "--" for a in arrows) == 1
    red = [a for a in arrows if a.get_edgecolor()[:3] == pytest.approx((0.839, 0.153, 0.157), abs=1e-2)]
    assert len(red) == 1  # L0H1 -> L1H0.k is not in the truth
    labels = {t.get_text(): t.get_color() for t in ax.texts}
    assert set(senders(model)) | {"logits"} <= set(labels) and labels["L1H1"] != "black"


def test_static_view_of_many_heads_is_a_compact_grid():
    """GPT-2 small's 144 heads: one small panel each, drawn in seconds, in a PNG of about a megabyte."""
    n = 144
    patterns = induction.random_causal_patterns(1, n, 41, seed=0)[0]
    view = viz.attention_view([f"t{i}" for i in range(41)], patterns, [f"L{i // 12}H{i % 12}" for i in range(n)], mode="static")
    png = base64.b64decode(view._repr_mimebundle_()["image/png"])
    assert png.startswith(b"\x89PNG") and len(png) < 2_000_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width < 1_500 and height < 1_600  # 12 columns of small panels, not 48 rows of full-size ones
    assert "L11H11" in view._repr_mimebundle_()["text/plain"]
