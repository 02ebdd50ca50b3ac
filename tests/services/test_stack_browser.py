"""The web chat in headless Chromium, in front of the real stack: Gradio -> bus -> gateway -> generator and tools.

Unlike ``tests/services/frontend/test_browser.py`` (a stub gateway), every hop here is the real one:
the page's question crosses Redis to the gateway's consumer group, the memorised model answers
"What is 17*23?" with a calculator call that the tool executor runs, and the page shows the call,
its result and the final answer.
"""
from __future__ import annotations

import shutil

import pytest

from services.frontend.frontend_config import FrontendConfig
from services.frontend.main import serve
from shared.bus import free_port

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def page_url(stack):
    _, redis_url, runs = stack
    cfg = FrontendConfig(redis_url=redis_url, port=free_port(), runs_dir=str(runs), timeout_s=60)
    demo = serve(cfg, block=False)
    yield f"http://127.0.0.1:{cfg.port}/"
    demo.close()


def test_the_browser_chats_with_the_real_stack_and_sees_the_tool_call(page_url):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(page_url)
            page.locator("#message textarea").fill("What is 17*23?")
            page.locator("#send").click()
            expect(page.locator("#chat [data-testid='bot']").last).to_have_text("17*23 = 391", timeout=60_000)
            expect(page.locator("#tools")).to_contain_text('calculator({"expression": "17*23"}) → 391')
            expect(page.locator("#metrics")).to_contain_text("TTFT")
        finally:
            browser.close()
