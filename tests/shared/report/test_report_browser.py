"""The report in headless Chromium, opened from disk: every picture decodes, every link lands, and the
page asks the network for nothing (it is one self-contained file)."""
from __future__ import annotations

import shutil

import pytest

from shared.report import write_report
from tests.shared.report.small_run import RUN

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"


def test_the_page_opens_from_disk_with_no_broken_image_or_link_and_no_request(small_run):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    path = write_report(small_run, RUN)
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            images = page.evaluate("[...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
            links = page.evaluate("[...document.links].map(a => a.getAttribute('href'))")
            targets = page.evaluate("[...document.links].map(a => a.hash ? !!document.getElementById("
                                    "decodeURIComponent(a.hash.slice(1))) : false)")
            svg_boxes = page.evaluate("document.querySelectorAll('figure.lineage svg rect').length")
        finally:
            browser.close()
    assert len(images) >= 8  # curves, quantize plots, interpret plots and the collapsed ones
    assert all(complete and width > 0 for _, complete, width in images), [alt for alt, c, w in images if not w]
    assert links and all(h.startswith("#") for h in links), links  # in-page only: nothing to break on disk
    assert all(targets), [h for h, ok in zip(links, targets) if not ok]
    assert svg_boxes == len(small_run.artifacts(RUN))
    others = [u for u in requests if not u.startswith(("data:", path.as_uri()))]
    assert not others, f"the page fetched {others}"
