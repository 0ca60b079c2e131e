"""Concurrency gaps of issue 36, each produced for real and synchronised with events (no timing)."""

import dataclasses
import os
import subprocess
import threading

from backends.answering.claims import ClaimTracer
from backends.learning.adapters import AdapterRegistry


class _Paused:
    """The real embedding model, held inside one call until the test lets it go (the race's window, made certain)."""

    def __init__(self, real, hold: str):
        self.real, self.hold = real, hold
        self.inside, self.go = threading.Event(), threading.Event()

    def embed_documents(self, texts):
        if self.hold in texts:
            self.inside.set()
            self.go.wait(60)
        return self.real.embed_documents(texts)


def test_a_tracer_cache_replaced_by_another_thread_mid_read_loses_nothing(duet):
    tracer = ClaimTracer(duet.index)
    paused = _Paused(duet.index.embeddings, hold="the slow sentence")
    tracer.embeddings = paused
    tracer.embed(["a cached sentence"])
    tracer._vectors.update({f"filler {n}": [0.0] for n in range(20_001)})  # the next miss replaces the cache
    result = {}
    reader = threading.Thread(target=lambda: result.update(v=tracer.embed(["a cached sentence", "the slow sentence"])))
    reader.start()
    assert paused.inside.wait(60)
    tracer.embed(["another thread's sentence"])  # replaces the full cache while the reader is inside
    paused.go.set()
    reader.join(60)
    assert len(result["v"]) == 2 and all(len(v) == 384 for v in result["v"])


def test_a_registry_opened_by_another_process_leaves_a_live_save_alone(settings, tmp_path):
    """A store copy shares the adapters folder: opening its registry must not delete a save that is running."""
    root = tmp_path / "adapters"
    live = root / f".saving-mine-{os.getpid()}-abc123"
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = root / f".saving-theirs-{finished.pid}-def456"
    for folder in (live, dead):
        folder.mkdir(parents=True)
    AdapterRegistry(dataclasses.replace(settings, store_dir=tmp_path / "copy-of-store", adapters_dir=root))
    assert live.is_dir() and not dead.exists()


def test_two_dataset_builds_started_at_once_run_one_at_a_time():
    """Two browser sessions press "Build" together: one build runs, the other is told to wait (JobSlots)."""
    from backends.core.errors import BadInput
    from backends.core.jobs import BackgroundJob
    from backends.service import JobSlots

    release = threading.Event()

    class Held(BackgroundJob):
        def work(self, on_progress, cancel):
            release.wait(60)
            return "built"

    slots, barrier, outcomes = JobSlots(), threading.Barrier(2), []

    def press():
        barrier.wait(60)
        try:
            slots.start("dataset build", Held("dataset"))
            outcomes.append("started")
        except BadInput as refused:
            outcomes.append(str(refused))

    pressing = [threading.Thread(target=press) for _ in range(2)]
    for thread in pressing:
        thread.start()
    for thread in pressing:
        thread.join(60)
    release.set()
    slots["dataset build"].wait(60)
    assert outcomes.count("started") == 1 and any("still running" in o for o in outcomes), outcomes
    assert slots["dataset build"].result == "built"


def test_training_with_another_store_leaves_the_checkout_unchanged(tmp_path, duet):
    """A store chosen as `--store` / DUET_STORE is (load_settings(store_dir=...), as the CLI does) gets everything
    written, the adapter included; the checkout's demo adapter stays readable from it."""
    import json

    from backends.core.config import DATA_DIR, load_settings
    from backends.learning.adapters import AdapterRegistry
    from backends.learning.training import TrainConfig, train_adapter

    def listing():
        return sorted(str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*")
                      if p.relative_to(DATA_DIR).parts[0] != "store")

    before = listing()
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is code {n}?", "answer": f"Code {n} is K-{n}."}) + "\n"
                            for n in range(4)))
    saved = os.environ.pop("DUET_ADAPTERS_DIR", None)
    try:
        settings = load_settings(store_dir=tmp_path / "elsewhere")
    finally:
        if saved is not None:
            os.environ["DUET_ADAPTERS_DIR"] = saved
    train_adapter(settings, data, "elsewhere", TrainConfig(max_steps=1, batch_size=2), index_snapshot={})
    assert (tmp_path / "elsewhere" / "adapters" / "elsewhere" / "adapter_model.safetensors").is_file()
    assert listing() == before, "nothing was written into the checkout's data/ (its own store aside)"
    registry = AdapterRegistry(settings)
    assert {"demo", "elsewhere"} <= set(registry.names()) and registry.folder("demo") == DATA_DIR / "adapters" / "demo"


def test_a_page_that_stops_reading_its_answers_stops_their_generation(duet, tiny_adapter, monkeypatch):
    """A closed page (Streamlit stops its script; the answers' generator is closed): the decoder ends those rows at
    their next token instead of finishing answers nobody reads."""
    from backends.core.threads import TURNS
    from backends.engines.scheduler import Decoder

    question = "List every step of the travel expense process in detail."
    full = duet.ask("ft", question, "tiny").tokens_out
    assert full >= 12, "the answer must be long enough for an early end to show"
    ended, finished = [], threading.Event()
    finish = Decoder._finish
    monkeypatch.setattr(Decoder, "_finish", lambda self, row: (ended.append(row.request), finish(self, row),
                                                                finished.set()))
    answers = duet.stream_both(question, "tiny", ("ft",))
    assert isinstance(next(answers)[1], str)  # the first words are on the page
    with TURNS.torch_work():  # no decoding pass while the page goes
        answers.close()
    assert finished.wait(60), "the decoder ended the row"
    request = ended[-1]
    assert request.cancelled.is_set() and len(request.generated) < full


def test_a_backend_that_fails_before_it_starts_ends_its_column_and_the_others_answer(duet):
    """rag_ft with an adapter that does not exist raises before its first piece: its column gets the error, RAG its
    answer, and the stream ends (it waited forever for the failed column's end)."""
    from backends.core.errors import BadInput
    from backends.core.types import Answer

    got = {}
    reader = threading.Thread(target=lambda: got.update(duet.stream_both("What is the per diem?", "no-such-adapter",
                                                                         ("rag", "rag_ft"))), daemon=True)
    reader.start()
    reader.join(120)
    assert not reader.is_alive(), "the stream ended"
    assert isinstance(got["rag_ft"], BadInput) and "no-such-adapter" in str(got["rag_ft"])
    assert isinstance(got["rag"], Answer)
