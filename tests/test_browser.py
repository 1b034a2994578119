"""The explorer in headless Chromium (Playwright): a live run, escaping of hostile prompts, the step
inspector, Compare and History, the diffusion lattice panel. Saves screenshots under /tmp for a human look:
/tmp/specviz-playground.png, /tmp/specviz-compare.png, /tmp/specviz-history.png, /tmp/lattice_panel.png,
/tmp/specviz-lattice.png."""

from __future__ import annotations

import re

import pytest

from browser_support import MARKS, chromium, open_page, set_number, sync_api  # noqa: E402

from conftest import served_app  # noqa: E402


pytestmark = MARKS

XSS_PROMPT = '<img src=x onerror="window.__xss=1">'
TOKEN_SPANS = "#token-stream span.tok-accepted, #token-stream span.tok-recovered, #token-stream span.tok-bonus, #token-stream span.tok-baseline"
LONG = 180_000  # ms: generous, the machine may be shared


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("ui-browser") / "runs.db") as served:
        yield served


@pytest.fixture(scope="module")
def page(server):
    url, _ = server
    with chromium() as browser:
        yield open_page(browser, url)


def start_run(page, prompt: str, max_new_tokens: int) -> None:
    page.fill("#prompt textarea", prompt)
    set_number(page, "#max-new-tokens input[type=number]", max_new_tokens)
    page.click("#run")


def wait_finished(page, run_number: int) -> None:
    page.wait_for_function(
        "n => (document.querySelector('#status') || {}).innerText?.includes('Finished run #' + n)",
        arg=run_number, timeout=LONG,
    )


def test_live_run_shows_coloured_tokens_plot_and_inspector(page, server):
    _, store = server
    start_run(page, "Repeat after me: the cat sat on the mat, the cat sat on the mat.", 12)
    page.wait_for_selector(TOKEN_SPANS, timeout=LONG)
    wait_finished(page, 1)
    page.wait_for_selector("#acceptance-plot .js-plotly-plot svg", timeout=60_000)
    # the legend is visible and the tokens carry their tooltips
    assert page.locator(".legend .tok-rejected").first.is_visible()
    title = page.locator(TOKEN_SPANS).first.get_attribute("title")
    assert title and title.startswith("step 0")
    # the slider and Previous move the inspector to another step
    head = page.locator("#step-inspector .insp-head").inner_text()
    last = int(re.search(r"Step (\d+) of (\d+)", head).group(1))
    if last > 0:
        page.click("#step-prev")
        page.wait_for_function(
            "t => document.querySelector('#step-inspector .insp-head')?.innerText.includes('Step ' + t + ' of')",
            arg=last - 1, timeout=30_000,
        )
        # the slider itself (keyboard: Home = first step) also drives the inspector
        page.locator("#step-slider input[type=range]").press("Home")
        page.wait_for_function(
            "() => document.querySelector('#step-inspector .insp-head')?.innerText.includes('Step 0 of')", timeout=30_000
        )
    assert page.locator("#metrics .metric").count() == 9
    run = store.list_runs()[0]
    assert run["status"] == "finished" and run["max_new_tokens"] == 12 and run["source"] == "ui"
    page.screenshot(path="/tmp/specviz-playground.png", full_page=True)


def test_hostile_prompt_renders_as_text(page, server):
    page.click("#strategy input")
    page.get_by_role("option", name="ar", exact=True).click()
    start_run(page, XSS_PROMPT, 3)
    wait_finished(page, 2)
    stream = page.locator("#token-stream")
    assert "<img src=x" in stream.inner_text()
    assert page.locator("#token-stream img").count() == 0
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    # the prompt was logged verbatim and the page still works
    _, store = server
    assert store.list_runs()[0]["prompt"] == XSS_PROMPT


