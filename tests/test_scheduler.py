"""The scheduler against a scripted engine: joining, fail-alone, cancel, streaming, copy constraints, prefixes.

The engine computes nothing: each row's next token is its last one plus one (plus two with
the "skip" adapter), and a stepped engine waits for the test before every pass, so every
assertion follows from the rounds the test let run, never from timing.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from backends.core.errors import BadInput, ModelUnavailable
from backends.engines.adapters import AdapterHost
from backends.engines.base import Engine, Feed
from backends.engines.scheduler import CopyFromSpans, Decoder, Done, Request
from backends.models.lora import ADAPTER_WEIGHTS

pytestmark = pytest.mark.fast

VOCAB, EOS = 64, 63
WAIT = 30  # seconds before a test gives up on an event that should come at once


class Tokenizer:
    """Token i is the letter chr(97 + i % 26); EOS is special (skipped when decoding)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids if not (skip_special_tokens and i == EOS))


class RowCache:
    def __init__(self, prefix=None):
        self.tokens = list(prefix.tokens) if prefix is not None else []


class ScriptedEngine(Engine):
    name = "scripted"
    context = 200

    def __init__(self, stepped: bool = False):
        self.stepped = stepped
        self.arrived: queue.Queue = queue.Queue()  # one item per pass waiting for the test's go
        self.go = threading.Semaphore(0)
        self.passes: list[list[int]] = []  # tokens fed per row, per pass
        self.fail_pass = False
        self.loaded: list[str] = []

    def cache(self, capacity, version, prefix=None):
        return RowCache(prefix)

    def forward(self, feeds: list[Feed]) -> list:
        if self.stepped:
            self.arrived.put([len(feed.tokens) for feed in feeds])
            assert self.go.acquire(timeout=WAIT)
        self.passes.append([len(feed.tokens) for feed in feeds])
        if self.fail_pass:
            raise RuntimeError("the engine broke in this pass")
        out = []
        for feed in feeds:
            if feed.adapter == "broken":  # fails alone, as the GGUF engines' rows do
                out.append(ModelUnavailable("this engine cannot apply adapter 'broken'"))
                continue
            feed.cache.tokens += feed.tokens
            logits = np.zeros(VOCAB, np.float32)
            logits[(feed.cache.tokens[-1] + (2 if feed.adapter == "skip" else 1)) % EOS] = 1.0
            out.append(logits)
        return out

    def load_adapter(self, name, folder, replacing):
        self.loaded.append(name)


def make_decoder(tmp_path, stepped=False, adapters=("skip", "broken")):
    engine = ScriptedEngine(stepped)
    lock = threading.RLock()
    host = AdapterHost(engine, lock)
    for name in adapters:
        (tmp_path / name).mkdir()
        (tmp_path / name / ADAPTER_WEIGHTS).write_bytes(b"weights")
        host.ensure(name, tmp_path / name)
    return Decoder(engine, Tokenizer(), frozenset({EOS}), host, lock), engine


def request(prompt=(1, 2, 3), tokens=5, **extra) -> Request:
    return Request(input_ids=list(prompt), max_new_tokens=tokens, **extra)


def outcome(req: Request):
    """The pieces streamed and the Done (or the exception) that ended the request."""
    pieces = []
    while True:
        item = req.output.get(timeout=WAIT)
        if isinstance(item, (Done, BaseException)):
            return pieces, item
        pieces.append(item)


def test_a_request_streams_its_text_and_ends_with_done(tmp_path):
    decoder, _ = make_decoder(tmp_path)
    req = request(prompt=[3], tokens=4)
    decoder.submit(req)
    pieces, done = outcome(req)
    assert done == Done("efgh", 4) and "".join(pieces) == "efgh"
    assert req.generated == [4, 5, 6, 7]


def test_the_adapter_of_each_row_is_applied_to_it_alone(tmp_path):
    decoder, _ = make_decoder(tmp_path)
    base, skip = request(prompt=[0], tokens=3), request(prompt=[0], tokens=3, adapter="skip")
    decoder.submit(base)
    decoder.submit(skip)
    assert outcome(base)[1].text == "bcd" and outcome(skip)[1].text == "ceg"


def test_a_late_request_joins_the_running_passes_and_ends_when_it_is_done(tmp_path):
    decoder, engine = make_decoder(tmp_path, stepped=True)
    long, short = request(prompt=[0], tokens=10), request(prompt=[20, 21], tokens=2)
    decoder.submit(long)
    assert engine.arrived.get(timeout=WAIT) == [1]  # the long row's prompt, waiting to run
    decoder.submit(short)  # arrives while a pass is in progress
    engine.go.release()
    assert engine.arrived.get(timeout=WAIT) == [1, 2]  # next round: both rows in one pass, the short one's prompt
    engine.go.release()
    assert engine.arrived.get(timeout=WAIT) == [1, 1]
    engine.go.release()
    assert engine.arrived.get(timeout=WAIT) == [1]  # the short row is finished; the long one goes on
    assert outcome(short)[1] == Done("wx", 2) and not long.done
    for _ in range(7):
        engine.go.release()
    assert outcome(long)[1] == Done("bcdefghijk", 10)
    assert decoder.batches == 1  # one batch: the late row joined it


