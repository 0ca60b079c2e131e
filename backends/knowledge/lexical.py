"""Words beside vectors: a BM25 index of the chunks, word rarity (IDF), and rank fusion with dense retrieval.

A small embedder ranks "the shell of user sync" near any passage about users and shells;
the rare words of a question ("sync", "squid", "CHUNK") find the passage that holds them.
Dense and lexical rankings are fused by reciprocal rank, and the same rarities weigh how
much of a question a sentence covers (`coverage`), which RAG uses to pick and to abstain.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from backends.core.text import STOP_WORDS

_TOKEN = re.compile(r"[a-z0-9_]+(?:[./\-][a-z0-9_]+)*")
K1, B = 1.2, 0.75  # BM25's usual constants
RRF_K = 60  # reciprocal rank fusion's usual constant
# Question words that say what kind of answer is wanted, and are not themselves looked up.
QUESTION_WORDS = frozenset("what which who whom whose when where why how many much does do did is are was were "
                           "can could should would will shall give name tell list describe explain".split())


def stem(word: str) -> str:
    """Plural and verb 's' removed ("runs" meets "run", "years" meets "year")."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def terms(text: str) -> list[str]:
    """Lower-cased words, numbers, paths and codes of a text, stemmed, without stop words; a path or code also
    counts as its parts ("/bin/sync" is "bin/sync", "bin" and "sync")."""
    found = []
    for token in _TOKEN.findall(text.lower()):
        parts = [token] + (re.split(r"[./\-]", token) if re.search(r"[./\-]", token) else [])
        found += [stem(p) for p in parts if len(p) > 1 and p not in STOP_WORDS and p not in QUESTION_WORDS]
    return found


@dataclass
class Lexicon:
    """BM25 over a set of chunks, and each term's rarity among them."""

    ids: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    postings: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # term -> (chunk index, count)

    @classmethod
    def of(cls, chunks: list[tuple[str, str]]) -> "Lexicon":
        """From (chunk id, text) pairs."""
        lexicon = cls()
        for index, (chunk_id, text) in enumerate(chunks):
            counts = Counter(terms(text))
            lexicon.ids.append(chunk_id)
            lexicon.lengths.append(sum(counts.values()))
            for term, count in counts.items():
                lexicon.postings.setdefault(term, []).append((index, count))
        return lexicon

    def idf(self, term: str) -> float:
        """BM25's rarity of a term: a term no chunk holds is as rare as a term one chunk holds, plus one."""
        n, df = len(self.ids), len(self.postings.get(term, ()))
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The k best chunks for the query's words: (chunk id, BM25 score), best first."""
        if not self.ids:
            return []
        average = sum(self.lengths) / len(self.lengths) or 1.0
        scores: dict[int, float] = {}
        for term in set(terms(query)):
            weight = self.idf(term)
            for index, count in self.postings.get(term, ()):
                norm = count * (K1 + 1) / (count + K1 * (1 - B + B * self.lengths[index] / average))
                scores[index] = scores.get(index, 0.0) + weight * norm
        best = sorted(scores.items(), key=lambda pair: -pair[1])[:k]
        return [(self.ids[index], round(score, 4)) for index, score in best]

    def coverage(self, question: str, text: str) -> float:
        """The share of the question's rarity that the text holds: 1 when it has every rare word of the question."""
        wanted = set(terms(question))
        if not wanted:
            return 0.0
        have = set(terms(text))
        total = sum(self.idf(t) for t in wanted)
        return sum(self.idf(t) for t in wanted & have) / total if total else 0.0

    def unknown_share(self, question: str) -> float:
        """The share of the question's rarity in words that no chunk holds ("slogan" in a corpus without one)."""
        wanted = set(terms(question))
        total = sum(self.idf(t) for t in wanted)
        return sum(self.idf(t) for t in wanted if t not in self.postings) / total if total else 0.0


    def missing(self, names: set[str]) -> set[str]:
        """The names (a question's key terms) of which no chunk holds the whole word."""
        return {name for name in names if (whole := terms(name)) and whole[0] not in self.postings}


def fuse(rankings: list[list[str]], k: int) -> list[str]:
    """Reciprocal rank fusion of several rankings of ids: the k best ids."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(scores, key=lambda item: -scores[item])[:k]