def test_stop_cancels_a_run_and_logs_it_as_stopped(page, server):
    _, store = server
    page.click("#strategy input")
    page.get_by_role("option", name="prompt_lookup", exact=True).click()
    start_run(page, "Write a long story about a lighthouse keeper and a storm.", 300)
    page.wait_for_function(  # this run's tokens, not the previous run's still on screen
        """() => {
            const s = document.querySelector('#token-stream');
            // the prompt alone shows at once; wait for this run's own output tokens (a Stop before its first step
            // would cancel a run that was never logged)
            return s && s.innerText.includes('lighthouse keeper') && s.querySelectorAll(
                'span.tok-accepted, span.tok-recovered, span.tok-bonus, span.tok-baseline').length >= 3;
        }""",
        timeout=LONG,
    )
    page.click("#stop")
    try:
        page.wait_for_function(
            "() => (document.querySelector('#status') || {}).innerText?.includes('Stopped')", timeout=30_000
        )
        page.wait_for_function("() => !document.querySelector('#token-stream .cursor')", timeout=30_000)
    except sync_api.TimeoutError as exc:
        raise AssertionError(
            f"after Stop: status={page.locator('#status').inner_text()!r}, "
            f"cursor={page.locator('#token-stream .cursor').count()}, run={store.list_runs()[0]}"
        ) from exc
    run = store.list_runs()[0]
    deadline = 60
    while run["status"] == "running" and deadline:  # the server closes the run right after the cancel
        page.wait_for_timeout(500)
        run, deadline = store.list_runs()[0], deadline - 1
    assert run["status"] == "stopped" and run["finished"] == 0
    assert len(store.load_events(run["id"])) >= 1 and run["new_tokens"] < 300


def test_compare_stop(page, server):
    _, store = server
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-prompt textarea", "Write a long story about a dragon who learns to paint.")
    set_number(page, "#compare-max-new-tokens input[type=number]", 300)
    page.click("#compare-run")
    page.wait_for_function(
        "() => document.querySelectorAll('#compare-a-stream span.tok').length >= 3", timeout=LONG
    )
    page.click("#compare-stop")
    page.wait_for_function(
        "() => (document.querySelector('#compare-status') || {}).innerText?.includes('Stopped')", timeout=30_000
    )
    page.wait_for_function("() => !document.querySelector('#compare-a-stream .cursor, #compare-b-stream .cursor')",
                           timeout=30_000)
    runs = store.list_runs()[:2]
    assert {r["strategy"] for r in runs} == {"ar", "prompt_lookup"}
    assert all(r["status"] == "stopped" for r in runs), [r["status"] for r in runs]


def test_compare_tab(page, server):
    _, store = server
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-prompt textarea", "List the days of the week.")
    set_number(page, "#compare-max-new-tokens input[type=number]", 10)
    page.click("#compare-run")
    page.wait_for_selector("#compare-a-stream span.tok", timeout=LONG)
    page.wait_for_selector("#compare-b-stream span.tok", timeout=LONG)
    page.wait_for_function(
        "() => (document.querySelector('#compare-lossless') || {}).innerText?.includes('lossless check')", timeout=LONG
    )
    assert "identical to baseline" in page.locator("#compare-lossless").inner_text()
    summary = page.locator("#compare-summary").inner_text()
    assert "prompt_lookup" in summary and "1.00×" in summary
    group = {r["group_id"] for r in store.list_runs()[:2]}
    assert len(group) == 1 and None not in group
    page.screenshot(path="/tmp/specviz-compare.png", full_page=True)


def test_history_tab_replays_a_logged_run(page, server):
    _, store = server
    page.get_by_role("tab", name="History").click()
    page.click("#history-refresh")
    page.wait_for_function(
        "() => document.querySelector('#history-table')?.innerText.includes('finished')", timeout=30_000
    )
    page.fill("#history-run-id input", "1")
    page.click("#history-open")
    page.wait_for_selector("#history-token-stream span.tok", timeout=30_000)
    assert "Run #1" in page.locator("#history-status").inner_text()
    page.wait_for_selector("#history-acceptance-plot .js-plotly-plot", timeout=30_000)
    tokens = page.locator("#history-token-stream span.tok").count()
    page.click("#history-replay")
    page.wait_for_function(
        "() => (document.querySelector('#history-status') || {}).innerText?.includes('Replaying')", timeout=30_000
    )
    page.wait_for_function(
        "() => (document.querySelector('#history-status') || {}).innerText?.includes('Run #1')", timeout=60_000
    )
    assert page.locator("#history-token-stream span.tok").count() == tokens
    # clicking a row of the table opens that run
    newest = store.list_runs()[0]["id"]
    page.locator('#history-table [data-testid="cell-0-0"]').click()  # the newest run's id cell
    page.wait_for_function(
        "n => (document.querySelector('#history-status') || {}).innerText?.includes('Run #' + n + ' ')",
        arg=newest, timeout=30_000,
    )
    page.screenshot(path="/tmp/specviz-history.png", full_page=True)


