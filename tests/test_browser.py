"""End to end: `streamlit run app.py` on a loopback port, driven by headless Debian Chromium via Playwright.

Asks a demo question, waits for both answers, checks both columns and the sources, and
saves a screenshot to test-artifacts/compare.png (the README's picture comes from it).
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from backends.core.config import REPO_ROOT
from tests.helpers import copy_demo_store, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
QUESTION = "What is the per diem for a full day of business travel?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = copy_demo_store(tmp_path_factory.mktemp("browser") / "store")
    port = free_port()
    env = {**os.environ, "DUET_STORE": str(store)}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {open(log.name).read()[-2000:]}")
    yield url
    process.terminate()
    process.wait(30)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is installed by `make test`")
def test_compare_page_in_headless_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.goto(server, timeout=120_000)
        page.get_by_label("Question", exact=True).fill(QUESTION)
        page.get_by_role("button", name="Ask both").click()
        # The transparency panel appears once both answers are complete and traced.
        expect(page.get_by_text("Transparency: every claim and its evidence")).to_be_visible(timeout=240_000)
        expect(page.get_by_text("RAG (retrieval + base model)")).to_be_visible()
        expect(page.get_by_text("Fine-tuned (base model + LoRA, no retrieval)")).to_be_visible()
        expect(page.get_by_text("travel_policy.pdf").first).to_be_visible()
        expect(page.get_by_text("55 euros").first).to_be_visible()
        # Metrics and charts sit under the same lazily loaded plotly component: on a busy machine they
        # appear after the transparency panel, so wait for them rather than count at once.
        expect(page.get_by_text("Tokens/s", exact=True)).to_have_count(2, timeout=120_000)
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_visible(timeout=120_000)
        page.wait_for_timeout(1500)  # let the charts finish drawing
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=False)
        browser.close()
    assert (ARTIFACTS / "compare.png").stat().st_size > 20_000
