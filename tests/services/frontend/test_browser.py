"""The chat page in headless Chromium: log in, pick a model, send a question, watch the answer stream in.

Gradio is launched the way ``python -m services.frontend.main`` launches it (``serve``), on a free port,
with a login; the stub gateway answers over a real redis-server, a token every 0.4 s so the page
shows the answer growing. Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` pip package
(its bundled driver is enough with ``executable_path``: no ``playwright install``).
"""
from __future__ import annotations

import shutil
import time

import pytest

from services.frontend.frontend_config import FrontendConfig
from services.frontend.main import serve
from shared.bus import free_port
from shared.registry import Registry

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "tester", "correct horse"


@pytest.fixture
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page_url(redis_url, runs_dir):
    registry = Registry(runs_dir)
    registry.stage_dir("r1", "sft")
    registry.register("r1", "sft", "hf-model")
    cfg = FrontendConfig(redis_url=redis_url, port=free_port(), runs_dir=str(runs_dir), timeout_s=10,
                         auth_user=USER, auth_password=PASSWORD)
    demo = serve(cfg, block=False)
    yield f"http://127.0.0.1:{cfg.port}/"
    demo.close()


def _watch_answer(page, final: str, timeout_s: float = 15.0) -> list[str]:
    """The distinct texts of the newest answer bubble, polled until it reads ``final``."""
    bubble, seen = page.locator("#chat [data-testid='bot']").last, []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = bubble.inner_text().strip() if bubble.count() else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if text == final:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the answer never reached {final!r}; saw {seen}")


def test_a_question_gets_a_streamed_answer_with_sources_tools_and_speed(browser, page_url, gateway):
    gateway.token_delay_s = 0.4
    page = browser.new_page()
    page.goto(page_url)
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()

    page.locator("#model input").click()
    page.get_by_role("option", name="r1/sft [hf-model]").click()
    page.locator("#message textarea").fill("What is 6 * 7?")
    page.locator("#send").click()

    seen = _watch_answer(page, gateway.ANSWER)
    partial = [text for text in seen if text != gateway.ANSWER and gateway.ANSWER.startswith(text)]
    assert len(partial) >= 2, f"expected the answer to grow in steps, saw {seen}"
    expect = sync_api.expect  # waits for the text: the panels may trail the last token by a repaint
    expect(page.locator("#sources")).to_contain_text("docs/arith.md")
    expect(page.locator("#tools")).to_contain_text('calculator({"expression": "6 * 7"}) → 42')
    expect(page.locator("#metrics")).to_contain_text("TTFT 0.125 s · decode 31.5 tokens/s")
    expect(page.locator("#chat [data-testid='user']").last).to_have_text("What is 6 * 7?")
    [request] = gateway.requests
    assert (request.model, request.messages[-1].content) == ("r1/sft", "What is 6 * 7?")
    assert request.conversation_id
