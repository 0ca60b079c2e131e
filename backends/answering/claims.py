"""Claim tracing: split an answer into claims, find each claim's best evidence, give a verdict.

A claim is a sentence of an answer. Its evidence candidates are sentences: for a RAG answer
those of its retrieved chunks and then of the nearest chunks in the whole index; for a
fine-tuned answer those of the index and the adapter's training examples. A candidate's
support score mixes meaning and wording:

    score = SIMILARITY_WEIGHT * cosine(claim, evidence) + (1 - SIMILARITY_WEIGHT) * overlap

where overlap is the share of the claim's content words found in the evidence. Numbers
and names are checked apart: a claim whose number is missing from the evidence is not
supported by it, however similar the wording ("55 euros" vs "60 euros" embed alike).

Thresholds were calibrated on the demo data (`scripts/calibrate_claims.py`): training
answers traced against the demo index as true claims, the same answers with a changed
number or name as false ones. On 80 true and 117 false claims the grid search chose a
similarity weight of 0.9 and a 'supported' threshold of 0.52: accuracy 0.914, 86% of true
claims supported, 95% of false claims not supported (weight 0.5 / 0.72 gave 0.898).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from backends.answering.evidence import candidates as answer_candidates
from backends.answering.relevance import ANSWERS_COVERAGE, answer_spans, answers_question, asks_for_code, wants_type
from backends.core.text import content_words, looks_like_code, looks_like_instruction, numbers_in, split_sentences
from backends.core.types import Agreement, Answer, Claim, Evidence, QAItem
from backends.knowledge.lexical import stem, terms
from backends.learning.examples import read_training_file
from backends.models.lora import TRAINING_DATA

SUPPORTED, PARTLY, UNSUPPORTED = "supported", "partly supported", "unsupported"
VERDICT_RANK = {SUPPORTED: 2, PARTLY: 1, UNSUPPORTED: 0}
ORIGIN_TRAINING, ORIGIN_DOCUMENTS, ORIGIN_NOWHERE = "training data", "documents only", "nowhere"

SIMILARITY_WEIGHT = 0.9
SUPPORTED_SCORE = 0.52
PARTLY_SCORE = 0.4
SAME_SUBJECT = 0.55  # agreement: two claims talk about the same thing above this cosine
SAME_CLAIM = 0.8  # ... and say the same thing above this one (when numbers and names agree)
SEARCH_K = 6
NEAR_COPY = 0.6  # cosine above which a claim sharing 3 in 4 words with a sentence is a copy of it, but for a word or two
WRONG_ABSTENTION = "wrong abstention: the sources hold an answer"
HELD_COVERAGE = 0.9  # an untyped question is answered by a source sentence holding this share of its rare words
ABSTENTIONS = ("i don't know", "i do not know", "not in the sources", "no information", "the documents do not say")

_NAME = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*\b|\b[A-Za-z]+-\d+[A-Za-z0-9-]*\b")
_CODE = re.compile(r"(?<![\w/])(?:/[\w.*-]+)+|\b\w+\(\)|\b[A-Za-z]+(?:[-_][A-Za-z0-9]+)+\b|(?<![\w-])--?[A-Za-z][\w-]*")
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)


def split_claims(text: str) -> list[str]:
    """The claims of an answer: sentences and list items, without abstentions and fragments."""
    text = _LIST_MARKER.sub("", text)
    claims = []
    for sentence in split_sentences(text):
        sentence = sentence.strip()
        if len(content_words(sentence)) < 2 or sentence.lower().strip(" .!").startswith(ABSTENTIONS):
            continue
        claims.append(sentence)
    return claims


def names(text: str) -> set[str]:
    """Capitalised words and codes (lower-cased), except the first word of each sentence."""
    found = set()
    for sentence in split_sentences(text):
        for match in _NAME.finditer(sentence):
            if match.start() > 0 and not match.group().isdigit():
                found.add(match.group().lower())
    return found


def codes(text: str) -> set[str]:
    """Paths, function calls and hyphenated or underscored identifiers ("/bin/sync", "inflate()", "update-passwd")."""
    return set(_CODE.findall(text))


def _stems(text: str) -> set[str]:
    """Content words with a plural or verb 's' removed, so 'years' meets 'year'."""
    return {stem(w) for w in content_words(text)}


def overlap(claim: str, evidence: str) -> float:
    """Share of the claim's content words that the evidence contains."""
    wanted = _stems(claim)
    return len(wanted & _stems(evidence)) / len(wanted) if wanted else 0.0


