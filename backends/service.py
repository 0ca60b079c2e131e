"""Assembles the parts (settings, base model, index, backends) once per store and process.

The CLI and the pages ask this module for a `Duet`; heavy objects are created on first use
and shared, so both backends answer from one copy of the base weights.
"""

from __future__ import annotations

import queue
import threading
from functools import cached_property
from typing import Callable

from backends.core.config import Settings
from backends.core.errors import BadInput
from backends.core.threads import IN_FLIGHT, run_concurrently
from backends.core.types import Progress, quiet
from backends.engines import load_llm


class Duet:
    """The backends of one store, created lazily."""

    def __init__(self, settings: Settings, progress: Progress = quiet):
        self.settings = settings
        self.progress = progress

    @cached_property
    def llm(self):
        return load_llm(self.settings, self.progress)

    @cached_property
    def index(self):
        from backends.knowledge.index import DocumentIndex

        return DocumentIndex(self.settings)

    @cached_property
    def registry(self):
        from backends.learning.adapters import AdapterRegistry

        return AdapterRegistry(self.settings)

    @cached_property
    def rag(self):
        from backends.answering.rag import RAGBackend

        return RAGBackend(self.index, self.llm, self.settings)

    @cached_property
    def ft(self):
        from backends.answering.finetuned import FineTunedBackend

        return FineTunedBackend(self.llm, self.registry, self.settings, self.index)

    @cached_property
    def tracer(self):
        from backends.answering.claims import ClaimTracer, training_examples_of

        return ClaimTracer(self.index, lambda adapter: training_examples_of(self.registry.get(adapter, check_base=False).path))

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

    def ask_many(self, requests: list[tuple], on_done: Callable[[int, object], None] = lambda number, answer: None) -> list:
        """Final Answers of (backend, question, adapter[, retrieval dict]) requests, in their order, `in_flight`
        at a time: the decoder runs them as rows of the same forward passes (evaluation's throughput)."""
        calls = [lambda b=b, q=q, a=a, r=r: self.ask(b, q, a, **(r[0] if r else {})) for b, q, a, *r in requests]
        return run_concurrently(calls, IN_FLIGHT, on_done)

    def stream_both(self, question: str, adapter: str | None = None, backends=("rag", "ft")):
        """Run the backends at the same time; yield (backend, text piece or final Answer) as they come.

        Their generations share the decoder's forward passes: an answer that arrives later (RAG
        retrieves first) joins the passes running by then.
        An error in one backend is yielded as (backend, exception) and does not stop the other.
        """
        events: queue.Queue = queue.Queue()
        done = object()

        def run(name: str) -> None:
            try:
                for item in self.stream(name, question, adapter):
                    events.put((name, item))
            except Exception as error:  # reported to the caller, per backend
                events.put((name, error))
            finally:
                events.put((name, done))

        workers = [threading.Thread(target=run, args=(name,), daemon=True, name=f"duet-{name}") for name in backends]
        for worker in workers:
            worker.start()
        remaining = len(workers)
        while remaining:
            name, item = events.get()
            if item is done:
                remaining -= 1
            else:
                yield name, item


_instances: dict[tuple, Duet] = {}
_lock = threading.Lock()


def get_duet(settings: Settings, progress: Progress = quiet) -> Duet:
    """One Duet per (store, models) in this process."""
    key = (str(settings.store_dir), settings.llm, settings.embedding_model, settings.device, settings.engine,
           settings.onnx_accuracy, settings.llm_server, settings.llm_server_model)
    with _lock:
        if key not in _instances:
            _instances[key] = Duet(settings, progress)
        return _instances[key]
