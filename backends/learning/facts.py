"""Facts from chunks, and the questions that ask for them, by templates (no model needed).

A fact is one sentence of a chunk (or one field of a table row) and the span of it that
answers a question: a date, an amount, a quantity, a code, a name, or for a plain statement
its predicate. Each fact gets several question wordings, best first: the question a person
would ask (wh-word fronted), the same question in place ("... founded in which year?"),
synonyms, and the document named; `datasets` filters them and splits them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

from backends.core.text import is_statement, looks_like_instruction, split_sentences
from backends.core.types import Source

MAX_FACTS_PER_SENTENCE = 2
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
# Longest and most specific first: a match is not looked for again inside an earlier one.
_PATTERNS = [
    ("date", rf"\b(?:\d{{1,2}} {_MONTH} \d{{4}}|{_MONTH} \d{{1,2}},? \d{{4}}|{_MONTH} \d{{4}}|\d{{1,2}} {_MONTH}"
             rf"|\d{{4}}-\d{{2}}-\d{{2}}|{_MONTH})\b"),
    ("time", r"\b\d{1,2}:\d{2}\b"),
    ("money", r"(?:[€$£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:million|billion|thousand))?"
              r"|\b\d[\d,]*(?:\.\d+)?\s?(?:EUR|euros?|USD|dollars?|GBP|pounds?)\b)"),
    ("percent", r"\b\d+(?:\.\d+)?\s?(?:%|per ?cent\b)"),
    ("code", r"\b(?=[A-Z0-9-]*\d)(?=[A-Z0-9-]*[A-Z])[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b|\b[A-Z]{2,}\d+[A-Z0-9]*\b"),
    ("year", r"\b(?:19|20)\d{2}\b"),
    ("quantity", r"\b\d[\d,]*(?:\.\d+)?(?:\s?(?:-|to)\s?\d[\d,]*(?:\.\d+)?)?(?:\s?[a-zA-Z°][a-zA-Z]*)?"),
    ("name", r"\b[A-Z][\w'’]*(?:-[A-Z][\w'’]*)*(?:(?:\s+(?:of|de|van|der|and|&))?\s+[A-Z][\w'’]*(?:-[A-Z][\w'’]*)*)*"),
]
_KINDS = [(kind, re.compile(pattern)) for kind, pattern in _PATTERNS]
_AUX = {"is", "are", "was", "were", "has", "have", "had", "can", "must", "will", "may", "should", "could", "would",
        "shall", "might"}
_PREPOSITIONS = {"in", "on", "at", "by", "from", "to", "for", "with", "of", "since", "until", "before", "after",
                 "within", "under", "over", "about", "into", "near", "than"}
_DETERMINERS = {"the", "a", "an", "all", "every", "each", "this", "that", "these", "those", "our", "its", "their", "any"}
_SUBORDINATE = {"if", "when", "while", "although", "because", "after", "before", "unless", "once", "as"}
_PLACE_WORDS = {"building", "works", "quay", "bay", "street", "road", "lane", "harbour", "office", "centre", "center",
                "lab", "port", "park", "house", "hall", "city", "island", "river"}
_ORG_WORDS = {"ltd", "inc", "instruments", "travel", "foundation", "group", "team", "system", "portal", "desk",
              "policy", "procedure", "committee", "board", "services", "service", "company", "partners", "bank"}
_COUNT_UNITS = re.compile(r"^(?:[a-z]+s|people|staff|kg|km|m|cm|mm|g|h|min|ms|°C|C|V|W|Ah|mAh|Hz|dB|psi|bar)$")
_SYNONYMS = [("When", "In which year"), ("Who", "Which person"), ("Where", "In which place"), ("How many", "What number of"),
             ("How much", "What amount"), ("What percentage", "What share"), ("What", "Which")]
_CLAUSE_MARKS = ("; ", ": ", "? ", "** ", " - ", " – ")
# Words a person might use instead: a reworded question shares fewer words with the document, as real users' do.
_REWORDINGS = dict(pair.split("=") for pair in (
    "founded=started, established=set up, employs=has, employ=have, headquarters=head office, based=located, "
    "located=found, manufactured=made, built=made, designs=creates, builds=makes, costs=is priced at, cost=price, "
    "price=cost, reimbursed=paid back, approved=signed off, required=needed, requires=needs, must=has to, "
    "allowed=permitted, permitted=allowed, maximum=most, minimum=least, customers=clients, customer=client, "
    "employees=staff, employee=staff member, manager=supervisor, report=notify, reported=notified, within=inside, "
    "purchase=buy, bought=purchased, booked=reserved, trips=journeys, trip=journey, warranty=guarantee, "
    "replaced=swapped, repair=fix, repaired=fixed, opened=launched, launched=released, released=published, "
    "uses=relies on, use=rely on, provides=offers, offers=provides, covers=includes, includes=covers, "
    "reviewed=assessed, checked=inspected, tested=checked, rated=certified, reaches=gets to, lasts=runs for, "
    "chief executive officer=CEO, chief technology officer=CTO, chief financial officer=CFO, office=site, "
    "company=firm, people=persons, largest=biggest, first=initial, annual=yearly, every year=each year, "
    "per year=a year, policy=rules, procedure=process, responsible for=in charge of, handles=deals with, "
    "owner=owned by, head=leader, team=group, updated=revised, changed=altered, contact=reach, sent=dispatched, "
    "delivery=shipping, delivered=shipped, total=overall, average=mean, approximately=roughly, about=around, "
    "exceed=go over, exceeds=goes over, expenses=costs, training=course, meeting=session, number=count, "
    "list price=catalogue price, status=state, weight=mass, battery life=battery runtime, ticket=case, "
    "department=unit, approval=sign-off, receipt=proof of payment, staff=employees, held=run, runs=operates"
).split(", "))
_REWORD = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _REWORDINGS), key=len, reverse=True)) + r")\b", re.I)
_QUESTION_WORDS = [("How many ", "What is the number of "), ("When ", "On what date "), ("In which year ", "What year "),
                   ("Who ", "Which person "), ("Where ", "In what location "), ("How much ", "What amount "),
                   ("What is the ", "Which "), ("What ", "Which thing ")]


def reworded(question: str) -> str:
    """The question in other words (synonyms, another question phrase), or "" when nothing could be reworded."""
    changed = _REWORD.sub(lambda m: _same_case(m.group(), _REWORDINGS[m.group().lower()]), question)
    for old, new in _QUESTION_WORDS:
        if changed.startswith(old):
            changed = new + changed[len(old):]
            break
    return changed if changed != question and _REWORD.search(question) else ""


def _same_case(original: str, replacement: str) -> str:
    return replacement[:1].upper() + replacement[1:] if original[:1].isupper() else replacement


_ROW_FIELD = re.compile(r"([A-Za-z][\w ]{0,40}?):\s*([^;\n]+)")


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


def facts_of(chunk: Source) -> list[Fact]:
    """Every fact a chunk states: table rows field by field, statements by their answer spans."""
    facts: list[Fact] = []
    offset = 0
    for line in chunk.text.splitlines(keepends=True):
        if _is_row(line):
            facts.extend(_row_facts(chunk, line.strip(), offset))
        offset += len(line)
    position = 0
    for sentence in split_sentences("\n".join(l for l in chunk.text.splitlines() if not _is_row(l))):
        where = locate(chunk.text, sentence, position)
        if where is None:
            continue
        position = where[1]
        if is_statement(sentence) and not looks_like_instruction(sentence):
            facts.extend(_sentence_facts(chunk, sentence, *where))
    return facts


# ---- table rows ("key: value; key: value") --------------------------------------------
def _is_row(sentence: str) -> bool:
    return sentence.count(";") >= 2 and len(_ROW_FIELD.findall(sentence)) >= 3


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
        fact.questions = [f"What is the {name} of {subject}?", f"{subject}: what is its {name}?",
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


# ---- statements ------------------------------------------------------------------------
def answer_spans(sentence: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of the sentence's answerable spans, most specific kinds first, never overlapping."""
    taken: list[tuple[int, int, str]] = []
    for kind, pattern in _KINDS:
        for match in pattern.finditer(sentence):
            start, end = match.span()
            text = match.group().rstrip(" ,.;:")
            end = start + len(text)
            if not text or any(start < e and s < end for s, e, _ in taken):
                continue
            if kind == "name" and not _is_name(sentence, start, text):
                continue
            if kind == "quantity":
                number, _, unit = text.partition(" ")
                if unit and not _COUNT_UNITS.match(unit.split()[-1]):
                    text, end = number, start + len(number)
                if start == 0 and text == number:  # "4. Restricted": a list number
                    continue

            taken.append((start, end, kind))
    return sorted(taken)


