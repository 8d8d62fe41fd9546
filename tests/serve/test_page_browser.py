"""The page at ``/`` in a real browser: Playwright driving Debian's Chromium, headless."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import NO_BROWSER, chromium
from serve_helpers import CLASSES

from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.server import BackgroundServer

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.mark.slow
def test_choose_a_photo_see_the_top5_and_gradcam_and_a_broken_file_error(
    served, photos, tmp_path: Path
):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip(NO_BROWSER)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[1].read_bytes()[:300])  # a JPEG cut short
    app = create_app(served, ServeSettings())
    with BackgroundServer(app) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 380, "height": 800})  # a phone's width
            page.goto(f"{url}/")
            # (locator waits: the page's CSP forbids the eval that wait_for_function needs)
            expect = playwright_api.expect
            expect(page.locator("#card")).to_contain_text("alexnet_cifar")

            page.set_input_files("#file", str(photos[0]))
            page.wait_for_selector("#top li", timeout=30_000)
            labels = page.locator("#top li b").all_inner_texts()
            assert len(labels) == 5 and set(labels) == set(CLASSES)
            overlay = page.locator("#overlay")
            expect(overlay).to_be_visible(timeout=30_000)
            assert overlay.evaluate("img => img.decode().then(() => img.naturalWidth)") == 256
            assert page.is_checked("#show-cam")
            page.click("#show-cam")  # the toggle: back to the photo
            assert page.is_hidden("#overlay") and page.is_visible("#photo")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 380, f"the page is {width} px wide on a 380 px screen"

            page.set_input_files("#file", str(broken))
            expect(page.locator("#error")).not_to_be_empty(timeout=30_000)
            error = page.inner_text("#error")
            assert "broken.jpg" in error and "truncated" in error.lower(), error
            assert page.is_hidden("#result")
        finally:
            browser.close()
