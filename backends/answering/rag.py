"""The RAG backend: retrieve the nearest chunks, pick the evidence, generate.

Two answer modes (setting `rag_mode`):
- extractive (default): the sentences of the retrieved chunks are ranked by embedding
  similarity plus keyword overlap with the question; the model then writes its answer
  with copy-constrained decoding from the best ones (it decides how much to say, but
  every token continues the evidence). Measured on data/qa/eval.jsonl with the bundled
  135M model, free generation found the gold answer in 13% of answers, this in over 50%.
- free: the model writes freely from all retrieved chunks (for bigger models).

Either way the prompt treats retrieved text as data: each chunk sits between delimiters
with its number and source, and the instructions say to ignore instructions inside them.
"""

from __future__ import annotations

import time
from dataclasses import replace

from backends.answering.prompts import build_messages, check_question
from backends.answering.streaming import answer_from_stream
from backends.core.config import Settings
from backends.core.text import keyword_overlap, looks_like_instruction, split_sentences
from backends.core.types import AnswerStream, Source, Timings
from backends.engines.base import LoadedLLM
from backends.knowledge.index import DocumentIndex

MIN_EVIDENCE_WORDS = 4
COMBINED = "rag_ft"  # the backend name of retrieval + fine-tuned model


def rank_evidence(question: str, sources: list[Source], embeddings, lexical_weight: float = 0.2,
                  query: list[float] | None = None) -> list[Source]:
    """Sentences of the sources as Sources of their own, best evidence first (cosine + keyword overlap).

    `query`: the question's embedding when the caller has it already (retrieval computed it).
    """
    candidates = {}
    for source in sources:
        for sentence in split_sentences(source.text):
            if is_statement(sentence) and not looks_like_instruction(sentence) and sentence not in candidates:
                candidates[sentence] = source
    if not candidates:
        return []
    sentences = list(candidates)
    query = query if query is not None else embeddings.embed_query(question)
    vectors = embeddings.embed_documents(sentences)
    scores = [sum(q * v for q, v in zip(query, vector)) + lexical_weight * keyword_overlap(question, sentence)
              for sentence, vector in zip(sentences, vectors)]
    ranked = sorted(zip(scores, sentences), key=lambda pair: -pair[0])
    return [replace(candidates[sentence], text=sentence, score=round(score, 4)) for score, sentence in ranked]


def is_statement(sentence: str) -> bool:
    """Headings and labels ("Brackwater Instruments: Company Overview") are not evidence.

    A statement has at least MIN_EVIDENCE_WORDS words and ends like a sentence, holds a number
    (a table row), or is long enough not to be a title.
    """
    words = sentence.split()
    return len(words) >= MIN_EVIDENCE_WORDS and (sentence.rstrip().endswith((".", "!", "?", ";", ")"))
                                                 or any(ch.isdigit() for ch in sentence) or len(words) >= 10)


class RAGBackend:
    """Retrieval-augmented answers from the shared base model (no adapter)."""

    name = "rag"

    def __init__(self, index: DocumentIndex, llm: LoadedLLM, settings: Settings):
        self.index, self.llm, self.settings = index, llm, settings

    def stream(self, question: str, k: int | None = None, *, combined_with=None) -> AnswerStream:
        """Answer from the base model, or (combined_with=adapter name, already loaded) from base + adapter.

        The combination writes freely from the retrieved chunks: the point of it is the adapter's
        wording on top of retrieval, which copy-constrained decoding would take away.
        """
        question = check_question(question, self.settings)
        started = time.perf_counter()
        query = self.index.embeddings.embed_query(question)
        embed_s = time.perf_counter() - started
        sources, retrieve_s = self.index.nearest(query, k or self.settings.top_k)
        prompt_start = time.perf_counter()
        copy_from = None
        if self.settings.rag_mode == "extractive" and combined_with is None:
            ranked = rank_evidence(question, sources, self.index.embeddings, query=query)
            evidence = ranked[: self.settings.evidence_sentences]
            messages = build_messages(question, evidence)
            # One passage, best sentence first: the answer starts with the best evidence.
            copy_from = [" ".join(e.text for e in evidence)] if evidence else None
        else:
            messages = build_messages(question, sources)
        pre = Timings(embed=embed_s, retrieve=retrieve_s, prompt=time.perf_counter() - prompt_start)
        yield from answer_from_stream(COMBINED if combined_with else self.name, question, self.llm, messages,
                                      self.settings, sources=sources, pre=pre, copy_from=copy_from,
                                      adapter=combined_with)
