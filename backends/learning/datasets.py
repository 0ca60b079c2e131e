"""A fine-tuning dataset built from the index: facts, question wordings, filters, a held-out split, atomic save.

    plan -> facts (facts.facts_of) -> wordings (K+1 per fact for training, one of up to three more held out)
         -> filters (instructions, empty or overlong, low quality, below the floor, near-duplicates)
         -> split (eval questions ask for trained facts in wordings training never saw, and retrieval finds them)
         -> rows (qa | raft | text) -> save (train.jsonl, eval.jsonl, dataset.json, all or nothing)

The eval rows carry the short answer and the source file, so `eval --set` scores them as it
scores the hand-written set (gold contained, recall@k).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from backends.core.config import BUNDLED
from backends.core.errors import BadInput
from backends.core.faults import pause_point
from backends.core.jobs import BackgroundJob, Cancelled, Eta
from backends.core.text import looks_like_instruction
from backends.core.types import Source
from backends.knowledge.index import DocumentIndex
from backends.learning.facts import Fact, facts_of
from backends.learning.naturalness import passes_floor
from backends.learning.questions import MIN_QUALITY, named_subject

FORMATS = ("qa", "raft", "text")
DEFAULT_PARAPHRASES = 0  # measured best for the 2-core training budget (docs/quality.md)
MAX_PARAPHRASES = 10
# Two questions whose all-MiniLM-L6-v2 embeddings have at least this cosine are the same question: kept once in
# training, and an eval question this close to any training question is never used (the leakage guard).
NEAR_DUPLICATE = 0.95
SAME_WORDS = 0.99  # two wordings of one fact this close differ in punctuation or a filler word only
# Wordings beyond the K+1 trained that a held-out question may be chosen from (the first one unlike the trained)
HELD_OUT_CHOICES = 3
MIN_QUESTION_WORDS, MAX_QUESTION_CHARS, MAX_ANSWER_CHARS = 3, 300, 600
# RAFT's P (Zhang et al. 2024); two distractors beside the gold: the three sources RAG's default top-k gives at answering
RAFT_GOLD_SHARE, RAFT_DISTRACTORS = 0.8, 2
FILES = ("train.jsonl", "eval.jsonl", "dataset.json")
# Seconds per chunk on 2 cores, for the estimate shown before a build: fixed, and per candidate wording (the demo
# corpus: 15 s for K=0, 38 s for K=3; docs/quality.md).
SECONDS_PER_CHUNK, SECONDS_PER_WORDING = 0.005, 0.008


@dataclass(frozen=True)
class DatasetOptions:
    paraphrases: int = DEFAULT_PARAPHRASES
    format: str = "qa"
    eval_share: float = 0.2
    seed: int = 0
    doc_ids: tuple[str, ...] = ()

    def check(self) -> None:
        if not 0 <= self.paraphrases <= MAX_PARAPHRASES:
            raise BadInput(f"--paraphrases must be between 0 and {MAX_PARAPHRASES}")
        if self.format not in FORMATS:
            raise BadInput(f"unknown format {self.format!r}: choose from {', '.join(FORMATS)}")
        if not 0 <= self.eval_share < 1:
            raise BadInput("--eval-share must be at least 0 and below 1")


@dataclass(frozen=True)
class BuildProgress:
    done: int
    total: int
    stage: str
    eta_s: float


@dataclass(frozen=True)
class Plan:
    """What a build will read, known before it starts."""

    chunks: list[Source]
    documents: dict[str, str]  # doc_id -> sha256
    estimate_s: float


@dataclass
class Dataset:
    """A built dataset, before it is saved: the page reviews and edits `train`."""

    train: list[dict]
    eval: list[dict]
    manifest: dict = field(default_factory=dict)


class DatasetCancelled(Cancelled):
    """The build was cancelled; nothing was written."""


def plan_build(index: DocumentIndex, options: DatasetOptions) -> Plan:
    """The chunks of the chosen documents (all by default) and the expected seconds; BadInput when there are none."""
    options.check()
    snapshot = index.snapshot()
    if not snapshot:
        raise BadInput("the index is empty: add documents first (`python -m backends ingest PATH`)")
    unknown = [d for d in options.doc_ids if d not in snapshot]
    if unknown:
        raise BadInput(f"no document with id {', '.join(map(repr, unknown))}; `python -m backends docs list` shows the ids")
    chosen = list(options.doc_ids) or sorted(snapshot)
    chunks = [chunk for doc_id in chosen for chunk in index.chunks_of(doc_id)]
    wordings = 6 * (options.paraphrases + 2)  # about six facts a chunk (measured on the demo corpus)
    return Plan(chunks, {d: snapshot[d] for d in chosen},
                round(len(chunks) * (SECONDS_PER_CHUNK + wordings * SECONDS_PER_WORDING), 1))


def uses_model(settings) -> bool:
    """Whether a build asks the LLM for wordings (setting `dataset_questions`)."""
    return settings.dataset_questions == "model" or (settings.dataset_questions == "auto" and settings.llm != BUNDLED)


def build_dataset(index: DocumentIndex, options: DatasetOptions,
                  on_progress: Callable[[BuildProgress], None] = lambda p: None,
                  cancel: threading.Event | None = None, llm=None, exclude: list[str] = ()) -> Dataset:
    """Build (not save) a dataset from the index; see the module docstring for the steps.

    With `llm` (see `uses_model`), each fact also gets one wording the model writes, filtered like the rest.
    `exclude`: questions asked elsewhere (an experiment's shared held-out set); no wording within NEAR_DUPLICATE
    of one is trained on.
    """
    started, cancel = time.perf_counter(), cancel or threading.Event()
    plan = plan_build(index, options)
    rng = random.Random(options.seed)
    work = _Work(plan, cancel, on_progress)

    facts: list[Fact] = []
    per_document: dict[str, int] = {doc_id: 0 for doc_id in plan.documents}
    named: dict[str, str] = {}
    for chunk in plan.chunks:
        if chunk.doc_id not in named:  # what the document is about, from its opening chunks
            named[chunk.doc_id] = named_subject([c.text for c in plan.chunks if c.doc_id == chunk.doc_id][:3])
        found = facts_of(chunk, named[chunk.doc_id])
        facts.extend(found)
        per_document[chunk.doc_id] += len(found)
        work.step("facts")
    written = _model_wordings(llm, facts, work) if llm is not None else 0
    removed = {"instruction": 0, "empty_or_overlong": 0, "low_quality": 0, "below_naturalness_floor": 0,
               "near_duplicate": 0, "unanswerable": 0}
    candidates = _candidates(facts, options.paraphrases + 1 + HELD_OUT_CHOICES, removed)
    kept = _drop_near_duplicates(index, candidates, removed, work)
    kept = _holding(kept, removed)
    if exclude:
        kept, removed["held_out_elsewhere"] = _without(index, kept, exclude)
    train, held_out, leaks = _split(kept, options, rng)
    held_out = [(fact, question) for fact, (question, _) in _round_trip(index, held_out, removed, work)]
    rows = _rows(index, train, options, rng)
    eval_rows = [_eval_row(fact, question) for fact, question in held_out]
    work.step("rows")
    manifest = {
        "format_version": 1,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": f"templates + {llm.name}" if llm is not None else "templates",
        "model_wordings": written,
        "format": options.format,
        "paraphrases": options.paraphrases,
        "eval_share": options.eval_share,
        "seed": options.seed,
        "thresholds": {"near_duplicate_cosine": NEAR_DUPLICATE, "round_trip_top_k": index.settings.top_k,
                       "raft_gold_share": RAFT_GOLD_SHARE, "raft_distractors": RAFT_DISTRACTORS},
        "source_index": {"store": str(index.settings.store_dir), "documents": plan.documents,
                         "snapshot_sha256": _sha(json.dumps(plan.documents, sort_keys=True).encode())},
        "counts": {"documents": len(plan.documents), "chunks": len(plan.chunks), "facts": len(facts),
                   "candidate_questions": sum(len(q) for _, q in candidates), "train": len(rows),
                   "eval": len(eval_rows), "train_facts": len(train), "eval_facts": len(held_out)},
        "filters": {**removed, "eval_leakage": leaks},
        "per_document": per_document,
        "documents_without_facts": sorted(d for d, n in per_document.items() if n == 0),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return Dataset(rows, eval_rows, manifest)


class _Work:
    """Progress over the build's steps: chunks, then every candidate question twice (dedupe, round trip)."""

    def __init__(self, plan: Plan, cancel, on_progress):
        self.cancel, self.on_progress, self.eta = cancel, on_progress, Eta()
        self.done, self.total = 0, len(plan.chunks) + 1

    def grow(self, units: int) -> None:
        self.total += units

    def step(self, stage: str, units: int = 1) -> None:
        if self.cancel.is_set():
            raise DatasetCancelled("building the dataset was cancelled; nothing was written")
        self.done += units
        self.on_progress(BuildProgress(self.done, self.total, stage, self.eta.seconds_left(self.done, self.total) or 0.0))


REWORD_WINDOW = 16
REWORD_PROMPT = ("Rewrite the user's question in different words, as another person would ask it. Keep every name, "
                 "number and code exactly. Reply with the new question only.")


def _model_wordings(llm, facts: list[Fact], work: _Work) -> int:
    """One more wording per fact from the LLM, placed second; kept only if it keeps the question's names, numbers
    and codes, does not give the answer away, and reads as a question. Returns how many were kept."""
    from backends.engines.scheduler import Done, chat_request  # here: a template-only build never loads torch

    work.grow(len(facts))

    def submitted(fact: Fact):
        request = chat_request(llm, [{"role": "system", "content": REWORD_PROMPT},
                                     {"role": "user", "content": fact.questions[0]}], 48)
        llm.decoder.submit(request)
        return fact, request

    # A window of rows in flight: the decoder runs them together in rounds, memory stays bounded and progress moves.
    pending, queued, kept = [], iter(facts), 0
    try:
        while True:
            while len(pending) < REWORD_WINDOW and (fact := next(queued, None)) is not None:
                pending.append(submitted(fact))
            if not pending:
                return kept
            fact, request = pending.pop(0)
            item = request.output.get()
            while not isinstance(item, (Done, BaseException)):
                item = request.output.get()
            if isinstance(item, BaseException):
                raise item
            question = " ".join(item.text.split()).strip('"')
            if _fair_rewording(fact, question):
                fact.questions.insert(1, question)
                kept += 1
            work.step("model wordings")
    finally:  # a cancelled build stops the rows still running
        for _, request in pending:
            request.cancelled.set()


def _fair_rewording(fact: Fact, question: str) -> bool:
    original = fact.questions[0]
    exact = set(re.findall(r"\b(?:\w*\d\w*|[A-Z][\w-]+)\b", original[1:]))
    return (question.endswith("?") and 3 <= len(question.split()) <= 40 and question.lower() != original.lower()
            and fact.answer.lower() not in question.lower() and all(term in question for term in exact))


def _candidates(facts: list[Fact], per_fact: int, removed: dict) -> list[tuple[Fact, list[str]]]:
    """Each fact's first `per_fact` usable wordings (training takes K+1, the split may hold one out)."""
    found = []
    for fact in facts:
        if looks_like_instruction(fact.sentence):
            removed["instruction"] += 1
            continue
        if len(fact.sentence) > MAX_ANSWER_CHARS:
            removed["empty_or_overlong"] += 1
            continue
        if fact.score < MIN_QUALITY:  # fewer, better questions: learning/questions.py
            removed["low_quality"] += 1
            continue
        if not passes_floor(fact.questions[0], fact.answer):  # the other wordings are made from the first
            removed["below_naturalness_floor"] += len(fact.questions)
            continue
        usable = []
        for question in fact.questions:
            if looks_like_instruction(question):
                removed["instruction"] += 1
            elif len(question.split()) < MIN_QUESTION_WORDS or len(question) > MAX_QUESTION_CHARS:
                removed["empty_or_overlong"] += 1
            elif not passes_floor(question, fact.answer):  # learning/naturalness.py
                removed["below_naturalness_floor"] += 1
            else:
                usable.append(question)
            if len(usable) == per_fact:
                break
        if usable:
            found.append((fact, usable))
    return found


def _unit_vectors(index: DocumentIndex, texts: list[str]):
    import numpy as np

    vectors = np.asarray(index.embeddings.embed_documents(texts), dtype=np.float32) if texts else np.zeros((0, 1))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _drop_near_duplicates(index, candidates, removed: dict, work: _Work) -> list[tuple[Fact, list[tuple[str, object]]]]:
    """Keep a question only if no question of another fact kept before it has cosine >= NEAR_DUPLICATE with it,
    and no wording of its own fact >= SAME_WORDS."""
    import numpy as np

    texts = [q for _, questions in candidates for q in questions]
    work.grow(len(texts))
    vectors = _unit_vectors(index, texts)
    work.step("embedding questions", len(texts))
    kept_vectors = np.zeros((len(texts), vectors.shape[1] if len(texts) else 1), dtype=np.float32)
    kept_count, kept, at = 0, [], 0
    for fact, questions in candidates:
        mine, others = [], kept_count
        for question in questions:
            vector = vectors[at]
            at += 1
            if (others and float((kept_vectors[:others] @ vector).max()) >= NEAR_DUPLICATE) or \
                    any(float(v @ vector) >= SAME_WORDS for _, v in mine):
                removed["near_duplicate"] += 1
                continue
            kept_vectors[kept_count] = vector
            kept_count += 1
            mine.append((question, vector))
        if mine:
            kept.append((fact, mine))
    return kept


def _holding(kept, removed: dict):
    """The facts whose chunk holds the answer where the fact says (a chunk re-split since would not)."""
    survivors = []
    for fact, questions in kept:
        if fact.chunk.text[fact.start:fact.end] == fact.answer and fact.answer.strip():
            survivors.append((fact, questions))
        else:
            removed["unanswerable"] += len(questions)
    return survivors


def _round_trip(index, held_out, removed: dict, work: _Work):
    """Keep a held-out question only when retrieval finds its fact's chunk: RAG is asked only what it can find.
    Training keeps every wording: fine-tuning needs no retrieval."""
    top_k, survivors = index.settings.top_k, []
    work.grow(len(held_out))
    for fact, (question, vector) in held_out:
        found, _ = index.hybrid(question, vector.tolist(), top_k)
        if any(s.chunk_id == fact.chunk.chunk_id for s in found):
            survivors.append((fact, (question, vector)))
        else:
            removed["unanswerable"] += 1
        work.step("round-trip retrieval")
    return survivors


def _without(index, kept, exclude: list[str]):
    """The wordings not within NEAR_DUPLICATE of any excluded question, and how many were removed."""
    banned, removed, survivors = _unit_vectors(index, list(exclude)), 0, []
    texts = {q.strip().lower() for q in exclude}
    for fact, questions in kept:
        mine = [(q, v) for q, v in questions
                if q.strip().lower() not in texts and float((banned @ v).max()) < NEAR_DUPLICATE]
        removed += len(questions) - len(mine)
        if mine:
            survivors.append((fact, mine))
    return survivors, removed


def _split(kept, options: DatasetOptions, rng: random.Random):
    """(train facts with their wordings, held-out (fact, question) pairs, eval candidates refused as leaks).

    An eval fact keeps K+1 of its other wordings in training; its held-out wording is the best one (first) that no
    training wording of it comes within NEAR_DUPLICATE of.
    """
    import numpy as np

    trained_count = options.paraphrases + 1
    eligible = [i for i, (_, questions) in enumerate(kept) if len(questions) >= trained_count + 1]
    wanted = round(options.eval_share * len(kept))
    held = set(rng.sample(eligible, min(wanted, len(eligible))))
    train, held_out = [], []
    for i, (fact, questions) in enumerate(kept):
        if i in held:
            for pick, (question, vector) in enumerate(questions):
                others = [q for j, q in enumerate(questions) if j != pick][:trained_count]
                if max(float(vector @ w) for _, w in others) < NEAR_DUPLICATE:
                    break
            held_out.append((fact, questions[pick]))
            train.append((fact, [q for j, q in enumerate(questions) if j != pick][:trained_count]))
        else:
            train.append((fact, questions[:trained_count]))
    # The guard: no eval question is a training question or a near-duplicate of one, whatever the steps above did.
    trained = [(q.lower(), v) for _, questions in train for q, v in questions]
    matrix = np.stack([v for _, v in trained]) if trained else None
    texts = {q for q, _ in trained}
    safe = [(fact, (q, v)) for fact, (q, v) in held_out
            if q.lower() not in texts and (matrix is None or float((matrix @ v).max()) < NEAR_DUPLICATE)]
    return [(fact, [q for q, _ in questions]) for fact, questions in train], safe, len(held_out) - len(safe)


def _provenance(fact: Fact) -> dict:
    """Where the answer is: offsets into the chunk's text, and into the document's (`document_start`)."""
    return {"source": fact.chunk.file_name, "doc_id": fact.chunk.doc_id, "chunk_id": fact.chunk.chunk_id,
            "evidence": {"start": fact.start, "end": fact.end, "text": fact.answer,
                         "document_start": fact.chunk.start + fact.start}}


def _eval_row(fact: Fact, question: str) -> dict:
    return {"question": question, "answer": " ".join(fact.answer.split()), "quality": fact.score, **_provenance(fact)}


def _rows(index: DocumentIndex, train, options: DatasetOptions, rng: random.Random) -> list[dict]:
    if options.format == "text":
        return _text_rows(train, options)
    rows = []
    for fact, questions in train:
        for number, question in enumerate(questions):
            answer = fact.answers[number % len(fact.answers)] if options.paraphrases else fact.answers[0]
            row = {"question": question, "answer": answer, "quality": fact.score, **_provenance(fact)}
            if options.format == "raft":
                row.update(_raft(index, fact, question, rng))
            rows.append(row)
    return rows


def _raft(index: DocumentIndex, fact: Fact, question: str, rng: random.Random) -> dict:
    """RAFT: the gold chunk among distractors the retriever would also bring (gold dropped in 1 - P of rows);
    the answer quotes its evidence, then answers."""
    found = index.search(question, RAFT_DISTRACTORS + 1)[0]
    distractors = [s for s in found if s.chunk_id != fact.chunk.chunk_id][:RAFT_DISTRACTORS]
    with_gold = rng.random() < RAFT_GOLD_SHARE
    context = distractors + ([fact.chunk] if with_gold else [])
    rng.shuffle(context)
    return {"context": [{"file_name": s.file_name, "location": s.location, "text": s.text} for s in context],
            "gold_in_context": with_gold, "answer": f'Quote: "{fact.sentence}" Answer: {fact.answer}'}


def _text_rows(train, options: DatasetOptions) -> list[dict]:
    """The chunks as plain text, and K copies with each fact's sentence in another wording (continued pretraining)."""
    by_chunk: dict[str, list[Fact]] = {}
    for fact, _ in train:
        by_chunk.setdefault(fact.chunk.chunk_id, []).append(fact)
    rows = []
    for facts in by_chunk.values():
        chunk = facts[0].chunk
        # A sentence that addresses the model is never trained on, in this format either.
        plain = "".join(piece for piece in re.split(r"(?<=[.!?])(\s+)", chunk.text) if not looks_like_instruction(piece))
        for number in range(options.paraphrases + 1):
            text = plain
            for fact in facts:
                text = text.replace(fact.sentence, fact.answers[number % len(fact.answers)], 1)
            rows.append({"text": text, "source": chunk.file_name, "doc_id": chunk.doc_id, "chunk_id": chunk.chunk_id})
    return rows


# ---- saving -------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def save_dataset(dataset: Dataset, out: str | Path) -> Path:
    """Write the three files into `out` all or nothing (a temporary folder beside it, then renames,
    the manifest last); the manifest records the files' hashes and its own id."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} is a file: --out needs a folder")
    if not dataset.train:
        raise BadInput("the dataset has no training rows: choose other documents, or add documents that state facts")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        train, evaluation = _jsonl(dataset.train), _jsonl(dataset.eval)
        manifest = {**dataset.manifest, "files": {"train.jsonl": _sha(train), "eval.jsonl": _sha(evaluation)}}
        manifest["id"] = _sha(json.dumps(manifest, sort_keys=True).encode())[:16]
        (work / "train.jsonl").write_bytes(train)
        (work / "eval.jsonl").write_bytes(evaluation)
        (work / "dataset.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        pause_point("dataset-save")
        out.mkdir(exist_ok=True)
        for name in FILES:  # dataset.json last: a reader that finds it finds the files it describes
            os.replace(work / name, out / name)
        dataset.manifest = manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def manifest_beside(data_path: Path) -> tuple[dict, str] | None:
    """The dataset.json next to a training file, with its sha256, when the file came from `dataset build`."""
    path = Path(data_path).parent / "dataset.json"
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    return (manifest, _sha(data)) if isinstance(manifest, dict) else None


class DatasetJob(BackgroundJob):
    """A build in a background thread, watched by the Fine-tune page; `result` is the unsaved Dataset."""

    what = "building the dataset"

    def __init__(self, index: DocumentIndex, options: DatasetOptions, llm=None):
        super().__init__("dataset")
        self.index, self.options, self.llm = index, options, llm

    def work(self, on_progress, cancel: threading.Event) -> Dataset:
        return build_dataset(self.index, self.options, on_progress, cancel, self.llm)


def saved_datasets(store_dir: Path) -> list[tuple[str, Path, dict]]:
    """(name, folder, manifest) of every dataset saved in the store, newest first."""
    found = []
    for folder in (Path(store_dir) / "datasets").glob("*/"):
        built = manifest_beside(folder / "train.jsonl")
        if built is not None and (folder / "train.jsonl").is_file():
            found.append((folder.name, folder, built[0]))
    return sorted(found, key=lambda f: f[2].get("created_at", ""), reverse=True)


def edited(dataset: Dataset, rows: list[dict]) -> Dataset:
    """The dataset with its training rows as a reviewer left them (dropped or corrected), the edit recorded."""
    before = {json.dumps(r, sort_keys=True) for r in dataset.train}
    changed = sum(json.dumps(r, sort_keys=True) not in before for r in rows)
    trained = {r["question"].strip().lower() for r in rows if isinstance(r.get("question"), str)}
    kept_eval = [r for r in dataset.eval if r["question"].strip().lower() not in trained]  # an edit may not leak
    manifest = {**dataset.manifest, "reviewed": {"rows_before": len(dataset.train), "rows_after": len(rows),
                                                 "rows_changed": changed,
                                                 "eval_dropped_as_leaks": len(dataset.eval) - len(kept_eval)}}
    manifest["counts"] = {**manifest.get("counts", {}), "train": len(rows), "eval": len(kept_eval)}
    return Dataset(rows, kept_eval, manifest)
