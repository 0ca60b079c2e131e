"""Engines: what runs the base model's forward passes, and the scheduler that serves every answer through one.

This module alone maps the settings to an engine: transformers (torch), onnxruntime or
llama.cpp. Each loaded model gets one engine, one adapter host and one decoder, shared by
every backend of the process.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from backends.core.config import Settings
from backends.core.errors import ModelUnavailable
from backends.core.threads import run_in_fresh_thread
from backends.core.types import Progress, quiet
from backends.engines.adapters import AdapterHost
from backends.engines.base import Engine, LoadedLLM, require_gguf
from backends.engines.scheduler import Decoder
from backends.models.files import llm_display_name, llm_source, prepare_llm, quiet_loading, resolve_device

_llm_cache: dict[tuple, LoadedLLM] = {}
_load_lock = threading.Lock()


def load_llm(settings: Settings, progress: Progress = quiet) -> LoadedLLM:
    """Load (once per process) the base LLM, its tokenizer and its engine."""
    key = (settings.llm, settings.device, settings.llm_weights, settings.engine, settings.onnx_accuracy,
           str(settings.model_cache_dir), settings.llm_server, settings.llm_server_model, settings.llm_api_key)
    with _load_lock:
        if key not in _llm_cache:
            _llm_cache[key] = run_in_fresh_thread(_load_llm_uncached, settings, progress=progress)
        return _llm_cache[key]


def resolve_engine(settings: Settings, gguf: str | None, device: str) -> str:
    """'auto': onnxruntime for a GGUF file it can run, on a CPU; transformers otherwise (any model, a GPU)."""
    if settings.engine != "auto":
        return settings.engine
    if gguf is None or device != "cpu":
        return "transformers"
    from backends.engines.onnx.graph import can_run

    return "onnxruntime" if can_run(Path(gguf), settings) else "transformers"


def _load_llm_uncached(settings: Settings, progress: Progress = quiet) -> LoadedLLM:
    from transformers import AutoTokenizer

    source = llm_source(settings)
    gguf = source if source.endswith(".gguf") else None
    device = resolve_device(settings.device)
    kind, notice = resolve_engine(settings, gguf, device), ""
    if kind == "llama.cpp":
        from backends.engines.llamacpp import probe_failure, require_engine

        require_engine(gguf)  # llama-cpp-python installed, and a GGUF file
        if failure := probe_failure(gguf):
            kind = resolve_engine(dataclasses.replace(settings, engine="auto"), gguf, device)
            notice = (f"The llama.cpp engine could not run here: {failure}. Duet uses {kind} instead. Rebuild it "
                      "with `make engine` (it targets this CPU's vector units safely), or unset DUET_ENGINE.")
            progress(notice)
    if kind == "onnxruntime":
        require_gguf(kind, gguf)
    path = prepare_llm(settings, progress)
    quiet_loading()
    local = Path(path).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        config, generation = _configs(path, local)
        engine, weights, device = _engine(kind, settings, path, local, gguf, device, config, progress,
                                          lambda messages, text: _count(tokenizer, messages, text))
    except OSError as error:
        raise ModelUnavailable(f"cannot load LLM {path!r}: {error}") from error
    if kind == "openai":
        notice = engine.notice()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = llm_display_name(settings) + ("" if kind == "transformers" else f" via {kind}")
    eos = eos_ids(generation, tokenizer)
    lock = threading.RLock()
    host = AdapterHost(engine, lock)
    return LoadedLLM(tokenizer=tokenizer, name=name, device=device, weights=weights, config=config, eos=eos,
                     engine=engine, host=host, decoder=Decoder(engine, tokenizer, eos, host, lock), lock=lock,
                     notice=notice)


def _engine(kind: str, settings: Settings, path: str, local: bool, gguf: str | None, device: str, config,
            progress: Progress, counter=None) -> tuple[Engine, str, str]:
    """(the engine, a description of its weights, the device it computes on)."""
    if kind == "openai":
        from backends.engines.remote import RemoteEngine

        return RemoteEngine(settings, counter), f"on the server {settings.llm_server}", "remote"
    if kind == "onnxruntime":  # reads the GGUF itself: torch's copy of the weights is not needed
        from backends.engines.onnx.graph import prepare_graph
        from backends.engines.onnx.runtime import OrtEngine

        return OrtEngine(prepare_graph(Path(gguf), settings, progress)), f"gguf, {settings.onnx_accuracy} arithmetic", "cpu"
    if kind == "llama.cpp":
        from backends.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(gguf, config), "gguf", device
    from backends.engines.torch_engine import TorchEngine, load_torch_model, resolve_weights

    weights = resolve_weights(settings.llm_weights, device)
    progress(f"Loading {llm_display_name(settings)} on {device} ({weights} weights)…")
    return TorchEngine(load_torch_model(path, local, device, weights), device), weights, device


def _count(tokenizer, messages: list[dict] | None, text: str | None) -> int:
    """Tokens of a chat prompt or of a text, by the local tokenizer (the remote engine's fallback count)."""
    if messages is not None:
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    return len(tokenizer(text or "")["input_ids"])


def _configs(path: str, local: bool):
    """The model's config and generation config, read from its folder without its weights."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path, local_files_only=local)
    try:
        return config, GenerationConfig.from_pretrained(path, local_files_only=local)
    except OSError:  # as transformers does for a model without generation_config.json
        return config, GenerationConfig.from_model_config(config)


def eos_ids(generation_config, tokenizer) -> frozenset[int]:
    """The tokens that end an answer: the generation config's, else the tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return frozenset(eos) if isinstance(eos, (list, tuple)) else frozenset({eos})
