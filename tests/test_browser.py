"""End to end: `streamlit run app.py` on a loopback port, driven by headless Debian Chromium via Playwright.

Asks a demo question, waits for both answers, checks both columns and the sources, and
saves a screenshot to test-artifacts/compare.png (the README's picture comes from it).
"""

import os
import shutil

import pytest

from backends.core.config import REPO_ROOT
from tests.helpers import copy_demo_store, streamlit_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
QUESTION = "What is the per diem for a full day of business travel?"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, store) of a `streamlit run app.py` on a copy of the demo store."""
    store = copy_demo_store(tmp_path_factory.mktemp("browser") / "store")
    with open(tmp_path_factory.mktemp("log") / "streamlit.log", "w") as log, \
            streamlit_server(store, log) as (url, process):
        yield url, store, process


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is installed by `make test`")
def test_compare_page_in_headless_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
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


from backends.apps.story import TITLES  # noqa: E402

STORY_STEPS = len(TITLES)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is installed by `make test`")
def test_the_guided_story_walks_every_step_and_leaves_the_store_as_it_was(served):
    """Next (button and the right arrow key) through every step, a screenshot each (test-artifacts/story-N.png;
    the README shows the first); the live change happens in a copy, so the served store is unchanged."""
    from playwright.sync_api import expect, sync_playwright

    url, store, _ = served
    before = (store / "manifest.json").read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/?present=1&story=1", timeout=120_000)
        expect(page.get_by_text("answered in ")).to_have_count(2, timeout=240_000)  # the app has prepared step 1
        # A viewer who opens the story now gets step 1 from what was prepared: both answers at once, no asking.
        other = browser.new_page(viewport={"width": 1400, "height": 1000})
        other.goto(f"{url}/?present=1&story=1", timeout=120_000)
        expect(other.get_by_text("answered in ")).to_have_count(2, timeout=10_000)
        other.close()
        for step, heading in enumerate(TITLES, 1):
            # The step's heading is drawn once its answers are in (the last step's elements stay until then).
            expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=240_000)
            expect(page.get_by_text(f"Step {step} of {STORY_STEPS}", exact=False)).to_be_visible()
            if step in (1, 2, 3, 4):  # the steps that ask: both answers with their verdicts
                expect(page.get_by_text("answered in ")).to_have_count(2, timeout=240_000)
            if step == 3:
                expect(page.get_by_text("62 euros").first).to_be_visible(timeout=60_000)
            if step == 4:
                expect(page.get_by_text("not in the documents").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / f"story-{step}.png"))
            if step < STORY_STEPS:
                if step % 2:
                    page.get_by_role("button", name="Next").click()
                else:
                    page.locator("body").press("ArrowRight")
        expect(page.get_by_role("button", name="Next")).to_be_disabled()
        expect(page.get_by_text("→ →")).to_have_count(0)  # the shortcut's arrow once, not "Next → →"
        browser.close()
    assert (ARTIFACTS / "story-1.png").stat().st_size > 20_000
    assert (store / "manifest.json").read_bytes() == before, "the live change never touched the served store"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is installed by `make test`")
def test_two_viewers_vote_blind_see_the_reveal_and_their_votes_survive_a_killed_server(served):
    """Runs last in this module: it kills the served app."""
    from playwright.sync_api import expect, sync_playwright

    from backends.apps.votes import current_round, tally
    from backends.core.config import load_settings

    url, store, process = served
    with sync_playwright() as p:
        browser = launch(p)
        presenter, viewer = (browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in range(2))
        presenter.goto(f"{url}/?present=1&vote=1", timeout=120_000)
        viewer.goto(f"{url}/?present=1&vote=1", timeout=120_000)
        expect(viewer.get_by_text("Waiting for the presenter")).to_be_visible(timeout=120_000)
        presenter.get_by_label("Question", exact=True).fill(QUESTION)
        presenter.get_by_role("button", name="Put to the vote").click()
        for page in (presenter, viewer):  # the viewer's page picks the new question up by itself
            expect(page.get_by_text("Answer B", exact=True)).to_be_visible(timeout=120_000)
            expect(page.get_by_text("RAG (retrieval")).to_have_count(0)  # no system named before the reveal
        presenter.get_by_role("button", name="Answer A is better").click()
        expect(presenter.get_by_text("Your vote: Answer A is better")).to_be_visible(timeout=60_000)
        viewer.get_by_role("button", name="Both are wrong").click()
        expect(viewer.get_by_text("Your vote: Both are wrong")).to_be_visible(timeout=60_000)
        expect(presenter.get_by_text("2 votes so far.")).to_be_visible(timeout=60_000)
        presenter.get_by_role("button", name="Reveal").click()
        for page in (presenter, viewer):
            expect(page.get_by_text("The reveal", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("said both were wrong")).to_be_visible()
        viewer.screenshot(path=str(ARTIFACTS / "vote.png"))
        browser.close()
    process.kill()  # no shutdown: what was cast must already be on disk
    process.wait(60)
    settings = load_settings().with_store(store)
    chosen = current_round(settings)
    counted = tally(settings, chosen)
    assert chosen.revealed and counted.votes == {"A": 1, "B": 0, "neither": 1}
    assert counted.preferred[chosen.sides["A"]] == 1
