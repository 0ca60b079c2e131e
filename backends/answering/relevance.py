"""Does a sentence address the question? The kind of answer asked for, and how much of the question it covers."""

from __future__ import annotations

import re

_NUMBER_QUESTION = re.compile(r"^(?:how (?:many|much|long|large|big|old|often|far|high|deep)|when\b|in which year|"
                              r"what (?:year|date|time|percentage|share|number|version|size|value|limit|price|cost)|"
                              r"which (?:year|date|version|uid|gid|port|number|range))|\b(?:cost|price|rating|"
                              r"how long|per cent|percent)\b")
_CODE_QUESTION = re.compile(r"\b(?:command|program|tool|file|path|directory|function|option|variable|shell|package)\b")
_CODE = re.compile(r"/\w|\w_\w|\w\(\)|\.\w{1,4}\b|--\w")
_NAME = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-z]+")
# A claim answers when it holds this share of the question's rarity in words (and the kind of answer asked for).
ANSWERS_COVERAGE = 0.5


def answer_type_fit(question: str, sentence: str) -> float:
    """1 when the sentence holds what the question asks for (a number, a name, a command or path), else 0."""
    q = question.lower().strip()
    if _NUMBER_QUESTION.search(q):
        return float(any(ch.isdigit() for ch in sentence))
    if q.startswith(("who ", "whom ")):
        return float(bool(_NAME.search(sentence)))
    if q.startswith(("which", "what")) and _CODE_QUESTION.search(q):
        return float(bool(_CODE.search(sentence)))
    return 0.0


def wants_type(question: str) -> bool:
    q = question.lower().strip()
    return bool(_NUMBER_QUESTION.search(q) or q.startswith(("who ", "whom ")))


def answers_question(question: str, text: str, lexicon) -> bool:
    """The text covers the question's rare words and, where the question asks for a number or a name, holds one."""
    if lexicon.coverage(question, text) < ANSWERS_COVERAGE:
        return False
    return not wants_type(question) or answer_type_fit(question, text) > 0
