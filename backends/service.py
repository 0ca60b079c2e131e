"""Assembles the parts (settings, base model, index, backends) once per store and process.

The CLI and the pages ask this module for a `Duet`; heavy objects are created on first use
and shared, so both backends answer from one copy of the base weights.
"""

from __future__ import annotations

import threading
from functools import cached_property

from backends.config import Settings
from backends.models import Progress, load_llm


def _quiet(_: str) -> None:
    pass


class Duet:
    """The backends of one store, created lazily."""

    def __init__(self, settings: Settings, progress: Progress = _quiet):
        self.settings = settings
        self.progress = progress

    @cached_property
    def llm(self):
        return load_llm(self.settings, self.progress)

    @cached_property
    def index(self):
        from backends.index import DocumentIndex

        return DocumentIndex(self.settings)

    @cached_property
    def rag(self):
        from backends.rag import RAGBackend

        return RAGBackend(self.index, self.llm, self.settings)

    def backend(self, name: str, adapter: str | None = None):
        """The backend called `name` ("rag" or "ft")."""
        if name == "rag":
            return self.rag
        raise ValueError(f"unknown backend {name!r}")


_instances: dict[tuple, Duet] = {}
_lock = threading.Lock()


def get_duet(settings: Settings, progress: Progress = _quiet) -> Duet:
    """One Duet per (store, models) in this process."""
    key = (str(settings.store_dir), settings.llm, settings.embedding_model, settings.device)
    with _lock:
        if key not in _instances:
            _instances[key] = Duet(settings, progress)
        return _instances[key]