def _is_name(sentence: str, start: int, text: str) -> bool:
    """A capitalised run that is a name, not the sentence's first word or a heading in title case."""
    words = text.split()
    if start == 0 and (len(words) == 1 or words[0].lower() in _DETERMINERS):
        return False
    return len(text) >= 3 and words[0].lower() not in _DETERMINERS | _AUX | _PREPOSITIONS


def _sentence_facts(chunk: Source, sentence: str, start: int, end: int) -> list[Fact]:
    spans = answer_spans(sentence)
    # Later spans first: the object of a sentence is asked for more often than its subject.
    chosen = sorted(spans, key=lambda s: (s[0] == 0, -s[0]))[:MAX_FACTS_PER_SENTENCE]
    facts = []
    for a, b, kind in chosen:
        where = locate(chunk.text, sentence[a:b], start, end)
        if where is None:
            continue
        fact = Fact(chunk, sentence, chunk.text[where[0]:where[1]], *where, kind=kind)
        fact.questions = wordings(sentence, a, b, kind, title_of(chunk.file_name))
        fact.answers = answer_wordings(sentence, sentence[a:b], title_of(chunk.file_name))
        if fact.questions:
            facts.append(fact)
    if not facts:
        definition = _definition_fact(chunk, sentence, start, end)
        if definition:
            facts.append(definition)
    return facts


