"""The fine-tuned backend: the shared base model plus a LoRA adapter, and no retrieval.

Three parts:
- `AdapterRegistry`: the folder of adapters (list, verify, choose the active one, delete).
  Only safetensors adapters trained on the same base model are accepted.
- `AdapterHost`: wraps the ONE loaded base model in a peft model and loads adapters into
  it; the decoder (`generation.Decoder`) then picks the adapter per row, so RAG (adapter
  off) and fine-tuned (adapter on) answer in the same batch, each with the right weights.
- `FineTunedBackend`: answers, and reports which documents changed since its adapter
  was trained (staleness).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from backends.config import Settings
from backends.errors import BadInput
from backends.models import LoadedLLM, base_model_identity
from backends.rag import answer_from_stream, check_question
from backends.threads import run_in_fresh_thread
from backends.training import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METADATA, chat_messages
from backends.types import AnswerStream

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


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


def adapter_version(adapter: AdapterInfo) -> AdapterVersion:
    stat = (adapter.path / ADAPTER_WEIGHTS).stat()
    return AdapterVersion(adapter.name, str(adapter.path), stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    metadata: dict

    @property
    def created_at(self) -> str:
        return self.metadata.get("created_at", "")


@dataclass(frozen=True)
class Staleness:
    """Documents added, changed or deleted in the index since the adapter was trained."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()

    @property
    def is_stale(self) -> bool:
        return bool(self.added or self.changed or self.deleted)

    def describe(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (("added", self.added), ("changed", self.changed), ("deleted", self.deleted)) if v]
        return "documents " + ", ".join(parts) + " since this adapter was trained" if parts else "up to date with the index"


def staleness(snapshot_then: dict[str, str], snapshot_now: dict[str, str]) -> Staleness:
    return Staleness(
        added=tuple(sorted(set(snapshot_now) - set(snapshot_then))),
        changed=tuple(sorted(d for d in snapshot_now.keys() & snapshot_then.keys() if snapshot_now[d] != snapshot_then[d])),
        deleted=tuple(sorted(set(snapshot_then) - set(snapshot_now))),
    )


def check_adapter_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS or name.startswith(("-", "_")):
        raise BadInput("an adapter name uses 1-64 lower-case letters, digits, '-' or '_' (for example 'demo-v2')")
    return name


def verify_adapter_folder(folder: Path, check_finite: bool = False) -> dict:
    """Refuse pickles and incomplete folders; return the metadata."""
    pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise BadInput(f"adapter {folder.name!r} contains pickle files ({', '.join(pickles)}), which can run code when loaded; "
                       "Duet only loads safetensors adapters: re-save it with safe_serialization=True")
    for required in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, METADATA):
        if not (folder / required).is_file():
            raise BadInput(f"adapter {folder.name!r} is incomplete: {required} is missing")
    try:
        metadata = json.loads((folder / METADATA).read_text())
    except ValueError:
        raise BadInput(f"adapter {folder.name!r} has an unreadable {METADATA}") from None
    if check_finite:
        from safetensors.torch import load_file

        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        if not tensors or any(not math.isfinite(float(t.float().abs().sum())) for t in tensors.values()):
            raise BadInput(f"adapter {folder.name!r} has empty or non-finite weights")
    return metadata


