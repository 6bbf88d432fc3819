"""The course renders in a real browser: JupyterLab + headless Chromium, offline.

One JupyterLab server on loopback serves copies of every solution notebook that shows an
interactive or drawn view; one Chromium opens each in turn, clears its stored outputs, runs
all cells and checks, per notebook (`EXPECT`):

- every code cell ran (an execution count, no error output, no traceback on stderr), the page
  raised no JavaScript error (uncaught exceptions, console errors) and loaded nothing from
  outside the lab server (the one exception: the "Open in Colab" badge image, missing offline);
- CircuitsVis attention views (00, 01, 02): at least so many ``circuits-vis`` containers that
  React filled with the head thumbnails and the zoomed pattern (a canvas at least 150 px tall);
- the ipywidgets explorers (02, 05) are live widgets with their controls, not a text fallback;
  the test moves a slider and checks that the explorer redrew (02: the head's scores and its
  pattern; 05: the lens table), ticks 02's "CircuitsVis view" box and checks that the view
  draws inside the widget, and types a new prompt into 05's box;
- the circuit drawings of 04 (``viz.plot_circuit``): every such cell shows a PNG of plausible
  size with coloured edges and dark labels drawn on it.

Screenshots go to ``artifacts/browser/`` (``<notebook>-*.png``, replaced at each run): the page
after the run, each view, the explorers before and after each control moved. A notebook takes
30 s to 3.5 min to run here (04's circuit searches are the longest).

Needs Debian's Chromium (``/usr/bin/chromium`` or ``$CHROMIUM``) and the ``playwright``
package (no browser download: Playwright drives the system Chromium). Skips when they are
missing, unless ``MI_COURSE_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where it fails instead.
The kernels inherit this process's environment (the root conftest.py: hub offline, loopback
only), without ``MI_COURSE_VIZ``, so attention views render as inline CircuitsVis.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]
# The notebooks' "Open in Colab" badge is an image from the internet; offline it is missing.
OFFLINE_OK = ("https://colab.research.google.com/assets/colab-badge.svg",)
RUN_TIMEOUT_MS = 600_000  # running all cells of one notebook (30 s to 3.5 min on 2 busy cores)
RENDER_TIMEOUT_MS = 60_000  # views and widgets drawing after the kernel is done


@dataclass(frozen=True)
class Expect:
    """What a notebook must show once run: how many views of each kind, at least."""

    circuitsvis: int = 0  # CircuitsVis attention views in cell outputs (outside widgets)
    circuit_drawings: int = 0  # cells calling viz.plot_circuit, each showing its drawing
    explorer: str | None = None  # the widget explorer to exercise: "attention" (02) or "lens" (05)


EXPECT = {
    "00_mechanistic.ipynb": Expect(circuitsvis=1),
    "01_residual_stream.ipynb": Expect(circuitsvis=1),
    "02_induction_heads.ipynb": Expect(circuitsvis=1, explorer="attention"),
    "04_edge_patching.ipynb": Expect(circuit_drawings=4),
    "05_logit_lens.ipynb": Expect(explorer="lens"),
}
# Which cells hold what (matched on their source): marked in the page as data-probe="...".
PROBES = {
    "circuit": r"viz\.plot_circuit\(",
    "attention": r"viz\.AttentionExplorer\(",
    "lens": r"widgets\.VBox\(\[prompt_box",
}


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


def _require_browser() -> None:
    reason = _missing()
    if reason:
        if os.environ.get("MI_COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free loopback port, serving copies of the notebooks; yields (URL base, token)."""
    _require_browser()
    work = tmp_path_factory.mktemp("lab")
    notebooks = work / "notebooks"
    notebooks.mkdir()
    for name in EXPECT:
        shutil.copy(ROOT / "solutions" / name, notebooks / name)
    # Own settings, nothing from ~/.jupyter: every cell attached to the page (no windowing), no
    # news toast over the views.
    for plugin, values in (("notebook-extension/tracker", {"windowingMode": "none"}),
                           ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})):  # fmt: skip
        path = work / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MI_COURSE_VIZ"}  # views render inline
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.allow_root=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", f"--LabApp.user_settings_dir={work / 'settings'}",
         f"--LabApp.workspaces_dir={work / 'workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=notebooks,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(work / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for all notebooks."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    p = sync_playwright().start()
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()
        p.stop()


