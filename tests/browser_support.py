"""What every browser test shares: Debian's Chromium driven by Playwright's Python package (never a downloaded
browser), its launch flags and viewport, the test marks, and the small page helpers the tests repeat.

Importing this module skips the importing test module when Chromium or the playwright package is missing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
VIEWPORT = {"width": 1400, "height": 1000}  # the size the screenshots are looked at in
MARKS = [
    pytest.mark.xdist_group("browser"),  # for --dist loadgroup: a module's tests share a launched app, in order
    pytest.mark.slow,
    pytest.mark.browser,
    # Gradio's own queue statistics trip pandas 3 deprecation warnings; nothing in SpecViz.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@contextlib.contextmanager
def chromium() -> Iterator:
    """A headless Chromium (Playwright's Browser), closed on exit."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, ready: str = "#prompt textarea"):
    """A new page at `url`, once `ready` is on it (the Playground's prompt box: the app has mounted)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.wait_for_selector(ready, timeout=60_000)
    return page


def set_number(page, selector: str, value: int) -> None:
    """Type a number into a Gradio number box (or a slider's box) and leave it, so the change registers."""
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Tab")


def wait_text(page, selector: str, text: str, timeout: int) -> None:
    """Wait until the element's text contains `text`."""
    page.wait_for_function("([s, t]) => (document.querySelector(s) || {}).innerText?.includes(t)",
                           arg=[selector, text], timeout=timeout)
