"""The pieces of retrieved chunks an answer may be copied from: sentences, list items, table rows and definition
lines, clean of Markdown, with code lines kept apart for the questions that ask for code.

A manual's synopsis line ("find [-H] [-L] [path...] [expression]") or a function signature is on topic for most
questions about it and answers almost none of them; it is a candidate only when the question asks for code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backends.answering.relevance import asks_for_code
from backends.core.text import content_words, is_statement, looks_like_code, looks_like_instruction, split_sentences, unwrap
from backends.core.types import Source

# Markdown that is layout, not words: emphasis, inline code marks, link targets, heading and list markers.
_EMPHASIS = re.compile(r"(\*\*|__|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*]))")
_TICKS = re.compile(r"`+")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_LEAD = re.compile(r"^\s*(?:#+\s+|>\s*|[-*•+]\s+|\d{1,2}[.)]\s+(?=\D))")


def clean(text: str) -> str:
    """A sentence as a person reads it: no emphasis stars, code ticks, link targets or list markers."""
    text = _LINK.sub(r"\1", text)
    text = _LEAD.sub("", _TICKS.sub("", _EMPHASIS.sub("", text)))
    return " ".join(text.split())


def says_something_new(question: str, sentence: str) -> bool:
    """A sentence made only of the question's own words ("Welcome to Brackwater Instruments.") answers nothing; one
    new word is enough when it is a number, a code or a name ("The --leak-check option turns on ...")."""
    new = content_words(sentence) - content_words(question)
    if len(new) >= 2:
        return True
    return any(any(ch.isdigit() or ch in "-_./" for ch in word) for word in new) or any(
        word.lower() in new for word in re.findall(r"(?<!^)\b[A-Z]\w+", sentence.strip()))


@dataclass(frozen=True)
class Candidate:
    """A piece of a chunk that may be the answer: its clean text, the text as the chunk has it, what labels it (the
    short line before it, the chunk's location) and whether it is code."""

    text: str
    raw: str
    context: str
    source: Source
    code: bool = False


def _pieces(text: str) -> list[tuple[str, bool]]:
    """(sentence, is code) of a chunk, each line's sentences apart; a line inside a fenced block is code; a line ending
    in ':' is also offered with the line after it (a definition and its value)."""
    pieces, fenced, previous = [], False, None
    for line in unwrap(text):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        code = fenced or looks_like_code(line)
        for sentence in split_sentences(line) if not code else [line.strip()]:
            if previous and previous[0].endswith(":") and len(sentence.split()) <= 30:
                pieces.append((f"{previous[0]} {sentence}", code or previous[1]))
            pieces.append((sentence, code))
            previous = (sentence, code)
    # "We add a new field to the Source stanza:" says nothing until its line is joined to it
    joined = {s for s, _ in pieces if ": " in s}
    return [(s, c) for s, c in pieces if s and not (s.endswith(":") and any(j.startswith(f"{s} ") for j in joined))]


def candidates(sources: list[Source], question: str = "") -> list[Candidate]:
    """Each distinct piece of the sources once, with its context (the short line before it, a term its definition
    follows, and the source's location); code pieces only when the question asks for code."""
    code_allowed = asks_for_code(question)
    found, seen = [], set()
    for source in sources:
        label = ""
        for raw, code in _pieces(source.text):
            text = clean(raw)
            if (text not in seen and (not code or code_allowed) and (is_statement(text) or code)
                    and not looks_like_instruction(text)):
                seen.add(text)
                found.append(Candidate(text, _LEAD.sub("", raw), f"{label} {source.location}".strip(), source, code))
            label = text if len(text.split()) <= 4 else ""
    return found

