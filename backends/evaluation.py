"""Evaluation: answer metrics and runs of a QA set through the backends.

Metrics follow SQuAD's normalisation (lower case, no punctuation, no articles, single
spaces). Besides exact match and token F1, `contains` says whether the normalised gold
answer appears inside the normalised answer: the bundled model answers in sentences,
so "The per diem is 55 euros." is right although its exact match is 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from backends.training import read_qa_file
from backends.types import QAItem

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    # Keep decimal points and thousands separators inside numbers ("41.6", "1,260") as part of the number.
    text = re.sub(r"(?<=\d)[.,](?=\d)", "", text)
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


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


def load_qa(path: str | Path) -> list[QAItem]:
    """Read and validate a QA JSONL file (BadInput names the first bad line)."""
    return read_qa_file(path)


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