# Runs every cell; resolves when the run ends (all cells, or the first that raised).
RUN_ALL = """async (timeoutMs) => {
    const app = window.jupyterapp;
    await app.commands.execute('notebook:clear-all-cell-outputs');
    const run = app.commands.execute('notebook:run-all-cells');
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('run-all timed out')), timeoutMs));
    return await Promise.race([run, timeout]);
}"""

# Per code cell: its execution count, error outputs, stderr text; marks probed cells.
CELL_REPORT = """(probes) => {
    const nb = window.jupyterapp.shell.currentWidget.content;
    const cells = [];
    nb.widgets.forEach((cell, index) => {
        if (cell.model.type !== 'code') return;
        const source = cell.model.sharedModel.getSource();
        for (const [name, pattern] of Object.entries(probes)) {
            if (new RegExp(pattern).test(source)) cell.node.dataset.probe = name;
        }
        const outputs = cell.model.outputs.toJSON();
        cells.push({
            index, count: cell.model.executionCount, probe: cell.node.dataset.probe || null,
            errors: outputs.filter(o => o.output_type === 'error').map(o => `${o.ename}: ${o.evalue}`),
            stderr: outputs.filter(o => o.output_type === 'stream' && o.name === 'stderr')
                .map(o => Array.isArray(o.text) ? o.text.join('') : o.text).join(''),
        });
    });
    return cells;
}"""

# A CircuitsVis view is drawn when React filled its container with the head selector's
# thumbnails and the zoomed pattern: canvases, the tallest (the zoomed one) at least 150 px.
DRAWN_VIEWS = """(root) => [...(root || document).querySelectorAll('.jp-OutputArea-output div[id^="circuits-vis"]')]
    .filter(v => {
        const heights = [...v.querySelectorAll('canvas')].map(c => c.getBoundingClientRect().height);
        return heights.length >= 2 && Math.max(...heights) >= 150 && v.getBoundingClientRect().height > 200;
    }).length"""

# What a PNG shows: its size, pixels of saturated colour (edges) and dark pixels (labels).
IMAGE_STATS = """async (img) => {
    await img.decode();
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const g = canvas.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0, dark = 0;
    for (let i = 0; i < d.length; i += 4) {
        const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
        if (hi - lo > 80) coloured++;
        if (hi < 90) dark++;
    }
    return {width: canvas.width, height: canvas.height, coloured, dark};
}"""


def _move_slider(page, slider) -> None:
    """One step right on an ipywidgets slider, with the keyboard on its handle."""
    handle = slider.locator(".noUi-handle")
    handle.focus()
    page.keyboard.press("ArrowRight")


def _slider(cell, label: str):
    return cell.locator(".widget-slider").filter(has=cell.page.locator(f"label:text-is('{label}')"))


