"""The page's first seconds in headless Chromium: the recorded showcase plays at once, pauses, speeds up, ends on
its most informative step; the live model's badge turns ready; a category fills the prompt. Screenshot:
/tmp/specviz-showcase.png."""

from __future__ import annotations

import re
import time

import pytest

from browser_support import MARKS, chromium, open_page  # noqa: E402

from conftest import served_app  # noqa: E402

from specviz.prompts import load_prompt_suite  # noqa: E402
from specviz.traces import bundled_traces  # noqa: E402
from specviz.ui.panels import most_informative_step  # noqa: E402

pytestmark = MARKS
OUTPUT_TOKENS = "#token-stream span.tok-accepted, #token-stream span.tok-recovered, #token-stream span.tok-bonus"


def shown_step(page) -> tuple[int, int]:
    head = page.locator("#step-inspector .insp-head").inner_text()
    step, total = re.search(r"Step (\d+) of (\d+)", head).groups()
    return int(step), int(total)


@pytest.fixture(scope="module")
def page(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("showcase") / "runs.db") as (url, _):
        with chromium() as browser:
            yield open_page(browser, url, ready="#token-stream")


def test_the_showcase_plays_on_load_and_ends_on_its_most_informative_step(page):
    showcase = bundled_traces()["showcase"]
    page.wait_for_selector(OUTPUT_TOKENS, timeout=60_000)
    assert "Playing a recorded run" in page.locator("#status").inner_text()
    assert page.locator("#prompt textarea").input_value() == showcase.setup.prompt
    # it moves: the inspector follows the newest step, and the stream grows with it
    first, total = shown_step(page)
    page.wait_for_function("n => /Step (\\d+) of/.exec(document.querySelector('#step-inspector .insp-head')"
                           "?.innerText || '')?.[1] > n", arg=first, timeout=30_000)
    # pause: nothing moves; play again: it goes on
    page.click("#step-play")
    page.wait_for_function("() => document.querySelector('#step-play')?.innerText.includes('Play')", timeout=10_000)
    time.sleep(0.6)  # a tick already in flight may still show one more step
    paused, _ = shown_step(page)
    time.sleep(1.5)
    assert shown_step(page)[0] == paused
    page.locator("#playback-speed input").click()
    page.get_by_role("option", name="8 steps/s").click()
    page.click("#step-play")
    page.wait_for_function("() => document.querySelector('#step-play')?.innerText.includes('Pause')", timeout=10_000)
    # the end: the whole run, on the step where the target both kept and refused drafted tokens
    page.wait_for_function("() => document.querySelector('#step-play')?.innerText.includes('Play')", timeout=30_000)
    page.wait_for_function("n => document.querySelector('#step-inspector .insp-head')?.innerText.includes('of ' + n)",
                           arg=len(showcase.events), timeout=10_000)
    assert shown_step(page) == (most_informative_step(showcase.events), len(showcase.events))
    shown = "".join(page.locator(OUTPUT_TOKENS + ", #token-stream span.tok-baseline").all_inner_texts())
    assert shown.replace("↵", "") .replace("\n", "") == showcase.output_text.replace("\n", "")
    page.screenshot(path="/tmp/specviz-showcase.png")


def test_the_live_model_loads_in_the_background(page):
    page.wait_for_function("() => document.querySelector('#model-badge')?.innerText.includes('Live model ready')",
                           timeout=180_000)


def test_a_category_puts_its_first_example_in_the_prompt(page):
    code = next(p for p in load_prompt_suite() if p.category == "code")
    page.locator("#example-category").get_by_text("code", exact=True).click()
    page.wait_for_function("t => document.querySelector('#prompt textarea')?.value === t", arg=code.prompt,
                           timeout=10_000)