class AdapterRegistry:
    """The adapters folder: one sub-folder per adapter. The active choice is kept in the store."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.adapters_dir
        self._restore_interrupted_replacements()

    def _restore_interrupted_replacements(self) -> None:
        """Undo what a killed save left: restore an adapter renamed aside, drop half-written folders."""
        if not self.root.is_dir():
            return
        for aside in self.root.glob(".replaced-*"):
            original = self.root / aside.name.removeprefix(".replaced-")
            if not original.exists():
                os.replace(aside, original)
        with contextlib.suppress(BadInput), self.training_lock():  # nobody is saving right now
            for partial in self.root.glob(".saving-*"):
                shutil.rmtree(partial, ignore_errors=True)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list(self) -> list[AdapterInfo]:
        """Every adapter that passes verification (broken ones are skipped)."""
        adapters = []
        for name in self.names():
            with contextlib.suppress(BadInput):
                adapters.append(self.get(name, check_base=False))
        return adapters

    def get(self, name: str, check_base: bool = True) -> AdapterInfo:
        folder = self.root / name
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none yet"
            raise BadInput(f"no adapter named {name!r} (adapters: {known}); train one with `python -m backends train`")
        metadata = verify_adapter_folder(folder)
        if check_base:
            self._check_base(name, metadata)
        return AdapterInfo(name, folder, metadata)

    def _check_base(self, name: str, metadata: dict) -> None:
        expected = base_model_identity(self.settings)
        recorded = metadata.get("base_model", {})
        if recorded.get("id") != expected["id"] or recorded.get("sha256", "") != expected["sha256"]:
            raise BadInput(f"adapter {name!r} was trained on base model {recorded.get('id', 'unknown')!r}, "
                           f"not on the configured {expected['id']!r}; retrain it on this base model")

    def path_for_new(self, name: str, overwrite: bool = False) -> Path:
        check_adapter_name(name)
        path = self.root / name
        if path.exists() and not overwrite:
            raise BadInput(f"an adapter named {name!r} already exists; choose another name or delete it first")
        return path

    def delete(self, name: str) -> None:
        self.get(name, check_base=False)
        shutil.rmtree(self.root / name)
        if self.active_name() == name:
            self._active_file.unlink(missing_ok=True)

    @property
    def _active_file(self) -> Path:
        return self.settings.store_dir / "active_adapter.txt"

    def active_name(self) -> str:
        if self._active_file.is_file():
            return self._active_file.read_text().strip()
        return self.settings.active_adapter

    def set_active(self, name: str) -> None:
        self.get(name)
        self.settings.store_dir.mkdir(parents=True, exist_ok=True)
        self._active_file.write_text(name)

    @contextlib.contextmanager
    def training_lock(self):
        """One training job at a time per store."""
        from filelock import FileLock, Timeout

        self.settings.store_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.settings.store_dir / ".training.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise BadInput("a training job is already running for this store; wait for it to finish or cancel it") from None
        try:
            yield
        finally:
            lock.release()


def _routed_lora_forward(layer, host: "AdapterHost", x, *args, **kwargs):
    """A LoRA layer's forward with each row's adapter taken from `host.routes`.

    peft's own arithmetic (base output + B(A(x)) * scaling) without its per-call checks,
    which cost as much as the matrix products themselves for a 135M model. Where only some
    rows (tokens) have the adapter, the update is computed for those rows alone and added to
    them: a fine-tuned answer's one token in a pass with a RAG prompt of a hundred costs one
    row's update, and the same numbers as alone. Outside a routed batch (routes None) the layer
    behaves exactly as peft wrote it.
    """
    import torch

    if host.routes is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    rows = x.reshape(-1, x.shape[-1])
    for name, picked in host.routes:
        weights = layer.duet_lora.get(name)
        if weights is None:
            continue
        a_t, b_t, scaling = weights
        own = rows if picked is None else rows.index_select(0, picked)
        # torch.mm with the transposed weight is the kernel F.linear calls: the same numbers, fewer dispatches.
        update = torch.mm(torch.mm(own if own.dtype == a_t.dtype else own.to(a_t.dtype), a_t), b_t)
        if scaling is not None:
            update = update * scaling
        if picked is None:
            result = result + update.to(result.dtype).view(result.shape)
        else:
            result.view(-1, result.shape[-1]).index_add_(0, picked, update.to(result.dtype))
    return result


def _routed_weights(layer, name: str):
    """(A transposed, B transposed, scaling or None) of one adapter on one LoRA layer.

    A power-of-two scaling (alpha 16 / rank 8 = 2) is folded into B: multiplying by a power
    of two is exact in floating point, so the update is bit for bit peft's, one operation
    cheaper per layer and token.
    """
    a_t, b_t, scaling = layer.lora_A[name].weight.t(), layer.lora_B[name].weight.t(), layer.scaling[name]
    if scaling > 0 and math.frexp(scaling)[0] == 0.5:
        return a_t, b_t * scaling, None
    return a_t, b_t, scaling


class AdapterHost:
    """Puts LoRA adapters on the shared base model and routes each batch row to its adapter."""

    def __init__(self, llm: LoadedLLM):
        self.llm = llm
        self.loaded: dict[str, AdapterVersion] = {}  # what the model holds of each adapter
        # (adapter, rows or None for all rows) of the batch being generated; None outside one.
        self.routes: list | None = None

    @classmethod
    def of(cls, llm: LoadedLLM) -> "AdapterHost":
        """The host of this loaded model: one per model, since it knows which adapters the model holds."""
        return llm.companion(cls)

    def ensure(self, adapter: AdapterInfo) -> None:
        """The adapter on the model as its files are now: loaded again if it was replaced since."""
        with self.llm.lock:
            version = adapter_version(adapter)
            if self.loaded.get(adapter.name) == version:
                return
            if self.llm.model is not None:  # None: the onnxruntime or llama.cpp engine, which applies adapters itself
                run_in_fresh_thread(self._load, adapter)
            self.loaded[adapter.name] = version

    def version(self, adapter: str | None) -> AdapterVersion:
        """Which version of the adapter the model holds (BASE_MODEL for none)."""
        if adapter is None:
            return BASE_MODEL
        self.check_loaded([adapter])
        return self.loaded[adapter]

    def _load(self, adapter: AdapterInfo) -> None:
        import warnings

        from peft import PeftModel

        if adapter.name in self.loaded:  # replaced under the same name
            self.llm.model.delete_adapter(adapter.name)
            del self.loaded[adapter.name]  # until the new weights are in (`ensure` records them)
        with warnings.catch_warnings():  # peft calls a transformers method deprecated for v6: noise on every CLI answer
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            if isinstance(self.llm.model, PeftModel):
                self.llm.model.load_adapter(str(adapter.path), adapter_name=adapter.name)
            else:
                # Injects LoRA layers into the base model in place: no second copy of the weights.
                self.llm.model = PeftModel.from_pretrained(self.llm.model, str(adapter.path), adapter_name=adapter.name)
        self.llm.model.eval()
        self._route_lora_layers(adapter.name)

    def _route_lora_layers(self, name: str) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        for module in self.llm.model.modules():
            if isinstance(module, LoraLinear):
                if name in module.lora_variant:
                    raise BadInput(f"adapter {name!r} is not a plain LoRA adapter (DoRA and other variants are not supported)")
                module.forward = functools.partial(_routed_lora_forward, module, self)
                if not hasattr(module, "duet_lora"):
                    module.duet_lora = {}
                module.duet_lora.pop(name, None)  # a retrained adapter may target other layers
                if name in module.lora_A:  # (A transposed, B transposed, scaling): what the routed forward multiplies
                    module.duet_lora[name] = _routed_weights(module, name)

    def check_loaded(self, adapters: list[str | None]) -> None:
        missing = {a for a in adapters if a} - self.loaded.keys()
        if missing:
            raise RuntimeError(f"adapter {sorted(missing)} is not loaded on the model")

    @contextlib.contextmanager
    def route(self, adapters: list[str | None]):
        """Inside: row i of the layers' input rows (a pass's tokens) gets adapter adapters[i] (None: the bare base model).

        `routes` holds (adapter, None) when every row has it, else (adapter, the indices of its rows).
        """
        import torch

        self.check_loaded(adapters)
        names = sorted({a for a in adapters if a})
        outer = self.routes
        if len(set(adapters)) == 1:
            self.routes = [(name, None) for name in names]
        else:
            self.routes = [(name, torch.tensor([i for i, a in enumerate(adapters) if a == name], device=self.llm.device))
                           for name in names]
        try:
            yield
        finally:
            self.routes = outer


class FineTunedBackend:
    """Answers from base model + adapter, without retrieval."""

    name = "ft"

    def __init__(self, host: AdapterHost, registry: AdapterRegistry, settings: Settings, index=None):
        self.host, self.registry, self.settings, self.index = host, registry, settings, index

    def adapter_info(self, name: str | None = None) -> AdapterInfo:
        return self.registry.get(name or self.registry.active_name())

    def stream(self, question: str, adapter: str | None = None) -> AnswerStream:
        question = check_question(question, self.settings)
        info = self.adapter_info(adapter)
        self.host.ensure(info)
        yield from answer_from_stream(self.name, question, self.host.llm, chat_messages(question), self.settings,
                                      adapter=info.name)

    def staleness(self, adapter: str | None = None) -> Staleness:
        info = self.adapter_info(adapter)
        now = self.index.snapshot() if self.index is not None else {}
        return staleness(info.metadata.get("index_snapshot", {}), now)
