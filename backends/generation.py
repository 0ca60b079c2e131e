"""Generation: one batched greedy decoder per loaded model, with streaming and per-stage timing.

Every inference forward pass of a model goes through its `Decoder`: a worker thread that
takes the requests waiting for it and runs them as one batch, in turns. Free-writing rows
(fine-tuned, RAG + fine-tuned) share one forward pass per token, the weights read once for
all, and peft applies the adapter per row (`AdapterHost.route`); Compare's columns join a
`BatchGroup` so that they start together. A copy-constrained (RAG) answer needs the model
only where it can go two ways: the tokens its constraint forces are fed in chunks
(`Decoder._copy_turns`), so it takes a few forward passes of its own between the others'
steps instead of one per token, and it joins a batch already running rather than being
waited for. Each answer is finished as soon as it is done.

The loop is our own rather than `model.generate`: it computes logits for the last position
only, applies the few rules we use (repetition penalty, copy-constrained decoding, EOS)
per row, and streams text without a second thread per answer. Its greedy output equals
`model.generate`'s (tests/test_generation.py compares them).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Union

from backends.models import LoadedLLM

# Greedy decoding: answers must be reproducible (tests compare them) and short.
REPETITION_PENALTY = 1.15
# How long a batch waits for the other members of its group (a slow retrieval, a model load).
GATHER_TIMEOUT_S = 5.0
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
    passages = [llm.tokenizer.encode(" " + p.strip(), add_special_tokens=False) for p in copy_from]
    return CopyFromSpans(passages, prompt_length, llm.tokenizer.eos_token_id,
                         stop_after=sentence_end_tokens(llm.tokenizer, passages))


class BatchGroup:
    """Requests meant to run together (Compare's columns): the decoder waits for the members that hold it back.

    Each member thread enters `member()`. A member that ends without generating (an error,
    a bad question) leaves the group, so the others never wait for it. A member entered with
    `joins_running=True` (RAG's copy-constrained answer, which shares no forward pass with the
    others) is not waited for: its request joins the batch running by then (a copied row takes
    passes of its own; should it write freely after all, with no evidence to copy, its own steps).
    """

    _current: contextvars.ContextVar["_Seat | None"] = contextvars.ContextVar("duet_batch_seat", default=None)

    def __init__(self, size: int):
        self.waiting_for = size  # members neither arrived nor left that the batch waits for
        self.created = time.monotonic()
        self.lock = threading.Lock()

    @property
    def complete(self) -> bool:
        return self.waiting_for <= 0 or time.monotonic() - self.created > GATHER_TIMEOUT_S

    @contextlib.contextmanager
    def member(self, joins_running: bool = False):
        seat = _Seat(self, joins_running)
        if joins_running:
            seat.take()
        token = self._current.set(seat)
        try:
            yield
        finally:
            self._current.reset(token)
            seat.take()  # a member that never reached the decoder is not waited for either

    @classmethod
    def arrive(cls) -> "_Seat | None":
        """The seat of the calling member, now arrived at the decoder (None outside a group)."""
        seat = cls._current.get()
        if seat is not None:
            seat.take()
        return seat


@dataclass(eq=False)
class _Seat:
    """One member of a BatchGroup: counted in `waiting_for` until it arrives, leaves or is told to join running."""

    group: BatchGroup
    joins_running: bool = False
    counted: bool = True

    def take(self) -> None:
        with self.group.lock:
            if self.counted:
                self.counted = False
                self.group.waiting_for -= 1


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
    group: BatchGroup | None = None
    joins_running: bool = False  # may join a running batch (its group does not wait for it)
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

        The same operations on either: torch's for the transformers engine (its OpenMP workers stay
        warm between steps: ~5% faster decoding than numpy here), numpy's for llama.cpp's logits
        (a torch operation in that decoder's thread would start a second OpenMP pool, see `stop`).
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


class Turns(NamedTuple):
    """Rows that take their forward passes together (`Decoder._run`): one pass per `next(steps)`."""

    steps: Iterator[bool]
    rows: list[Request]


class Decoder:
    """The batched greedy decoder of one loaded model (one worker thread, started on first use)."""

    def __init__(self, llm: LoadedLLM):
        self.llm = llm
        self.pending: list[Request] = []
        self.wakeup = threading.Condition()
        self.worker: threading.Thread | None = None
        self.eos = llm.eos
        self.batches = 0  # how many batches ran (tests check that a late RAG row joined the running one)
        self.prefixes: dict[tuple[int, ...], object] = {}  # prompt prefix -> its KV cache (base model)
        self.stopping = False

    @classmethod
    def of(cls, llm: LoadedLLM) -> "Decoder":
        """The decoder of this loaded model: one per model, since it owns every forward pass."""
        return llm.companion(cls)

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
            seat = BatchGroup.arrive()
            if seat is not None:
                request.group, request.joins_running = seat.group, seat.joins_running
            self.pending.append(request)
            if self.worker is None:
                self.worker = threading.Thread(target=self._serve, name="duet-decoder", daemon=True)
                self.worker.start()
                atexit.unregister(self.stop)  # once, however often the worker was restarted
                atexit.register(self.stop)
            self.wakeup.notify()

    def _next_batch(self) -> list[Request]:
        with self.wakeup:
            while not self.stopping and (not self.pending or
                                         not all(r.group is None or r.group.complete for r in self.pending)):
                # Poll while a group gathers: its members arrive from other threads.
                self.wakeup.wait(timeout=None if not self.pending else 0.005)
            batch, self.pending = self.pending, []
            return batch

    def _serve(self) -> None:
        while not self.stopping:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                with self.llm.lock:
                    self.batches += 1
                    self._run(batch)
            except BaseException as error:  # reported to every waiting caller
                for request in batch:
                    request.output.put(error)

    def _run(self, batch: list[Request]) -> None:
        """Turns until every row is done: one forward pass for all free rows, then one per copied row.

        A copy-constrained row (RAG's) is not a row of the free rows' steps: one step per
        token would cost it a step for each of its forced tokens. It takes passes of its own
        instead (`_copy_turns`), so beside a fine-tuned answer it costs what it costs alone,
        and it may join a batch already running (`BatchGroup.member(joins_running=True)`): the
        fine-tuned answer need not wait for RAG's retrieval. A row's answer is finished as soon
        as it is done, not when the batch is.
        """
        import torch

        finished: set[Request] = set()
        turns = self._turns_of(batch)
        try:
            with torch.inference_mode():
                while turns:
                    turns = [turn for turn in turns if self._take_turn(turn, finished)]
                    joining = self._joining()
                    batch.extend(joining)  # so that a failure is reported to them too
                    turns += self._turns_of(joining)
                    for request in batch:
                        if request.done and request not in finished:
                            finished.add(request)
                            self._finish(request)
        finally:
            for turn in turns:  # a failed batch: the other turns leave their adapter routes now
                turn.steps.close()
        for request in batch:
            if request not in finished:
                self._finish(request)

    def _turns_of(self, requests: list[Request]) -> list["Turns"]:
        free = [r for r in requests if r.constraint is None]
        copied = [r for r in requests if r.constraint is not None]
        return ([Turns(self._free_turns(free), free)] if free else []) + [Turns(self._copy_turns(r), [r]) for r in copied]

    @staticmethod
    def _take_turn(turn: "Turns", finished: set[Request]) -> bool:
        """One turn of these rows; False once they are done, or failed: then the error is theirs alone."""
        try:
            return next(turn.steps, None) is not None
        except Exception as error:  # e.g. a copied row's adapter not loaded: the rows beside it go on
            for request in turn.rows:
                request.output.put(error)
                finished.add(request)
            return False

    def _joining(self) -> list[Request]:
        """Requests that arrived while a batch runs and need not wait for the next: they join its turns.

        Copy-constrained rows (they share no pass with the others), and any row of a group member
        that the group did not wait for.
        """
        with self.wakeup:
            joining = [r for r in self.pending if r.constraint is not None or r.joins_running]
            self.pending = [r for r in self.pending if r not in joining]
        return joining

    def _free_turns(self, batch: list[Request]) -> Iterator[bool]:
        """The free rows' prompts, then one step for all of them per turn (a generator: a turn per `next`)."""
        from backends.finetuned import AdapterHost

        host = AdapterHost.of(self.llm)
        with contextlib.ExitStack() as routing:
            logits, step = self._prefill(batch)
            rows = list(batch)
            routing.enter_context(host.route([r.adapter for r in rows]))
            for _ in range(max(r.max_new_tokens for r in batch)):
                tokens = [self._advance(request, logits[row]) for row, request in enumerate(rows)]
                if all(r.done for r in rows):
                    return
                if any(r.done for r in rows) and hasattr(step, "keep"):  # finished rows stop costing work
                    kept = [row for row, request in enumerate(rows) if not request.done]
                    step.keep(kept)
                    rows, tokens = [rows[row] for row in kept], [tokens[row] for row in kept]
                    routing.close()  # the remaining rows' adapters, routed anew
                    routing.enter_context(host.route([r.adapter for r in rows]))
                logits = step(tokens)
                yield True

    def _prefill(self, batch: list[Request]):
        """Run the prompts and return their last logits and a one-token step function."""
        import torch

        from backends.fastdecode import LlamaStepper
        from backends.finetuned import AdapterHost

        if not LlamaStepper.supports(self.llm.model):
            return self._prefill_padded(batch)
        caches, logits = [], []
        for request in batch:
            with AdapterHost.of(self.llm).route([request.adapter]):
                cache, row_logits = self._prompt_of(request)
            caches.append(cache)
            logits.append(row_logits)
        return torch.cat(logits), LlamaStepper(self.llm.model, caches, max(r.max_new_tokens for r in batch))

    def _prompt(self, input_ids: list[int], cache=None):
        """Tokens of one row through the model (a prompt, or more tokens on its `cache`): the cache and last logits."""
        import torch
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache(config=self.llm.config)
        out = self.llm.model(input_ids=torch.tensor([input_ids], device=self.llm.device), past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1, :].float().cpu()

    def _prompt_of(self, request: Request):
        """The request's prompt through the model, its system message's KV taken from earlier prompts when it can.

        Base model only: an adapter changes the keys and values, and can be retrained under
        the same name. Every RAG prompt starts with the same ~80-token system message.
        """
        n = request.prefix_length
        if request.adapter is not None or not 0 < n < len(request.input_ids):
            return self._prompt(request.input_ids)
        key = tuple(request.input_ids[:n])
        if key not in self.prefixes:
            while len(self.prefixes) >= PREFIX_CACHE_SIZE:
                self.prefixes.pop(next(iter(self.prefixes)))
            self.prefixes[key], _ = self._prompt(list(key))
        from backends.fastdecode import dynamic_cache

        prefix = dynamic_cache(self.llm.config, [(layer.keys, layer.values) for layer in self.prefixes[key].layers])
        return self._prompt(request.input_ids[n:], prefix)

    def _copy_turns(self, request: Request) -> Iterator[bool]:
        """A copy-constrained row, one forward pass per turn: its prompt, then the tokens it accepted since.

        Inside a copied span only one token is allowed, so the model is consulted only where
        the answer can go two ways (where it starts, whether it stops at a sentence end); the
        tokens the constraint forces in between join the next forward pass as one chunk, like a
        prompt. Same tokens as one step per token, far fewer passes (a RAG answer of ~35
        tokens: 1-4 instead of 35).
        """
        from backends.finetuned import AdapterHost

        cache, chunk = None, []
        while not request.done:
            with AdapterHost.of(self.llm).route([request.adapter]):
                cache, logits = self._prompt_of(request) if cache is None else self._prompt(chunk, cache)
            chunk = [self._advance(request, logits[0])]
            self._take_forced(request, chunk)
            yield True

    def _take_forced(self, request: Request, chunk: list[int]) -> None:
        """Accept the tokens the row's copy constraint forces next, appending them to the `chunk` to feed."""
        while (forced := request.forced_token()) is not None:
            chunk.append(self._accept(request, forced))

    def _prefill_padded(self, batch: list[Request]):
        """Any architecture: the prompts left-padded into one forward pass, then model(...) per token."""
        import torch
        from transformers import DynamicCache

        from backends.finetuned import AdapterHost

        pad = self.llm.tokenizer.pad_token_id
        width = max(len(r.input_ids) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            ids[row, width - len(request.input_ids):] = torch.tensor(request.input_ids)
            mask[row, width - len(request.input_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.llm.config)
        device = self.llm.device
        # A single row has no padding: no mask lets attention take its faster causal path.
        state = {"mask": mask.to(device) if len(batch) > 1 else None, "positions": positions[:, -1:].to(device)}

        def forward(input_ids, position_ids):
            out = self.llm.model(input_ids=input_ids.to(device), attention_mask=state["mask"], position_ids=position_ids,
                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1, :].float().cpu()

        def step(tokens: list[int]):
            if state["mask"] is not None:
                state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((len(batch), 1))], dim=1)
            state["positions"] = state["positions"] + 1
            return forward(torch.tensor(tokens, dtype=torch.long)[:, None], state["positions"])

        with AdapterHost.of(self.llm).route([r.adapter for r in batch]):
            return forward(ids, positions.to(device)), step  # the steps run inside _run's route

    def _advance(self, request: Request, logits) -> int:
        """Choose the row's next token, stream its text; return the token to feed back."""
        if request.done:
            return self.llm.tokenizer.pad_token_id
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
        text = self.llm.tokenizer.decode(request.generated, skip_special_tokens=True)
        if text.endswith("\ufffd") and not request.done:  # a character split over tokens: wait for the rest
            return
        if len(text) > request.printed:
            request.output.put(text[request.printed:])
            request.printed = len(text)

    def _finish(self, request: Request) -> None:
        text = self.llm.tokenizer.decode(request.generated, skip_special_tokens=True)
        request.output.put(("done", text.strip(), len(request.generated)))


def decoder_of(llm: LoadedLLM) -> Decoder:
    """The decoder of the model's engine: torch (`Decoder`) or llama.cpp (`backends.llamacpp`)."""
    if llm.engine == "llama.cpp":
        from backends.llamacpp import LlamaCppDecoder

        return LlamaCppDecoder.of(llm)
    return Decoder.of(llm)


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
    started = time.perf_counter()
    input_ids = encode_chat(llm, messages)
    request = Request(
        input_ids=input_ids, max_new_tokens=max_new_tokens, adapter=adapter,
        prefix_length=system_prefix_length(llm, messages, input_ids),
        constraint=copy_constraint(llm, copy_from, len(input_ids)) if copy_from else None,
        repetition_penalty=1.0 if copy_from else REPETITION_PENALTY, stop_at_eos=stop_at_eos,
    )
    prompt_s = time.perf_counter() - started
    gen_start = time.perf_counter()
    decoder_of(llm).submit(request)
    first_token_s = 0.0
    try:
        while True:
            item = request.output.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, tuple):
                _, text, tokens_out = item
                break
            if not first_token_s:
                first_token_s = time.perf_counter() - gen_start
            yield item
    finally:
        request.cancelled.set()
    generate_s = time.perf_counter() - gen_start
    yield GenerationStats(text, len(input_ids), tokens_out, prompt_s, first_token_s or generate_s, generate_s)
