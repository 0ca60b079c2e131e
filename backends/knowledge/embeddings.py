"""The embedding model: loaded once per process, computing in passing threads.

Sentence embeddings straight from transformers, for local sentence-transformers folders:
The bundled all-MiniLM-L6-v2 is a Transformer, mean pooling and normalisation
(its modules.json). Computing exactly that here gives the vectors sentence-transformers
gives, without importing sentence-transformers, which alone took about 7 of the 17
seconds of a cold `python -m backends ask`. Models with any other layout go through
langchain-huggingface's HuggingFaceEmbeddings. Either way the model computes in a passing
thread (`FreshThreadEmbeddings`, core/threads.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
from langchain_core.embeddings import Embeddings
from transformers import AutoModel, AutoTokenizer

from backends.core.config import Settings
from backends.core.errors import ModelUnavailable
from backends.core.threads import TURNS, run_in_fresh_thread
from backends.models.files import embedding_source, quiet_loading, resolve_device

_cache: dict[tuple, "FreshThreadEmbeddings"] = {}
_lock = threading.Lock()

PIECE = 64  # texts of one call embedded together at most; other callers' texts join between pieces
PLAIN_MODULES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                 "sentence_transformers.models.Normalize"]


def is_mean_pooling_folder(folder: Path) -> bool:
    """A local sentence-transformers folder made of Transformer + mean Pooling + Normalize only."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        pooling_path = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((folder / pooling_path / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    modes = {key for key, on in pooling.items() if key.startswith("pooling_mode") and on}
    return [m["type"] for m in modules] == PLAIN_MODULES and modes == {"pooling_mode_mean_tokens"}


class MeanPoolingEmbeddings(Embeddings):
    """A langchain Embeddings: mean of the token vectors (padding excluded), L2-normalised."""

    def __init__(self, folder: Path, device: str, batch_size: int = 32):
        config_file = folder / "sentence_bert_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.max_length = int(config.get("max_seq_length", 256))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors = []
        for first in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[first:first + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            tokens = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors.extend(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().tolist())
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text])[0]


class _Wanted:
    """One caller's texts, waiting for the batch that embeds them."""

    def __init__(self, texts: list[str], query: bool):
        self.texts, self.query, self.vectors, self.error = texts, query, None, None


class FreshThreadEmbeddings(Embeddings):
    """Any langchain Embeddings, computing in a thread that ends afterwards (see core/threads.py).

    Calls that arrive while a batch computes (other sessions' queries and claim tracing) wait and go together in the
    next one: one model call for all of them instead of one each.
    """

    def __init__(self, inner: Embeddings):
        self.inner = inner
        self.queue: list[_Wanted] = []
        self.queue_lock, self.computing = threading.Lock(), threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        texts = list(texts)  # in pieces, so that a large ingest lets other sessions' queries in between
        return [v for start in range(0, len(texts), PIECE) for v in self._embed(texts[start:start + PIECE], False)]

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text], True)[0]

    def _embed(self, texts: list[str], query: bool) -> list[list[float]]:
        wanted = _Wanted(texts, query)
        with self.queue_lock:
            self.queue.append(wanted)
        with self.computing:  # whoever holds it embeds everything queued by then, this call's texts included or not
            if wanted.vectors is None and wanted.error is None:
                with self.queue_lock:
                    batch, self.queue = self.queue, []
                self._compute(batch)
        if wanted.error is not None:
            raise wanted.error
        return wanted.vectors

    def _compute(self, batch: list[_Wanted]) -> None:
        try:
            with TURNS.torch_work():
                vectors = run_in_fresh_thread(self.embed_batch, batch)
        except BaseException as error:  # each caller gets the failure (an interrupt too: none is left waiting)
            for w in batch:
                w.error = error
            if not isinstance(error, Exception):
                raise
            return
        start = 0
        for w in batch:
            w.vectors, start = vectors[start:start + len(w.texts)], start + len(w.texts)

    def embed_batch(self, batch: list[_Wanted]) -> list[list[float]]:
        """The batch's vectors in its order; queries alone where the model embeds them differently (a prompt)."""
        if isinstance(self.inner, MeanPoolingEmbeddings) or not any(w.query for w in batch):
            return self.inner.embed_documents([t for w in batch for t in w.texts])
        return [v for w in batch for v in ([self.inner.embed_query(w.texts[0])] if w.query
                                           else self.inner.embed_documents(w.texts))]


def load_embeddings(settings: Settings) -> "FreshThreadEmbeddings":
    """The langchain embeddings object of the configured model, once per process."""
    key = (settings.embedding_model, settings.device)
    with _lock:
        if key not in _cache:
            _cache[key] = FreshThreadEmbeddings(run_in_fresh_thread(_load_uncached, settings))
        return _cache[key]


def _load_uncached(settings: Settings):
    source = embedding_source(settings)
    local = Path(source).is_dir()
    quiet_loading()
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
