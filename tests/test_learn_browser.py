"""The Learn tab in headless Chromium (Playwright): walk every lesson with Next lesson, use each lesson's
interaction once and check it changed what is shown, switch to the Playground from lesson 7, and open
`?lesson=3` in a fresh page. Saves a screenshot per lesson for a human look: /tmp/specviz-lesson-N.png
(and /tmp/specviz-lesson-3-dark.png)."""

from __future__ import annotations


import pytest

from browser_support import MARKS, VIEWPORT, chromium, open_page  # noqa: E402

from conftest import served_app  # noqa: E402

pytestmark = MARKS

WAIT = 30_000  # ms: generous, the machine may be shared


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    with served_app(model_cache, tmp_path_factory.mktemp("learn-browser") / "runs.db") as served:
        yield served


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(browser, server):
    url, _ = server
    pg = open_page(browser, url)
    pg.get_by_role("tab", name="Learn").click()
    pg.wait_for_selector("#lesson-1", state="visible", timeout=60_000)
    yield pg
    pg.close()


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_changed(page, selector: str, before: str) -> None:
    """Wait until the element's text differs from `before` (Gradio's pending overlay, "queue: 1/1 | 0.2s", does not count)."""
    page.wait_for_function(
        """([s, b]) => { const e = document.querySelector(s);
                         return e && e.innerText !== b && !/^(queue: \\S+ \\| )?\\d+(\\.\\d+)?s/.test(e.innerText.trim()); }""",
        arg=[selector, before], timeout=WAIT)


def press_slider(page, elem_id: str, key: str = "ArrowRight") -> None:
    page.locator(f"#{elem_id} input[type=range]").press(key)


def interact(page, n: int) -> None:
    """Use lesson n's interaction once and check that what is shown changed."""
    if n == 1:
        before = text_of(page, "#learn1-caption")
        page.click("#learn1-next-phase")
        wait_changed(page, "#learn1-caption", before)
        page.click("#learn1-next-phase")  # two phases in: the drafter's first token is on screen
        page.wait_for_function("() => document.querySelector('#learn1-caption').innerText.includes('phase 3')",
                               timeout=WAIT)
    elif n == 2:
        before = text_of(page, "#learn2-visual")
        page.click("#learn2-token input")
        page.get_by_role("option").nth(2).click()
        wait_changed(page, "#learn2-visual", before)
    elif n == 3:
        before = text_of(page, "#learn3-caption")
        press_slider(page, "learn3-k")
        wait_changed(page, "#learn3-caption", before)
        page.wait_for_function("() => document.querySelector('#learn3-caption').innerText.includes('K = 5')",
                               timeout=WAIT)
    elif n in (4, 5):
        before = text_of(page, f"#learn{n}-caption")
        press_slider(page, f"learn{n}-step")
        wait_changed(page, f"#learn{n}-caption", before)
    elif n == 6:
        before = text_of(page, "#learn6-table")
        page.locator("#learn6-policy").get_by_text("heuristic", exact=False).click()
        wait_changed(page, "#learn6-table", before)
        page.wait_for_function("() => document.querySelector('#learn6-table').innerText.includes('▶ heuristic')",
                               timeout=WAIT)
    elif n == 7:
        before = text_of(page, "#learn7-result")
        page.locator("#learn7-repeated").get_by_text("yes, in the prompt or output").click()
        wait_changed(page, "#learn7-result", before)
        page.wait_for_function("() => document.querySelector('#learn7-result').innerText.includes('Try prompt_lookup')",
                               timeout=WAIT)


def test_walk_every_lesson(page):
    for n in range(1, 8):
        page.wait_for_selector(f"#lesson-{n}", state="visible", timeout=WAIT)
        assert page.locator(".lesson:visible").count() == 1  # one lesson at a time
        assert f"Lesson {n} of 7" in text_of(page, f"#lesson-{n}")
        if page.locator(f"#lesson-{n} .js-plotly-plot").count():
            page.wait_for_selector(f"#lesson-{n} .js-plotly-plot svg", timeout=WAIT)
        interact(page, n)
        page.wait_for_timeout(400)  # plotly's re-layout after an update
        page.screenshot(path=f"/tmp/specviz-lesson-{n}.png", full_page=True)
        if n < 7:
            page.click("#learn-next")
            page.wait_for_function("n => location.search.includes('lesson=' + n)", arg=n + 1, timeout=WAIT)
    assert page.locator("#learn-next").is_disabled()
    assert page.locator("#learn-stepper").get_attribute("role") == "group"


def test_lesson_7_switches_to_the_playground(page):
    page.click("#learn7-playground")
    page.wait_for_selector("#prompt textarea", state="visible", timeout=WAIT)
    assert page.get_by_role("tab", name="Playground").get_attribute("aria-selected") == "true"
    assert page.locator("#learn7-sampling-lab").count() == 1


def test_deep_link_opens_lesson_3(browser, server):
    url, _ = server
    pg = browser.new_page(viewport=VIEWPORT)
    try:
        pg.goto(url + "?lesson=3&__theme=dark")
        pg.wait_for_selector("#lesson-3", state="visible", timeout=60_000)
        assert pg.locator("#lesson-1").is_hidden()
        assert "3. Draft length" in pg.locator("#learn-progress li[aria-current=step]").inner_text()
        pg.wait_for_selector("#learn3-plot .js-plotly-plot svg", timeout=WAIT)
        pg.wait_for_timeout(400)
        pg.screenshot(path="/tmp/specviz-lesson-3-dark.png", full_page=True)
    finally:
        pg.close()
