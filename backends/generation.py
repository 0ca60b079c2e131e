"""Streaming generation on the shared base model, with per-stage timing.

`stream_chat` runs `model.generate` in a worker thread that holds the model's lock for
the whole generation, so two backends answering at once never see each other's adapter
setting; the caller's thread only reads text pieces from a `TextIteratorStreamer`.
Abandoning the stream (a closed page, a cancelled request) stops the generation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Union

from backends.models import LoadedLLM

# Greedy decoding: answers must be reproducible (tests compare them) and short.
REPETITION_PENALTY = 1.15


@dataclass(frozen=True)
class GenerationStats:
    text: str
    tokens_in: int
    tokens_out: int
    prompt_s: float
    first_token_s: float
    generate_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.generate_s if self.generate_s > 0 else 0.0


def encode_chat(llm: LoadedLLM, messages: list[dict]):
    """Token ids of a chat, formatted with the model's own chat template."""
    encoded = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return {name: tensor.to(llm.device) for name, tensor in encoded.items()}


class _StopWhenSet:
    """A stopping criterion that ends generation once its event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class CopyFromSpans:
    """A logits processor that lets the model only copy contiguous token spans of given passages.

    The model chooses where to start and when to stop (EOS), but every token it emits
    continues a span of one passage; at a passage's end only EOS remains. A tiny model
    answers far better choosing a span than writing freely, and the answer is grounded
    by construction.
    """

    def __init__(self, passages: list[list[int]], prompt_length: int, eos_id: int, starts: list[int] | None = None,
                 stop_after: frozenset[int] = frozenset()):
        self.passages = [p for p in passages if p]
        self.prompt_length, self.eos_id = prompt_length, eos_id
        # When given, the answer may only end after one of these tokens (a sentence end) or at a passage end.
        self.stop_after = stop_after
        # By default a span may only start where a passage starts: the model picks a whole statement.
        self.starts = sorted(set(starts) if starts is not None else {passage[0] for passage in self.passages})

    def allowed(self, generated: list[int]) -> list[int]:
        if not generated:
            return self.starts
        allowed, n = set(), len(generated)
        for passage in self.passages:
            for end in range(n, len(passage) + 1):
                if passage[end - n:end] == generated:
                    allowed.add(passage[end] if end < len(passage) else self.eos_id)
        if not self.stop_after or generated[-1] in self.stop_after:
            allowed.add(self.eos_id)
        return sorted(allowed)

    def __call__(self, input_ids, scores):
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            mask[row, self.allowed(input_ids[row, self.prompt_length:].tolist())] = 0
        return scores + mask


def sentence_end_tokens(tokenizer, passages: list[list[int]]) -> frozenset[int]:
    """The passages' tokens that end a sentence (their text ends with . ! ? or ;)."""
    tokens = {token for passage in passages for token in passage}
    return frozenset(t for t in tokens if tokenizer.decode([t]).rstrip().endswith((".", "!", "?", ";")))


def stream_chat(
    llm: LoadedLLM,
    messages: list[dict],
    max_new_tokens: int,
    weights: Callable[[], ContextManager] = contextlib.nullcontext,
    copy_from: list[str] | None = None,
) -> Iterator[Union[str, GenerationStats]]:
    """Yield the answer's text pieces as they are generated, then a GenerationStats.

    `weights` returns a context manager that selects the weights to use (an adapter, or
    none); it is entered inside the model lock, around the generation.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

    started = time.perf_counter()
    inputs = encode_chat(llm, messages)
    prompt_s = time.perf_counter() - started
    streamer = TextIteratorStreamer(llm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    cancel = threading.Event()
    outcome: dict = {}
    processors = LogitsProcessorList()
    if copy_from:
        passages = [llm.tokenizer.encode(" " + p.strip(), add_special_tokens=False) for p in copy_from]
        processors.append(CopyFromSpans(passages, int(inputs["input_ids"].shape[1]), llm.tokenizer.eos_token_id,
                                        stop_after=sentence_end_tokens(llm.tokenizer, passages)))

    def work():
        try:
            with llm.lock, weights():
                outcome["ids"] = llm.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    repetition_penalty=1.0 if copy_from else REPETITION_PENALTY,
                    logits_processor=processors,
                    pad_token_id=llm.tokenizer.pad_token_id,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(cancel)]),
                )
        except BaseException as error:  # reported in the caller's thread
            outcome["error"] = error
            streamer.end()

    worker = threading.Thread(target=work, name="duet-generate", daemon=True)
    gen_start = time.perf_counter()
    worker.start()
    first_token_s = 0.0
    pieces: list[str] = []
    try:
        for piece in streamer:
            if not piece:
                continue
            if not pieces:
                first_token_s = time.perf_counter() - gen_start
            pieces.append(piece)
            yield piece
    finally:
        cancel.set()
        worker.join()
    generate_s = time.perf_counter() - gen_start
    if "error" in outcome:
        raise outcome["error"]
    tokens_in = int(inputs["input_ids"].shape[1])
    tokens_out = int(outcome["ids"].shape[1]) - tokens_in
    yield GenerationStats("".join(pieces).strip(), tokens_in, tokens_out, prompt_s, first_token_s or generate_s, generate_s)
