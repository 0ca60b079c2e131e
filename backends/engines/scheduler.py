"""The scheduler: one batched greedy decoder per loaded model, with streaming and per-stage timing.

Every inference forward pass of a model goes through its `Decoder`: a worker thread that
takes the requests waiting for it and runs them together, one forward pass a round for all
of them through its engine (`base.Engine`: torch, onnxruntime or llama.cpp; the decoder
knows none of them), each row with its own adapter. Each row feeds what it has to: a
free-writing answer (fine-tuned, RAG + fine-tuned) its last token; a copy-constrained (RAG)
answer, which needs the model only where it can go two ways, the tokens its constraint
forced since, in one chunk; a new request its prompt. A request that arrives while others
run joins them at the next round, so RAG's answer in Compare rides on the fine-tuned
answer's steps, and neither waits for the other to start (RAG first retrieves). Each answer is
finished as soon as it is done.

The loop is our own rather than `model.generate`: it computes logits for the last position
only, applies the few rules we use (repetition penalty, copy-constrained decoding, EOS)
per row, and streams text without a second thread per answer. Its greedy output equals
`model.generate`'s (tests/test_generation.py compares them).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Union

from backends.core.errors import BadInput
from backends.engines.adapters import AdapterHost
from backends.engines.base import AdapterVersion, Engine, Feed, LoadedLLM

# Greedy decoding: answers must be reproducible (tests compare them) and short.
REPETITION_PENALTY = 1.15
# Prompt prefixes (system messages) whose KV cache a decoder keeps for the next prompt that starts with one.
PREFIX_CACHE_SIZE = 8


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


def encode_chat(llm: LoadedLLM, messages: list[dict]) -> list[int]:
    """Token ids of a chat, formatted with the model's own chat template."""
    encoded = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


class CopyFromSpans:
    """Lets the model only copy contiguous token spans of given passages.

    The model chooses where to start and when to stop (EOS), but every token it emits
    continues a span of one passage; at a passage's end only EOS remains. A tiny model
    answers far better choosing a span than writing freely, and the answer is grounded
    by construction. Also a transformers LogitsProcessor (the reference path in tests).
    """

    def __init__(self, passages: list[list[int]], prompt_length: int, eos_id: int, starts: list[int] | None = None,
                 stop_after: frozenset[int] = frozenset(), whole: bool = False):
        self.passages = [p for p in passages if p]
        self.prompt_length, self.eos_id = prompt_length, eos_id
        # When given, the answer may only end after one of these tokens (a sentence end) or at a passage end.
        self.stop_after = stop_after
        self.whole = whole  # the answer may only end at a passage's end: it is one passage, whole
        # By default a span may only start where a passage starts: the model picks a whole statement.
        self.starts = sorted(set(starts) if starts is not None else {passage[0] for passage in self.passages})

    def allowed(self, generated: list[int]) -> list[int]:
        if not generated:
            return self.starts
        allowed, n = set(), len(generated)
        for passage in self.passages:
            for end in (n,) if self.whole else range(n, len(passage) + 1):  # whole: only ever a passage's beginning
                if passage[end - n:end] == generated:
                    allowed.add(passage[end] if end < len(passage) else self.eos_id)
        if not self.whole and (not self.stop_after or generated[-1] in self.stop_after):
            allowed.add(self.eos_id)
        return sorted(allowed)

    def __call__(self, input_ids, scores):
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            mask[row, self.allowed(input_ids[row, self.prompt_length:].tolist())] = 0
        return scores + mask


def system_prefix_length(llm: LoadedLLM, messages: list[dict], input_ids: list[int]) -> int:
    """How many leading prompt tokens are the system message (0 when the template does not keep them apart)."""
    if not messages or messages[0]["role"] != "system" or len(messages) < 2:
        return 0
    try:
        head = list(llm.tokenizer.apply_chat_template(messages[:1], return_dict=True)["input_ids"])
    except Exception:  # some templates refuse a conversation of a system message alone
        return 0
    return len(head) if input_ids[:len(head)] == head else 0


