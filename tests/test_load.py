"""Many users at once: real Chromium pages on one `streamlit run`, each asking its own questions in a loop for a
bounded time while another page uploads documents.

Every session must get both answers with no error, the uploads must all land exactly once, and the server's
memory must stay flat after the warm-up. Times to both answers are printed (p50/p95), never asserted;
`DUET_LOAD_SESSIONS=1,4,8` and `DUET_LOAD_SECONDS` choose what a measurement runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import pytest

from backends.core.config import DATA_DIR, load_settings
from tests.helpers import copy_demo_store, streamlit_server
from tests.test_browser import CHROMIUM

SESSIONS = [int(n) for n in os.environ.get("DUET_LOAD_SESSIONS", "1,8").split(",")]
SECONDS = float(os.environ.get("DUET_LOAD_SECONDS", "45"))
UPLOADS = 6
ANSWER_TIMEOUT_MS = 180_000
QUESTIONS = [json.loads(line)["question"] for line in (DATA_DIR / "qa" / "eval.jsonl").read_text().splitlines()]
MEMORY_GROWTH = 1.5  # the server's RSS after the warm-up may not grow beyond this (a leak grows without bound)


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def asker(browser, url: str, questions: list[str], clock: "Clock", times: list, failures: list) -> None:
    """One user: open the page, and once every page is open ask, wait until the session history counts the answer
    (both answers in and traced), repeat."""
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1300, "height": 1000})
    page = await context.new_page()
    await page.goto(url, timeout=120_000)
    await page.get_by_label("Question", exact=True).wait_for(timeout=120_000)
    until = await clock.ready()
    asked = 0
    while time.monotonic() < until or asked == 0:
        question = questions[asked % len(questions)]
        await page.get_by_label("Question", exact=True).fill(question)
        started = time.monotonic()
        await page.get_by_role("button", name="Ask both").click()
        asked += 1
        await expect(page.get_by_text(f"This session ({asked} question{'' if asked == 1 else 's'})")).to_be_visible(
            timeout=ANSWER_TIMEOUT_MS)
        times.append(time.monotonic() - started)
        # Tracebacks and failure messages; the agreement view's "Conflict" boxes are content, not errors.
        errors = await page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').all_inner_texts()
        failures.extend(f"{question}: {e}" for e in errors if not e.startswith("Conflict"))
    await context.close()


async def uploader(browser, url: str, folder, done: list, clock: "Clock") -> None:
    """The ninth user: adds documents on the Documents page while the others ask."""
    from playwright.async_api import expect

    page = await browser.new_page()
    await page.goto(f"{url}/documents", timeout=120_000)
    await clock.all_open.wait()
    await page.locator('input[type="file"]').set_input_files([str(p) for p in sorted(folder.iterdir())])
    await page.get_by_role("button", name="Index these files").click()
    await expect(page.get_by_text(f"Done: {UPLOADS} files processed.")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    done.extend(await page.get_by_text("✅").all_inner_texts())


class Clock:
    """The round starts when every page has loaded: the room's laptops load their own pages, and eight page loads
    on these two cores would be counted in the first answers' times."""

    def __init__(self, pages: int, seconds: float):
        self.waiting, self.seconds, self.all_open, self.until = pages, seconds, asyncio.Event(), 0.0

    async def ready(self) -> float:
        """Wait for the other pages; the time the round ends."""
        self.waiting -= 1
        if self.waiting == 0:
            self.until = time.monotonic() + self.seconds
            self.all_open.set()
        await self.all_open.wait()
        return self.until


async def load(url: str, sessions: int, seconds: float, uploads=None, sample=lambda: None) -> tuple[list, list, list]:
    from playwright.async_api import async_playwright

    times, failures, uploaded = [], [], []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        clock = Clock(sessions, seconds)
        work = [asker(browser, url, QUESTIONS[n::sessions], clock, times, failures) for n in range(sessions)]
        if uploads is not None:
            work.append(uploader(browser, url, uploads, uploaded, clock))

        async def sampler():
            await clock.all_open.wait()
            while time.monotonic() < clock.until:
                sample()
                await asyncio.sleep(2)

        await asyncio.gather(*work, sampler())
        await browser.close()
    return times, failures, uploaded


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is installed by `make test`")
def test_many_sessions_at_once_all_get_both_answers_while_documents_are_uploaded(tmp_path):
    from backends.knowledge.index import DocumentIndex

    store = copy_demo_store(tmp_path / "store")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for n in range(UPLOADS):
        (uploads / f"harbour_notice_{n}.txt").write_text(f"Harbour notice {n}. Berth {n + 10} closes at {n + 7}:00 on "
                                                         f"Sundays for dredging; pilots use berth {n + 30} instead.")
    with streamlit_server(store, prepare_story="0") as (url, server):  # only the room's questions load it
        memory: list[float] = []
        report = {}
        for sessions in SESSIONS:
            heaviest = sessions == max(SESSIONS)
            if heaviest:
                memory.clear()  # the lighter rounds were the warm-up
            times, failures, uploaded = asyncio.run(load(url, sessions, SECONDS, uploads if heaviest else None,
                                                         lambda: memory.append(rss_mb(server.pid))))
            assert not failures, failures
            assert len(times) >= sessions, "every session got both answers at least once"
            report[sessions] = (len(times), statistics.median(times), percentile(times, 0.95))
            if heaviest:
                assert len(uploaded) == UPLOADS, uploaded
        for sessions, (answered, p50, p95) in report.items():
            print(f"\n{sessions} sessions: {answered} questions, time to both answers p50 {p50:.1f} s, p95 {p95:.1f} s")
        warm = memory[: max(1, len(memory) // 3)]
        print(f"server RSS: {min(memory):.0f}-{max(memory):.0f} MB during the {max(SESSIONS)}-session round")
        assert max(memory) <= MEMORY_GROWTH * max(warm), (warm, memory)
    index = DocumentIndex(load_settings(store_dir=store))
    try:
        names = {d.name: d for d in index.documents()}
        for n in range(UPLOADS):
            record = names[f"harbour_notice_{n}.txt"]
            chunks = index.chunks_of(record.doc_id)
            assert len(chunks) == record.chunks == 1 and f"Berth {n + 10}" in chunks[0].text, "each upload once"
        assert index.chunk_count() == sum(d.chunks for d in names.values()), "no chunk lost or left over"
    finally:
        index.close()
