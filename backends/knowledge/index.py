"""The document index: splitting, chunk ids, the Chroma store and the manifest.

Layout of a store folder:
    chroma/          Chroma PersistentClient (one collection, cosine space)
    manifest.json    the documents: id, name, sha256, chunk count, added at
    journal.json     present only while a write is in progress (crash recovery)
    .writer.lock     one writer at a time, across processes

Writes are ordered so a crash at any point leaves a consistent store: new chunks are
added first, then the manifest is replaced atomically, then old chunks are removed; on
the next open, a left-over journal makes the index drop every chunk the manifest does
not vouch for. Chunk ids derive from the document's content hash and the chunk's
position and text, so ingesting the same file twice adds nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Iterable

from backends.core.config import Settings
from backends.core.errors import BadInput, StoreInUse, StoreUnavailable
from backends.core.faults import pause_point
from backends.knowledge.lexical import Lexicon, fuse
from backends.knowledge.loaders import SUPPORTED_TYPES, Segment, file_type
from backends.knowledge.sandbox import parse_isolated
from backends.core.types import DocumentRecord, IngestResult, Source

COLLECTION = "duet"
COLLECTION_CONFIGURATION = {"hnsw": {"space": "cosine"}}  # scores are 1 - cosine distance
UPSERT_BATCH = 500


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_doc_id(name: str, manifest: dict | None = None) -> str:
    """A readable, path-free id from a file name: 'Travel Policy.pdf' -> 'travel-policy-pdf', '报告.txt' -> '报告-txt'.

    With the store's manifest: the id a document of exactly this name already has (a new version updates it), and
    for another name whose slug is taken ('travel_policy.pdf') the slug and a short hash of the name, so two
    documents never become one.
    """
    base = PurePath(name.replace("\\", "/")).name
    slug = re.sub(r"[\W_]+", "-", base.lower()).strip("-")[:80] or "document"
    if not manifest:
        return slug
    same = next((doc_id for doc_id, record in manifest.items() if record.get("name") == name), "")
    if same:
        return same
    return slug if slug not in manifest else f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def safe_display_name(name: str) -> str:
    """The file name without any directory part, so a client's '../x' is never a path."""
    base = PurePath(name.replace("\\", "/")).name.strip()
    return base or "unnamed"


def embedding_text(chunk_text: str, file_name: str, location: str) -> str:
    """What is embedded: the chunk prefixed with its document and section, which helps a small embedder."""
    return f"{file_name} {location}\n{chunk_text}".strip()


def _atomic_write_json(path: Path, payload) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


