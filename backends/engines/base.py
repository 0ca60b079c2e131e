"""What every engine offers the scheduler (`Engine`), what a row feeds it (`Feed`), and the loaded model (`LoadedLLM`).

An engine runs forward passes of one model: torch (`torch_engine`), onnxruntime (`onnx/`) or
llama.cpp (`llamacpp`). The scheduler (`scheduler.Decoder`) holds one and knows no other
part of it; only `engines/__init__` chooses which.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from backends.core.errors import ModelUnavailable


class AdapterVersion(NamedTuple):
    """An adapter as its weights file is now (all None/0: the bare base model).

    Replacing an adapter under its name (Fine-tune's "Replace", `train --overwrite`) keeps its
    folder: what was computed with its old weights (peft's layers, a system message's keys and
    values, a llama.cpp context) is told apart by the file's modification time and size.
    """

    name: str | None
    folder: str = ""
    mtime_ns: int = 0
    size: int = 0


BASE_MODEL = AdapterVersion(None)


class Feed(NamedTuple):
    """What one row feeds in a pass: tokens after those its cache holds, and the adapter version they go through."""

    cache: object  # the engine's own (`Engine.cache`)
    tokens: list[int]
    version: AdapterVersion
    reusable: int = 0  # leading prompt tokens (the system message) an engine may take from what it computed before

    @property
    def adapter(self) -> str | None:
        return self.version.name


class Engine:
    """One model's forward passes, for the scheduler. Subclasses override what they do differently."""

    name = "engine"
    # Tokens a row may hold (prompt and answer) and whose limit that is, for the message; None: not checked.
    context: int | None = None
    context_label = "the model's"
    # The scheduler computes each system message once per adapter version and starts rows from its cache.
    keeps_prefixes = True

    def cache(self, capacity: int, version: AdapterVersion, prefix=None):
        """A new row's cache with room for `capacity` tokens, holding `prefix`'s tokens first when given."""
        raise NotImplementedError

    def serving(self) -> contextlib.AbstractContextManager:
        """Held around a batch's rounds, in the decoder's thread (torch: inference mode, so logits can change in place)."""
        return contextlib.nullcontext()

    def cache_kind(self) -> str:
        """What kind of cache `cache` makes now: a system message's cache is kept per kind."""
        return type(self).__name__

    def forward(self, feeds: list[Feed]) -> list:
        """The logits after each feed's last token, or the exception of a row that failed alone.

        Raising fails every row of the pass; a pass that raises leaves the caches as they were.
        """
        raise NotImplementedError

    def constrains_choice(self) -> bool:
        """Whether the engine can hold an answer to one of given passages, whole (RAG's extraction): an engine with
        logits always can (`scheduler.CopyFromSpans`); a model server only with a grammar (engines/remote.py)."""
        return True

    def load_adapter(self, name: str, folder: Path, replacing: bool) -> None:
        """Hold the adapter's weights (called once per version, under the model's lock). By default an engine reads
        an adapter when a row first needs it."""

    def release(self, cache) -> None:
        """A row is done with its cache."""


def require_gguf(engine: str, gguf: str | None) -> None:
    """The engines that read the GGUF file themselves (onnxruntime, llama.cpp) refuse any other model."""
    if gguf is None:
        raise ModelUnavailable(f"engine {engine!r} runs .gguf files only: set DUET_LLM to a .gguf file (or 'bundled'), "
                               "or use DUET_ENGINE=transformers")


@dataclass(eq=False)
class LoadedLLM:
    """The one base model of the process: its tokenizer, its engine, and the decoder and adapter host over them."""

    tokenizer: object
    name: str
    device: str
    weights: str  # float32 or bfloat16 (torch), "gguf, int8 arithmetic" (onnxruntime), gguf (llama.cpp)
    config: object  # the model's transformers config
    eos: frozenset[int]  # tokens that end an answer
    engine: Engine
    host: "AdapterHost"  # noqa: F821  (engines.adapters, made with the model)
    decoder: "Decoder"  # noqa: F821  (engines.scheduler)
    lock: threading.RLock = field(default_factory=threading.RLock)  # held by a running generation
    notice: str = ""  # why the engine is not the one configured (an optional engine that failed its probe)
