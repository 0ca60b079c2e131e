"""Shared result types: every backend returns an `Answer`, every ingest an `IngestResult`.

Pages, the CLI, evaluation and bench only ever see these frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

# What long work reports as it goes (model conversion, loading): one line of text a step.
Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A Progress that shows nothing."""


@dataclass(frozen=True)
class Source:
    """One retrieved chunk and where it came from."""

    chunk_id: str
    doc_id: str
    file_name: str
    location: str  # "page 3", "section Travel", "rows 2-9" or ""
    text: str
    score: float  # cosine similarity, higher is closer
    start: int = 0  # character offset of the chunk in the document's text
    in_top_k: bool = True  # False: shown because the answer's evidence came from it, though retrieval ranked it below k


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage; stages a backend does not have stay 0."""

    embed: float = 0.0
    retrieve: float = 0.0
    prompt: float = 0.0
    first_token: float = 0.0
    generate: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Answer:
    """The one result type of both backends."""

    backend: str  # "rag" | "ft"
    question: str
    text: str
    sources: tuple[Source, ...] = ()
    timings: Timings = field(default_factory=Timings)
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_per_s: float = 0.0
    model: str = ""
    adapter: str | None = None
    abstained: bool = False  # the documents did not hold an answer: the text says so, and makes no claim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FailedAnswer:
    """A request of a batch (evaluation, experiment) that raised instead of answering: reported, never scored."""

    backend: str
    question: str
    error: str  # "TypeName: message"


# A streaming answer yields text pieces, then the final Answer.
AnswerStream = Iterator[Union[str, Answer]]


def final_answer(stream: AnswerStream) -> Answer:
    """Drain a stream and return its final Answer."""
    for item in stream:
        if isinstance(item, Answer):
            return item
    raise RuntimeError("answer stream ended without an Answer")


@dataclass(frozen=True)
class QAItem:
    """A question with its gold answer and, when known, the document that holds it."""

    question: str
    answer: str
    source: str = ""


@dataclass(frozen=True)
class DocumentRecord:
    """A document in the index manifest."""

    doc_id: str
    name: str
    sha256: str
    chunks: int
    added_at: str  # ISO 8601, UTC
    size_bytes: int = 0
    file_type: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What happened to one file: status is 'added', 'updated', 'duplicate' or 'rejected'."""

    name: str
    status: str
    chunks: int = 0
    doc_id: str = ""
    reason: str = ""

    def describe(self) -> str:
        """The CLI contract's per-file wording."""
        if self.status == "added":
            return f"added {self.chunks} chunks"
        if self.status == "updated":
            return f"added {self.chunks} chunks (replaced the previous version)"
        if self.status == "duplicate":
            return "skipped (duplicate)"
        return f"rejected: {self.reason}"


@dataclass(frozen=True)
class Evidence:
    """A span that may support a claim: a sentence of a document or a training example."""

    text: str
    kind: str  # "retrieved" (the answer's own sources), "index" (whole index) or "training"
    file_name: str = ""
    location: str = ""
    doc_id: str = ""
    similarity: float = 0.0  # cosine of claim and evidence embeddings
    overlap: float = 0.0  # share of the claim's content words found in the evidence
    score: float = 0.0  # the support score the verdict is based on
    asked: str = ""  # a training example's question: what its answer answers


@dataclass(frozen=True)
class Claim:
    """One sentence of an answer with its verdict ('supported', 'partly supported', 'unsupported')."""

    text: str
    verdict: str
    evidence: Evidence | None = None
    reason: str = ""  # why this verdict, in words ("number 60 not in the evidence")
    origin: str = ""  # fine-tuned answers: "training data", "documents only" or "nowhere"
    answers: bool | None = None  # whether it addresses the question (None: not judged)

    @property
    def grounded(self) -> bool:
        """Supported by a source and addressing the question: what groundedness counts."""
        return self.verdict == "supported" and self.answers is not False

    @property
    def label(self) -> str:
        """The verdict as shown: "supported · does not answer the question" for a true claim beside the point."""
        if self.reason.startswith("wrong abstention"):  # the claim is an abstention whose sources held an answer
            return "wrong abstention"
        return f"{self.verdict} · does not answer the question" if self.answers is False else self.verdict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Agreement:
    """How two answers relate, claim by claim."""

    both: tuple[tuple[str, str], ...] = ()  # (claim of A, matching claim of B)
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    conflicts: tuple[tuple[str, str, str], ...] = ()  # (claim of A, claim of B, what differs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Comparison:
    """One question answered by several backends, with the claims of each answer traced."""

    question: str
    answers: dict[str, Answer]  # backend name -> Answer, in column order
    claims: dict[str, tuple[Claim, ...]] = field(default_factory=dict)
    agreement: Agreement | None = None  # between "rag" and "ft", when both answered
    asked_at: str = ""  # ISO 8601, UTC

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