def _exercise_attention_explorer(page, cell, shot) -> None:
    """02's AttentionExplorer: the head slider redraws scores and pattern; the box draws CircuitsVis."""
    for kind, n in ((".widget-dropdown select", 2), (".widget-slider .noUi-handle", 2), (".widget-text input", 1),
                    (".widget-checkbox input", 1), (".widget-output", 1)):  # fmt: skip
        assert cell.locator(kind).count() >= n, f"the attention explorer lacks {kind}"
    scores = cell.locator(".widget-html").filter(has_text="scores")
    pattern = cell.locator(".widget-output img")
    pattern.first.wait_for(timeout=RENDER_TIMEOUT_MS)
    before_text, before_src = scores.inner_text(), pattern.first.get_attribute("src")
    assert re.search(r"L0H0\b", before_text), f"the explorer does not start on L0H0: {before_text!r}"
    cell.scroll_into_view_if_needed()
    cell.screenshot(path=str(shot("explorer-before")))

    _move_slider(page, _slider(cell, "head"))
    scores.filter(has_text="L0H1").wait_for(timeout=RENDER_TIMEOUT_MS)
    page.wait_for_function(
        "([root, src]) => { const img = root.querySelector('.widget-output img'); return img && img.getAttribute('src') !== src; }",
        arg=[cell.element_handle(), before_src], timeout=RENDER_TIMEOUT_MS,
    )
    assert pattern.count() == 1 and pattern.first.get_attribute("src") != before_src, "the pattern was not redrawn for L0H1"
    cell.screenshot(path=str(shot("explorer-head1")))

    cell.locator(".widget-checkbox input").check()
    root = cell.element_handle()
    page.wait_for_function(f"(root) => ({DRAWN_VIEWS})(root) >= 1", arg=root, timeout=RENDER_TIMEOUT_MS)
    cell.locator("div[id^='circuits-vis']").first.scroll_into_view_if_needed()
    cell.screenshot(path=str(shot("explorer-circuitsvis")))


def _exercise_lens_explorer(page, cell, shot) -> None:
    """05's lens explorer: the layer slider and the prompt box redraw the table of top tokens."""
    for kind, n in ((".widget-slider .noUi-handle", 1), (".widget-text input", 1), (".widget-output", 1)):
        assert cell.locator(kind).count() >= n, f"the lens explorer lacks {kind}"
    table = cell.locator(".widget-output table")
    table.first.wait_for(timeout=RENDER_TIMEOUT_MS)
    panel = cell.locator(".widget-output")
    before = panel.inner_text()
    assert "logit lens" in before and "tuned lens" in before, f"the lens table is missing: {before[:200]!r}"
    cell.scroll_into_view_if_needed()
    cell.screenshot(path=str(shot("explorer-before")))

    _move_slider(page, _slider(cell, "layer"))
    page.wait_for_function(
        "([el, text]) => el.innerText !== text && el.querySelector('table')", arg=[panel.element_handle(), before],
        timeout=RENDER_TIMEOUT_MS,
    )
    after_layer = panel.inner_text()
    assert after_layer.split("\n")[0] != before.split("\n")[0], "the layer label did not change"
    cell.screenshot(path=str(shot("explorer-layer")))

    box = cell.locator(".widget-text input")
    box.fill("The meeting lasted from the year 1802 to the year 18")
    box.press("Enter")
    page.wait_for_function(
        "([el, text]) => el.innerText !== text && el.querySelector('table')", arg=[panel.element_handle(), after_layer],
        timeout=RENDER_TIMEOUT_MS,
    )
    cell.screenshot(path=str(shot("explorer-prompt")))


def _console(msg, errors: list[str]) -> None:
    url = msg.location.get("url", "")
    if msg.type == "error" and not url.startswith(OFFLINE_OK):
        errors.append(f"console error: {msg.text} ({url})")


def _request(req, base: str, errors: list[str]) -> None:
    """Everything the page loads comes from the lab server (or is inline), except the badges."""
    if not req.url.startswith((base, "data:", "blob:", "about:")) and not req.url.startswith(OFFLINE_OK):
        errors.append(f"request to the internet: {req.url}")


EXPLORERS = {"attention": _exercise_attention_explorer, "lens": _exercise_lens_explorer}


