"""Assembles the parts (settings, base model, index, backends) once per store and process.

The CLI and the pages ask this module for a `Duet`; heavy objects are created once and shared, so both
backends answer from one copy of the base weights. Every entry point calls `Duet.warm` before work fans out
to threads: the heavy imports and the parts are made there, on one thread (see core/warm.py).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from backends.core.config import Settings
from backends.core.errors import BadInput, DuetError, LoadFailed
from backends.core.logs import log, log_path, start_logging
from backends.core.threads import IN_FLIGHT, built_once, run_concurrently
from backends.core.types import FailedAnswer, Progress, quiet
from backends.engines import load_llm

PARTS = ("index", "llm", "registry", "rag", "ft", "tracer")  # what `warm` builds by default: the store first, so a
# store in use by another process is reported before the model loads
PART_NAMES = {"llm": "base model", "index": "document index and embedding model", "registry": "adapter registry",
              "rag": "RAG backend", "ft": "fine-tuned backend", "tracer": "claim tracer"}


class JobSlots:
    """The store's long work that pages start (dataset build, training, evaluation, experiment): one job of each kind
    at a time, the same for every page and browser session of the process."""

    def __init__(self):
        self._jobs: dict = {}
        self._lock = threading.Lock()

    def __getitem__(self, kind: str):
        """The latest job of this kind (running or ended), or None."""
        return self._jobs.get(kind)

    def start(self, kind: str, job):
        """Start `job` in this kind's slot; BadInput while the slot's job still runs."""
        with self._lock:
            current = self._jobs.get(kind)
            if current is not None and current.running:
                raise BadInput(f"the {kind} started earlier is still running: wait for it or cancel it first")
            self._jobs[kind] = job
        return job.start()


class Duet:
    """The backends of one store, created lazily."""

    def __init__(self, settings: Settings, progress: Progress = quiet):
        self.settings = settings
        self.progress = progress
        self.jobs = JobSlots()

    @built_once
    def llm(self):
        return load_llm(self.settings, self.progress)

    @built_once
    def index(self):
        from backends.knowledge.index import DocumentIndex

        return DocumentIndex(self.settings)

    @built_once
    def registry(self):
        from backends.learning.adapters import AdapterRegistry

        return AdapterRegistry(self.settings)

    @built_once
    def rag(self):
        from backends.answering.rag import RAGBackend

        return RAGBackend(self.index, self.llm, self.settings)

    @built_once
    def ft(self):
        from backends.answering.finetuned import FineTunedBackend

        return FineTunedBackend(self.llm, self.registry, self.settings, self.index)

    @built_once
    def tracer(self):
        from backends.answering.claims import ClaimTracer, training_examples_of

        return ClaimTracer(self.index, lambda adapter: training_examples_of(self.registry.get(adapter, check_base=False).path))

    def warm(self, parts: tuple[str, ...] = PARTS) -> "Duet":
        """Import the heavy libraries and build `parts`, here on the calling thread, before work fans out to threads.

        A part that fails to build raises LoadFailed: one line naming the part, the traceback in the store's log.
        """
        from backends.core.warm import import_libraries

        try:
            import_libraries()
        except Exception as error:
            raise self._load_failed("libraries (transformers, chromadb...)", error) from error
        for part in parts:
            try:
                getattr(self, part)
            except DuetError:
                raise
            except Exception as error:
                raise self._load_failed(PART_NAMES[part], error) from error
        return self

    def _load_failed(self, what: str, error: Exception) -> LoadFailed:
        log.error("loading the %s failed", what, exc_info=error)
        return LoadFailed(f"loading the {what} failed: {type(error).__name__}: {error} "
                          f"(the traceback is in {log_path(self.settings.store_dir)})")

    def stream(self, backend: str, question: str, adapter: str | None = None, **retrieval):
        """A streaming answer from backend "rag", "ft" or "rag_ft" (`adapter` defaults to the active one);
        `retrieval` (k, leave_out) goes to RAG's retrieval."""
        if backend == "rag":
            return self.rag.stream(question, **retrieval)
        if backend == "ft":
            return self.ft.stream(question, adapter)
        if backend == "rag_ft":
            return self.rag.stream(question, combined_with=self.ft.use(adapter).name, **retrieval)
        raise BadInput(f"unknown backend {backend!r}: use rag, ft or rag_ft")

    def trace(self, question: str, answers: dict, asked_at: str = ""):
        """A Comparison: the answers with every claim traced, and the agreement of RAG and fine-tuned."""
        from backends.core.types import Comparison

        claims = {name: tuple(self.tracer.trace(answer)) for name, answer in answers.items()}
        agreement = self.tracer.agreement(answers["rag"], answers["ft"]) if {"rag", "ft"} <= answers.keys() else None
        return Comparison(question, dict(answers), claims, agreement, asked_at)

    def ask(self, backend: str, question: str, adapter: str | None = None, **retrieval):
        """The final Answer of one backend (no streaming)."""
        from backends.core.types import final_answer

        return final_answer(self.stream(backend, question, adapter, **retrieval))

    def ask_many(self, requests: list[tuple], on_done: Callable[[int, object], None] = lambda number, answer: None,
                 cancel: threading.Event | None = None) -> list:
        """Final Answers of (backend, question, adapter[, retrieval dict]) requests, in their order, `in_flight`
        at a time: the decoder runs them as rows of the same forward passes (evaluation's throughput).
        A request that raised gives a FailedAnswer with its message (and the traceback in the log); the others go on."""
        self.warm(parts_for(backend for backend, *_ in requests))
        calls = [lambda b=b, q=q, a=a, r=r: answer_or_failure(b, q, lambda: self.ask(b, q, a, **(r[0] if r else {})))
                 for b, q, a, *r in requests]
        return run_concurrently(calls, IN_FLIGHT, on_done, cancel)

    def stream_both(self, question: str, adapter: str | None = None, backends=("rag", "ft")):
        """Run the backends at the same time; yield (backend, text piece or final Answer) as they come.

        Their generations share the decoder's forward passes: an answer that arrives later (RAG
        retrieves first) joins the passes running by then.
        An error in one backend is yielded as (backend, exception) and does not stop the other.
        """
        self.warm(parts_for(backends))
        events: queue.Queue = queue.Queue()
        done, left = object(), threading.Event()

        def run(name: str) -> None:
            stream = None
            try:
                stream = self.stream(name, question, adapter)  # may raise at once (rag_ft's adapter, say)
                for item in stream:
                    if left.is_set():
                        break
                    events.put((name, item))
            except Exception as error:  # reported to the caller, per backend
                events.put((name, error))
            finally:
                if stream is not None:
                    stream.close()  # an abandoned generation leaves the decoder's passes (scheduler.stream_chat)
                events.put((name, done))

        workers = [threading.Thread(target=run, args=(name,), daemon=True, name=f"duet-{name}") for name in backends]
        for worker in workers:
            worker.start()
        remaining = len(workers)
        try:
            while remaining:
                name, item = events.get()
                if item is done:
                    remaining -= 1
                else:
                    yield name, item
        finally:  # the caller stopped reading (a page closed, Streamlit stopped its script): so do the backends
            left.set()


