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
                       copy_from: list[str] | None = None, asked_at: float | None = None) -> AnswerStream:
    """Shared by every backend: stream the generation, then yield the finished Answer.

    Timings count from `asked_at`, the moment the question arrived (perf_counter; default now), as docs/latency.md
    defines them: embed, retrieve and prompt one after the other, first token and total from the question, generate
    from the first token to the end; so embed + retrieve + prompt + (wait and prefill) + generate = total.
    """
    handed_at = time.perf_counter()
    asked_at = handed_at if asked_at is None else asked_at
    first_at = None
    for item in stream_chat(llm, messages, settings.max_new_tokens, adapter, copy_from=copy_from):
        if isinstance(item, str):
            first_at = first_at or time.perf_counter()
            yield item
            continue
        stats = item
    done_at = time.perf_counter()
    total = done_at - asked_at
    first_token = (first_at or done_at) - asked_at
    # prompt: from the end of retrieval until the request reaches the decoder (ranking, prompt, tokens)
    prompt = min(handed_at - asked_at - pre.embed - pre.retrieve + stats.prompt_s, first_token - pre.embed - pre.retrieve)
    timings = Timings(embed=pre.embed, retrieve=pre.retrieve, prompt=max(prompt, 0.0), first_token=first_token,
                      generate=total - first_token, total=total)
    yield Answer(
        backend=backend, question=question, text=strip_links(stats.text), sources=tuple(sources), timings=timings,
        tokens_in=stats.tokens_in, tokens_out=stats.tokens_out, tokens_per_s=round(stats.tokens_per_s, 2),
        model=llm.name, adapter=adapter,
    )