@pytest.mark.parametrize("notebook", list(EXPECT))
def test_notebook_renders_its_views(lab, chromium, notebook):
    base, token = lab
    expect = EXPECT[notebook]
    stem = notebook.removesuffix(".ipynb")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{stem}-*.png"):
        old.unlink()

    def shot(name: str) -> Path:
        return ARTIFACTS / f"{stem}-{name}.png"

    errors: list[str] = []
    # Tall enough for the largest view, so that element screenshots need no resize of the page.
    page = chromium.new_page(viewport={"width": 1400, "height": 1800})
    page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
    page.on("console", lambda msg: _console(msg, errors))
    page.on("request", lambda req: _request(req, base, errors))
    page.on("requestfailed", lambda req: req.url.startswith(OFFLINE_OK) or errors.append(f"request failed: {req.url} ({req.failure})"))
    try:
        page.goto(f"{base}/lab/workspaces/{stem}/tree/{notebook}?reset&token={token}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_function(
            "(path) => { const w = window.jupyterapp?.shell.currentWidget;"
            " return w?.context?.path === path && w.sessionContext?.session?.kernel; }", arg=notebook, timeout=120_000,
        )
        # Clear the stored outputs, so that only what this browser run drew is checked.
        ok = page.evaluate(RUN_ALL, RUN_TIMEOUT_MS)
        page.screenshot(path=str(shot("page")))
        cells = page.evaluate(CELL_REPORT, PROBES)
        failed = [c for c in cells if c["errors"] or "Traceback" in c["stderr"]]
        assert not failed, f"cells failed in the browser: {failed[:2]}"
        assert ok and all(c["count"] for c in cells), f"not every cell ran: {[c['index'] for c in cells if not c['count']]}"

        # Views draw after the kernel is done: wait until enough are there, then check each.
        if expect.circuitsvis:
            page.wait_for_function(f"() => ({DRAWN_VIEWS})() >= {expect.circuitsvis}", timeout=RENDER_TIMEOUT_MS)

        views = page.locator(".jp-OutputArea-output div[id^='circuits-vis']")
        outside = [views.nth(i) for i in range(views.count()) if not views.nth(i).evaluate("v => !!v.closest('.widget-output')")]
        assert len(outside) >= expect.circuitsvis, f"{len(outside)} CircuitsVis views, expected {expect.circuitsvis}"
        for i, view in enumerate(outside):
            view.scroll_into_view_if_needed()
            canvases = [c["height"] for c in (v.bounding_box() for v in view.locator("canvas").all()) if c]
            assert len(canvases) >= 2 and max(canvases) >= 150, f"CircuitsVis view {i} is not drawn: canvases {canvases}"
            view.screenshot(path=str(shot(f"circuitsvis-{i}")))

        drawings = [c for c in cells if c["probe"] == "circuit"]
        assert len(drawings) >= expect.circuit_drawings, f"{len(drawings)} circuit drawings, expected {expect.circuit_drawings}"
        for i, c in enumerate(drawings):
            cell = page.locator(".jp-CodeCell[data-probe='circuit']").nth(i)
            image = cell.locator(".jp-OutputArea-output img")
            assert image.count() == 1, f"circuit drawing {i} (cell {c['index']}): {image.count()} images"
            stats = image.evaluate(IMAGE_STATS)
            assert stats["width"] >= 300 and stats["height"] >= 200, f"circuit drawing {i} is {stats}"
            assert stats["coloured"] >= 300 and stats["dark"] >= 300, f"circuit drawing {i} shows no edges or labels: {stats}"
            image.scroll_into_view_if_needed()
            image.screenshot(path=str(shot(f"circuit-{i}")))

        if expect.explorer:
            cell = page.locator(f".jp-CodeCell[data-probe='{expect.explorer}']")
            assert cell.count() == 1, f"{cell.count()} cells hold the {expect.explorer} explorer"
            output = cell.locator(".jp-OutputArea-output")
            output.locator(".jupyter-widgets").first.wait_for(timeout=RENDER_TIMEOUT_MS)
            text = output.first.inner_text()
            assert "Error displaying widget" not in text and "Loading widget" not in text, f"widget fallback: {text[:300]!r}"
            EXPLORERS[expect.explorer](page, cell, shot)
    finally:
        with contextlib.suppress(Exception):  # free the kernel's memory (the server's end would end it too)
            page.evaluate("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.shutdown()")
        page.close()
    assert not errors, f"JavaScript errors: {errors}"