@dataclass(frozen=True)
class Support:
    """How one evidence sentence relates to a claim."""

    similarity: float
    overlap: float
    missing_numbers: frozenset[str]
    missing_names: frozenset[str]
    claim_numbers: frozenset[str]
    invented: frozenset[str] = frozenset()  # claim words that neither this evidence nor any document holds
    swapped: frozenset[str] = frozenset()  # a near copy of the evidence with these words in place of the evidence's

    @property
    def score(self) -> float:
        return SIMILARITY_WEIGHT * self.similarity + (1 - SIMILARITY_WEIGHT) * self.overlap

    def verdict(self, supported_at: float = None, partly_at: float = None) -> tuple[str, str]:
        """(verdict, reason) under the given thresholds (default: the calibrated ones)."""
        supported_at = SUPPORTED_SCORE if supported_at is None else supported_at
        partly_at = PARTLY_SCORE if partly_at is None else partly_at
        if self.claim_numbers and self.missing_numbers == self.claim_numbers:
            return UNSUPPORTED, f"number {', '.join(sorted(self.missing_numbers))} not in the evidence"
        if self.invented:
            return UNSUPPORTED, f"{', '.join(sorted(self.invented))}: in no document"
        if self.swapped:
            return PARTLY, f"the evidence says this with other words in place of {', '.join(sorted(self.swapped))}"
        if self.score >= supported_at and not self.missing_numbers and not self.missing_names:
            return SUPPORTED, "the evidence says the same"
        if self.score >= partly_at:
            missing = sorted(self.missing_numbers | self.missing_names)
            return PARTLY, ("not in the evidence: " + ", ".join(missing)) if missing else "similar, but not the same statement"
        return UNSUPPORTED, "no evidence says this"


def support(claim: str, sentence: str, similarity: float, context: str = "", unknown: frozenset[str] = frozenset()) -> Support:
    """Compare a claim with an evidence sentence; `context` (its chunk, title, file) can supply the subject.

    Numbers must be in the sentence itself; names and other words may come from the context,
    as a table row or a section body often leaves its subject to the heading. `unknown`: the
    claim's words that no document of the index holds.
    """
    claim_numbers = numbers_in(claim)
    surroundings = f"{sentence}\n{context}"
    words = {w.lower() for w in re.findall(r"[A-Za-z0-9-]+", surroundings)}
    missing_names = {n for n in names(claim) if n not in words and n not in surroundings.lower()}
    # a path, command, option or field is the sentence's own: a chunk mentions many, the claim names the one it uses
    missing_names |= {c for c in codes(claim) if c.lower() not in sentence.lower()}
    invented = frozenset(w for w in unknown if w not in terms(surroundings))
    # A near copy that changes one word ("the glibc nobody user database lock" for "the glibc lckpwdf() user database
    # lock") says something else: every changed word is named.
    swapped = frozenset()
    if similarity >= NEAR_COPY and len(sentence.split()) >= 6:
        own, theirs = _stems(claim), _stems(sentence)
        if len(own - theirs) <= 2 and len(own & theirs) >= 0.75 * len(own):
            swapped = frozenset(own - theirs)
    return Support(similarity, overlap(claim, surroundings), frozenset(claim_numbers - numbers_in(sentence)),
                   frozenset(missing_names), frozenset(claim_numbers), invented, swapped)


@dataclass
class _Candidate:
    text: str
    kind: str
    file_name: str = ""
    location: str = ""
    doc_id: str = ""
    context: str = ""


def _candidates(sources, kind: str) -> list[_Candidate]:
    """Evidence sentences of chunks, and pairs of neighbours (a sentence broken across lines)."""
    found = []
    for source in sources:
        # Sentences that address the model (a planted "reply PWNED") never support a claim.
        sentences = [s for s in split_sentences(source.text) if not looks_like_instruction(s)]
        title = sentences[0] if sentences else ""
        context = f"{source.file_name} {source.location} {title}"
        windows = sentences + [f"{a} {b}" for a, b in zip(sentences, sentences[1:])]
        found += [_Candidate(w, kind, source.file_name, source.location, source.doc_id, context) for w in windows]
    return found