def _definition_fact(chunk: Source, sentence: str, start: int, end: int) -> Fact | None:
    """A plain statement ("Economy class is the standard for all flights."): asked for by its subject."""
    words = sentence.rstrip(".!;").split()
    aux = next((i for i, w in enumerate(words) if w.lower() in _AUX), None)
    if aux is None or not 1 <= aux <= 6 or len(words) - aux < 3 or words[0].lower() in _SUBORDINATE:
        return None
    subject = _lower_first(" ".join(words[:aux]))
    predicate = " ".join(words[aux + 1:])
    where = locate(chunk.text, predicate, start, end)
    if where is None:
        return None
    title = title_of(chunk.file_name)
    verb = words[aux].lower()
    fact = Fact(chunk, sentence, chunk.text[where[0]:where[1]], *where, kind="statement")
    fact.questions = [f"What {verb} {subject}?", f"What does the {title} say about {subject}?", f"Tell me about {subject}.",
                      f"What do we know about {subject}?", f"According to the {title}, what {verb} {subject}?",
                      reworded(f"What does the {title} say about {subject}?"), f"What is said about {subject}?", f"Can you explain what {verb} true of {subject}?",
                      f"{subject}: what {verb} it?", f"What is the rule on {subject}?", f"Explain {subject}."]
    fact.answers = answer_wordings(sentence, predicate, title)
    return fact


def _wh(sentence: str, a: int, b: int, kind: str) -> tuple[str, bool]:
    """The wh-phrase for a span and whether it takes the place of the preposition before it."""
    before = sentence[:a].split()[-1:] or [""]
    prep = before[0].lower()
    text = sentence[a:b]
    if kind in ("date", "year"):
        if prep in ("since", "until", "before", "after", "by"):
            return f"{prep.capitalize()} when", True
        return ("In which year" if kind == "year" else "When"), prep in ("in", "on", "")
    if kind == "time":
        return "At what time", prep == "at"
    if kind == "money":
        return "How much", prep in ("", "of", "costs", "at", "for")
    if kind == "percent":
        return "What percentage", prep == "of"
    if kind == "quantity":
        unit = text.split()[-1] if not text.split()[-1][0].isdigit() else ""
        if unit and _COUNT_UNITS.match(unit):
            return f"How many {unit}", False
        return "How many", False
    if kind == "code":
        return "Which code", False
    words = [w.lower().strip(".,") for w in text.split()]
    if prep in ("in", "at", "near", "from") or any(w in _PLACE_WORDS for w in words):
        return "Where", prep in ("in", "at", "near")
    if prep in _PREPOSITIONS or any(w in _ORG_WORDS for w in words) or len(words) == 1:
        return "What", False
    return "Who", False


