"""Typed settings for Duet, in one place.

Every field can be set by an environment variable `DUET_<FIELD NAME IN CAPITALS>`
(for example `DUET_TOP_K=6`, `DUET_LLM=HuggingFaceTB/SmolLM2-360M-Instruct`).
The CLI's `--store` overrides `store_dir`. Paths default to folders of this checkout.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from backends.core.errors import BadInput

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
BUNDLED = "bundled"
ENGINES = ("auto", "transformers", "onnxruntime", "llama.cpp", "openai")


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


_SECRET = re.compile(r"key|password|token|secret", re.IGNORECASE)
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)  # https://user:pass@host -> https://host


@dataclass(frozen=True)
class Settings:
    """Everything a user may want to change, with a sentence on what each field does."""

    store_dir: Path = _help("Folder for everything Duet writes: index, manifest, runs.", DATA_DIR / "store")
    model_cache_dir: Path = _help("Folder for converted models (shared by all stores).", DATA_DIR / "store" / "models")
    adapters_dir: Path = _help("Adapter registry: one folder per LoRA adapter.", DATA_DIR / "adapters")
    llm: str = _help("Base LLM: 'bundled' (SmolLM2-135M GGUF), a Hugging Face id, a local folder or a .gguf file.", BUNDLED)
    embedding_model: str = _help("Embedding model: 'bundled' (all-MiniLM-L6-v2), a Hugging Face id or a local folder.", BUNDLED)
    device: str = _help("'auto' (cuda when available), 'cpu' or 'cuda'.", "auto")
    llm_weights: str = _help("Inference weights of the LLM: 'auto' (float32 on CPU, bfloat16 on GPU), 'float32' or "
                             "'bfloat16' (faster decoding on CPU, slower prompts, answers may differ). Training uses float32.",
                             "auto")
    engine: str = _help("What generates the answers: 'auto' (onnxruntime for a Llama-family .gguf file on a CPU, "
                        "else transformers), 'transformers' (any model, any device), 'onnxruntime' (the .gguf file's "
                        "4-bit weights as they are, ~4x faster on a CPU) or 'llama.cpp' (the .gguf file run by "
                        "llama-cpp-python; `make engine` installs it, which compiles llama.cpp). Training always uses "
                        "transformers and peft.", "auto")
    llm_server: str = _help("engine 'openai': the OpenAI-compatible server's address, e.g. http://127.0.0.1:8000/v1 "
                            "(vLLM, llama.cpp's server, Ollama, `python -m backends serve`).", "")
    llm_server_model: str = _help("engine 'openai': the base model's name on the server ('' : the first it lists); an "
                                  "adapter is asked for by its own name, as vLLM's --lora-modules registers it.", "")
    llm_api_key: str = _help("engine 'openai': the server's API key, if it wants one (or llm_api_key in secrets).", "")
    llm_timeout_s: float = _help("engine 'openai': seconds to wait for the server before the column says it failed.", 60.0)
    llm_server_in_flight: int = _help("engine 'openai': answers Duet asks the server for at once (the others wait their "
                                      "turn). 1 suits llama.cpp's server, which by default answers one request and "
                                      "cuts it when another arrives; vLLM can take 8 or more.", 1)
    llm_server_constraint: str = _help("engine 'openai': how RAG holds its answer to a source sentence on the server: "
                                       "'auto' (asked from /v1/models: llama.cpp's grammar, vLLM's structured "
                                       "outputs), 'grammar', 'choice' (vLLM) or 'none' (RAG writes freely).", "auto")
    onnx_accuracy: str = _help("Arithmetic of the onnxruntime engine: 'int8' (inputs of the 4-bit layers rounded per "
                               "block to 8 bits, as llama.cpp does: fastest, answers may differ where two words nearly "
                               "tie) or 'float' (float32: the transformers engine's answers, ~40% slower).", "int8")
    chunk_size: int = _help("Characters per chunk when splitting documents.", 700)
    chunk_overlap: int = _help("Characters shared by neighbouring chunks.", 100)
    csv_rows_per_chunk: int = _help("Maximum CSV rows grouped into one chunk.", 8)
    top_k: int = _help("Chunks retrieved per question.", 3)
    rag_mode: str = _help("'extractive': the model copies its answer from the best evidence sentences (right for the "
                          "bundled 135M model); 'free': the model writes freely from the numbered sources.", "extractive")
    evidence_sentences: int = _help("Best-matching sentences the model may copy in extractive mode (1: the best one, "
                                    "measured best with the bundled model; docs/quality.md).", 1)
    max_new_tokens: int = _help("Longest answer, in tokens.", 64)
    max_question_chars: int = _help("Longest question accepted, in characters.", 1000)
    max_upload_mb: int = _help("Largest document accepted, in megabytes.", 50)
    parse_timeout_s: int = _help("Seconds a document may take to parse before it is rejected.", 60)
    parse_memory_mb: int = _help("Memory cap of the process that parses a document, in megabytes.", 1024)
    read_only: int = _help("1: a read-only demo (no upload, delete or training) when no login or admin password "
                           "is configured in .streamlit/secrets.toml.", 0)
    public_reading: int = _help("1: document previews, report downloads and adapter downloads are open to every viewer "
                                "even when the app is served beyond this computer (by default only on 127.0.0.1).", 0)
    prepare_story: int = _help("1: the guided story's answers are prepared in the background when the app starts and "
                               "again when the documents or the adapter change, so `?present=1&story=1` opens at once; "
                               "0: each step is asked when it is first shown.", 1)
    chroma_server: str = _help("'' for the embedded store in store_dir/chroma, or 'host:port' of a `chroma run` "
                               "server (client/server mode).", "")
    dataset_questions: str = _help("How `dataset build` words its questions: 'templates' (rules over each sentence's "
                                   "facts), 'model' (templates, and one more wording per fact written by the LLM, kept "
                                   "only when it passes the same filters) or 'auto' (model when the LLM is not the "
                                   "bundled 135M one, whose rewordings rarely pass; docs/quality.md).", "auto")
    active_adapter: str = _help("Adapter used by the fine-tuned backend.", "demo")

    def with_store(self, store_dir: str | Path | None) -> "Settings":
        """The same settings writing to another store folder (None keeps the current one); its adapters go there
        too unless an adapters folder was chosen."""
        if store_dir is None:
            return self
        derived = self.adapters_dir in (BUNDLED_ADAPTERS, self.store_dir / "adapters")  # not chosen explicitly
        adapters = _adapters_for(Path(store_dir)) if derived else self.adapters_dir
        return dataclasses.replace(self, store_dir=Path(store_dir), adapters_dir=adapters)

    def public(self) -> dict:
        """Every setting by name, as run files may show them: a key, password or token only as "set" or "", and a
        server address without the user and password it may carry."""
        shown = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _SECRET.search(f.name):
                value = "set" if value else ""
            elif isinstance(value, str):
                value = _USERINFO.sub(r"\1", value)
            shown[f.name] = value
        return shown

    @property
    def chroma_dir(self) -> Path:
        return self.store_dir / "chroma"

    @property
    def manifest_path(self) -> Path:
        return self.store_dir / "manifest.json"

    @property
    def runs_dir(self) -> Path:
        return self.store_dir / "runs"

    @property
    def files_dir(self) -> Path:
        return self.store_dir / "files"


DEFAULT_STORE, BUNDLED_ADAPTERS = DATA_DIR / "store", DATA_DIR / "adapters"


def _adapters_for(store_dir: Path) -> Path:
    """The checkout's store keeps the checkout's adapters folder; another store (`--store`, DUET_STORE) its own."""
    return BUNDLED_ADAPTERS if store_dir.resolve() == DEFAULT_STORE.resolve() else store_dir / "adapters"


def _convert(name: str, kind: type | str, raw: str):
    kind_name = kind if isinstance(kind, str) else kind.__name__
    try:
        if "int" in kind_name:
            return int(raw)
        if "Path" in kind_name:
            return Path(raw).expanduser()
        return raw
    except ValueError:
        raise BadInput(f"environment variable DUET_{name.upper()}={raw!r} is not a valid {kind_name}") from None


def load_settings(**overrides) -> Settings:
    """Settings from the defaults, then `DUET_*` environment variables, then keyword overrides."""
    values = {}
    for f in dataclasses.fields(Settings):
        raw = os.environ.get(f"DUET_{f.name.upper()}")
        if raw not in (None, ""):
            values[f.name] = _convert(f.name, f.type, raw)
    # DUET_STORE is the short name the CLI contract documents.
    if os.environ.get("DUET_STORE"):
        values["store_dir"] = Path(os.environ["DUET_STORE"]).expanduser()
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    values.update({k: _convert(k, types[k], str(v)) if isinstance(v, str) else v for k, v in overrides.items() if v is not None})
    if "store_dir" in values and "adapters_dir" not in values:  # everything written goes to the chosen store
        values["adapters_dir"] = _adapters_for(values["store_dir"])
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.chunk_overlap >= settings.chunk_size:
        raise BadInput("chunk_overlap must be smaller than chunk_size")
    if not 1 <= settings.max_new_tokens <= 1024:
        raise BadInput("max_new_tokens must be between 1 and 1024")
    if settings.chroma_server and not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}", settings.chroma_server):
        raise BadInput("chroma_server must look like 'localhost:8000' (host:port), or be empty for the embedded store")
    if not 1 <= settings.top_k <= 50:
        raise BadInput("top_k must be between 1 and 50")
    if settings.rag_mode not in ("extractive", "free"):
        raise BadInput("rag_mode must be 'extractive' or 'free'")
    if settings.llm_weights not in ("auto", "float32", "bfloat16"):
        raise BadInput("llm_weights must be 'auto', 'float32' or 'bfloat16'")
    if settings.engine not in ENGINES:
        raise BadInput(f"engine must be one of {', '.join(repr(e) for e in ENGINES)}")
    if settings.onnx_accuracy not in ("int8", "float"):
        raise BadInput("onnx_accuracy must be 'int8' or 'float'")
    if settings.dataset_questions not in ("auto", "templates", "model"):
        raise BadInput("dataset_questions must be 'auto', 'templates' or 'model'")
    if not 1 <= settings.llm_server_in_flight <= 256:
        raise BadInput("llm_server_in_flight must be between 1 and 256")
    if settings.llm_server_constraint not in ("auto", "grammar", "choice", "none"):
        raise BadInput("llm_server_constraint must be 'auto', 'grammar', 'choice' or 'none'")
    if settings.device not in ("auto", "cpu", "cuda"):
        raise BadInput("device must be 'auto', 'cpu' or 'cuda'")
