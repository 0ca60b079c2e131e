"""LoRA training: the training loop with progress and cancel, and the atomic save into the registry.

The dataset is validated before training starts (`examples.read_training_file`); the loss covers
the answer tokens only. The adapter is written to a temporary folder in the registry,
verified (safetensors only, finite weights, metadata readable), then renamed into place, so
a crash or a cancel leaves the registry as it was.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from backends.core.config import Settings
from backends.core.errors import BadInput
from backends.core.jobs import BackgroundJob, Cancelled
from backends.core.faults import pause_point
from backends.learning.adapters import AdapterRegistry, verify_adapter_folder
from backends.learning.datasets import manifest_beside
from backends.learning.examples import read_training_file, tokenize_example
from backends.models.files import base_model_identity, file_sha256, prepare_llm, resolve_device
from backends.models.lora import METADATA, TRAINING_DATA

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """LoRA hyperparameters; the defaults suit the bundled 135M model on 2 CPU cores."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (0 skips its copy of every input: 1.4x faster steps)."})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "Modules that get LoRA matrices."},
    )
    epochs: int = field(default=5, metadata={"help": "Passes over the dataset."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (linear decay)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimiser step."})
    max_length: int = field(default=128, metadata={"help": "Longest example in tokens (longer ones are cut)."})
    seed: int = field(default=0, metadata={"help": "Random seed for shuffling and initialisation."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many steps (0: no limit)."})
    precision: str = field(default="auto", metadata={
        "help": "Matrix products in bf16 or fp32 (auto: bf16 where the CPU or GPU has it natively).",
        "choices": PRECISIONS})

    def check(self) -> None:
        if self.rank < 1 or self.alpha < 1 or self.epochs < 1 or self.batch_size < 1 or self.max_length < 16:
            raise BadInput("rank, alpha, epochs and batch size must be at least 1, max length at least 16")
        if not 0 <= self.dropout < 1 or not 0 < self.learning_rate < 1:
            raise BadInput("dropout must be in [0, 1) and the learning rate in (0, 1)")
        if self.precision not in PRECISIONS:
            raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")


@dataclass(frozen=True)
class TrainProgress:
    """What a progress callback receives after every optimiser step."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    tokens_per_s: float
    eta_s: float
    tokens: int = 0  # trained (non-padding) tokens so far
    elapsed_s: float = 0.0


class TrainingCancelled(Cancelled):
    """Raised inside the training loop when its cancel event is set."""


# ---- training ----------------------------------------------------------------------------
def _batches(examples: list, batch_size: int, rng: random.Random):
    """Shuffled batches of examples of similar length (less padding to compute), in shuffled order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for first in range(0, len(order), window):
        group = sorted(order[first:first + window], key=lambda i: len(examples[i][0]))
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    for batch in batches:
        yield [examples[i] for i in batch]


def train_adapter(
    settings: Settings,
    data_path: str | Path,
    name: str,
    config: TrainConfig = TrainConfig(),
    on_progress: Callable[[TrainProgress], None] = lambda p: None,
    cancel: threading.Event | None = None,
    index_snapshot: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a LoRA adapter and save it to the registry as `name`; returns its folder."""
    config.check()
    data_path = Path(data_path)
    items = read_training_file(data_path)
    registry = AdapterRegistry(settings)
    target = registry.path_for_new(name, overwrite)
    with registry.training_lock():
        model, tokenizer, base, precision = _trainable_model(settings, config)
        started = time.perf_counter()
        history = _train_loop(model, tokenizer, items, config, precision, on_progress, cancel or threading.Event())
        metadata = {
            "name": name,
            "base_model": base,
            "dataset": dataset_record(data_path, len(items)),
            "index_snapshot": index_snapshot or {},
            "hyperparameters": {**asdict(config), "target_modules": list(config.target_modules)},
            "precision": precision,
            "loss_history": history,
            "final_loss": history[-1]["loss"] if history else None,
            "training_seconds": round(time.perf_counter() - started, 1),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return save_adapter_atomically(model, metadata, target, overwrite, training_data=data_path)


def training_rate(settings: Settings, data_path: str | Path, config: TrainConfig, steps: int) -> dict:
    """Trained tokens per second over `steps` optimiser steps after a warm-up step, and the arithmetic limit
    beside it (nothing is saved): `python -m backends bench`'s training figures."""
    config.check()
    model, tokenizer, _, precision = _trainable_model(settings, config)
    seen: list[TrainProgress] = []
    _train_loop(model, tokenizer, read_training_file(data_path), replace(config, max_steps=steps + 1),
                precision, seen.append, threading.Event())
    first, last = seen[0], seen[-1]
    flops = training_flops_per_token(model)
    peak = peak_matmul_flops(precision, next(model.parameters()).device)
    return {"tokens_per_s": (last.tokens - first.tokens) / (last.elapsed_s - first.elapsed_s),
            "limit_tokens_per_s": peak / flops, "peak_matmul_gflops": peak / 1e9, "precision": precision}


def training_flops_per_token(model) -> float:
    """Forward (2 per weight) and backward to the activations (2 more; the frozen weights get no gradient),
    for every token at every linear layer, the vocabulary head included."""
    base = model.get_base_model()
    head = base.lm_head.weight.numel()
    return 4.0 * (base.num_parameters(exclude_embeddings=True) + head)


def peak_matmul_flops(precision: str, device) -> float:
    """The best of six 2048x2048 matrix products in the training precision (the first warms up), in FLOP/s."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(2048, 2048, device=device).to(dtype) for _ in range(2))
    best = math.inf
    for _ in range(6):
        started = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - started)
    return 2 * 2048 ** 3 / best


# Trained tokens a second at the defaults on 2 CPU cores with the bundled model (the demo build's training,
# 2026-12-06: 235 to 275); a GPU or more cores is faster, so there the estimate is an upper bound.
CPU_TOKENS_PER_S = 240.0


def training_estimate(tokenizer, items: list, config: TrainConfig) -> tuple[int, float]:
    """(optimiser steps, seconds on 2 CPU cores) before training starts, every example tokenized as training will."""
    lengths = [len(tokenize_example(tokenizer, item, config.max_length)[0]) for item in items]
    per_epoch = math.ceil(len(lengths) / config.batch_size)
    steps = per_epoch * config.epochs if not config.max_steps else min(per_epoch * config.epochs, config.max_steps)
    return steps, (sum(lengths) * steps / per_epoch / CPU_TOKENS_PER_S) if per_epoch else 0.0


def dataset_record(data_path: Path, examples: int) -> dict:
    """What an adapter records of its data: the file, and the built dataset's manifest hash when it has one."""
    record = {"file": data_path.name, "sha256": file_sha256(data_path), "examples": examples}
    built = manifest_beside(data_path)
    if built is not None:
        manifest, sha = built
        record.update(manifest_sha256=sha, id=manifest.get("id", ""), format=manifest.get("format", ""),
                      paraphrases=manifest.get("paraphrases"))
    return record


def dataset_label(record: dict) -> str:
    """The file an adapter learnt from, and the id `dataset build` reported when it came from a built dataset."""
    built = record.get("id") or (record.get("manifest_sha256") or "")[:12]
    return f"{record.get('file', '?')} · dataset {built}" if built else record.get("file", "")


def _trainable_model(settings: Settings, config: TrainConfig):
    """A private copy of the base model (the served one stays untouched) with fresh LoRA layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backends.learning import train_step

    path = prepare_llm(settings)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(resolve_device(settings.device))
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    precision = train_step.precision_for(config.precision, next(model.parameters()).device)
    train_step.prepare(model, config.dropout, precision)
    return model, tokenizer, base_model_identity(settings), precision


def _train_loop(model, tokenizer, items, config: TrainConfig, precision: str, on_progress,
                cancel: threading.Event) -> list[dict]:
    import torch

    from backends.learning.train_step import batch_loss

    examples = [tokenize_example(tokenizer, item, config.max_length) for item in items]
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    # The ETA counts tokens, not steps: a batch of long rows takes longer, and the step count would not know it.
    all_tokens = sum(len(ids) for ids, _ in examples) * total / max(1, steps_per_epoch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    rng, history, step, started, tokens = random.Random(config.seed), [], 0, time.perf_counter(), 0
    device = next(model.parameters()).device
    model.train()
    for epoch in range(config.epochs):
        for batch in _batches(examples, config.batch_size, rng):
            if cancel.is_set():
                raise TrainingCancelled("training was cancelled; the adapter registry is unchanged")
            loss, count = batch_loss(model, batch, tokenizer.pad_token_id, precision, device)
            if loss is not None:
                loss.backward()
                optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step, tokens = step + 1, tokens + count
            elapsed = time.perf_counter() - started
            value = round(loss.item(), 4) if loss is not None else (history[-1]["loss"] if history else 0.0)
            record = TrainProgress(step, total, round(epoch + (step - epoch * steps_per_epoch) / steps_per_epoch, 3),
                                   value, tokens / elapsed, max(0.0, all_tokens - tokens) * elapsed / tokens, tokens,
                                   elapsed)
            if loss is not None:
                history.append({"step": step, "epoch": record.epoch, "loss": record.loss})
            on_progress(record)
            if step >= total:
                model.eval()
                return history
    model.eval()
    return history


def save_adapter_atomically(model, metadata: dict, target: Path, overwrite: bool = False,
                            training_data: Path | None = None) -> Path:
    """Write to a temporary folder beside `target`, verify, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name: a registry opened by another process (a store copy) leaves a live save alone.
    work = Path(tempfile.mkdtemp(prefix=f".saving-{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        model.save_pretrained(str(work), safe_serialization=True)
        (work / "README.md").unlink(missing_ok=True)  # peft's hub model card template: nothing of ours
        (work / METADATA).write_text(json.dumps(metadata, indent=2))
        if training_data is not None:
            shutil.copyfile(training_data, work / TRAINING_DATA)
        verify_adapter_folder(work, check_finite=True)
        pause_point("adapter-save")
        _replace_folder(work, target, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _replace_folder(work: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        os.replace(work, target)
        return
    if not overwrite:
        raise BadInput(f"an adapter named {target.name!r} already exists; choose another name or delete it first")
    # The old folder is renamed aside first; the registry restores it if we die between the two renames.
    aside = target.with_name(f".replaced-{target.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(target, aside)
    os.replace(work, target)
    shutil.rmtree(aside, ignore_errors=True)


class TrainingJob(BackgroundJob):
    """One training run in a background thread, watched by the web page; `path` is the saved adapter."""

    what = "training"

    def __init__(self, settings: Settings, data_path: Path, name: str, config: TrainConfig,
                 index_snapshot: dict[str, str] | None = None, overwrite: bool = False):
        super().__init__(name)
        self.settings, self.data_path, self.config = settings, Path(data_path), config
        self.index_snapshot, self.overwrite = index_snapshot, overwrite

    @property
    def path(self) -> Path | None:
        return self.result

    def work(self, on_progress, cancel: threading.Event) -> Path:
        return train_adapter(self.settings, self.data_path, self.name, self.config, on_progress, cancel,
                             self.index_snapshot, self.overwrite)
