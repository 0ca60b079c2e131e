"""A generation streamed as an answer: text pieces, then the finished `Answer` with its timings."""

from __future__ import annotations

import time

from backends.core.config import Settings
from backends.core.text import strip_links
from backends.core.types import Answer, AnswerStream, Timings
from backends.engines.base import LoadedLLM
from backends.engines.scheduler import stream_chat


def answer_from_stream(backend: str, question: str, llm: LoadedLLM, messages, settings: Settings,
                       *, sources=(), pre: Timings = Timings(), adapter: str | None = None,
                       copy_from: list[str] | None = None) -> AnswerStream:
    """Shared by every backend: stream the generation, then yield the finished Answer."""
    started = time.perf_counter()
    for item in stream_chat(llm, messages, settings.max_new_tokens, adapter, copy_from=copy_from):
        if isinstance(item, str):
            yield item
            continue
        stats = item
        total = pre.embed + pre.retrieve + pre.prompt + (time.perf_counter() - started)
        timings = Timings(
            embed=pre.embed, retrieve=pre.retrieve, prompt=pre.prompt + stats.prompt_s,
            first_token=stats.first_token_s, generate=stats.generate_s, total=total,
        )
        yield Answer(
            backend=backend, question=question, text=strip_links(stats.text), sources=tuple(sources), timings=timings,
            tokens_in=stats.tokens_in, tokens_out=stats.tokens_out, tokens_per_s=round(stats.tokens_per_s, 2),
            model=llm.name, adapter=adapter,
        )
