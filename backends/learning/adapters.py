"""The adapter registry: the folder of trained adapters (list, verify, choose the active one, delete), and staleness.

Only safetensors adapters trained on the same base model are accepted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends.core.config import BUNDLED_ADAPTERS, Settings
from backends.core.errors import BadInput
from backends.models.files import base_model_identity
from backends.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METADATA, PICKLE_SUFFIXES

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


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
        parts = [f"{len(v)} document{'' if len(v) == 1 else 's'} {k}"
                 for k, v in (("added", self.added), ("changed", self.changed), ("deleted", self.deleted)) if v]
        return ", ".join(parts) + " since this adapter was trained" if parts else "up to date with the index"


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
        # A store's own adapters folder still reads the checkout's (the demo one); what it trains is written there.
        # A folder chosen with DUET_ADAPTERS_DIR is the whole registry.
        derived = self.root.resolve() == (settings.store_dir / "adapters").resolve()
        self.bundled = BUNDLED_ADAPTERS if derived and self.root.resolve() != BUNDLED_ADAPTERS.resolve() else None
        self._restore_interrupted_replacements()

    def _restore_interrupted_replacements(self) -> None:
        """Undo what a killed save left: restore an adapter renamed aside, drop half-written folders."""
        if not self.root.is_dir():
            return
        for aside in self.root.glob(".replaced-*"):
            original = self.root / aside.name.removeprefix(".replaced-")
            if not original.exists():
                os.replace(aside, original)
        for partial in self.root.glob(".saving-*"):
            if not _saver_alive(partial.name):  # another process (a store copy's registry) may be saving it now
                shutil.rmtree(partial, ignore_errors=True)

    def names(self) -> list[str]:
        return sorted({p.name for root in (self.root, self.bundled) if root is not None and root.is_dir()
                       for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")})

    def folder(self, name: str) -> Path:
        """Where adapter `name` is: the store's folder, else the checkout's."""
        own = self.root / name
        if not own.is_dir() and self.bundled is not None and (self.bundled / name).is_dir():
            return self.bundled / name
        return own

    def list(self) -> list[AdapterInfo]:
        """Every adapter that passes verification (broken ones are skipped)."""
        adapters = []
        for name in self.names():
            with contextlib.suppress(BadInput):
                adapters.append(self.get(name, check_base=False))
        return adapters

    def get(self, name: str, check_base: bool = True) -> AdapterInfo:
        folder = self.folder(name)
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
        if self.folder(name).exists() and not overwrite:
            raise BadInput(f"an adapter named {name!r} already exists; choose another name or delete it first")
        return path

    def delete(self, name: str) -> None:
        self.get(name, check_base=False)
        if not (self.root / name).is_dir():
            raise BadInput(f"adapter {name!r} comes with Duet's checkout ({self.folder(name)}); this store cannot delete it")
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


def _saver_alive(folder_name: str) -> bool:
    """Whether the process that named this .saving-<name>-<pid>-<random> folder is still running."""
    found = re.search(r"-(\d+)-[^-]*$", folder_name)
    if found is None:
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: alive
    return True


LORA_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(inputs, outputs) of each projection a LoRA may target, from the base model's transformers config."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    inner = config.intermediate_size
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
            "down_proj": (inner, hidden)}


def check_foreign_adapter(source: Path, config) -> dict:
    """A peft LoRA folder trained elsewhere, checked against this base model; its adapter_config. BadInput says why
    it cannot be used (pickled weights, missing files, another base model)."""
    from safetensors import safe_open

    if not source.is_dir():
        raise BadInput(f"{source} is not a folder: point to the folder with adapter_config.json and adapter_model.safetensors")
    pickles = [p.name for p in source.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise BadInput(f"{source.name} holds pickled weights ({', '.join(pickles)}), which can run code when loaded: "
                       "save the adapter with safe_serialization=True (adapter_model.safetensors) and import that")
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (source / required).is_file():
            raise BadInput(f"{source.name} is not a complete peft LoRA folder: {required} is missing")
    try:
        adapter_config = json.loads((source / ADAPTER_CONFIG).read_text())
    except ValueError:
        raise BadInput(f"{ADAPTER_CONFIG} in {source.name} is not valid JSON") from None
    if adapter_config.get("peft_type") != "LORA":
        raise BadInput(f"{source.name} is a {adapter_config.get('peft_type')!r} adapter; Duet imports LoRA adapters")
    shapes, layers = projection_shapes(config), config.num_hidden_layers
    base = adapter_config.get("base_model_name_or_path") or "unknown"
    with safe_open(str(source / ADAPTER_WEIGHTS), "np") as weights:
        keys = list(weights.keys())
        if not keys:
            raise BadInput(f"{ADAPTER_WEIGHTS} in {source.name} holds no tensors")
        for name in keys:
            found = LORA_KEY.search(name)
            if not found or int(found.group(1)) >= layers or found.group(2) not in shapes:
                raise BadInput(f"{source.name} was trained for another base model ({base}): this one has no {name}")
            inputs, outputs = shapes[found.group(2)]
            shape = tuple(weights.get_slice(name).get_shape())
            rank = shape[0] if found.group(3) == "A" else shape[-1]
            wanted = (rank, inputs) if found.group(3) == "A" else (outputs, rank)
            if shape != wanted:
                raise BadInput(f"{source.name} was trained for another base model ({base}): {name} is {shape}, "
                               f"this base model needs {wanted}")
    return adapter_config


def import_adapter(registry: "AdapterRegistry", source: str | Path, name: str, config, overwrite: bool = False) -> Path:
    """Copy a checked foreign LoRA folder into the registry under `name`, all or nothing."""
    from datetime import datetime, timezone

    source = Path(source)
    target = registry.path_for_new(name, overwrite)
    adapter_config = check_foreign_adapter(source, config)
    registry.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".saving-{name}-", dir=registry.root))
    try:
        for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(source / required, work / required)
        metadata = {
            "name": name, "base_model": base_model_identity(registry.settings), "imported_from": str(source.resolve()),
            "peft_base_model": adapter_config.get("base_model_name_or_path"),
            "dataset": {"examples": "unknown (imported)"}, "index_snapshot": {},
            "hyperparameters": {"rank": adapter_config.get("r"), "alpha": adapter_config.get("lora_alpha"),
                                "target_modules": sorted(adapter_config.get("target_modules") or [])},
            "loss_history": [], "final_loss": None, "training_seconds": 0,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (work / METADATA).write_text(json.dumps(metadata, indent=2))
        verify_adapter_folder(work, check_finite=True)
        if target.exists():  # overwrite: set aside first, as training does (the registry restores it after a crash)
            aside = target.with_name(f".replaced-{target.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
            os.replace(work, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
