"""Facts from chunks, and the questions that ask for them (no LLM needed).

A fact is one sentence of a chunk (or one field of a table row) and the span of it that answers a question. Sentences
are asked about by their parse (learning/questions.py); a table row by templates over its fields. Each fact gets
several question wordings, best first; `datasets` filters them and splits them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

from backends.core.text import is_statement, looks_like_instruction, split_sentences
from backends.core.types import Source
from backends.learning.questions import ask_sentences, reworded

MAX_FACTS_PER_SENTENCE = 2
_ROW_FIELD = re.compile(r"([A-Za-z][\w ]{0,40}?):\s*([^;\n]+)")
_DETERMINERS = {"the", "a", "an", "all", "every", "each", "this", "that", "these", "those", "our", "its", "their", "any"}


@dataclass
class Fact:
    """One answerable fact: where it is (offsets into its chunk) and the wordings that ask for it."""

    chunk: Source
    sentence: str  # the evidence, as the answer says it
    answer: str  # the short answer, exactly as the chunk has it
    start: int  # answer span in chunk.text
    end: int
    kind: str
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    score: float = 1.0  # the best question's quality (learning/questions.py); a table row's template is 1

    @property
    def id(self) -> str:
        return f"{self.chunk.chunk_id}:{self.start}-{self.end}"


def title_of(file_name: str) -> str:
    """'company_overview.md' -> 'company overview'."""
    return re.sub(r"[_\-.]+", " ", PurePath(file_name).stem).strip().lower()


def locate(text: str, phrase: str, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """Offsets of `phrase` in `text`, whatever whitespace (a wrapped line) separates its words."""
    words = phrase.split()
    if not words:
        return None
    match = re.compile(r"\s+".join(re.escape(w) for w in words)).search(text, start, len(text) if end is None else end)
    return (match.start(), match.end()) if match else None


def facts_of(chunk: Source, named: str = "") -> list[Fact]:
    """Every fact a chunk states: table rows field by field, statements by their parse (learning/questions.py).

    `named`: what the document is about ("nss-mdns"), for "the program" and an "it" with nothing before it.
    """
    facts: list[Fact] = []
    offset = 0
    for line in chunk.text.splitlines(keepends=True):
        if _is_row(line):
            facts.extend(_row_facts(chunk, line.strip(), offset))
        offset += len(line)
    position, found = 0, []
    for sentence in split_sentences("\n".join(l for l in chunk.text.splitlines() if not _is_row(l))):
        where = locate(chunk.text, sentence, position)
        if where is None:
            continue
        position = where[1]
        if is_statement(sentence) and not looks_like_instruction(sentence):
            found.append((sentence, where))
    title = title_of(chunk.file_name)
    for (sentence, (start, end)), asked in zip(found, ask_sentences([s for s, _ in found], title, named)):
        for one in asked[:MAX_FACTS_PER_SENTENCE]:
            where = locate(chunk.text, sentence[one.start:one.end], start, end)
            if where is None:
                continue
            fact = Fact(chunk, sentence, chunk.text[where[0]:where[1]], *where, kind=one.kind,
                        questions=one.questions, answers=answer_wordings(sentence, sentence[one.start:one.end], title),
                        score=one.score)
            facts.append(fact)
    return facts


# ---- table rows ("key: value; key: value") --------------------------------------------
def _is_row(sentence: str) -> bool:
    return sentence.count(";") >= 2 and len(_ROW_FIELD.findall(sentence)) >= 3


def _row_question(name: str, subject: str) -> str:
    """'opened' -> 'When was Saltmarsh Works opened?', 'certified since' -> 'Since when is ... certified?'."""
    if name.endswith(" since"):
        return f"Since when is {subject} {name[:-6]}?"
    if re.fullmatch(r"[a-z]+ed", name):
        return f"When was {subject} {name}?"
    return f"What is the {name} of {subject}?"


def _row_facts(chunk: Source, row: str, row_start: int) -> list[Fact]:
    fields = [(k.strip().replace("_", " "), v.strip()) for k, v in _ROW_FIELD.findall(row)]
    names = [v for k, v in fields if "name" in k]
    subject = f"{names[0]} ({fields[0][1]})" if names and names[0] != fields[0][1] else fields[0][1]
    title = title_of(chunk.file_name)
    facts = []
    for name, value in fields[1:]:
        if value == subject or not value or "name" in name:
            continue
        where = locate(chunk.text, value, row_start, row_start + len(row) + 1)
        if where is None:
            continue
        fact = Fact(chunk, f"The {name} of {subject} is {value}.", chunk.text[where[0]:where[1]], *where, kind="field")
        fact.questions = [_row_question(name, subject), f"{subject}: what is its {name}?",
                          f"Which {name} is listed for {subject}?", f"Tell me the {name} of {subject}.",
                          f"In the {title}, what {name} does {subject} have?", f"What {name} does {subject} have?",
                          f"Can you tell me the {name} of {subject}?", f"What is {subject}'s {name}?",
                          f"According to the {title}, what is the {name} of {subject}?",
                          f"I need the {name} of {subject}.", f"Do you know the {name} of {subject}?",
                          f"{name} of {subject}?"]
        fact.questions[2:2] = [q for q in map(reworded, fact.questions[:2]) if q]
        fact.answers = [fact.sentence, f"{subject} has the {name} {value}.", f"{value} is the {name} of {subject}."]
        facts.append(fact)
    return facts


def answer_wordings(sentence: str, answer: str, title: str) -> list[str]:
    """The sentence, and other wordings that keep its names, numbers and codes exactly."""
    return [sentence, f"According to the {title}, {_lower_first(sentence)}", f"{answer}. {sentence}"]


def _lower_first(text: str) -> str:
    """Lower-case a leading determiner or common word ('Economy class' -> 'economy class'); names keep capitals."""
    first, _, rest = text.partition(" ")
    common = first.lower() in _DETERMINERS or (rest and rest.islower() and first[1:].islower())
    return f"{first.lower()} {rest}".strip() if common else text


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]