def wordings(sentence: str, a: int, b: int, kind: str, title: str) -> list[str]:
    """Question wordings for the span [a, b) of a sentence, best first, without duplicates."""
    body = sentence.rstrip(" .!;")
    # Only the clause that holds the span is asked about: "...twice a year; the click rate was 3.1 percent".
    starts = [body.rfind(mark, 0, a) + len(mark) for mark in _CLAUSE_MARKS if body.rfind(mark, 0, a) >= 0]
    ends = [body.find(mark, b) for mark in _CLAUSE_MARKS if body.find(mark, b) >= 0]
    first, last = max(starts, default=0), min(ends, default=len(body))
    if len(body[first:a].split()) + len(body[b:last].split()) < 3:  # "Product owner: Mei Tanaka": keep the label
        first, last = 0, len(body)
    body, a, b = body[first:last], a - first, b - first
    wh, absorbs = _wh(body, a, b, kind)
    head_words, tail = body[:a].split(), body[b:].strip()
    if absorbs and head_words and head_words[-1].lower() in _PREPOSITIONS:
        head_words = head_words[:-1]
    joined_tail = (tail if tail[:1] in ",;:)" else f" {tail}") if tail else ""
    asked = wh.lower() if wh in ("When", "Where", "Who", "What") else wh[0].lower() + wh[1:]
    in_place = _sentence_case(" ".join(head_words + [asked]) + joined_tail) + "?"
    plain = not re.search(r"[,()\"“”*:]", " ".join(head_words)) and len(head_words) <= 12
    fronted_short, fronted_long, embedded = _fronted(head_words, tail, wh, not head_words) if plain else ("", "", "")
    found = [fronted_short or in_place, reworded(fronted_short or in_place)]
    if fronted_short:
        found.append(f"According to the {title}, {_lower_first(fronted_short)}")
        found += [new + fronted_short[len(old):] for old, new in _SYNONYMS if fronted_short.startswith(old + " ")][:1]
    if embedded:
        found += [f"Can you tell me {embedded}?", reworded(f"Can you tell me {embedded}?")]
    found += [in_place, reworded(in_place), fronted_long, f"In the {title}: {fronted_short or in_place}"]
    if embedded:
        found += [f"Do you know {embedded}?", f"I need to know {embedded}.", f"Please tell me {embedded}."]
    found += [f"According to the {title}, {_lower_first(in_place)}", f"Quick question: {fronted_short or in_place}",
              f"{in_place[:-1]}, according to the {title}?"]
    unique, seen = [], set()
    for question in found:
        if question and question.lower() not in seen and len(question.split()) >= 3:
            seen.add(question.lower())
            unique.append(question)
    return unique


def _fronted(head_words: list[str], tail: str, wh: str, at_start: bool) -> tuple[str, str, str]:
    """('When was the company founded?', the same with the rest of the sentence, 'when the company was founded')."""
    if at_start or not head_words or all(w.lower() in _DETERMINERS for w in head_words):
        if not tail:
            return "", "", ""
        question = f"{wh} {tail}?"
        return question, question, f"{wh.lower()} {tail}"
    aux = next((i for i, w in enumerate(head_words) if w.lower() in _AUX), None)
    rest_tail = f" {tail}" if tail else ""
    if aux is not None and aux >= 1:
        subject = _lower_first(" ".join(head_words[:aux]))
        verb = head_words[aux].lower()
        rest = " ".join(head_words[aux + 1:])
        short = f"{wh} {verb} {subject} {rest}".strip()
        return short + "?", short + rest_tail + "?", f"{wh.lower()} {subject} {verb} {rest}".strip()
    verb_at = _main_verb(head_words)
    if verb_at is None:
        return "", "", ""
    subject = _lower_first(" ".join(head_words[:verb_at]))
    word = head_words[verb_at]
    base, do = _base_form(word)
    rest = " ".join(head_words[verb_at + 1:])
    short = f"{wh} {do} {subject} {base} {rest}".strip()
    return short + "?", short + rest_tail + "?", f"{wh.lower()} {subject} {word} {rest}".strip()


def _main_verb(words: list[str]) -> int | None:
    for i in range(1, len(words)):
        word = words[i]
        if not word.islower():
            continue
        if word.endswith("ed") or (word.endswith("s") and not word.endswith(("ss", "us", "is"))):
            if words[i - 1].lower() not in _DETERMINERS | _PREPOSITIONS:
                return i
    return None


def _base_form(verb: str) -> tuple[str, str]:
    if verb.endswith("ed"):
        stem = verb[:-2]
        if verb.endswith("ied"):
            return verb[:-3] + "y", "did"
        if stem[-1:] in "vczu" or stem.endswith(("at", "os", "ag", "as")) and not stem.endswith("ss"):
            return verb[:-1], "did"
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "ls":
            return stem[:-1], "did"
        return stem, "did"
    if verb.endswith("ies"):
        return verb[:-3] + "y", "does"
    if verb.endswith(("ches", "shes", "sses", "xes")):
        return verb[:-2], "does"
    return verb[:-1], "does"


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
