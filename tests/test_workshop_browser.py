"""Workshop mode in headless Chromium (Playwright): the dark / light toggle and ?__theme=dark with the plots
following, projector mode, keyboard stepping (← → and space, never while typing), accessible names. Runs come
from the recorded traces shipped with the app (assets/traces), written to the served run log: no model run.

Screenshots for a human look: /tmp/specviz-light.png, /tmp/specviz-dark.png, /tmp/specviz-dark-lattice.png,
/tmp/specviz-projector.png (1400x1000 viewport, whole page)."""

from __future__ import annotations

import re

import pytest

from browser_support import MARKS, VIEWPORT, chromium  # noqa: E402

from conftest import served_app  # noqa: E402

from engine import RunMetrics  # noqa: E402
from specviz.traces import bundled_traces  # noqa: E402

pytestmark = MARKS

TRACES = bundled_traces()
if "showcase" not in TRACES or "diffusion" not in TRACES:
    pytest.skip("the recorded traces (assets/traces) are missing", allow_module_level=True)

SLIDER = "#history-step-slider input[type=range]"
PLAY = "#history-step-play"


def log_trace(store, trace) -> int:
    """Write a recorded run to the log as if it had just run: History opens it like any other."""
    setup, events = trace.setup, trace.events
    run_id = store.start_run(strategy=setup.strategy_config(), sampling=setup.sampling(), target=setup.target,
                             drafter=None, prompt=setup.prompt, prompt_tokens=events[0].context_length,
                             max_new_tokens=setup.max_new_tokens, source="ui")
    seq = 0
    for event in events:
        store.log_step(run_id, event, first_seq=seq)
        seq += len(event.new_tokens)
    store.finish_run(run_id, status="finished", token_ids=[t.token_id for e in events for t in e.new_tokens],
                     text=trace.output_text, metrics=RunMetrics.from_events(events), stop_reason=events[-1].stop_reason)
    return run_id


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("ui-workshop") / "runs.db") as (url, store):
        runs = {name: log_trace(store, TRACES[name]) for name in ("showcase", "diffusion")}
        yield url, store, runs


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def context(browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(server, context):
    url, _, _ = server
    pg = context.new_page()
    pg.goto(url)
    pg.wait_for_selector("#sv-theme-toggle", timeout=60_000)
    pg.wait_for_selector("#prompt textarea", timeout=60_000)
    yield pg


def open_in_history(page, run_id: int) -> None:
    page.get_by_role("tab", name="History").click()
    page.fill("#history-run-id input", str(run_id))
    page.click("#history-open")
    page.wait_for_function(
        "n => (document.querySelector('#history-status') || {}).innerText?.includes('Run #' + n + ' ')",
        arg=run_id, timeout=30_000,
    )
    page.wait_for_selector("#history-acceptance-plot .js-plotly-plot .xtick text", timeout=30_000)


def luminance(css_colour: str) -> float:
    """0 (black) .. 1 (white) of an rgb()/rgba() computed colour."""
    r, g, b = (int(v) for v in re.findall(r"[\d.]+", css_colour)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


PAGE_BACKGROUND = """() => {  // the colour the page shows behind the app: the first opaque background up the tree
    for (let el = document.querySelector('.gradio-container'); el; el = el.parentElement) {
        const c = getComputedStyle(el).backgroundColor;
        if (c && c !== 'transparent' && !c.startsWith('rgba(0, 0, 0, 0')) return c;
    }
    return 'rgb(255, 255, 255)';
}"""


def plot_colours(page, plot: str) -> dict:
    return page.evaluate(
        """sel => {
            const q = s => document.querySelector(sel + ' ' + s);
            const fill = el => el ? getComputedStyle(el).fill : null;
            return {tick: fill(q('.xtick text')), axis_title: fill(q('.g-xtitle text')), legend: fill(q('.legendtext')),
                    grid: q('.gridlayer path') ? getComputedStyle(q('.gridlayer path')).stroke : null,
                    paper: getComputedStyle(q('.main-svg')).backgroundColor};
        }""",
        plot,
    )


def test_dark_toggle_recolours_page_and_plots(page, server):
    _, _, runs = server
    open_in_history(page, runs["showcase"])
    assert not page.evaluate("document.body.classList.contains('dark')")
    light = plot_colours(page, "#history-acceptance-plot")
    assert luminance(light["tick"]) < 0.5 and luminance(page.evaluate(PAGE_BACKGROUND)) > 0.8
    assert light["paper"] in ("rgba(0, 0, 0, 0)", "transparent"), light  # figures.py: transparent backgrounds
    page.screenshot(path="/tmp/specviz-light.png", full_page=True)

    page.click("#sv-theme-toggle")
    page.wait_for_function("() => document.body.classList.contains('dark')", timeout=5_000)
    assert page.get_attribute("#sv-theme-toggle", "aria-pressed") == "true"
    assert page.evaluate("localStorage.getItem('specviz-theme')") == "dark"
    assert luminance(page.evaluate(PAGE_BACKGROUND)) < 0.2
    for plot in ("#history-acceptance-plot", "#history-draft-length-plot", "#history-phase-plot"):
        dark = plot_colours(page, plot)
        assert luminance(dark["tick"]) > 0.7 and luminance(dark["axis_title"]) > 0.7, (plot, dark)
        assert dark["legend"] is None or luminance(dark["legend"]) > 0.7, (plot, dark)
    # the draft tree's produced-token labels (theme ink) turn light; its grey labels and coloured ones stay
    labels = page.evaluate("""() => [...document.querySelectorAll('#history-draft-tree-plot .textpoint text')]
                                    .map(t => getComputedStyle(t).fill)""")
    assert labels and max(luminance(c) for c in labels) > 0.7
    # the token stream: light text on the dark page
    text = page.evaluate("getComputedStyle(document.querySelector('#history-token-stream .tok-accepted')).color")
    assert luminance(text) > 0.7
    page.screenshot(path="/tmp/specviz-dark.png", full_page=True)

    # the diffusion lattice: its cell text keeps plotly's own contrast colours (dark on the light cells)
    open_in_history(page, runs["diffusion"])
    page.wait_for_selector("#history-lattice-plot .hm", timeout=30_000)
    cell_text = page.evaluate("""() => [...document.querySelectorAll('#history-lattice-plot .textpoint text, '
                                        + '#history-lattice-plot .heatmaplayer text')].map(t => getComputedStyle(t).fill)""")
    assert cell_text and min(luminance(c) for c in cell_text) < 0.3, cell_text
    tick = page.evaluate("getComputedStyle(document.querySelector('#history-lattice-plot .xtick text')).fill")
    assert luminance(tick) > 0.7
    page.locator("#history-lattice-plot").screenshot(path="/tmp/specviz-dark-lattice.png")


def test_theme_is_remembered_and_url_theme_is_honoured(page, server, context):
    url, _, _ = server
    other = context.new_page()
    try:
        other.goto(url)  # the stored choice (dark, from the toggle above) applies on a new page
        other.wait_for_selector("#sv-theme-toggle", timeout=60_000)
        other.wait_for_function("() => document.body.classList.contains('dark')", timeout=10_000)
        other.evaluate("localStorage.setItem('specviz-theme', 'light')")
        other.goto(url + "?__theme=dark")  # the URL wins over the stored choice
        other.wait_for_selector("#sv-theme-toggle", timeout=60_000)
        other.wait_for_function("() => document.body.classList.contains('dark')", timeout=10_000)
        other.wait_for_selector("#acceptance-plot .js-plotly-plot .xtick text", timeout=30_000)
        tick = other.evaluate("getComputedStyle(document.querySelector('#acceptance-plot .xtick text')).fill")
        assert luminance(tick) > 0.7
        assert other.get_attribute("#sv-theme-toggle", "aria-pressed") == "true"
    finally:
        other.close()
    # the first page keeps the theme it shows until its own toggle: back to light for the next tests
    page.click("#sv-theme-toggle")
    page.wait_for_function("() => !document.body.classList.contains('dark')", timeout=5_000)


def test_projector_mode_enlarges_text(page, server):
    _, _, runs = server
    open_in_history(page, runs["showcase"])
    size = "() => parseFloat(getComputedStyle(document.querySelector('#history-token-stream .token-stream-inner')).fontSize)"
    tick = "() => parseFloat(getComputedStyle(document.querySelector('#history-acceptance-plot .xtick text')).fontSize)"
    before, tick_before = page.evaluate(size), page.evaluate(tick)
    page.click("#sv-projector-toggle")
    page.wait_for_function("() => document.body.classList.contains('projector')", timeout=5_000)
    assert page.evaluate("localStorage.getItem('specviz-projector')") == "on"
    assert page.evaluate(size) >= 1.25 * before
    assert page.evaluate(tick) > tick_before
    page.wait_for_timeout(400)  # plotly's re-layout at the new size
    page.screenshot(path="/tmp/specviz-projector.png", full_page=True)
    page.click("#sv-projector-toggle")
    page.wait_for_function("() => !document.body.classList.contains('projector')", timeout=5_000)
    assert page.evaluate(size) == before


def slider_value(page, selector: str = SLIDER) -> int:
    return int(page.locator(selector).input_value())


def wait_slider(page, value: int, selector: str = SLIDER) -> None:
    page.wait_for_function("([s, v]) => document.querySelector(s)?.value === String(v)", arg=[selector, value],
                           timeout=15_000)


def test_keyboard_steps_the_visible_run_view(page, server):
    _, _, runs = server
    open_in_history(page, runs["showcase"])
    page.evaluate("document.activeElement && document.activeElement.blur()")
    start = slider_value(page)
    n = len(TRACES["showcase"].events)
    back, forward = ("ArrowLeft", "ArrowRight") if start > 0 else ("ArrowRight", "ArrowLeft")
    page.keyboard.press(back)
    moved = start - 1 if back == "ArrowLeft" else start + 1
    wait_slider(page, moved)
    page.keyboard.press(forward)
    wait_slider(page, start)
    assert 0 <= start < n
    # space: play, and space again: pause (the button's label says which)
    page.keyboard.press(" ")
    page.wait_for_function("s => document.querySelector(s)?.innerText.includes('Pause')", arg=PLAY, timeout=15_000)
    page.keyboard.press(" ")
    page.wait_for_function("s => document.querySelector(s)?.innerText.includes('Play')", arg=PLAY, timeout=15_000)
    # typing arrows in a text box never steps: the Playground's prompt
    page.get_by_role("tab", name="Playground").click()
    playground = "#step-slider input[type=range]"
    if page.locator("#step-play").inner_text().strip().startswith("⏸"):  # the showcase still playing: pause it
        page.click("#step-play")
        page.wait_for_function("() => document.querySelector('#step-play')?.innerText.includes('Play')", timeout=15_000)
    page.wait_for_timeout(300)
    before, history_before = slider_value(page, playground), slider_value(page)
    box = page.locator("#prompt textarea")
    box.click()
    box.press("Control+End")
    box.press("ArrowLeft")
    box.press("ArrowLeft")
    caret = page.evaluate("document.querySelector('#prompt textarea').selectionStart")
    assert caret == len(box.input_value()) - 2  # the text box kept its arrows
    page.wait_for_timeout(800)
    assert slider_value(page, playground) == before and slider_value(page) == history_before
    # out of the text box, the keys step the Playground's view (the visible one)
    page.evaluate("document.activeElement.blur()")
    if before > 0:
        page.keyboard.press("ArrowLeft")
        wait_slider(page, before - 1, playground)
    assert slider_value(page) == history_before  # History's view (hidden) did not move


def test_accessible_names(page):
    labels = page.evaluate("""() => ({
        prev: document.querySelector('#history-step-prev')?.getAttribute('aria-label'),
        next: document.querySelector('#step-next')?.getAttribute('aria-label'),
        plotRole: document.querySelector('#acceptance-plot')?.getAttribute('role'),
        plotLabel: document.querySelector('#acceptance-plot')?.getAttribute('aria-label'),
        region: document.querySelector('#token-stream [role=region]')?.getAttribute('aria-label'),
    })""")
    assert labels["prev"] == "Previous step" and labels["next"] == "Next step"
    assert labels["plotRole"] == "img" and "Acceptance history" in labels["plotLabel"]
    assert labels["region"]
    # each output token's verdict is text for a screen reader (CSS alt text), not in the visible or copied text
    tree = page.locator("#token-stream").aria_snapshot()
    assert "(accepted)" in tree
    assert "(accepted)" not in page.locator("#token-stream").inner_text()