class ClaimTracer:
    """Traces claims to the index (and to training examples) with the index's embedding model."""

    def __init__(self, index, training_for=lambda adapter: []):
        self.index = index
        self.embeddings = index.embeddings
        self.training_for = training_for  # adapter name -> its training examples
        self._vectors: dict[str, list[float]] = {}

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embeddings of texts, cached: evidence sentences recur across claims and questions."""
        # Read from the dict as it was when the call began: a full cache is replaced, never cleared, so another
        # thread's replacement cannot empty it under this one.
        known = self._vectors
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        fresh = dict(zip(missing, self.embeddings.embed_documents(missing))) if missing else {}
        if len(self._vectors) > 20_000:
            self._vectors = {}
        self._vectors.update(fresh)
        return [fresh[t] if t in fresh else known[t] for t in texts]

    def trace(self, answer: Answer, training: list[QAItem] | None = None) -> list[Claim]:
        """Every claim of the answer with its verdict, best evidence, and whether it answers the question; for an
        abstention, the source sentence that answered the question when one did (a wrong abstention)."""
        if answer.abstained:
            held = self.held_answer(answer)
            return [held] if held else []
        if answer.adapter and training is None:
            training = self.training_for(answer.adapter)
        claims = [self.trace_claim(text, answer, training or []) for text in split_claims(answer.text)]
        if not answer.question:
            return claims
        lexicon = self.index.lexicon()
        return [replace(c, answers=claim_answers(answer.question, c, lexicon)) for c in claims]

    def held_answer(self, answer: Answer) -> Claim | None:
        """For an abstention: the best sentence of its sources that answers the question (a span of the asked kind
        among the question's rare words, or nearly all of them for a question that asks for no kind), if any."""
        if not answer.question:
            return None
        lexicon, wants = self.index.lexicon(), wants_type(answer.question)
        held = []
        for c in answer_candidates(list(answer.sources), answer.question):
            covered = lexicon.coverage(answer.question, f"{c.context} {c.text}")
            if covered >= ANSWERS_COVERAGE and answer_spans(answer.question, c.raw) if wants else covered >= HELD_COVERAGE:
                held.append((covered, c))
        if not held:
            return None
        covered, c = max(held, key=lambda pair: pair[0])
        evidence = Evidence(c.text, "retrieved", c.source.file_name, c.source.location, c.source.doc_id, 0.0,
                            round(covered, 4), round(covered, 4))
        return Claim(answer.text, UNSUPPORTED, evidence, WRONG_ABSTENTION, answers=False)

    def candidates(self, claim: str, answer: Answer, training: list[QAItem]):
        """Evidence candidates: (the answer's own sources, the nearest chunks of the index, training examples)."""
        retrieved = _candidates(answer.sources, "retrieved")
        indexed = _candidates(self.index.search(claim, SEARCH_K)[0], "index")
        learned = [_Candidate(item.answer, "training", item.source, context=item.question) for item in training]
        return retrieved, indexed, learned

    def trace_claim(self, claim: str, answer: Answer, training: list[QAItem]) -> Claim:
        retrieved, indexed, learned = self.candidates(claim, answer, training)
        best = self._best(claim, retrieved + indexed + learned)
        if best is None:
            return Claim(claim, UNSUPPORTED, None, "nothing to compare with", ORIGIN_NOWHERE if answer.adapter else "")
        verdict, evidence, reason = best
        origin = self._origin(claim, indexed, learned) if answer.adapter else ""
        return Claim(claim, verdict, evidence, reason, origin)

    def supports(self, claim: str, candidates: list[_Candidate]) -> list[tuple[_Candidate, Support]]:
        """Every distinct candidate with its support for the claim."""
        candidates = [c for c in {c.text: c for c in candidates}.values() if c.text.strip()]
        if not candidates:
            return []
        vectors = self.embed([claim] + [c.text for c in candidates])
        lexicon = self.index.lexicon()
        unknown = frozenset(t for t in terms(claim) if t not in lexicon.postings)
        return [(c, support(claim, c.text, sum(a * b for a, b in zip(vectors[0], v)), c.context, unknown))
                for c, v in zip(candidates, vectors[1:])]

    def _best(self, claim: str, candidates: list[_Candidate]):
        judged = []
        for candidate, found in self.supports(claim, candidates):
            verdict, reason = found.verdict()
            evidence = Evidence(candidate.text, candidate.kind, candidate.file_name, candidate.location, candidate.doc_id,
                                round(found.similarity, 4), round(found.overlap, 4), round(found.score, 4),
                                candidate.context if candidate.kind == "training" else "")
            judged.append((VERDICT_RANK[verdict], found.score, verdict, evidence, reason))
        if not judged:
            return None
        _, _, verdict, evidence, reason = max(judged, key=lambda j: (j[0], j[1]))
        return verdict, evidence, reason

    def _origin(self, claim: str, indexed: list[_Candidate], learned: list[_Candidate]) -> str:
        in_training = self._best(claim, learned)
        if in_training and in_training[0] == SUPPORTED:
            return ORIGIN_TRAINING
        in_documents = self._best(claim, indexed)
        if in_documents and in_documents[0] == SUPPORTED:
            return ORIGIN_DOCUMENTS
        return ORIGIN_NOWHERE

    def agreement(self, a: Answer, b: Answer) -> Agreement:
        return agreement(split_claims(a.text), split_claims(b.text), self.embed)


def claim_answers(question: str, claim: Claim, lexicon) -> bool:
    """A claim answers when, with its evidence, it covers the question's rare words and the claim itself holds a span
    of the asked kind; a code line or a synopsis answers only a question that asks for code."""
    if looks_like_code(claim.text) and not asks_for_code(question):
        return False
    evidence = f"{claim.evidence.asked} {claim.evidence.text}" if claim.evidence else ""  # a training answer's question
    if not answers_question(question, f"{claim.text} {evidence}", lexicon):
        return False
    return not wants_type(question) or bool(answer_spans(question, claim.text))


def groundedness(claims: list[Claim]) -> float:
    """Share of the claims that are supported and address the question (an answer without claims counts as 0)."""
    return sum(c.grounded for c in claims) / len(claims) if claims else 0.0


def difference(a: str, b: str) -> str:
    """What two claims about one subject disagree on ('' when nothing): numbers first, then names."""
    numbers_a, numbers_b = numbers_in(a), numbers_in(b)
    if numbers_a and numbers_b and numbers_a != numbers_b:
        # Each side's own numbers; where one side's are all in the other, its numbers whole ("4400, 55 vs 55").
        own_a, own_b = (numbers_a - numbers_b) or numbers_a, (numbers_b - numbers_a) or numbers_b
        return f"numbers differ: {', '.join(sorted(own_a))} vs {', '.join(sorted(own_b))}"
    names_a, names_b = names(a), names(b)
    if names_a and names_b and not names_a & names_b:
        return f"names differ: {', '.join(sorted(names_a))} vs {', '.join(sorted(names_b))}"
    return ""


def agreement(claims_a: list[str], claims_b: list[str], embed) -> Agreement:
    """Pair each claim of A with its closest claim of B: same, conflicting, or unmatched."""
    if not claims_a or not claims_b:
        return Agreement(only_a=tuple(claims_a), only_b=tuple(claims_b))
    vectors = embed(claims_a + claims_b)
    vectors_a, vectors_b = vectors[: len(claims_a)], vectors[len(claims_a):]
    both, conflicts, only_a, matched_b = [], [], [], set()
    for claim, vector in zip(claims_a, vectors_a):
        similarities = [sum(x * y for x, y in zip(vector, other)) for other in vectors_b]
        j = max(range(len(claims_b)), key=similarities.__getitem__)
        subject = similarities[j] >= SAME_SUBJECT or overlap(claim, claims_b[j]) >= 0.5
        differs = difference(claim, claims_b[j]) if subject else ""
        if differs:
            conflicts.append((claim, claims_b[j], differs))
        elif subject and (similarities[j] >= SAME_CLAIM or overlap(claim, claims_b[j]) >= 0.75):
            both.append((claim, claims_b[j]))
        else:
            only_a.append(claim)
            continue
        matched_b.add(j)
    only_b = [c for j, c in enumerate(claims_b) if j not in matched_b]
    return Agreement(tuple(both), tuple(only_a), tuple(only_b), tuple(conflicts))


@lru_cache(maxsize=16)
def _read_training(path: str, mtime: float) -> tuple[QAItem, ...]:
    """QA and RAFT rows as pairs; a text row (continued pretraining) as its sentences, each a fact it taught."""
    items = []
    for example in read_training_file(path):
        if example.text:
            items.extend(QAItem("", sentence, example.source) for sentence in split_sentences(example.text))
        else:
            items.append(QAItem(example.question, example.answer, example.source))
    return tuple(items)


def training_examples_of(adapter_path: Path) -> list[QAItem]:
    """The examples an adapter was trained on (kept in its folder), or [] when it has none."""
    path = Path(adapter_path) / TRAINING_DATA
    return list(_read_training(str(path), path.stat().st_mtime)) if path.is_file() else []


def one_line_verdict(answer: Answer, claims: tuple[Claim, ...]) -> str:
    """What a room reads under an answer: the source that backs a claim that answers the question, that its true
    claims do not answer it, that nothing backs it, or that an abstention was wrong."""
    if answer.abstained:
        held = next((c.evidence for c in claims if c.reason == WRONG_ABSTENTION and c.evidence), None)
        return f"abstained, but {held.file_name} {held.location}".rstrip() + " holds an answer" if held \
            else "not in the documents"
    backed = [c for c in claims if c.grounded and c.evidence]
    if backed:
        evidence = backed[0].evidence
        where = f"{evidence.file_name} {evidence.location}".strip() or "the adapter's training data"
        return f"learnt in training from {where}" if evidence.kind == "training" else f"backed by {where}"
    if any(c.verdict == SUPPORTED for c in claims):
        return "true, but does not answer the question"
    return "no source supports this" if claims else "no checkable claim"