def test_empty_prompt_shows_a_message(page, server):
    _, store = server
    before = len(store.list_runs())
    page.get_by_role("tab", name="Playground").click()
    page.fill("#prompt textarea", "   ")
    page.click("#run")
    page.wait_for_selector("#status .status-error", timeout=30_000)
    assert "prompt is empty" in page.locator("#status").inner_text()
    assert len(store.list_runs()) == before


def lattice_title(page, prefix: str = "") -> str:
    return page.locator(f"#{prefix}lattice-plot .gtitle").text_content()  # an SVG text: no innerText


def wait_lattice_step(page, step: int, prefix: str = "") -> None:
    page.wait_for_function(
        """([sel, n]) => {
            const t = document.querySelector(sel + ' .gtitle');
            return t && t.textContent.startsWith('Step ' + n + ': diffusion lattice');
        }""",
        arg=[f"#{prefix}lattice-plot", step], timeout=30_000,
    )


def test_diffusion_run_shows_the_lattice_following_the_step(page, server):
    _, store = server
    page.get_by_role("tab", name="Playground").click()
    page.click("#strategy input")
    page.get_by_role("option", name="diffusion", exact=True).click()
    page.wait_for_function(  # the strategy's own fields and defaults (ADL, its block of 8)
        "() => document.querySelector('#param-length-policy input')?.value === 'adl'", timeout=30_000
    )
    run_number = (store.list_runs()[0]["id"] if store.list_runs() else 0) + 1
    start_run(page, "List the days of the week.", 12)
    wait_finished(page, run_number)
    run = store.list_runs()[0]
    assert run["strategy"] == "diffusion" and run["status"] == "finished", run
    events = store.load_events(run["id"])
    assert events[0].lattice and events[1].lattice
    # the first steps drafted from a lattice: the panel shows it and follows the slider and Next
    page.locator("#step-slider input[type=range]").press("Home")
    wait_lattice_step(page, 0)
    assert page.locator("#lattice-plot").is_visible() and not page.locator("#draft-tree-plot").is_visible()
    first_title = lattice_title(page)
    assert f"{len(events[0].lattice)} positions" in first_title
    assert page.locator("#lattice-plot .hm").count() == 1  # the heatmap
    page.locator("#lattice-plot").screenshot(path="/tmp/lattice_panel.png")
    page.click("#step-next")
    wait_lattice_step(page, 1)
    page.screenshot(path="/tmp/specviz-lattice.png", full_page=True)
    # a step without a lattice (the budget left nothing to draft) hides the panel
    bare = next((e.index for e in events if not e.lattice), None)
    if bare is not None:
        page.locator("#step-slider input[type=range]").press("End")
        page.wait_for_function(
            "n => document.querySelector('#step-inspector .insp-head')?.innerText.includes('Step ' + n + ' of')",
            arg=len(events) - 1, timeout=30_000,
        )
        if not events[-1].lattice:
            page.wait_for_selector("#lattice-plot", state="hidden", timeout=30_000)
    # the History replay draws the same lattice from the log
    page.get_by_role("tab", name="History").click()
    page.fill("#history-run-id input", str(run["id"]))
    page.click("#history-open")
    page.wait_for_function(
        "n => (document.querySelector('#history-status') || {}).innerText?.includes('Run #' + n + ' ')",
        arg=run["id"], timeout=30_000,
    )
    page.locator("#history-step-slider input[type=range]").press("Home")
    wait_lattice_step(page, 0, "history-")
    assert lattice_title(page, "history-") == first_title