class DocumentIndex:
    """A store folder: Chroma collection + manifest, with safe concurrent writes."""

    def __init__(self, settings: Settings, embeddings=None):
        self.settings = settings
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        self._lease = StoreLease.take(settings.store_dir)  # first: a busy store is reported before slow imports
        from backends.knowledge.embeddings import load_embeddings  # torch and transformers: after the lease

        self.embeddings = embeddings or load_embeddings(settings)
        self._client, self.collection_name = _chroma_client(settings)
        # embedding_function=None: Chroma's downloading default is never used (vectors come from self.embeddings).
        self._collection = self._client.get_or_create_collection(
            self.collection_name, embedding_function=None, configuration=COLLECTION_CONFIGURATION)
        self._thread_lock = threading.Lock()
        self._journal = settings.store_dir / "journal.json"
        with self.writing():
            self._recover()

    @functools.cached_property
    def vectorstore(self):
        """The same collection as a langchain-chroma VectorStore, for langchain chains and retrievers.

        Built on first use only: importing langchain-chroma (langchain-core's tracers, langsmith)
        took ~1 s of a cold `python -m backends ask`, and `search` needs one Chroma query.
        """
        from langchain_chroma import Chroma

        return Chroma(collection_name=self.collection_name, embedding_function=self.embeddings, client=self._client,
                      collection_configuration=COLLECTION_CONFIGURATION)

    # ---- locking and recovery -------------------------------------------------------
    def writing(self):
        """Context manager: this process is the store's only writer while inside."""
        return _WriteLock(self._thread_lock, self.settings.store_dir / ".writer.lock")

    def close(self) -> None:
        """Release the Chroma client and the store (a store copy about to be deleted, another process waiting)."""
        with contextlib.suppress(Exception):  # a server client may have nothing to close
            self._client.close()
        self._lease.release()

    def _recover(self) -> None:
        """Drop chunks left by an interrupted write (the manifest is the truth)."""
        if not self._journal.exists():
            return
        try:
            doc_ids = json.loads(self._journal.read_text()).get("doc_ids", [])
        except ValueError:
            doc_ids = sorted({m["doc_id"] for m in self._collection.get(include=["metadatas"])["metadatas"]})
        manifest = self._read_manifest()
        for doc_id in doc_ids:
            self._drop_stale_chunks(doc_id, manifest.get(doc_id, {}).get("sha256"))
        self._journal.unlink()

    def _drop_stale_chunks(self, doc_id: str, keep_sha: str | None) -> None:
        where = {"doc_id": doc_id} if keep_sha is None else {"$and": [{"doc_id": doc_id}, {"doc_sha": {"$ne": keep_sha}}]}
        self._collection.delete(where=where)

    # ---- manifest ---------------------------------------------------------------------
    def _read_manifest(self) -> dict:
        path = self.settings.manifest_path
        if not path.exists():
            return {}
        return json.loads(path.read_text()).get("documents", {})

    def _write_manifest(self, documents: dict) -> None:
        _atomic_write_json(self.settings.manifest_path, {"version": 1, "documents": documents})

    def documents(self) -> list[DocumentRecord]:
        return sorted((DocumentRecord(**record) for record in self._read_manifest().values()), key=lambda d: d.name.lower())

    def snapshot(self) -> dict[str, str]:
        """doc_id -> sha256 of every document: what an adapter records to detect staleness."""
        return {doc_id: record["sha256"] for doc_id, record in self._read_manifest().items()}

    def chunk_count(self) -> int:
        return self._collection.count()

    # ---- ingest -----------------------------------------------------------------------
    def ingest_paths(self, paths: Iterable[str | Path]) -> list[IngestResult]:
        """Ingest files and folders (folders recursively, supported types only)."""
        return [self.ingest_file(path) for path in expand_paths(paths)]

    def ingest_file(self, path: str | Path) -> IngestResult:
        path = Path(path)
        try:
            data = self._read_limited(path)
        except BadInput as error:
            return IngestResult(name=str(path), status="rejected", reason=str(error))
        return self.ingest_bytes(path.name, data)

    def _read_limited(self, path: Path) -> bytes:
        if not path.is_file():
            raise BadInput("no such file")
        if path.stat().st_size > self.settings.max_upload_mb * 1024 * 1024:
            raise BadInput(f"the file is larger than the {self.settings.max_upload_mb} MB limit")
        return path.read_bytes()

    def ingest_bytes(self, name: str, data: bytes) -> IngestResult:
        """Index one document; the result says added, updated, duplicate or rejected (with why)."""
        name = safe_display_name(name)
        try:
            chunks, sha = self._prepare(name, data)
        except BadInput as error:
            return IngestResult(name=name, status="rejected", reason=str(error))
        duplicate_of = self._duplicate_of(sha)
        if duplicate_of:  # checked before the costly embedding, and again under the lock
            return IngestResult(name=name, status="duplicate", doc_id=duplicate_of)
        vectors = self.embeddings.embed_documents([embedding_text(c["text"], name, c["location"]) for c in chunks])
        with self.writing():
            manifest = self._read_manifest()
            duplicate_of = self._duplicate_of(sha, manifest)
            if duplicate_of:
                return IngestResult(name=name, status="duplicate", doc_id=duplicate_of)
            doc_id = make_doc_id(name, manifest)  # under the lock: two uploads of one name get one id
            status = "updated" if doc_id in manifest else "added"
            self._commit(doc_id, name, sha, data, chunks, vectors, manifest)
        return IngestResult(name=name, status=status, chunks=len(chunks), doc_id=doc_id)

    def _duplicate_of(self, sha: str, manifest: dict | None = None) -> str:
        manifest = self._read_manifest() if manifest is None else manifest
        return next((doc_id for doc_id, record in manifest.items() if record["sha256"] == sha), "")

    def _prepare(self, name: str, data: bytes) -> tuple[list[dict], str]:
        if len(data) > self.settings.max_upload_mb * 1024 * 1024:
            raise BadInput(f"the file is larger than the {self.settings.max_upload_mb} MB limit")
        segments = parse_isolated(name, data, self.settings)
        sha = sha256_bytes(data)
        return split_segments(segments, sha, self.settings.chunk_size, self.settings.chunk_overlap), sha

    def _commit(self, doc_id, name, sha, data, chunks, vectors, manifest) -> None:
        _atomic_write_json(self._journal, {"doc_ids": [doc_id]})
        ids = [c["id"] for c in chunks]
        metadatas = [
            {"doc_id": doc_id, "doc_sha": sha, "file_name": name, "location": c["location"],
             "start": c["start"], "end": c["end"], "chunk_index": i}
            for i, c in enumerate(chunks)
        ]
        for first in range(0, len(ids), UPSERT_BATCH):
            batch = slice(first, first + UPSERT_BATCH)
            self._collection.upsert(
                ids=ids[batch], embeddings=vectors[batch], metadatas=metadatas[batch], documents=[c["text"] for c in chunks[batch]]
            )
            pause_point("ingest-commit")
        manifest[doc_id] = {
            "doc_id": doc_id, "name": name, "sha256": sha, "chunks": len(chunks),
            "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "size_bytes": len(data), "file_type": file_type(name).lstrip("."),
        }
        self._write_manifest(manifest)
        self._drop_stale_chunks(doc_id, sha)
        self._journal.unlink()

    # ---- delete -----------------------------------------------------------------------
    def delete(self, doc_id: str) -> DocumentRecord:
        with self.writing():
            manifest = self._read_manifest()
            if doc_id not in manifest:
                raise BadInput(f"no document with id {doc_id!r}; `python -m backends docs list` shows the ids")
            record = DocumentRecord(**manifest.pop(doc_id))
            _atomic_write_json(self._journal, {"doc_ids": [doc_id]})
            self._write_manifest(manifest)
            self._drop_stale_chunks(doc_id, None)
            self._journal.unlink()
        return record

    def revise_chunk(self, chunk_id: str, old: str, new: str) -> Source:
        """A what-if edit (the freshness demos run it on a copy of the store): `old` becomes `new` in one chunk, which
        is embedded again; its document counts as changed (a new sha in the manifest), as an edited upload would."""
        with self.writing():
            found = self._collection.get(ids=[chunk_id], include=["documents", "metadatas"])
            if not found["ids"] or old not in found["documents"][0]:
                raise BadInput(f"chunk {chunk_id!r} does not hold {old!r}")
            text, meta = found["documents"][0].replace(old, new, 1), found["metadatas"][0]
            vector = self.embeddings.embed_documents([embedding_text(text, meta["file_name"], meta["location"])])
            manifest = self._read_manifest()
            sha = sha256_bytes(f"{manifest[meta['doc_id']]['sha256']}:{chunk_id}:{new}".encode())
            self._collection.upsert(ids=[chunk_id], embeddings=vector, metadatas=[{**meta, "doc_sha": sha}], documents=[text])
            manifest[meta["doc_id"]]["sha256"] = sha
            self._write_manifest(manifest)
        return _source(chunk_id, text, {**meta, "doc_sha": sha}, 1.0)

    def add_synthetic_chunks(self, ids: list[str], texts: list[str], vectors) -> None:
        """Fill the collection with ready-made vectors and no manifest entry: benchmark stores only."""
        for first in range(0, len(ids), UPSERT_BATCH * 4):
            batch = slice(first, first + UPSERT_BATCH * 4)
            self._collection.add(ids=ids[batch], documents=texts[batch], embeddings=vectors[batch],
                                 metadatas=[{"doc_id": "synthetic", "file_name": "synthetic.txt"}] * len(ids[batch]))

    # ---- read -------------------------------------------------------------------------
    def chunks_of(self, doc_id: str) -> list[Source]:
        """All chunks of a document in reading order (for previews)."""
        found = self._collection.get(where={"doc_id": doc_id}, include=["metadatas", "documents"])
        sources = [_source(cid, text, meta, 1.0) for cid, text, meta in zip(found["ids"], found["documents"], found["metadatas"])]
        return sorted(sources, key=lambda s: s.start)

    def search(self, query: str, k: int) -> tuple[list[Source], float, float]:
        """The k nearest chunks, with the seconds spent embedding the query and retrieving."""
        started = time.perf_counter()
        vector = self.embeddings.embed_query(query)
        embedded = time.perf_counter()
        sources, retrieve_s = self.nearest(vector, k)
        return sources, embedded - started, retrieve_s

    def nearest(self, vector: list[float], k: int) -> tuple[list[Source], float]:
        """The k chunks nearest to an embedded query, with the seconds spent retrieving."""
        started = time.perf_counter()
        found = self._collection.query(query_embeddings=[vector], n_results=k,
                                       include=["documents", "metadatas", "distances"]) if self.chunk_count() else None
        hits = zip(found["ids"][0], found["documents"][0], found["metadatas"][0], found["distances"][0]) if found else []
        sources = [_source(cid, text, meta, 1.0 - distance) for cid, text, meta, distance in hits]
        return sources, time.perf_counter() - started

    def lexicon(self) -> Lexicon:
        """The chunks' BM25 index, built again when the documents changed (a few ms per hundred chunks)."""
        manifest = self.settings.manifest_path
        stat = manifest.stat() if manifest.exists() else None
        key = (stat and (stat.st_mtime_ns, stat.st_size), self.chunk_count())  # the manifest is replaced at every write
        if getattr(self, "_lexicon_key", None) != key:
            found = self._collection.get(include=["documents", "metadatas"])
            chunks = [(cid, embedding_text(text, meta.get("file_name", ""), meta.get("location", "")))
                      for cid, text, meta in zip(found["ids"], found["documents"], found["metadatas"])]
            self._lexicon, self._lexicon_key = Lexicon.of(chunks), key
        return self._lexicon

    def hybrid(self, question: str, vector: list[float], k: int) -> tuple[list[Source], float]:
        """The k best chunks by the question's meaning and its words (dense and BM25 rankings fused by rank),
        each with its cosine score; with the seconds spent."""
        started = time.perf_counter()
        pool = max(3 * k, 10)
        dense, _ = self.nearest(vector, pool)
        lexical = self.lexicon().search(question, pool)
        chosen = fuse([[s.chunk_id for s in dense], [chunk_id for chunk_id, _ in lexical]], k)
        known = {s.chunk_id: s for s in dense}
        missing = [chunk_id for chunk_id in chosen if chunk_id not in known]
        if missing:  # found by their words alone: their cosine from the stored vectors
            found = self._collection.get(ids=missing, include=["documents", "metadatas", "embeddings"])
            for cid, text, meta, stored in zip(found["ids"], found["documents"], found["metadatas"], found["embeddings"]):
                known[cid] = _source(cid, text, meta, sum(a * b for a, b in zip(vector, stored)))
        # A chunk removed since the BM25 index was built (a write in progress) is left out.
        return [known[chunk_id] for chunk_id in chosen if chunk_id in known], time.perf_counter() - started

    def stats(self) -> dict:
        docs = self.documents()
        return {
            "documents": len(docs),
            "chunks": self.chunk_count(),
            "bytes": sum(d.size_bytes for d in docs),
            "by_type": {t: sum(1 for d in docs if d.file_type == t) for t in sorted({d.file_type for d in docs})},
        }


