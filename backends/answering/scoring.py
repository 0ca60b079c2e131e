"""Answer metrics: SQuAD's normalisation (lower case, no punctuation, no articles, single spaces), exact match,
token F1 and `contains`, whether the normalised gold answer appears inside the normalised answer: the bundled model
answers in sentences, so "The per diem is 55 euros." is right although its exact match is 0.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Callable, Iterable

from backends.core.text import NUMBER, canonical_number
from backends.core.types import QAItem

_DECIMAL_POINT = "\x00"  # stands for a number's "." while punctuation is removed
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    # A number keeps its decimal point ("41.6" is not "416") and loses its thousands commas ("1,260" is "1260").
    text = NUMBER.sub(lambda m: canonical_number(m.group()).replace(".", _DECIMAL_POINT), text.lower())
    text = "".join(" " if ch in _PUNCTUATION or unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split()).replace(_DECIMAL_POINT, ".")


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains_gold(prediction: str, gold: str) -> float:
    expected = normalize_answer(gold)
    return float(bool(expected) and f" {expected} " in f" {normalize_answer(prediction)} ")


def score_answer(prediction: str, gold: str) -> dict:
    return {"exact_match": exact_match(prediction, gold), "f1": token_f1(prediction, gold), "contains": contains_gold(prediction, gold)}


def mean_scores(rows: Iterable[dict]) -> dict:
    rows = list(rows)
    keys = ("exact_match", "f1", "contains")
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) if rows else 0.0 for k in keys}


def quick_eval(items: list[QAItem], answer: Callable[[str], str]) -> tuple[dict, list[dict]]:
    """Score `answer(question)` on every item: (means, per-question rows)."""
    rows = []
    for item in items:
        prediction = answer(item.question)
        rows.append({"question": item.question, "gold": item.answer, "prediction": prediction, **score_answer(prediction, item.answer)})
    return mean_scores(rows), rows


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q / 100
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))
