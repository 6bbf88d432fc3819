"""Latent dashboards: what one SAE latent responds to and what it writes, on one page.

A dashboard shows, for one latent,
- the histogram of its activations over all tokens where it fires (and how often it fires);
- its top-activating contexts, each token shaded by the latent's activation on it;
- its logit weights: the decoder direction read through the final layer norm (its scale
  frozen) and the unembedding, as in notebook 05's logit lens: the tokens whose logits the
  latent pushes up and down when it fires.
Everything is rendered offline (matplotlib to PNG, plain HTML). `LatentExplorer` adds a slider
over latents with ipywidgets; with ``MI_COURSE_VIZ=static`` (as in the committed notebooks)
`explore_latents` shows the dashboards of a few latents instead.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_course import viz

__all__ = ["LatentDashboard", "LatentExplorer", "explore_latents", "latent_dashboard", "logit_weights"]


@torch.no_grad()
def logit_weights(model: HookedTransformer, direction: Float[Tensor, " d_model"]) -> Float[Tensor, " d_vocab"]:
    """The direct effect on the logits of one unit along ``direction`` at the end of the residual stream.

    The final layer norm is linearised with its scale frozen at 1: centre the direction (a
    LayerNorm subtracts the mean), multiply by the norm's weight, then unembed. Only the ranking
    and the signs are meaningful: the real scale depends on the token.
    """
    if direction.shape != (model.cfg.d_model,):
        raise ValueError(f"direction must be one vector of size d_model={model.cfg.d_model}, got shape {tuple(direction.shape)}.")
    d = direction.float()
    if model.cfg.normalization_type in ("LN", "LNPre"):
        d = d - d.mean()
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:
        d = d * weight
    return d @ model.W_U


class LatentDashboard:
    """One latent's dashboard as HTML (shown by Jupyter); ``figure`` is the histogram."""

    def __init__(self, html_text: str, figure, stats: dict):
        self.html, self.figure, self.stats = html_text, figure, stats

    def _repr_html_(self) -> str:
        return self.html


def _shade(token: str, value: float, top: float) -> str:
    alpha = 0.0 if top <= 0 else min(max(value / top, 0.0), 1.0)
    title = f"{value:.2f}"
    return f'<span title="{title}" style="background: rgba(255, 140, 0, {alpha:.2f}); padding: 0 1px">{html.escape(token)}</span>'


@torch.no_grad()
def latent_dashboard(
    model: HookedTransformer,
    latent_acts: Float[Tensor, "batch pos"],
    tokens: Int[Tensor, "batch pos"],
    direction: Float[Tensor, " d_model"],
    *,
    title: str = "latent",
    k: int = 6,
    window: int = 8,
    n_logits: int = 6,
) -> LatentDashboard:
    """The dashboard of one latent from its activations on ``tokens`` and its decoder ``direction``."""
    if latent_acts.shape != tokens.shape:
        raise ValueError(f"latent_acts {tuple(latent_acts.shape)} must match tokens {tuple(tokens.shape)}; pass acts[..., latent].")
    flat = latent_acts.flatten().float()
    active = flat[flat > 0]
    fig, ax = plt.subplots(figsize=(4, 2.2))
    ax.hist(active.numpy() if len(active) else [0.0], bins=30, color="tab:orange")
    ax.set(xlabel="activation (where it fires)", ylabel="tokens", title=f"{title}: fires on {len(active) / max(len(flat), 1):.1%} of tokens")
    fig.tight_layout()
    png = base64.b64encode(viz.figure_png(fig)).decode()
    plt.close(fig)

    top_value = float(flat.max()) if len(flat) else 0.0
    rows = []
    if len(active):
        values, indices = flat.topk(min(k, len(active)))
        for value, index in zip(values.tolist(), indices.tolist()):
            b, p = divmod(index, tokens.shape[1])
            start = max(0, p - window)
            strings = model.to_str_tokens(tokens[b, start : p + 2])
            acts_here = latent_acts[b, start : p + 2].tolist()
            cells = "".join(
                (f"<b>{_shade(s, a, top_value)}</b>" if start + i == p else _shade(s, a, top_value)) for i, (s, a) in enumerate(zip(strings, acts_here))
            )
            rows.append(f"<tr><td style='text-align:right; padding-right:8px'>{value:.2f}</td><td style='font-family:monospace'>{cells}</td></tr>")
    logits = logit_weights(model, direction)
    up, down = logits.topk(n_logits), (-logits).topk(n_logits)

    def listing(vals, idx, sign):
        return "<br>".join(f"{html.escape(repr(model.to_single_str_token(int(i))))} {sign * v:+.2f}" for v, i in zip(vals.tolist(), idx.tolist()))

    page = (
        f"<div style='border:1px solid #ccc; padding:6px; margin:4px 0'><b>{html.escape(title)}</b>"
        f"<div style='display:flex; gap:16px; align-items:flex-start'>"
        f"<img src='data:image/png;base64,{png}'/>"
        f"<div><b>logits pushed up</b><br>{listing(up.values, up.indices, 1)}</div>"
        f"<div><b>logits pushed down</b><br>{listing(down.values, down.indices, -1)}</div></div>"
        f"<b>top-activating contexts</b> (the token itself in bold, shading = activation)"
        f"<table>{''.join(rows) or '<tr><td>never fires on these tokens</td></tr>'}</table></div>"
    )
    stats = {"fires": len(active) / max(len(flat), 1), "max": top_value, "top_logits": up.indices.tolist(), "bottom_logits": down.indices.tolist()}
    return LatentDashboard(page, fig, stats)


class LatentExplorer:
    """A slider over latents that redraws the dashboard of the one picked (ipywidgets)."""

    def __init__(self, model: HookedTransformer, acts: Float[Tensor, "batch pos d_sae"], tokens: Int[Tensor, "batch pos"], W_dec: Float[Tensor, "d_sae d_model"], start: int = 0):
        import ipywidgets as w

        if acts.shape[:2] != tokens.shape or acts.shape[-1] != W_dec.shape[0]:
            raise ValueError(f"acts {tuple(acts.shape)} must be [batch, pos, d_sae] for tokens {tuple(tokens.shape)} and W_dec {tuple(W_dec.shape)}.")
        self.model, self.acts, self.tokens, self.W_dec = model, acts, tokens, W_dec
        self.latent = w.IntSlider(value=start, min=0, max=acts.shape[-1] - 1, description="latent")
        self.page = w.HTML()
        self.widget = w.VBox([self.latent, self.page])
        self.latent.observe(lambda _: self.update(), names="value")
        self.update()

    def dashboard(self, latent: int) -> LatentDashboard:
        return latent_dashboard(self.model, self.acts[..., latent], self.tokens, self.W_dec[latent], title=f"latent {latent}")

    def update(self) -> None:
        self.page.value = self.dashboard(self.latent.value).html

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def explore_latents(
    model: HookedTransformer,
    acts: Float[Tensor, "batch pos d_sae"],
    tokens: Int[Tensor, "batch pos"],
    W_dec: Float[Tensor, "d_sae d_model"],
    latents: Sequence[int],
    mode: str | None = None,
):
    """The explorer (a slider over all latents), or with ``mode="static"`` (``$MI_COURSE_VIZ``) the dashboards of ``latents``."""
    mode = viz.default_mode() if mode is None else mode
    if mode == "static":
        from IPython.display import HTML

        pages = [latent_dashboard(model, acts[..., j], tokens, W_dec[j], title=f"latent {j}").html for j in latents]
        return HTML("".join(pages))
    return LatentExplorer(model, acts, tokens, W_dec, start=int(latents[0]) if len(latents) else 0)
