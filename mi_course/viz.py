"""Plots of the course: attention views that work offline, matplotlib heatmaps, the explorer.

Attention views (`attention_view`) are CircuitsVis views rendered once, when created, in one
of three modes:

- ``"inline"``: CircuitsVis's JavaScript bundle (about 1.3 MB) is inlined in the view, so it
  shows without internet; the library's own per-display internet probe is skipped.
- ``"cdn"``: a few kilobytes of HTML that load CircuitsVis from unpkg.com (needs internet).
- ``"static"``: a PNG heatmap per head drawn with matplotlib (small, shows anywhere).

The default is ``$MI_COURSE_VIZ`` when set, else ``"inline"``. `mi-course build --execute`
sets ``MI_COURSE_VIZ=static`` so that the committed solution notebooks stay small. Token strings
travel as JSON inside a ``<script>`` and React shows them as text, so they are not HTML-escaped
(that would show ``&lt;bos&gt;``); only ``</``, which would end the script early, is written
``<\\/`` (the same string in JavaScript). tests/test_browser.py checks this in Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

__all__ = [
    "script_safe",
    "MODES",
    "AttentionExplorer",
    "AttentionView",
    "attention_view",
    "default_mode",
    "figure_png",
    "plot_attention",
    "plot_attribution_scatter",
    "plot_circuit",
    "plot_composition",
    "plot_superposition",
    "plot_curves",
    "plot_dla",
    "plot_head_scores",
    "plot_lens_curves",
    "plot_offset_heatmap",
    "plot_matrix",
    "plot_patching",
    "plot_per_token_loss",
    "plot_running_logit_diff",
]

MODES = ("inline", "cdn", "static")


def default_mode() -> str:
    """The attention-view mode: ``$MI_COURSE_VIZ``, else inline."""
    mode = os.environ.get("MI_COURSE_VIZ", "").strip().lower()
    if mode:
        if mode not in MODES:
            raise ValueError(f"MI_COURSE_VIZ={mode!r}; use one of {MODES}.")
        return mode
    return "inline"


def script_safe(rendered: str) -> str:
    """A CircuitsVis HTML string whose props cannot end their ``<script>`` early.

    The props are the last argument of the last ``render(`` call; inside them every ``</`` (as
    in a token ``"</script>"``) becomes ``<\\/``, which JavaScript reads as the same string.
    """
    head, call, rest = rendered.rpartition("render(")
    props, close, tail = rest.rpartition("</script>")
    return head + call + props.replace("</", "<\\/") + close + tail


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def plot_attention(
    pattern: Float[Tensor, "q k"], tokens: Sequence[str], title: str = "", ax=None, max_labels: int = 40
) -> Figure:
    """One head's attention pattern as a heatmap: rows are queries (destinations), columns keys."""
    fig = ax.figure if ax is not None else Figure(figsize=(4.2, 3.8))
    ax = ax if ax is not None else fig.add_subplot()
    image = ax.imshow(_as_numpy(pattern), cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(tokens)
    step = max(1, -(-n // max_labels))
    ticks = list(range(0, n, step))
    labels = [repr(str(tokens[i]))[1:-1].replace("$", r"\$") for i in ticks]  # no mathtext from "$"
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels, fontsize=6)
    ax.set_xlabel("key (source)")
    ax.set_ylabel("query (destination)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig


class AttentionView:
    """Attention patterns of some heads, rendered once; Jupyter displays it by its mode."""

    def __init__(self, tokens: Sequence[str], patterns: Float[Tensor, "head q k"], head_names: Sequence[str], mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.tokens, self.head_names, self.mode = list(tokens), list(head_names), mode
        self.patterns = _as_numpy(patterns).astype(np.float32)
        self.data = {"text/plain": f"<attention view: {', '.join(self.head_names)} on {len(self.tokens)} tokens ({mode})>"}
        if mode == "static":
            self.data["image/png"] = base64.b64encode(self._png()).decode("ascii")
        else:
            from circuitsvis.attention import attention_heads

            rendered = attention_heads(
                attention=self.patterns.round(4), tokens=[str(t) for t in self.tokens], attention_head_names=self.head_names
            )
            # Pick the source here: RenderedHTML would probe the internet at every display.
            self.data["text/html"] = script_safe(rendered.local_src if mode == "inline" else rendered.cdn_src)

    # Above this many heads the static view is a compact grid (GPT-2 small has 144 heads):
    # small panels without token labels or colour bars, which draw in seconds, not minutes.
    COMPACT_ABOVE = 12
    COMPACT_COLUMNS = 12

    def _png(self) -> bytes:
        n = len(self.head_names)
        if n > self.COMPACT_ABOVE:
            return self._compact_png()
        cols = min(n, 3)
        rows = -(-n // cols)
        fig = Figure(figsize=(4.2 * cols, 3.8 * rows))
        for i, name in enumerate(self.head_names):
            plot_attention(self.patterns[i], self.tokens, name, ax=fig.add_subplot(rows, cols, i + 1))
        fig.tight_layout()
        return figure_png(fig)

    def _compact_png(self) -> bytes:
        n = len(self.head_names)
        cols = min(n, self.COMPACT_COLUMNS)
        rows = -(-n // cols)
        fig = Figure(figsize=(1.25 * cols, 1.4 * rows + 0.4), layout="constrained")
        for i, name in enumerate(self.head_names):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.imshow(self.patterns[i], cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=7)
        fig.suptitle(
            f"attention patterns on {len(self.tokens)} tokens (rows: queries, columns: keys; 0 white, 1 dark blue)", fontsize=9
        )
        return figure_png(fig)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return self.data


def attention_view(
    tokens: Sequence[str],
    patterns: Float[Tensor, "head q k"],
    head_names: Sequence[str] | None = None,
    mode: str | None = None,
) -> AttentionView:
    """A CircuitsVis view (or a static one) of some heads' attention on one sequence.

    ``patterns`` holds one ``[query, key]`` pattern per head; ``mode`` defaults to
    `default_mode()`.
    """
    patterns = patterns[None] if patterns.ndim == 2 else patterns
    names = list(head_names) if head_names is not None else [f"head {i}" for i in range(patterns.shape[0])]
    if len(names) != patterns.shape[0] or patterns.shape[-1] != len(tokens) or patterns.shape[-2] != len(tokens):
        raise ValueError(f"{len(names)} head names and {len(tokens)} tokens do not fit patterns of shape {tuple(patterns.shape)}")
    return AttentionView(tokens, patterns, names, mode or default_mode())


def _annotated_heatmap(ax, values: np.ndarray, title: str, vmin: float, vmax: float, cmap: str = "viridis") -> None:
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < (vmin + vmax) / 2 else "black")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_head_scores(scores: Mapping[str, Float[Tensor, "layer head"]], title: str = "") -> Figure:
    """One annotated ``[layer, head]`` heatmap per score (values between 0 and 1)."""
    fig = Figure(figsize=(3.6 * len(scores), 2.6))
    for i, (name, values) in enumerate(scores.items()):
        _annotated_heatmap(fig.add_subplot(1, len(scores), i + 1), _as_numpy(values), name.replace("_", " "), 0.0, 1.0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_token_loss(losses: Mapping[str, Float[Tensor, "batch pos"]], seq_len: int, title: str = "") -> Figure:
    """Mean next-token loss at each position, one line per entry; the repeat is shaded."""
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot()
    for label, loss in losses.items():
        ax.plot(range(1, loss.shape[1] + 1), _as_numpy(loss.mean(0)), label=label)
    ax.axvspan(seq_len + 0.5, 2 * seq_len + 0.5, color="0.9", zorder=0, label="repeat")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_matrix(
    matrix: Float[Tensor, "rows cols"], title: str = "", xlabel: str = "", ylabel: str = "", center: bool = True, size: float = 3.6
) -> Figure:
    """A heatmap of one matrix (a QK or OV circuit); diverging colours centred on 0 by default."""
    values = _as_numpy(matrix).astype(np.float64)
    values = np.where(np.isfinite(values), values, np.nan)  # masked (-inf) entries stay blank
    finite = values[np.isfinite(values)]
    fig = Figure(figsize=(size + 0.6, size))
    ax = fig.add_subplot()
    if center:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        image = ax.imshow(values, cmap="viridis")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_composition(circuit_pairs: Float[Tensor, "n"], other_pairs: Float[Tensor, "m"], random: Float[Tensor, "r"]) -> Figure:
    """K-composition scores of the circuit's head pairs against other pairs and random matrices."""
    fig = Figure(figsize=(6.0, 2.8))
    ax = fig.add_subplot()
    ax.hist(_as_numpy(random), bins=30, density=True, alpha=0.6, label="random matrices")
    ax.plot(_as_numpy(other_pairs), np.zeros(len(other_pairs)), "k|", markersize=25, label="other head pairs")
    ax.plot(_as_numpy(circuit_pairs), np.zeros(len(circuit_pairs)), "|", color="C3", markersize=40, mew=2,
            label="previous-token -> induction pairs")
    ax.set_xlabel("K-composition score")
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class AttentionExplorer:
    """Widgets: pick a model, an input, a layer and a head; see the pattern and the head's scores.

    The pattern is a static heatmap unless the CircuitsVis box is ticked (then `default_mode()`).

    ``models`` maps names to models or to functions that load one (called on first use).
    The input is a repeated random sequence, an example prompt (``prompts``: one list for all
    models, or a list per model name) or the text typed in the prompt box.
    """

    REPEATED = "repeated random tokens"

    def __init__(
        self,
        models: Mapping[str, object | Callable[[], object]],
        prompts: Sequence[str] | Mapping[str, Sequence[str]] = (),
        seq_len: int = 10,
        seed: int = 0,
    ):
        import ipywidgets as w

        self._sources = dict(models)
        self._models: dict[str, object] = {}
        self._runs: dict[tuple[str, str], tuple[list[str], Tensor, Tensor]] = {}
        self.seq_len, self.seed = seq_len, seed
        self.model_picker = w.Dropdown(options=list(self._sources), description="model")
        self._prompts = {name: list(prompts.get(name, ()) if isinstance(prompts, Mapping) else prompts) for name in self._sources}
        self.input_picker = w.Dropdown(options=[self.REPEATED], description="input")
        self.prompt = w.Text(placeholder="or type a prompt and press Enter", description="prompt")
        self.layer = w.IntSlider(min=0, max=0, description="layer")
        self.head = w.IntSlider(min=0, max=0, description="head")
        self.interactive = w.Checkbox(value=False, description="CircuitsVis view")
        self.scores_text = w.HTML()
        self.out = w.Output()
        self.scores: dict[str, float] = {}
        self.widget = w.VBox(
            [w.HBox([self.model_picker, self.input_picker]), self.prompt, w.HBox([self.layer, self.head, self.interactive]), self.scores_text, self.out]
        )
        self.model_picker.observe(lambda _: self._model_changed(), names="value")
        for control in (self.input_picker, self.layer, self.head, self.interactive):
            control.observe(lambda _: self.update(), names="value")
        self.prompt.on_submit(lambda _: self._prompt_submitted())
        self._model_changed()

    def model(self):
        name = self.model_picker.value
        if name not in self._models:
            source = self._sources[name]
            self._models[name] = source() if callable(source) and not isinstance(source, torch.nn.Module) else source
        return self._models[name]

    def _model_changed(self) -> None:
        cfg = self.model().cfg
        with self.head.hold_trait_notifications(), self.layer.hold_trait_notifications(), self.input_picker.hold_trait_notifications():
            self.layer.max, self.head.max = cfg.n_layers - 1, cfg.n_heads - 1
            self.input_picker.options = [self.REPEATED, *self._prompts[self.model_picker.value]]
            self.input_picker.value = self.REPEATED
        self.update()

    def _prompt_submitted(self) -> None:
        text = self.prompt.value.strip()
        if text and text not in self.input_picker.options:
            self._prompts[self.model_picker.value].append(text)
            self.input_picker.options = [*self.input_picker.options, text]
        self.input_picker.value = text or self.REPEATED

    def _run(self) -> tuple[list[str], Tensor, Tensor]:
        """Tokens, token strings and all patterns ``[layer, head, q, k]`` for the current input, cached."""
        from mi_course.induction import repeated_tokens

        key = (self.model_picker.value, self.input_picker.value)
        if key not in self._runs:
            model = self.model()
            if self.input_picker.value == self.REPEATED:
                tokens = repeated_tokens(model, self.seq_len, n=1, seed=self.seed)
            else:
                tokens = model.to_tokens(self.input_picker.value)
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
            patterns = torch.stack([cache["pattern", layer][0] for layer in range(model.cfg.n_layers)])
            self._runs[key] = (model.to_str_tokens(tokens[0]), tokens, patterns)
        return self._runs[key]

    def update(self) -> None:
        """Recompute the scores of the selected head and redraw its pattern."""
        from IPython.display import display

        from mi_course.induction import mask_scores

        try:
            strings, tokens, patterns = self._run()
        except Exception as err:  # e.g. a prompt with words the model's tokenizer does not know
            self.scores = {}
            self.scores_text.value = f"<b>cannot run this input:</b> {html.escape(f'{type(err).__name__}: {err}')}"
            self.out.clear_output()
            return
        layer, head = self.layer.value, self.head.value
        pattern = patterns[layer, head]
        self.scores = {name: float(v[0]) for name, v in mask_scores(pattern[None, None], tokens).items()}
        shown = ", ".join(
            f"{name.replace('_', ' ')}: {'n/a (no repeated token)' if np.isnan(v) else f'{v:.2f}'}" for name, v in self.scores.items()
        )
        self.scores_text.value = f"<b>L{layer}H{head}</b> scores: {html.escape(shown)}"
        self.out.clear_output(wait=True)
        with self.out:
            mode = default_mode() if self.interactive.value else "static"
            display(attention_view(strings, pattern, [f"L{layer}H{head}"], mode=mode))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _diverging_heatmap(ax, values: np.ndarray, title: str, xticks: Sequence[str], yticks: Sequence[str]) -> None:
    bound = float(np.abs(values).max()) or 1.0
    image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 * bound else "black")
    ax.set_xticks(range(len(xticks)), xticks)
    ax.set_yticks(range(len(yticks)), yticks)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_dla(
    heads: Float[Tensor, "layer head"], layers: Mapping[str, Float[Tensor, "layer"]], title: str = ""
) -> Figure:
    """Direct logit attributions: per head (left) and per layer and kind of part (right).

    Blue pushes towards the answer, red towards the wrong answer; ``layers`` maps a row
    name (``"attn"``, ``"MLP"``) to one value per layer.
    """
    grid = _as_numpy(heads)
    rows = np.stack([_as_numpy(v) for v in layers.values()])
    fig = Figure(figsize=(3.0 + 0.55 * (grid.shape[1] + grid.shape[0]), 0.6 + 0.45 * max(grid.shape[0], 2)))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _diverging_heatmap(left, grid, "per head", [str(h) for h in range(grid.shape[1])], [f"L{l}" for l in range(grid.shape[0])])
    left.set_xlabel("head")
    _diverging_heatmap(right, rows, "per layer", [f"L{l}" for l in range(rows.shape[1])], list(layers))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_running_logit_diff(values: Float[Tensor, "n"], labels: Sequence[str], final: float | None = None, title: str = "") -> Figure:
    """The logit difference read from the residual stream after each layer (a line per point)."""
    fig = Figure(figsize=(5.0, 2.8))
    ax = fig.add_subplot()
    ax.plot(range(len(labels)), _as_numpy(values), "o-")
    if final is not None:
        ax.axhline(final, color="0.5", linestyle="--", label="model's logit difference")
        ax.legend(fontsize=8)
    ax.axhline(0.0, color="0.8", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("logit difference")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig



def plot_patching(
    results: Mapping[str, Float[Tensor, "layer x"]], xticks: Sequence[str] | None = None, xlabel: str = "position", title: str = ""
) -> Figure:
    """Activation-patching results: one annotated ``[layer, x]`` heatmap per entry, side by side.

    x is a position or a head (``xticks`` labels it; default: its index). Colours are centred
    on 0, one scale per panel: with a normalised metric, blue moves the metric towards clean.
    """
    grids = {name: _as_numpy(values) for name, values in results.items()}
    cols = max(g.shape[1] for g in grids.values())
    rows = max(g.shape[0] for g in grids.values())
    stacked = cols * len(grids) > 24  # wide grids (positions) go one above the other
    panel = (0.5 * cols + 1.5, 0.45 * max(rows, 2) + (1.4 if xticks is not None else 0.6))
    n = len(grids)
    fig = Figure(figsize=(1.0 + panel[0], 0.4 + panel[1] * n) if stacked else (1.0 + panel[0] * n, 0.6 + panel[1]))
    for i, (name, grid) in enumerate(grids.items()):
        ax = fig.add_subplot(n, 1, i + 1) if stacked else fig.add_subplot(1, n, i + 1)
        labels = [str(j) for j in range(grid.shape[1])] if xticks is None else list(xticks)
        _diverging_heatmap(ax, grid, name, labels, [f"L{l}" for l in range(grid.shape[0])])
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="x", labelrotation=90 if max(map(len, labels)) > 2 else 0, labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_lens_curves(
    panels: Mapping[str, Mapping[str, Float[Tensor, "layer"]]], labels: Sequence[str], log: Sequence[str] = (), title: str = ""
) -> Figure:
    """Layer-by-layer curves: one panel per entry of ``panels`` (its y label), one line per series.

    ``panels`` maps a y label to {series name: one value per entry of ``labels``}; panels
    named in ``log`` use a logarithmic y axis (ranks, KL divergences).
    """
    fig = Figure(figsize=(3.6 * len(panels), 2.9))
    for i, (ylabel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, values in series.items():
            ax.plot(range(len(labels)), _as_numpy(values), "o-", label=name)
        if ylabel in log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_offset_heatmap(
    values: Float[Tensor, "row offset"], offsets: Sequence[int], rows: Sequence[str], xlabel: str = "", title: str = "", diverging: bool = False
) -> Figure:
    """A heatmap of one value per row (layer or component) and offset, with a line at offset 0.5.

    ``diverging`` centres a red-blue colour scale on 0 (for signed values such as centred logits).
    """
    data = _as_numpy(values)
    offsets = list(offsets)
    fig = Figure(figsize=(7.0, 0.8 + 0.42 * len(rows)))
    ax = fig.add_subplot()
    bound = float(np.nanmax(np.abs(data))) or 1.0
    colours = dict(cmap="RdBu", vmin=-bound, vmax=bound) if diverging else dict(cmap="viridis")
    image = ax.imshow(data, aspect="auto", extent=(offsets[0] - 0.5, offsets[-1] + 0.5, len(rows) - 0.5, -0.5), **colours)
    ax.axvline(0.5, color="black" if diverging else "white", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig


def plot_attribution_scatter(
    panels: Mapping[str, tuple[Float[Tensor, "n"], Float[Tensor, "n"]]], labels: Sequence[str], n_labels: int = 3, title: str = ""
) -> Figure:
    """Estimate (y) against exact effect (x), one panel per entry, with the diagonal y = x.

    ``panels`` maps a title to (exact, estimate); the ``n_labels`` points farthest from the
    diagonal are labelled with ``labels``.
    """
    fig = Figure(figsize=(4.0 * len(panels), 4.0))
    for i, (name, (exact, estimate)) in enumerate(panels.items()):
        x, y = _as_numpy(exact).ravel(), _as_numpy(estimate).ravel()
        ax = fig.add_subplot(1, len(panels), i + 1)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="0.7", linewidth=1, zorder=0)
        ax.axhline(0, color="0.9", linewidth=0.8, zorder=0)
        ax.axvline(0, color="0.9", linewidth=0.8, zorder=0)
        ax.scatter(x, y, s=18)
        for j in np.argsort(-np.abs(y - x))[:n_labels]:
            ax.annotate(labels[j], (x[j], y[j]), fontsize=8, xytext=(3, 3), textcoords="offset points", color="C3")
        ax.set_xlabel("exact patching")
        ax.set_ylabel("attribution estimate")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str = "",
    ylabel: str = "",
    hline: float | None = None,
    title: str = "",
    log_x: bool = False,
) -> Figure:
    """Line plots that share axes: ``curves`` maps a label to (x values, y values); a label
    starting with "--" is drawn dashed (e.g. a tangent). ``hline`` draws a dotted reference level."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in curves.items():
        dashed = label.startswith("--")
        ax.plot(list(xs), list(ys), "--" if dashed else "o-", markersize=3, label=label.removeprefix("--").strip())
    if hline is not None:
        ax.axhline(hline, color="0.5", linestyle=":", linewidth=1)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_superposition(W: Float[Tensor, "instance d_hidden n_features"], feature_probs: Sequence[float], title: str = "") -> Figure:
    """A toy model of superposition per sparsity: W^T W as a heatmap (top) and each feature's norm (bottom).

    Columns of ``W`` are the features' embeddings (as `mi_course.sae.train_toy_superposition`
    returns them); one column of panels per entry of ``feature_probs``.
    """
    data = _as_numpy(W).astype(np.float64)
    n = len(data)
    fig = Figure(figsize=(2.3 * n, 4.6))
    gram = np.einsum("ihf,ihg->ifg", data, data)
    bound = float(np.abs(gram).max()) or 1.0
    for i, p in enumerate(feature_probs):
        ax = fig.add_subplot(2, n, i + 1)
        ax.imshow(gram[i], cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(f"p = {p:g} (sparsity {1 - p:g})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_ylabel("$W^T W$", fontsize=8)
        ax = fig.add_subplot(2, n, n + i + 1)
        ax.bar(range(data.shape[2]), np.linalg.norm(data[i], axis=0), color="tab:blue")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 1.3)
        ax.set_xlabel("feature (by importance)", fontsize=8)
        if i == 0:
            ax.set_ylabel("norm of $W_i$", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


_KIND_COLORS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green"}


def _node_xy(node: str, n_heads: int) -> tuple[float, float]:
    """Where a node sits: embed at the bottom, then per layer a row of heads and its MLP above them."""
    if node == "embed":
        return ((n_heads - 1) / 2, 0.0)
    if m := re.fullmatch(r"L(\d+)H(\d+)", node):
        return (float(m[2]), 2.0 * int(m[1]) + 1)
    if m := re.fullmatch(r"MLP(\d+)", node):
        return ((n_heads - 1) / 2, 2.0 * int(m[1]) + 2)
    return ((n_heads - 1) / 2, float("inf"))  # logits: placed on top below


def plot_circuit(circuit, nodes: Sequence[str], *, truth=None, title: str = "") -> Figure:
    """Draw a circuit (``mi_course.circuits.Circuit``) on the model's graph, the inputs at the bottom.

    ``nodes`` are all sender nodes of the model (``senders(model)``); those outside the
    circuit are drawn faintly. Edges into a head's query, key or value are blue, orange and
    green, and end on the left, middle and right of the head. With ``truth`` (a reference
    circuit), edges found but not in it are red and edges missed are dashed grey.
    """
    n_heads = 1 + max((int(m[1]) for n in nodes if (m := re.fullmatch(r"L\d+H(\d+)", n))), default=0)
    pos = {n: _node_xy(n, n_heads) for n in nodes}
    top = max(y for _, y in pos.values()) + 1.2
    pos["logits"] = ((n_heads - 1) / 2, top)
    fig = Figure(figsize=(1.3 * n_heads + 2.5, 0.55 * top + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    used = set(circuit.nodes) | (set(truth.nodes) if truth is not None else set())
    for node, (x, y) in pos.items():
        inside = node in used
        ax.text(x, y, node, ha="center", va="center", fontsize=8, color="black" if inside else "0.75", zorder=3,
                bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.3" if inside else "0.85"))  # fmt: skip

    def draw(edges: Iterable, style: Callable) -> None:
        from matplotlib.patches import FancyArrowPatch

        for edge in edges:
            node, _, kind = edge.receiver.partition(".")
            (x0, y0), (x1, y1) = pos[edge.sender], pos[node]
            x1 += {"q": -0.18, "k": 0.0, "v": 0.18}.get(kind, 0.0)
            color, dashed = style(edge, kind)
            bend = 0.25 if abs(x1 - x0) < 0.3 and y1 - y0 > 2.5 else 0.08  # curve edges that would cross nodes
            ax.add_patch(FancyArrowPatch((x0, y0 + 0.2), (x1, y1 - 0.2), arrowstyle="-|>", mutation_scale=9, color=color,
                                         linestyle="--" if dashed else "-", linewidth=1.1, alpha=0.8,
                                         connectionstyle=f"arc3,rad={bend}", zorder=2))  # fmt: skip

    truth_edges = set(truth.edges) if truth is not None else None
    draw(circuit.edges, lambda e, kind: ("tab:red" if truth_edges is not None and e not in truth_edges else _KIND_COLORS.get(kind, "0.35"), False))
    if truth_edges is not None:
        draw(truth_edges - set(circuit.edges), lambda e, kind: ("0.6", True))
    handles = [Line2D([], [], color=c, label=f"into {k}") for k, c in _KIND_COLORS.items()] + [Line2D([], [], color="0.35", label="into MLP / logits")]
    if truth_edges is not None:
        handles += [Line2D([], [], color="tab:red", label="not in reference"), Line2D([], [], color="0.6", linestyle="--", label="missed")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(-0.8, n_heads - 0.2)
    ax.set_ylim(-0.7, top + 0.7)
    ax.axis("off")
    ax.set_title(title or f"{len(circuit.edges)} edges, {len(circuit.nodes)} nodes", fontsize=10)
    fig.tight_layout()
    return fig
