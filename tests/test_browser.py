"""The course renders in a real browser: JupyterLab + headless Chromium, offline.

Opens solution notebook 02 (circuitsvis attention views and an ipywidgets explorer) in
JupyterLab on loopback, runs every cell, and asserts that the attention views and the widgets
rendered with no JavaScript error. Screenshots go to ``artifacts/browser/``.

Needs Debian's Chromium (``/usr/bin/chromium`` or ``$CHROMIUM``) and the ``playwright``
package (no browser download: Playwright drives the system Chromium). Skips when they are
missing, unless ``MI_COURSE_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where it fails instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "02_induction_heads.ipynb"
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free loopback port, serving a copy of solutions/; yields its URL base."""
    reason = _missing()
    if reason:
        if os.environ.get("MI_COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {reason}")
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "solutions" / NOTEBOOK, work / NOTEBOOK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MI_COURSE_VIZ"}  # views render inline
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.allow_root=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
    )
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


def test_notebook_renders_attention_views_and_widgets(lab):
    from playwright.sync_api import sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
        page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel", timeout=120_000,
        )
        # Clear stored outputs first, so that only what this browser run produced is checked.
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        assert page.locator(".jp-OutputArea-output").count() == 0
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # Done when no cell waits or runs ('[*]') and the last code cell has an execution count.
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
                return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
            }""",
            timeout=300_000,
        )
        page.wait_for_timeout(2000)  # let React and the widget manager finish drawing
        page.screenshot(path=str(ARTIFACTS / "02_induction_heads-top.png"))
        failures = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        tracebacks = [t for t in failures if "Traceback" in t or "Error" in t.split("\n")[0]]
        assert not tracebacks, f"cells failed in the browser: {tracebacks[:2]}"

        # CircuitsVis views: React must have drawn into each view's container.
        views = page.locator(".jp-OutputArea-output div[id^='circuits-vis']")
        assert views.count() >= 1, "no circuitsvis view in the outputs"
        for i in range(views.count()):
            view = views.nth(i)
            view.scroll_into_view_if_needed()
            box = view.bounding_box()
            assert view.locator("*").count() > 0 and box and box["height"] > 50, f"circuitsvis view {i} is empty"
        views.first.screenshot(path=str(ARTIFACTS / "02_attention_view.png"))

        # ipywidgets: the explorer's controls are live widgets, not the text fallback.
        widgets = page.locator(".jp-OutputArea-output .jupyter-widgets")
        assert widgets.count() >= 2, "ipywidgets did not render"
        sliders = page.locator(".jp-OutputArea-output .widget-slider, .jp-OutputArea-output .widget-dropdown")
        assert sliders.count() >= 1, "the explorer's controls are missing"
        sliders.first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "02_explorer.png"))
        browser.close()
    assert not errors, f"JavaScript errors: {errors}"
