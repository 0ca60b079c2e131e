"""The fine-tuned backend: the shared base model plus a LoRA adapter, and no retrieval.

It answers with the adapter the registry names (the active one by default), after the
model's adapter host took its current weights, and reports which documents changed since
that adapter was trained (staleness).
"""

from __future__ import annotations

import time

from backends.answering.prompts import check_question
from backends.answering.streaming import answer_from_stream
from backends.core.config import Settings
from backends.core.types import AnswerStream
from backends.learning.adapters import AdapterInfo, AdapterRegistry, Staleness, staleness
from backends.learning.examples import chat_messages


class FineTunedBackend:
    """Answers from base model + adapter, without retrieval."""

    name = "ft"

    def __init__(self, llm, registry: AdapterRegistry, settings: Settings, index=None):
        self.llm, self.registry, self.settings, self.index = llm, registry, settings, index

    def adapter_info(self, name: str | None = None) -> AdapterInfo:
        return self.registry.get(name or self.registry.active_name())

    def use(self, name: str | None = None) -> AdapterInfo:
        """The adapter (the active one by default), verified and on the model as its files are now."""
        info = self.adapter_info(name)
        self.llm.host.ensure(info.name, info.path)
        return info

    def stream(self, question: str, adapter: str | None = None) -> AnswerStream:
        asked_at = time.perf_counter()  # loading the adapter is part of this answer's prompt stage
        question = check_question(question, self.settings)
        info = self.use(adapter)
        yield from answer_from_stream(self.name, question, self.llm, chat_messages(question), self.settings,
                                      adapter=info.name, asked_at=asked_at)

    def staleness(self, adapter: str | None = None) -> Staleness:
        info = self.adapter_info(adapter)
        now = self.index.snapshot() if self.index is not None else {}
        return staleness(info.metadata.get("index_snapshot", {}), now)
