"""The RAG backend: retrieve chunks by meaning and by words, choose the evidence for the question, answer or abstain.

Two answer modes (setting `rag_mode`):
- extractive (default): every whole sentence of the retrieved chunks is a candidate, scored
  for the question (`rank_evidence`); the model then copies one of the best ones whole with
  copy-constrained decoding, so an answer is always one sentence of one source, never pieces
  of several. A tiny model answers far better choosing than writing (docs/architecture.md).
- free: the model writes freely from all retrieved chunks (for bigger models).

In both, and with an adapter (RAG + fine-tuned), a question whose best evidence scores
below `ABSTAIN_BELOW` gets "The documents do not say." (an abstention, with the sources
still shown) instead of a copy of whatever was nearest.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from backends.answering.evidence import candidates, says_something_new
from backends.answering.prompts import build_messages, check_question
from backends.answering.relevance import answer_type_fit, key_terms, wants_type
from backends.answering.streaming import answer_from_stream
from backends.core.config import Settings
from backends.core.types import Answer, AnswerStream, Source, Timings
from backends.engines.base import LoadedLLM
from backends.knowledge.index import DocumentIndex

COMBINED = "rag_ft"  # the backend name of retrieval + fine-tuned model
ABSTENTION = "The documents do not say."
# Evidence score = cosine + LEXICAL_WEIGHT * coverage of the question's rare words + TYPE_WEIGHT * answer type fit;
# the answer's confidence is its best evidence's score less UNKNOWN_PENALTY * the share of the question's rarity in
# words no document holds, less UNTYPED_PENALTY when the question asks for a kind of answer (a number, a name, an
# option) and the evidence holds none. A key term (a name, code or number of the question) in no document means
# abstaining; evidence of the asked kind covering KEEP_COVERAGE of the question's rarity means answering.
# Chosen by scripts/calibrate_rag.py on the tune sets only (docs/quality.md, "RAG on documents nobody here wrote").
LEXICAL_WEIGHT = 2.0
TYPE_WEIGHT = 0.0
UNKNOWN_PENALTY = 0.0
UNTYPED_PENALTY = 0.7
KEEP_COVERAGE = 0.6
UNKNOWN_MAX = 0.45  # abstain when this share of the question's rarity is in words no document holds
ABSTAIN_BELOW = 1.14
EVIDENCE_POOL = 2  # sentences are chosen from this many times top_k chunks; top_k are shown, and the evidence's own

@dataclass(frozen=True)
class Weights:
    """How evidence is scored and when RAG abstains (scripts/calibrate_rag.py chooses them on a calibration split)."""

    lexical: float = LEXICAL_WEIGHT
    answer_type: float = TYPE_WEIGHT
    unknown_penalty: float = UNKNOWN_PENALTY
    abstain_below: float = ABSTAIN_BELOW
    untyped_penalty: float = UNTYPED_PENALTY
    keep_coverage: float = KEEP_COVERAGE
    unknown_max: float = UNKNOWN_MAX


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True)
class Features:
    """What a candidate sentence is scored on: meaning, the question's rare words it holds, the answer kind it holds."""

    sentence: str
    source: Source
    cosine: float
    coverage: float  # 0 without a lexicon
    fit: float

    def score(self, weights: Weights) -> float:
        return self.cosine + weights.answer_type * self.fit + weights.lexical * self.coverage


def evidence_features(question: str, sources: list[Source], embeddings, lexicon=None,
                      query: list[float] | None = None) -> list[Features]:
    """The features of every candidate of the sources (evidence.candidates) that says something new; `query`: the
    question's embedding when the caller has it already."""
    found = [c for c in candidates(sources, question) if says_something_new(question, c.text)]
    if not found:
        return []
    query = query if query is not None else embeddings.embed_query(question)
    vectors = embeddings.embed_documents([c.text for c in found])
    return [Features(c.text, c.source, sum(q * v for q, v in zip(query, vector)),
                     lexicon.coverage(question, f"{c.context} {c.text}") if lexicon is not None else 0.0,
                     answer_type_fit(question, c.raw))
            for c, vector in zip(found, vectors)]


def ranked_by(features: list[Features], weights: Weights = DEFAULT_WEIGHTS) -> list[Source]:
    """The candidates as Sources of their own (text: the sentence, score: its evidence score), best first."""
    scored = sorted(((f.score(weights), f) for f in features), key=lambda pair: -pair[0])
    return [replace(f.source, text=f.sentence, score=round(score, 4)) for score, f in scored]


def rank_evidence(question: str, sources: list[Source], embeddings, lexicon=None,
                  query: list[float] | None = None) -> list[Source]:
    """Whole sentences of the sources as Sources of their own, best evidence for the question first.

    Score: meaning (cosine), the share of the question's rare words the sentence and its label hold
    (`lexicon.coverage`), and whether it holds the kind of answer asked for.
    """
    return ranked_by(evidence_features(question, sources, embeddings, lexicon, query))


