"""The naturalness floor: whether a generated question reads like one a person would ask (issue 34's check).

A question passes when it ends with "?"; starts with a question word, an inverted auxiliary or "According to …";
has 4 to 30 words; ends on neither a dangling function word nor a question word ("… founded in which year?" is a
fill-in-the-blank, not a question); carries no markup or code residue; never says "None"; and does not give its
own answer away. `floor_problems` names what fails; the dataset builder keeps only questions that pass.
"""

from __future__ import annotations

import re

from backends.core.text import NUMBER, canonical_number

QUESTION_WORDS = frozenset("what which who whom whose when where why how".split())
_NEGATED = "isn't aren't wasn't weren't can't couldn't won't wouldn't shouldn't doesn't don't didn't"
INVERTED = frozenset("is are was were am be can could will would shall should may might must has have had do does did "
                     f"{_NEGATED} {_NEGATED.replace(chr(39), '’')}".split())
# A question does not end on these: "Who should packages be written so that they?"
DANGLING = frozenset("the a an and or nor but that which who whom whose this these those its their his her our your my "
                     "is are was were be been being as than if so such then also not no they he she we i".split())
# A preposition may end a wh-question ("What does the cif stand for?", "Which file is it read from?"), not another.
STRANDED = frozenset("of to in on at by for with from into onto upon about over under between without within via per "
                     "like through after before".split())
_WORD = re.compile(r"[A-Za-z0-9][\w'’.-]*")
# Residue of markup or code; an option (--maxdepth), a function (inflate()) or a path is a fair thing to ask about.
# A price ("$40") and a language ("C#") are words a person writes.
_MARKUP = re.compile(r"[{}\[\]<>|\\`*=;^~]|\$(?!\d)|(?<![A-Za-z])#|->|::|/\*|\*/|https?:|www\.|\(\s*\)\s*\?|\(\s*$")
# "In which year …?", "For how long …?", "To whom …?": a preposition may stand before the question word.
_LEADING_PREPOSITION = re.compile(r"^(?:in|on|at|for|to|from|by|with|since|until|under|after|before|during|of|into|"
                                  r"through|within|over|against|among|about)\s+(?=(?:what|which|who|whom|whose|when|"
                                  r"where|how)\b)", re.IGNORECASE)
MIN_WORDS, MAX_WORDS = 4, 30


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def floor_problems(question: str, answer: str = "") -> list[str]:
    """What keeps `question` below the floor ([] when it passes)."""
    problems = []
    text = question.strip()
    if not text.endswith("?"):
        problems.append("no question mark")
    found = words(text)
    after_source = re.sub(r"^According to [^,]{1,80},\s*", "", text)
    opening = _LEADING_PREPOSITION.sub("", after_source)
    first = re.sub(r"['’]s$", "", (words(opening) or [""])[0].lower())  # "What's", "Who's"
    if first not in QUESTION_WORDS and first not in INVERTED:
        problems.append("no question word or inversion up front")
    if not MIN_WORDS <= len(found) <= MAX_WORDS:
        problems.append(f"{len(found)} words (4 to 30)")
    last = found[-1].lower().rstrip(".") if found else ""
    if last in DANGLING or (last in STRANDED and (first not in QUESTION_WORDS or opening != after_source)):
        problems.append(f'dangling "{last}" before "?"')
    if last in QUESTION_WORDS:
        problems.append(f'question word "{last}" left at the end')
    if _MARKUP.search(text):
        problems.append("markup or code residue")
    if re.search(r"\bNone\b", text):
        problems.append('"None"')
    if answer and _gives_away(text, answer):
        problems.append("the answer is inside the question")
    return problems


def passes_floor(question: str, answer: str = "") -> bool:
    return not floor_problems(question, answer)


def _gives_away(question: str, answer: str) -> bool:
    """The answer (as words, or its numbers) stands in the question."""
    plain = lambda text: " ".join(w.lower() for w in words(text))  # noqa: E731
    short = plain(answer)
    if short and len(short.split()) <= 8 and f" {short} " in f" {plain(question)} ":
        return True
    answer_numbers = {canonical_number(n) for n in NUMBER.findall(answer)}
    return bool(answer_numbers) and len(answer.split()) <= 4 and answer_numbers <= {
        canonical_number(n) for n in NUMBER.findall(question)}
