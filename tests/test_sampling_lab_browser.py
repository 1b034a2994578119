"""The Sampling lab in headless Chromium (Playwright) on the real model: a small run (60 samples of one token)
shows the figure, the fit table with both p-values, and what they mean. Saves /tmp/specviz-sampling-lab.png (and
the dark theme's /tmp/specviz-sampling-lab-dark.png) for a human look."""

from __future__ import annotations

import re

import pytest

from browser_support import MARKS, chromium, open_page  # noqa: E402

from conftest import served_app  # noqa: E402

pytestmark = MARKS

LONG = 240_000  # ms: generous, the machine may be shared
SAMPLES = 60
P_VALUE = re.compile(r"^(\d\.\d+(e-\d+)?|\d\.\d+e[-+]\d+|< 1e-300|1)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("lab-browser") / "runs.db") as served:
        yield served


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as launched:
        yield launched


def open_lab(browser, url: str):
    page = open_page(browser, url)
    tab = page.get_by_role("tab", name="Sampling lab")
    if not tab.is_visible():  # many tabs: Gradio moves the last ones into an overflow menu
        page.locator(".overflow-menu button, button.overflow-dropdown, .tab-container button[aria-label*='more' i]").first.click()
        tab = page.get_by_role("tab", name="Sampling lab")
    tab.click()
    page.wait_for_selector("#lab-prompt textarea", state="visible", timeout=30_000)
    return page


def test_a_small_lab_run_shows_the_figure_and_both_p_values(browser, server):
    url, _ = server
    page = open_lab(browser, url)
    # 1. a small run: 60 samples of one token each, the default prompt and strategy
    box = page.locator("#lab-samples input[type=number]")
    box.fill(str(SAMPLES))
    box.press("Tab")
    page.locator("#lab-tokens label", has_text="1").first.click()
    page.click("#lab-run")
    page.wait_for_function("() => (document.querySelector('#lab-status') || {}).innerText?.includes('Done:')",
                           timeout=LONG)
    # 2. the figure: bars for ar and the strategy, the exact markers
    page.wait_for_selector("#lab-plot .js-plotly-plot .barlayer .point", timeout=30_000)
    legend = page.locator("#lab-plot .legendtext").evaluate_all("els => els.map(e => e.textContent)")  # SVG text
    assert any(t.startswith("ar (p = ") for t in legend) and any(t.startswith("draft_model (p = ") for t in legend)
    assert "target's exact probability" in " ".join(legend)
    # 3. the table: one row per sampler, each with a p-value, and what the numbers mean
    p_values = page.locator("#lab-fit-table td.lab-p").all_inner_texts()
    assert len(p_values) == 2 and all(P_VALUE.match(p.strip()) for p in p_values), p_values
    assert "no evidence" in page.locator("#lab-results .lab-verdict").inner_text()
    assert "target passes per sample" in page.locator("#lab-results").inner_text()
    page.screenshot(path="/tmp/specviz-sampling-lab.png", full_page=True)
    # 4. on a dark page: the figure's background is transparent, so the theme shows through
    page.evaluate("() => document.body.classList.add('dark')")  # what Gradio's dark theme sets
    background = page.locator("#lab-plot .main-svg").first.evaluate("svg => getComputedStyle(svg).backgroundColor")
    assert background in ("rgba(0, 0, 0, 0)", "transparent")
    page.screenshot(path="/tmp/specviz-sampling-lab-dark.png", full_page=True)
    page.close()
