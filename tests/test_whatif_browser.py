"""The What-if panel in headless Chromium (Playwright): a short Playground run, then What if K = 1..8 and Fork at
one of its steps; and the History copy's message when there is no run. Saves screenshots for a human look:
/tmp/specviz-whatif.png, /tmp/specviz-fork.png."""

from __future__ import annotations

import re

import pytest

from browser_support import MARKS, chromium, open_page, set_number, wait_text  # noqa: E402

from conftest import served_app  # noqa: E402


pytestmark = MARKS

LONG = 300_000  # ms: generous, the machine may be shared (what-if runs 16 model steps)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("ui-whatif") / "runs.db") as served:
        yield served


@pytest.fixture(scope="module")
def page(server):
    url, _ = server
    with chromium() as browser:
        yield open_page(browser, url)


def test_what_if_and_fork_at_a_step_of_a_playground_run(page, server):
    _, store = server
    # 1. a short greedy draft_model run
    page.click("#strategy input")
    page.get_by_role("option", name="draft_model", exact=True).click()
    page.fill("#prompt textarea", "Name three colours of the rainbow.")
    set_number(page, "#max-new-tokens input[type=number]", 16)
    page.click("#run")
    wait_text(page, "#status", "Finished run #", LONG)
    # 2. step 1 in the inspector
    page.locator("#step-slider input[type=range]").press("Home")
    page.click("#step-next")
    wait_text(page, "#step-inspector .insp-head", "Step 1 of", 30_000)
    # 3. open the panel: the fork strategy now differs from the run's
    page.locator("#whatif").get_by_text("What if…").first.click()
    page.wait_for_function("() => document.querySelector('#fork-strategy input')?.value === 'ar'", timeout=30_000)
    # 4. what if K = 1..8: a table of nine rows (the run's step, then each K) and the bar chart
    page.click("#whatif-k")
    wait_text(page, "#whatif-status", "Step 1: fastest here K =", LONG)
    assert page.locator("#whatif-table tr").count() == 10  # header + the run's step + K = 1..8
    page.wait_for_selector("#whatif-plot .js-plotly-plot svg", timeout=60_000)
    assert "agree ✓" in page.locator("#whatif-status").inner_text()
    page.locator("#whatif").screenshot(path="/tmp/specviz-whatif.png")
    # 5. fork with ar for 12 tokens: both continuations side by side, identical under greedy
    set_number(page, "#fork-max-tokens input[type=number]", 12)
    page.click("#fork")
    wait_text(page, "#fork-result", "Identical text", LONG)
    assert page.locator("#fork-result .side-tag").count() == 2
    assert page.locator("#fork-result .token-stream-inner").count() == 2
    assert re.search(r"matches the run's own continuation over \d+ tokens", page.locator("#fork-result").inner_text())
    page.locator("#whatif").screenshot(path="/tmp/specviz-fork.png")
    assert store.list_runs()[0]["status"] == "finished"  # what-if and fork log nothing


def test_history_copy_says_when_there_is_no_run(page):
    page.get_by_role("tab", name="History").click()
    page.locator("#history-whatif").get_by_text("What if…").first.click()
    page.click("#history-whatif-k")
    wait_text(page, "#history-whatif-status", "no run to explore yet", 30_000)
