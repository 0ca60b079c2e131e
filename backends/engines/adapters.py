"""Adapter hosting: which version of which LoRA adapter the loaded model holds.

The host asks its engine to take an adapter's weights once per version of its file; the
decoder asks it, per request, which version a row runs with (its system message's keys and
values, and an engine's per-adapter state, are kept per version).
"""

from __future__ import annotations

import threading
from pathlib import Path

from backends.core.errors import ModelUnavailable
from backends.core.threads import run_in_fresh_thread
from backends.engines.base import BASE_MODEL, AdapterVersion, Engine
from backends.models.lora import ADAPTER_WEIGHTS


def adapter_version(name: str, folder: Path) -> AdapterVersion:
    stat = (folder / ADAPTER_WEIGHTS).stat()
    return AdapterVersion(name, str(folder), stat.st_mtime_ns, stat.st_size)


class AdapterHost:
    """The adapters on one loaded model, by name and version."""

    def __init__(self, engine: Engine, lock: threading.RLock):
        self.engine, self.lock = engine, lock
        self.loaded: dict[str, AdapterVersion] = {}

    def ensure(self, name: str, folder: Path) -> None:
        """The adapter on the model as its files are now: taken again if it was replaced since."""
        # Checked before the model's lock, which the decoder holds while any row runs: under load a fine-tuned
        # answer waited there for every other session's answers to finish (a quarter of the 8-session round).
        if self.loaded.get(name) == adapter_version(name, folder):
            return
        with self.lock:
            version = adapter_version(name, folder)
            if self.loaded.get(name) == version:
                return
            replacing = name in self.loaded
            self.loaded.pop(name, None)  # until the new weights are in
            # A fresh thread: torch work in a caller's thread would start a second OpenMP pool (core/threads.py).
            run_in_fresh_thread(self.engine.load_adapter, name, folder, replacing)
            self.loaded[name] = version

    def version(self, adapter: str | None) -> AdapterVersion:
        """Which version of the adapter the model holds (BASE_MODEL for none)."""
        if adapter is None:
            return BASE_MODEL
        if adapter not in self.loaded:
            raise ModelUnavailable(f"adapter {adapter!r} is not loaded on the model: choose it again on the Fine-tune "
                                   "page or pass --adapter")
        return self.loaded[adapter]