def copy_constraint(llm: LoadedLLM, copy_from: list[str], prompt_length: int) -> CopyFromSpans:
    """The answer is one of the passages, whole: it starts at a passage's start and ends at its end."""
    passages = [llm.tokenizer.encode(" " + p.strip(), add_special_tokens=False) for p in copy_from]
    return CopyFromSpans(passages, prompt_length, llm.tokenizer.eos_token_id, whole=True)


@dataclass(eq=False)
class Request:
    """One answer to generate: its prompt, its rules, and the queue its text goes to."""

    input_ids: list[int]
    max_new_tokens: int
    adapter: str | None = None
    prefix_length: int = 0  # leading tokens shared by many prompts (the system message): their KV may be reused
    constraint: CopyFromSpans | None = None
    repetition_penalty: float = 1.0
    stop_at_eos: bool = True  # False: always max_new_tokens tokens (the benchmark's fixed-length decode)
    output: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    printed: int = 0
    done: bool = False
    seen: set[int] = field(default_factory=set)  # prompt and answer tokens, for the repetition penalty

    def __post_init__(self):
        self.seen.update(self.input_ids)

    def choose(self, logits) -> int:
        """The greedy next token of this row (logits: a 1-D float tensor or numpy array, changed in place).

        torch's operations on a torch engine's logits (its OpenMP workers stay warm between steps), numpy's on the
        others' (a torch operation there would start a second OpenMP pool, see `Decoder.stop`).
        """
        import numpy as xp

        if not isinstance(logits, xp.ndarray):
            import torch as xp
        if self.repetition_penalty != 1.0:
            seen = xp.asarray(sorted(self.seen))
            picked = logits[seen]
            logits[seen] = xp.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
        if self.constraint is None:
            return int(xp.argmax(logits))
        allowed = self.constraint.allowed(self.generated)
        return allowed[int(xp.argmax(logits[allowed]))]

    def forced_token(self) -> int | None:
        """The next token when the copy constraint leaves only one (it continues a span): no logits can change it."""
        if self.constraint is None or self.done:
            return None
        allowed = self.constraint.allowed(self.generated)
        return allowed[0] if len(allowed) == 1 else None


def require_room(request: Request, engine: Engine) -> None:
    """BadInput where the prompt and its longest answer do not fit the engine's context."""
    if engine.context is not None and len(request.input_ids) + request.max_new_tokens > engine.context:
        raise BadInput(f"the prompt ({len(request.input_ids)} tokens) and its answer ({request.max_new_tokens}) do "
                       f"not fit {engine.context_label} context of {engine.context} tokens: lower top_k, chunk_size "
                       "or max_new_tokens")


@dataclass(frozen=True)
class Done:
    """The last message of a request's output queue: its whole answer and how many tokens it took."""

    text: str
    tokens_out: int


@dataclass(eq=False)
class Row:
    """A request being answered: its engine's cache of it, its adapter version, and the tokens the cache lacks yet."""

    request: Request
    cache: object
    feed: list[int]
    version: AdapterVersion
    error: Exception | None = None  # why it ended without an answer


