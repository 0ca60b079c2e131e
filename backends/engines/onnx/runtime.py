"""Running the onnxruntime engine's graph: rows' KV caches, runs of several rows, and the engine itself.

A run of the graph can serve several answers, as `torch_passes.LlamaPass` does: the rows'
new tokens lie end to end, every linear layer reads its weights once for all, and attention
keeps each token to its own row by a mask over the rows' keys and values (each row's KV
cache is its own numpy buffer, `OrtRowCache`, read without a copy when the row runs alone).

`accuracy` picks `MatMulNBits`' arithmetic: "int8" (the default: inputs rounded per block to
8 bits, as llama.cpp does; ~2x faster, answers may differ where two words nearly tie, and
each row runs apart, see `OrtPass`) or "float" (float32: greedy answers equal the
transformers engine's, tests/test_onnxengine.py checks, and rows share runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.core.threads import TURNS
from backends.engines.base import BASE_MODEL, AdapterVersion, Engine, Feed
from backends.engines.onnx.adapters import AdapterTensors
from backends.engines.onnx.graph import CORRECTIONS_FILE, GRAPH_FILE, INFO_FILE, MASKED, Shape


class OrtRowCache:
    """One answer's keys and values (layers x kv heads x capacity x head dim), allocated once, zeros beyond `length`.

    A pass reads a layer's whole buffer when the row runs alone (no copy; the mask hides the
    positions not written yet, and zeros keep them harmless).
    """

    def __init__(self, shape: Shape, capacity: int):
        size = (shape.layers, shape.kv_heads, capacity, shape.head_dim)
        self.keys, self.values = np.zeros(size, np.float32), np.zeros(size, np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def start_from(self, prefix: "OrtRowCache") -> "OrtRowCache":
        n = prefix.length
        self.keys[:, :, :n], self.values[:, :, :n] = prefix.keys[:, :, :n], prefix.values[:, :, :n]
        self.length = n
        return self


SHARED_RUN_TOKENS = 256  # fed tokens per shared run (`_bounded`)


class OrtPass:
    """Feeds several rows their tokens in one run of the graph; each row keeps its own KV cache (numpy)."""

    def __init__(self, session, shape: Shape, accuracy: str):
        self.session, self.shape = session, shape
        # With int8 inputs the rows beside a row change its last bits and so, at near-ties, its answer: int8 rows
        # always run apart, so a question gets the same answer whatever the load. Float rows share runs.
        self.shares_rows = accuracy == "float"
        self.outputs = [o.name for o in session.get_outputs()]

    def cache(self, capacity: int, prefix: OrtRowCache | None = None) -> OrtRowCache:
        cache = OrtRowCache(self.shape, capacity)
        return cache.start_from(prefix) if prefix is not None else cache

    def __call__(self, feeds: list, adapter: AdapterTensors, adapted: set) -> np.ndarray:
        """The logits after each row's last fed token (rows x vocabulary); rows whose adapter is in `adapted` get it."""
        import onnxruntime as ort

        held = [feed.cache.length for feed in feeds]
        counts = [len(feed.tokens) for feed in feeds]
        flags = [float(feed.adapter in adapted) for feed, n in zip(feeds, counts) for _ in range(n)]
        inputs = {"ids": np.array([t for feed in feeds for t in feed.tokens], np.int64),
                  "positions": np.array([[h + i for h, n in zip(held, counts) for i in range(n)]], np.int64),
                  "mask": self._mask(feeds, counts),
                  "last": np.cumsum(counts) - 1,
                  **adapter.mix(np.array(flags, np.float32))}
        for layer in range(self.shape.layers):
            inputs[f"past_keys.{layer}"] = _joined([feed.cache.keys[layer] for feed in feeds])
            inputs[f"past_values.{layer}"] = _joined([feed.cache.values[layer] for feed in feeds])
        values = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in inputs.items()}
        results = dict(zip(self.outputs, self.session.run_with_ort_values(self.outputs, {**values, **adapter.values})))
        new = {name: value.numpy() for name, value in results.items()}
        start = 0
        for feed, h, n in zip(feeds, held, counts):  # only now: a failed run leaves every cache as it was
            for layer in range(self.shape.layers):
                feed.cache.keys[layer][:, h:h + n] = new[f"new_keys.{layer}"][:, start:start + n]
                feed.cache.values[layer][:, h:h + n] = new[f"new_values.{layer}"][:, start:start + n]
            feed.cache.length = h + n
            start += n
        return new["logits"]

    def _mask(self, feeds: list, counts: list[int]) -> np.ndarray:
        """group*T x (capacities + T): a token sees its row's held positions and its row's new tokens up to itself."""
        capacities = [feed.cache.capacity for feed in feeds]
        held_total, total = sum(capacities), sum(counts)
        mask = np.full((total, held_total + total), MASKED, np.float32)
        c = t = 0
        for feed, capacity, n in zip(feeds, capacities, counts):
            mask[t:t + n, c:c + feed.cache.length] = 0
            mask[t:t + n, held_total + t:held_total + t + n] = np.triu(np.full((n, n), MASKED, np.float32), 1)
            c, t = c + capacity, t + n
        return np.tile(mask, (self.shape.heads // self.shape.kv_heads, 1))


def _bounded(members: list[int], tokens: dict[int, int]) -> list[list[int]]:
    """The rows of a shared run in consecutive parts of at most SHARED_RUN_TOKENS fed tokens (a longer row alone):
    attention's scores grow with the run's tokens times all its rows' positions, so eight prompts of 700 tokens
    prefilled in one run would take gigabytes, while decoding rows (a token each) share freely."""
    parts, current, fed = [], [], 0
    for index in members:
        if current and fed + tokens[index] > SHARED_RUN_TOKENS:
            parts.append(current)
            current, fed = [], 0
        current.append(index)
        fed += tokens[index]
    return parts + ([current] if current else [])


def _joined(buffers: list[np.ndarray]) -> np.ndarray:
    """The rows' whole buffers of one layer one after the other (kv heads x capacities x head dim); one row: itself."""
    return buffers[0] if len(buffers) == 1 else np.concatenate(buffers, axis=1)


class OrtEngine(Engine):
    """A model run by onnxruntime: each round, a run of the graph per row (int8) or per adapter (float)."""

    name = "onnxruntime"

    def __init__(self, graph_folder: Path):
        import onnxruntime as ort
        import torch

        info = json.loads((graph_folder / INFO_FILE).read_text())
        self.shape = Shape(**info["shape"])
        self.context = self.shape.context
        with np.load(graph_folder / CORRECTIONS_FILE) as saved:
            self.corrections = {key: saved[key] for key in saved.files}
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the thread count torch decodes with
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about initializers the optimizer folded
        session = ort.InferenceSession(str(graph_folder / GRAPH_FILE), options, providers=["CPUExecutionProvider"])
        self.passes = OrtPass(session, self.shape, info["accuracy"])
        self.adapters: dict[AdapterVersion, AdapterTensors] = {}

    def cache(self, capacity: int, version: AdapterVersion, prefix=None) -> OrtRowCache:
        return self.passes.cache(capacity, prefix)

    def forward(self, feeds: list[Feed]) -> list:
        """Logits per row (or the exception of a row that failed alone: an adapter this engine cannot apply, say)."""
        tensors: dict = {}
        logits: list = [None] * len(feeds)
        for index, feed in enumerate(feeds):
            try:
                tensors[feed.version] = self._tensors(feed.version)
            except Exception as error:  # this row fails alone
                logits[index] = error
        for version, members in self._runs([(i, f) for i, f in enumerate(feeds) if logits[i] is None]):
            with TURNS.decoding_pass():  # after any embedding that is waiting (core/threads.py)
                out = self.passes([feeds[i] for i in members], tensors[version], {version.name} - {None})
            for index, row_logits in zip(members, out):
                logits[index] = row_logits
        return logits

    def _runs(self, feeds: list[tuple]) -> list[tuple]:
        """(adapter version, indices of its rows) per run of the graph: float rows share runs, per adapter with the
        base rows in the first; an int8 row runs apart, exactly as alone, however many rows wait."""
        sharing = self.passes.shares_rows
        shared = [(i, f) for i, f in feeds if sharing]
        apart = [(feed.version, [index]) for index, feed in feeds if not sharing]
        by_version: dict = {}
        for index, feed in shared:
            by_version.setdefault(feed.version, []).append(index)
        base = by_version.pop(BASE_MODEL, [])
        if not by_version:
            runs = [(BASE_MODEL, base)] if base else []
        else:
            runs = [(version, members + (base if turn == 0 else []))
                    for turn, (version, members) in enumerate(by_version.items())]
        tokens = {index: len(feed.tokens) for index, feed in feeds}
        return [(version, part) for version, members in runs for part in _bounded(members, tokens)] + apart

    def _tensors(self, version: AdapterVersion) -> AdapterTensors:
        """The adapter's graph inputs (made once per version)."""
        if version not in self.adapters:
            for old in [v for v in self.adapters if v.name == version.name]:  # a replaced adapter's old weights
                del self.adapters[old]
            self.adapters[version] = AdapterTensors(self.corrections, self.shape, version.folder or None)
        return self.adapters[version]