_PARTS_OF = {"rag": ("index", "llm", "rag"), "ft": ("index", "llm", "registry", "ft"),
             "rag_ft": ("index", "llm", "registry", "rag", "ft")}


def answer_or_failure(backend: str, question: str, answer: Callable):
    """`answer()`, or a FailedAnswer with its message when it raised (the traceback goes to the log): one failed row
    of a batch must not lose the others."""
    try:
        return answer()
    except Exception as error:
        log.error("answering %r with %s failed", question, backend, exc_info=error)
        return FailedAnswer(backend, question, f"{type(error).__name__}: {error}")


def parts_for(backends) -> tuple[str, ...]:
    """The parts that answering with these backends ("rag", "ft", "rag_ft") builds."""
    return tuple(dict.fromkeys(part for backend in backends for part in _PARTS_OF.get(backend, ())))

_instances: dict[tuple, Duet] = {}
_lock = threading.Lock()


def get_duet(settings: Settings, progress: Progress = quiet) -> Duet:
    """One Duet per (store, models) in this process."""
    key = (str(settings.store_dir), settings.llm, settings.embedding_model, settings.device, settings.engine,
           settings.onnx_accuracy, settings.llm_server, settings.llm_server_model)
    start_logging(settings.store_dir)
    with _lock:
        if key not in _instances:
            _instances[key] = Duet(settings, progress)
        return _instances[key]