class Decoder:
    """The batched greedy decoder of one loaded model (one worker thread, started on first use)."""

    def __init__(self, engine: Engine, tokenizer, eos: frozenset[int], host: AdapterHost, lock: threading.RLock):
        self.engine, self.tokenizer, self.eos, self.host, self.lock = engine, tokenizer, eos, host, lock
        self.pending: list[Request] = []
        self.wakeup = threading.Condition()
        self.worker: threading.Thread | None = None
        self.batches = 0  # how many batches ran (tests check that a late RAG row joined the running one)
        self.prefixes: dict[tuple, object] = {}  # (cache kind, adapter version, prompt prefix...) -> its cache
        self.stopping = False

    def stop(self) -> None:
        """End the worker, and with it its OpenMP pool; a later request starts a new one.

        At interpreter exit a thread still inside torch aborts the process. And the engines share
        one libgomp (llama.cpp's resolves to torch's): two long-lived pools in one process make it
        stop spinning between operations, which halves the speed of both.
        """
        with self.wakeup:
            self.stopping = True
            self.wakeup.notify()
        if self.worker is not None:
            self.worker.join(timeout=30)
        with self.wakeup:
            if self.worker is None or not self.worker.is_alive():
                self.worker, self.stopping = None, False

    def submit(self, request: Request) -> None:
        with self.wakeup:
            self.pending.append(request)
            if self.worker is None:
                self.worker = threading.Thread(target=self._serve, name="duet-decoder", daemon=True)
                self.worker.start()
                atexit.unregister(self.stop)  # once, however often the worker was restarted
                atexit.register(self.stop)
            self.wakeup.notify()

    def _next_batch(self) -> list[Request]:
        """Whatever is waiting, as soon as anything is: a request that comes later joins the running passes."""
        with self.wakeup:
            while not self.stopping and not self.pending:
                self.wakeup.wait()
            return self._joining()

    def _serve(self) -> None:
        while not self.stopping:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                with self.lock:
                    self.batches += 1
                    self._run(batch)
            except BaseException as error:  # reported to every waiting caller
                for request in batch:
                    request.output.put(error)

    def _run(self, batch: list[Request]) -> None:
        """Forward passes until every row is done: one pass a round, every row feeding what it has to.

        A free row feeds its last token; a copy-constrained row (RAG's) the tokens its
        constraint forced since its last choice, in one chunk; a row that just arrived its
        prompt. So Compare's two answers read the weights once for both: RAG's prompt and
        chunks ride on the fine-tuned answer's steps instead of costing passes of their own.
        Requests that arrive meanwhile join at the next round; each answer is finished as soon
        as it is done.
        """
        rows: list[Row] = []
        arrived = batch
        with self.engine.serving():
            while arrived or rows:
                rows += self._open_rows(arrived)
                if rows:
                    self._pass(rows)
                for row in rows:
                    if row.request.done:
                        self._finish(row)
                rows = [row for row in rows if not row.request.done]
                arrived = self._joining()
                batch.extend(arrived)  # so that a failure is reported to them too

    def _open_rows(self, requests: list[Request]) -> list[Row]:
        """Rows for the requests that can start; one that cannot (its adapter not loaded, say) fails alone."""
        rows = []
        for request in requests:
            try:
                rows.append(self._open(request))
            except Exception as error:
                request.done = True
                request.output.put(error)
        return rows

    def _open(self, request: Request) -> Row:
        """The request's row: a KV cache with room for its prompt and answer, its system message's KV in it if known.

        Every RAG prompt starts with the same ~80-token system message, every fine-tuned one
        with its own 18 tokens. An adapter changes their keys and values, so they are kept per
        adapter as the model holds it (an adapter replaced under its name has a new version).
        """
        version = self.host.version(request.adapter)
        require_room(request, self.engine)
        capacity = len(request.input_ids) + request.max_new_tokens
        n = request.prefix_length
        if not self.engine.keeps_prefixes or not 0 < n < len(request.input_ids):
            return Row(request, self.engine.cache(capacity, version), list(request.input_ids), version)
        key = (self.engine.cache_kind(), version, *request.input_ids[:n])
        if key not in self.prefixes:
            while len(self.prefixes) >= PREFIX_CACHE_SIZE:
                self.prefixes.pop(next(iter(self.prefixes)))
            prefix = self.engine.cache(n, version)
            self._forward([Row(request, prefix, request.input_ids[:n], version)])
            self.prefixes[key] = prefix
        return Row(request, self.engine.cache(capacity, version, self.prefixes[key]), request.input_ids[n:], version)

    def _pass(self, rows: list[Row]) -> None:
        """One forward pass of every row; each then chooses its next token and takes those its constraint forces."""
        for row, logits in zip(rows, self._forward(rows)):
            if isinstance(logits, Exception):  # an engine whose rows run apart: this row's failure alone
                row.error, row.request.done = logits, True
                continue
            row.feed = [self._advance(row.request, logits)]
            self._take_forced(row.request, row.feed)

    def _forward(self, rows: list[Row]):
        """The logits after each row's feed (one row of logits per row, or the exception of a row that failed).

        A pass that raises fails as a whole (the rows' caches left as they were).
        """
        return self.engine.forward([Feed(row.cache, row.feed, row.version, row.request.prefix_length) for row in rows])

    def _joining(self) -> list[Request]:
        """The requests that arrived since the last look: they join the running passes at the next round."""
        with self.wakeup:
            joining, self.pending = self.pending, []
        return joining

    def _take_forced(self, request: Request, chunk: list[int]) -> None:
        """Accept the tokens the row's copy constraint forces next, appending them to the `chunk` to feed.

        Inside a copied span only one token is allowed, so the model is consulted only where
        the answer can go two ways (where it starts, whether it stops at a sentence end); the
        forced tokens in between go through the next pass together, like a prompt (a RAG
        answer of ~35 tokens: 1-4 passes instead of 35).
        """
        while (forced := request.forced_token()) is not None:
            chunk.append(self._accept(request, forced))

    def _advance(self, request: Request, logits) -> int:
        """Choose the row's next token, stream its text; return the token to feed back."""
        return self._accept(request, request.choose(logits))

    def _accept(self, request: Request, token: int) -> int:
        """Append the row's next token, decide whether the row is done, stream its text."""
        request.generated.append(token)
        request.seen.add(token)
        ended = token in self.eos or (request.constraint is not None and token == request.constraint.eos_id)
        if (ended and request.stop_at_eos) or request.cancelled.is_set() or len(request.generated) >= request.max_new_tokens:
            request.done = True
        self._stream_text(request)
        return token

    def _stream_text(self, request: Request) -> None:
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        if text.endswith("\ufffd") and not request.done:  # a character split over tokens: wait for the rest
            return
        if len(text) > request.printed:
            request.output.put(text[request.printed:])
            request.printed = len(text)

    def _finish(self, row: Row) -> None:
        self.engine.release(row.cache)
        request = row.request
        if row.error is not None:
            request.output.put(row.error)
            return
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        request.output.put(Done(text.strip(), len(request.generated)))