def _source(chunk_id: str, text: str, meta: dict, score: float) -> Source:
    return Source(
        chunk_id=chunk_id, doc_id=meta.get("doc_id", ""), file_name=meta.get("file_name", ""),
        location=meta.get("location", ""), text=text, score=round(float(score), 4), start=int(meta.get("start", 0)),
    )


def split_segments(segments: list[Segment], doc_sha: str, chunk_size: int, chunk_overlap: int) -> list[dict]:
    """Chunks with text, location, character offsets (in the segments joined by blank lines) and content ids."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)
    chunks, offset = [], 0
    for segment in segments:
        if segment.splittable:
            pieces = [(d.page_content, d.metadata["start_index"]) for d in splitter.create_documents([segment.text])]
        else:
            pieces = [(segment.text, 0)]
        for text, start in pieces:
            begin = offset + max(start, 0)
            chunk_id = hashlib.sha256(f"{doc_sha}:{begin}:{text}".encode()).hexdigest()[:24]
            chunks.append({"id": chunk_id, "text": text, "location": segment.location, "start": begin, "end": begin + len(text)})
        offset += len(segment.text) + 2
    return chunks


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the supported files inside given folders (sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and file_type(p.name) in SUPPORTED_TYPES))
        else:
            found.append(path)
    return found


def _chroma_client(settings: Settings):
    """The embedded store in store_dir/chroma, or a `chroma run` server (setting chroma_server = host:port).

    On a server, each store folder gets its own collection (named from the folder's path), so
    several stores can share one server; the manifest and locks stay in the store folder.
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    quiet = ChromaSettings(anonymized_telemetry=False)
    if not settings.chroma_server:
        return chromadb.PersistentClient(path=str(settings.chroma_dir), settings=quiet), COLLECTION
    host, port = settings.chroma_server.rsplit(":", 1)
    try:
        client = chromadb.HttpClient(host=host, port=int(port), settings=quiet)
        client.heartbeat()
    except Exception as error:  # connection refused, timeout, not a Chroma server
        raise StoreUnavailable(f"cannot reach the Chroma server at {settings.chroma_server} ({type(error).__name__}); "
                               f"start it with `chroma run --path DIR --port {port}` or unset DUET_CHROMA_SERVER") from None
    folder_key = hashlib.sha256(str(settings.store_dir.resolve()).encode()).hexdigest()[:16]
    return client, f"{COLLECTION}-{folder_key}"


class StoreLease:
    """One process per store: the first to open it holds it until it closes it or exits.

    Chroma's embedded store must not be written by two processes, so a second process
    opening the same store is told at once who has it, instead of waiting on a lock.
    Several indexes of the same process share the lease (counted).
    """

    _held: dict[str, "StoreLease"] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, handle):
        self.path, self.handle, self.users = path, handle, 0

    @classmethod
    def take(cls, store_dir: Path) -> "StoreLease":
        import fcntl

        key = str(store_dir.resolve())
        with cls._guard:
            lease = cls._held.get(key)
            if lease is None:
                path = store_dir / ".store.lock"
                handle = open(path, "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    raise StoreInUse(f"the store {store_dir} is in use by {holder}; close it (or stop the app), "
                                     "or use another --store / DUET_STORE") from None
                handle.seek(0)
                handle.truncate()
                handle.write(f"process {os.getpid()} ({' '.join(sys.argv[:2])[-80:]})")
                handle.flush()
                lease = cls._held[key] = cls(path, handle)
            lease.users += 1
            return lease

    def release(self) -> None:
        import fcntl

        with self._guard:
            self.users -= 1
            if self.users == 0 and self.handle is not None:
                fcntl.flock(self.handle, fcntl.LOCK_UN)
                self.handle.close()
                self.handle = None
                self._held.pop(str(self.path.parent.resolve()), None)


class _WriteLock:
    """One writer per store: a thread lock inside the process, a file lock across processes."""

    def __init__(self, thread_lock: threading.Lock, path: Path, wait_s: float = 10.0):
        self.thread_lock, self.path, self.wait_s = thread_lock, path, wait_s
        self.file_lock = None

    def __enter__(self):
        from filelock import FileLock, Timeout

        self.thread_lock.acquire()
        self.file_lock = FileLock(str(self.path))
        try:
            self.file_lock.acquire(timeout=self.wait_s)
        except Timeout:
            self.thread_lock.release()
            raise StoreInUse(
                f"the store {self.path.parent} is in use by another process that is writing to it; "
                "wait for it to finish, or use another --store"
            ) from None
        return self

    def __exit__(self, *exc):
        self.file_lock.release()
        self.thread_lock.release()