def test_a_row_that_cannot_start_fails_alone(tmp_path):
    decoder, engine = make_decoder(tmp_path, stepped=True)
    good = request(prompt=[5], tokens=3)
    decoder.submit(good)
    engine.arrived.get(timeout=WAIT)
    missing, too_long = request(adapter="not-loaded"), request(prompt=[1] * 199)
    decoder.submit(missing)
    decoder.submit(too_long)
    for _ in range(3):
        engine.go.release()
    error = outcome(missing)[1]
    assert isinstance(error, ModelUnavailable) and "adapter 'not-loaded' is not loaded" in str(error)
    error = outcome(too_long)[1]
    assert isinstance(error, BadInput) and "do not fit the model's context of 200 tokens" in str(error)
    assert outcome(good)[1] == Done("ghi", 3)


def test_a_row_the_engine_fails_fails_alone_and_the_others_answer_as_alone(tmp_path):
    decoder, _ = make_decoder(tmp_path)
    alone = request(prompt=[7], tokens=4)
    decoder.submit(alone)
    expected = outcome(alone)[1]
    good, broken = request(prompt=[7], tokens=4), request(prompt=[7], tokens=4, adapter="broken")
    decoder.submit(good)
    decoder.submit(broken)
    assert outcome(good)[1] == expected
    error = outcome(broken)[1]
    assert isinstance(error, ModelUnavailable) and "cannot apply adapter 'broken'" in str(error)


def test_a_failed_pass_fails_its_rows_and_the_decoder_serves_the_next_request(tmp_path):
    decoder, engine = make_decoder(tmp_path)
    engine.fail_pass = True
    first, second = request(), request()
    decoder.submit(first)
    decoder.submit(second)
    assert all(isinstance(outcome(r)[1], RuntimeError) for r in (first, second))
    engine.fail_pass = False
    later = request(prompt=[0], tokens=2)
    decoder.submit(later)
    assert outcome(later)[1] == Done("bc", 2)


def test_a_cancelled_request_ends_at_its_next_token_and_frees_its_row(tmp_path):
    decoder, engine = make_decoder(tmp_path, stepped=True)
    req = request(prompt=[0], tokens=50)
    decoder.submit(req)
    engine.arrived.get(timeout=WAIT)  # the prompt's pass
    engine.go.release()
    assert req.output.get(timeout=WAIT) == "b"
    engine.arrived.get(timeout=WAIT)  # the second pass waits
    req.cancelled.set()
    engine.go.release()
    assert outcome(req) == (["c"], Done("bc", 2))  # that pass's token, and no more
    engine.stepped = False
    after = request(prompt=[0], tokens=2)
    decoder.submit(after)
    assert outcome(after)[1] == Done("bc", 2)


def test_forced_tokens_of_a_copied_span_go_in_one_chunk(tmp_path):
    decoder, engine = make_decoder(tmp_path)
    # Two statements that share their first two tokens: after them the model chooses, then the rest is forced.
    passages = [[10, 11, 12, 13], [10, 11, 20, 21]]
    constraint = CopyFromSpans(passages, prompt_length=1, eos_id=EOS, starts=[10], stop_after=frozenset({13, 21}))
    req = request(prompt=[9], tokens=20, constraint=constraint)
    decoder.submit(req)
    assert outcome(req)[1] == Done("klmn", 5)  # 10 11 12 13, then EOS (the only way on at a statement's end)
    assert engine.passes == [[1], [2]]  # the prompt; then 10 and 11 in one chunk; 13 and EOS needed no pass


def test_a_system_prefix_is_computed_once_per_adapter_version(tmp_path):
    decoder, engine = make_decoder(tmp_path)
    for _ in range(2):
        req = request(prompt=[1, 2, 3, 4, 5, 6], tokens=1, prefix_length=4)
        decoder.submit(req)
        assert outcome(req)[1].tokens_out == 1
    assert engine.passes == [[4], [2], [2]]  # the prefix once, then each prompt's own two tokens
    skip = request(prompt=[1, 2, 3, 4, 5, 6], tokens=1, prefix_length=4, adapter="skip")
    decoder.submit(skip)
    outcome(skip)
    assert engine.passes[-2:] == [[4], [2]]  # another adapter: its own keys and values of the prefix


def test_a_replaced_adapter_is_taken_again_and_an_unchanged_one_is_not(tmp_path):
    decoder, engine = make_decoder(tmp_path, adapters=("skip",))
    host = decoder.host
    before = host.version("skip")
    host.ensure("skip", tmp_path / "skip")
    assert engine.loaded == ["skip"]
    (tmp_path / "skip" / ADAPTER_WEIGHTS).write_bytes(b"other weights")  # retrained: another size
    host.ensure("skip", tmp_path / "skip")
    assert engine.loaded == ["skip", "skip"] and host.version("skip") != before


def test_a_character_split_over_tokens_is_streamed_whole(tmp_path):
    class Bytes(Tokenizer):
        def decode(self, ids, skip_special_tokens=True):
            return bytes(i for i in ids if i != EOS).decode("utf-8", errors="replace")  # token i is byte i

    class Spelling(ScriptedEngine):
        def forward(self, feeds):
            out = []
            for feed in feeds:
                feed.cache.tokens += feed.tokens
                out.append(np.eye(256, dtype=np.float32)[[0xC3, 0xA9, 0x21][len(feed.cache.tokens) - 1]])  # é!
            return out

    engine = Spelling()
    lock = threading.RLock()
    decoder = Decoder(engine, Bytes(), frozenset({EOS}), AdapterHost(engine, lock), lock)
    req = request(prompt=[1], tokens=3)
    decoder.submit(req)
    assert outcome(req) == (["é", "!"], Done("é!", 3))  # nothing streamed after the first byte of 'é'