def chat_request(llm: LoadedLLM, messages: list[dict], max_new_tokens: int, adapter: str | None = None,
                 copy_from: list[str] | None = None, stop_at_eos: bool = True) -> Request:
    """The request for an answer to the chat: copied from `copy_from` when given, else written freely."""
    input_ids = encode_chat(llm, messages)
    constraint = copy_constraint(llm, copy_from, len(input_ids)) if copy_from else None
    if constraint is not None:  # a copied sentence is never cut short: its length is the answer's
        max_new_tokens = max(max_new_tokens, max(len(p) for p in constraint.passages) + 1)
    return Request(
        input_ids=input_ids, max_new_tokens=max_new_tokens, adapter=adapter,
        prefix_length=system_prefix_length(llm, messages, input_ids),
        constraint=constraint,
        repetition_penalty=repetition_penalty_for(copy_from), stop_at_eos=stop_at_eos,
    )


def repetition_penalty_for(copy_from: list[str] | None) -> float:
    """A copied answer is the source's words, repeated or not; a written one is kept from looping."""
    return 1.0 if copy_from else REPETITION_PENALTY


def stream_chat(
    llm: LoadedLLM,
    messages: list[dict],
    max_new_tokens: int,
    adapter: str | None = None,
    copy_from: list[str] | None = None,
    stop_at_eos: bool = True,
) -> Iterator[Union[str, GenerationStats]]:
    """Yield the answer's text pieces as they are generated, then a GenerationStats.

    `adapter` names a LoRA adapter already loaded on the model (None: the base model).
    Abandoning the stream (a closed page, a cancelled request) stops this row's generation.
    """
    if getattr(llm.engine, "streams_remotely", False):  # a model server generates (engines/remote.py)
        for item in llm.engine.stream(messages, max_new_tokens, adapter, choices=copy_from,
                                      repetition_penalty=repetition_penalty_for(copy_from)):
            yield item if isinstance(item, str) else GenerationStats(*item)
        return
    started = time.perf_counter()
    request = chat_request(llm, messages, max_new_tokens, adapter, copy_from, stop_at_eos)
    input_ids = request.input_ids
    prompt_s = time.perf_counter() - started
    gen_start = time.perf_counter()
    llm.decoder.submit(request)
    first_token_s = 0.0
    try:
        while True:
            item = request.output.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Done):
                text, tokens_out = item.text, item.tokens_out
                break
            if not first_token_s:
                first_token_s = time.perf_counter() - gen_start
            yield item
    finally:
        request.cancelled.set()
    generate_s = time.perf_counter() - gen_start
    yield GenerationStats(text, len(input_ids), tokens_out, prompt_s, first_token_s or generate_s, generate_s)
