"""The optional llama.cpp engine (`DUET_ENGINE=llama.cpp`): the same requests, decoded by llama-cpp-python.

llama.cpp runs the configured .gguf file itself, with transformers' tokenizer and token ids; prompts and decoding
rules stay Duet's (`scheduler.Request`), and adapters trained with peft are exported as GGUF adapters
(`models.lora.export_gguf`). llama.cpp applies an adapter to a whole context, so each adapter version gets contexts
of its own, kept for the next request with the last prompt's tokens (a new prompt re-uses its system message);
each row takes a forward pass of its own per round. Optional because installing it compiles llama.cpp
(`make engine`). One engine per process: llama.cpp's OpenMP resolves to torch's libgomp (`scheduler.Decoder.stop`).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from backends.core.errors import ModelUnavailable
from backends.engines.base import AdapterVersion, Engine, Feed, require_gguf
from backends.models.lora import export_gguf

# Tokens a context holds (prompt and answer). llama.cpp allocates and clears its KV cache up front
# (~94 MB for the bundled model at this size), so not the model's full 8192.
CONTEXT_TOKENS = 4096
# Idle contexts kept per adapter: enough for Compare and a second user at once.
IDLE_CONTEXTS = 2


def require_engine(gguf: str | None) -> None:
    """Refuse the engine where it cannot run, saying what to do."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelUnavailable("engine 'llama.cpp' needs llama-cpp-python: run `make engine` (it compiles llama.cpp, "
                               "a few minutes), or use DUET_ENGINE=transformers")
    require_gguf("llama.cpp", gguf)


# The probe's child: load the model and decode a few tokens, as the first answer would. A llama.cpp built for other
# vector units dies here with a signal, in the child, instead of taking the app down.
PROBE_CODE = ("import sys; from llama_cpp import Llama; "
              "llama = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False); "
              "llama.eval(llama.tokenize(b'Hello, world')); print('ok')")
PROBE_TIMEOUT_S = 120


def probe_failure(gguf: str, code: str | None = None) -> str | None:
    """None when a child process runs llama.cpp's first forward pass on `gguf`, else what went wrong."""
    import signal
    import subprocess
    import sys

    try:
        child = subprocess.run([sys.executable, "-c", code or PROBE_CODE, gguf], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"its first forward pass took more than {PROBE_TIMEOUT_S} s"
    if child.returncode == 0:
        return None
    if child.returncode < 0:
        return f"its first forward pass crashed the process ({signal.Signals(-child.returncode).name})"
    return f"its first forward pass failed: {(child.stderr.strip().splitlines() or ['no message'])[-1][:300]}"


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens the two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class EngineContext:
    """One llama.cpp context (the model with one adapter or none) and the tokens its KV cache holds."""

    def __init__(self, gguf: str, lora: str | None, threads: int, version: AdapterVersion):
        from llama_cpp import Llama

        self.version = version  # which adapter, as its weights file was, the context applies
        self.llama = Llama(model_path=gguf, lora_path=lora, n_ctx=CONTEXT_TOKENS, n_threads=threads,
                           n_threads_batch=threads, verbose=False)
        self.tokens: list[int] = []

    def prompt(self, input_ids: list[int], reusable: int):
        """A new prompt: the logits after it. Its first `reusable` tokens are taken from the cache where it holds them."""
        keep = min(shared_prefix(self.tokens, input_ids), reusable, len(input_ids) - 1)  # one token at least gives logits
        return self._eval(input_ids[keep:], keep)

    def feed(self, tokens: list[int]):
        """More tokens after those the cache holds: the logits after the last."""
        return self._eval(tokens, len(self.tokens))

    def _eval(self, tokens: list[int], keep: int):
        import llama_cpp
        import numpy as np

        self.tokens = []  # unknown if eval fails half-way: the next prompt then starts afresh
        self.llama.n_tokens = keep  # eval drops the cache beyond n_tokens before it appends
        self.llama.eval(tokens)
        self.tokens = list(self.llama.input_ids[: self.llama.n_tokens])
        logits = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)  # the last token's, the only one computed
        return np.ctypeslib.as_array(logits, shape=(self.llama.n_vocab(),)).copy()

    def close(self) -> None:
        self.llama.close()


class LlamaCppEngine(Engine):
    """A model run by llama.cpp: each row a forward pass of its own per round, in a context of its adapter."""

    name = "llama.cpp"
    context = CONTEXT_TOKENS
    context_label = "llama.cpp's"
    keeps_prefixes = False  # a context keeps its last prompt's tokens itself (`EngineContext.prompt`)

    def __init__(self, gguf: str, config):
        import torch

        self.gguf, self.config = gguf, config
        self.threads = torch.get_num_threads()  # the thread count torch decodes with, for a fair comparison
        self.idle: dict[AdapterVersion, list[EngineContext]] = {}
        self.exported = tempfile.TemporaryDirectory(prefix="duet-llamacpp-")  # adapters as GGUF, for this process

    def cache(self, capacity: int, version: AdapterVersion, prefix=None) -> "Slot":
        """A context of the adapter (kept for the next request), to be fed the whole prompt."""
        return Slot(self._take(version))

    def forward(self, feeds: list[Feed]) -> list:
        """The rows one after the other, each in its own context; a row that fails fails alone."""
        return [self._logits_of(feed) for feed in feeds]

    @staticmethod
    def _logits_of(feed: Feed):
        """The row's prompt (re-using what its context holds) or its feed: the logits after it, or the exception."""
        slot = feed.cache
        try:
            if slot.prompted:
                return slot.context.feed(feed.tokens)
            slot.prompted = True
            return slot.context.prompt(feed.tokens, feed.reusable)
        except Exception as error:  # the context forgot its tokens (`EngineContext._eval`): it can serve again
            return error

    def release(self, cache: "Slot") -> None:
        idle = self.idle.setdefault(cache.context.version, [])
        if len(idle) < IDLE_CONTEXTS:
            idle.append(cache.context)
        else:
            cache.context.close()

    def _take(self, version: AdapterVersion) -> EngineContext:
        if self.idle.get(version):
            return self.idle[version].pop()
        for old in [v for v in self.idle if v.name == version.name and v != version]:  # a retrained adapter's
            for context in self.idle.pop(old):
                context.close()
        return EngineContext(self.gguf, self._adapter_gguf(version), self.threads, version)

    def _adapter_gguf(self, version: AdapterVersion) -> str | None:
        """The adapter as a GGUF file llama.cpp can apply (exported once per version of its weights)."""
        if version.name is None:
            return None
        target = Path(self.exported.name) / f"{version.name}-{version.mtime_ns}-{version.size}.gguf"
        if not target.is_file():
            export_gguf(Path(version.folder), self.config.to_dict(), target)
        return str(target)


class Slot:
    """A row's context, and whether its prompt went in yet (the first feed is a prompt, the rest follow it)."""

    def __init__(self, context: EngineContext):
        self.context, self.prompted = context, False