def shown_sources(top: list[Source], pool: list[Source], evidence: list[Source]) -> list[Source]:
    """The top chunks, and the chunk each chosen sentence came from when it is not among them (marked: it does not
    count toward recall@k)."""
    shown = sorted(top, key=lambda s: -s.score)  # retrieval fuses two rankings; a reader compares the scores shown
    for sentence in evidence:
        if all(s.chunk_id != sentence.chunk_id for s in shown):
            shown += [replace(s, in_top_k=False) for s in pool if s.chunk_id == sentence.chunk_id]
    return shown


def abstention_margin(best: Features | None, wants: bool, unknown: float, key_missing: bool, typed_cover: float,
                      weights: Weights = DEFAULT_WEIGHTS) -> float:
    """How sure the documents answer the question; RAG abstains below `weights.abstain_below`.

    -inf (abstain whatever the threshold): no evidence, a key term of the question in no document, or much of its
    rarity in words no document holds. +inf (answer): the question asks for a kind of answer, every word of it is
    known, and some evidence holds that kind and covers `keep_coverage` of its rarity ("sick leave" in a corpus
    without "sick" is not answered by "28 days of annual leave"). Otherwise the best evidence's score, less what no
    document mentions and the untyped penalty when that evidence lacks the kind asked for.
    """
    if best is None or key_missing or unknown >= weights.unknown_max:
        return -math.inf
    if wants and not unknown and typed_cover >= weights.keep_coverage:
        return math.inf
    return best.score(weights) - weights.unknown_penalty * unknown - weights.untyped_penalty * (wants and not best.fit)


def abstains(question: str, features: list[Features], lexicon, weights: Weights = DEFAULT_WEIGHTS) -> bool:
    """Whether RAG says "The documents do not say." (`abstention_margin`)."""
    best = max(features, key=lambda f: f.score(weights)) if features else None
    margin = abstention_margin(best, wants_type(question), lexicon.unknown_share(question),
                               bool(lexicon.missing(key_terms(question))),
                               max((f.coverage for f in features if f.fit), default=0.0), weights)
    return margin < weights.abstain_below


class RAGBackend:
    """Retrieval-augmented answers from the shared base model (no adapter)."""

    name = "rag"

    def __init__(self, index: DocumentIndex, llm: LoadedLLM, settings: Settings):
        self.index, self.llm, self.settings = index, llm, settings

    def stream(self, question: str, k: int | None = None, *, combined_with=None,
               leave_out: frozenset[str] = frozenset()) -> AnswerStream:
        """Answer from the base model, or (combined_with=adapter name, already loaded) from base + adapter.
        `leave_out`: chunk ids retrieval must not return (the experiment's retrieval stress test).

        The combination writes freely from the retrieved chunks: the point of it is the adapter's
        wording on top of retrieval, which copy-constrained decoding would take away.
        """
        started = time.perf_counter()  # the question arrives: every latency counts from here (docs/latency.md)
        question = check_question(question, self.settings)
        backend = COMBINED if combined_with else self.name
        query = self.index.embeddings.embed_query(question)
        embed_s = time.perf_counter() - started
        k = k or self.settings.top_k
        pool, retrieve_s = self.index.hybrid(question, query, EVIDENCE_POOL * k + len(leave_out))
        pool = [s for s in pool if s.chunk_id not in leave_out][: EVIDENCE_POOL * k]
        prompt_start = time.perf_counter()
        lexicon = self.index.lexicon()
        features = evidence_features(question, pool, self.index.embeddings, lexicon, query=query)
        ranked = ranked_by(features)
        sources = shown_sources(pool[:k], pool, ranked[:1])
        pre = Timings(embed=embed_s, retrieve=retrieve_s, prompt=time.perf_counter() - prompt_start)
        if abstains(question, features, lexicon):
            yield ABSTENTION
            total = time.perf_counter() - started  # its real time; the text appears at once, and no token is generated
            yield Answer(backend=backend, question=question, text=ABSTENTION, sources=tuple(sources),
                         timings=replace(pre, prompt=total - embed_s - retrieve_s, first_token=total, total=total),
                         model=self.llm.name, adapter=combined_with, abstained=True)
            return
        copy_from = None
        extractive = self.settings.rag_mode == "extractive" and self.llm.engine.constrains_choice()
        if extractive and combined_with is None:
            evidence = ranked[: self.settings.evidence_sentences]
            messages = build_messages(question, evidence)
            copy_from = [e.text for e in evidence]  # one passage each: the answer is one of them, whole
        else:
            messages = build_messages(question, sources)
        yield from answer_from_stream(backend, question, self.llm, messages, self.settings, sources=sources, pre=pre,
                                      copy_from=copy_from, adapter=combined_with, asked_at=started)
