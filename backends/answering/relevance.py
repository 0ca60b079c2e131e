"""Does a text answer the question? The kind of answer asked for, the spans of that kind a text holds, and the
question's key terms (the names and codes an answer must be about).

Question classes in the style of Li and Roth (2002), cut to what manuals and reports are asked: a number, a person,
an option, a path, a code (field, variable, function, command ...), a default value. A text "holds the answer" when it
has a span of the asked kind that the question itself does not hold.
"""

from __future__ import annotations

import re

from backends.core.text import content_words

NUMBER, PERSON, OPTION, PATH, CODE, VALUE = "number", "person", "option", "path", "code", "value"

_NUMBER_QUESTION = re.compile(
    r"^(?:how (?:many|much|long|large|big|old|often|far|high|deep|fast|wide|small)\b|when\b|(?:in|since|before|after|"
    r"from|until|by) (?:which|what) (?:year|version|release|date|kernel|month)|what (?:year|date|time|percentage|share|"
    r"number|version|size|value|limit|price|cost|port|uid|gid|range)\b|which (?:year|date|version|uids?|gids?|port|"
    r"number|range)\b)|\b(?:cost|price|rating|per ?cent)\b|\b(?:which|what) (?:\w+ ){0,3}(?:version|uids?|gids?|port|"
    r"range)\b")
_OPTION_QUESTION = re.compile(r"\b(?:which|what) (?:\w+ ){0,2}(?:options?|flags?|switch(?:es)?|arguments?|"
                              r"parameters?)\b")
_PATH_QUESTION = re.compile(r"\b(?:which|what) (?:\w+ ){0,2}(?:files?|paths?|director(?:y|ies)|folders?)\b")
_CODE_QUESTION = re.compile(
    r"\b(?:which|what) (?:\w+ ){0,2}(?:variables?|fields?|keywords?|functions?|methods?|commands?|tools?|programs?|"
    r"utilit(?:y|ies)|scripts?|packages?|modules?|librar(?:y|ies)|errors?|exceptions?|class(?:es)?|macros?|"
    r"constants?|headers?|targets?|settings?|directives?|keys?|units?|events?|symbols?|hooks?|module|api)\b|"
    r"\bwhat (?:does|do|did) .+ return\b")
_VALUE_QUESTION = re.compile(r"\bdefault\b|\bdefaults? to\b|\bset to\b|\bvalue\b")
# A question with one of these words may take a code line as its answer.
_CODE_WORDS = {"command line", "syntax", "signature", "prototype", "example", "snippet", "invocation", "invoke",
               "run", "type", "code", "defined as", "declared", "synopsis", "usage"}

_DIGIT = re.compile(r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
                    r"hundred|thousand|million|once|twice|half|dozen)\b", re.IGNORECASE)
_MONTH = re.compile(r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\b")
# A name: two or more capitalised words ("Colin Watson", "Jan van der Berg") not opened by a function word, or a handle.
_PERSON = re.compile(r"\b(?!(?:If|When|The|This|That|These|In|On|For|See|Note|Use|And|But|As|At|By|It|To|Of|A|An)\b)"
                     r"[A-Z][a-z]+(?: (?:[A-Z]\.|van|von|de|der|la) ?)?(?: [A-Z][a-z]+)+\b(?![-_])|@[\w-]+")
_OPTION = re.compile(r"(?<![\w/-])--?[A-Za-z][\w-]*(?:=\S+)?")
_PATH = re.compile(r"(?:~|\.{1,2}|\b\w+)?(?:/[\w.*-]+)+/?|\b[\w-]+\.(?:[a-z]{1,4}|\d)\b")
_CODE = re.compile(r"`[^`\n]+`|\"[^\"\n]{1,40}\"|'[^'\n]{1,40}'|<[\w-]+>|\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|"
                   r"\b\w+(?:\.\w+)*\(\)|\b[a-z]+[A-Z]\w*\b|\b[A-Z][a-z0-9]+[A-Z]\w*\b|\b\w+(?:[-_./]\w+)+\b|"
                   r"\b[a-z][a-z0-9]*[0-9][a-z0-9]*\b|\b[a-z]{3,}(?=\s*\(\d\))")
_VALUE = re.compile(r"\b(?:yes|no|true|false|on|off|none|null|enabled|disabled|unlimited)\b", re.IGNORECASE)
_KIND_SPANS = {NUMBER: (_DIGIT, _MONTH), PERSON: (_PERSON,), OPTION: (_OPTION,), PATH: (_PATH, _CODE),
               CODE: (_CODE, _OPTION, _PATH), VALUE: (_DIGIT, _CODE, _PATH, _VALUE)}
_RELATION = re.compile(r"\b(default)s?\b")
# A claim answers when it holds this share of the question's rarity in words (and the kind of answer asked for).
ANSWERS_COVERAGE = 0.5


def asked_kind(question: str) -> str | None:
    """The kind of answer the question asks for, or None (a description, a reason)."""
    q = " ".join(question.lower().split())
    if q.startswith(("who ", "whom ", "whose ")):
        # "Who is the Bosun?" asks what a role is; "Who is the current maintainer of man-db?" asks for a name
        return None if re.match(r"who (?:is|are|was|were) (?:the |an? )?\S+\??$", q) else PERSON
    if _OPTION_QUESTION.search(q):
        return OPTION
    if _NUMBER_QUESTION.search(q):
        return NUMBER
    if _PATH_QUESTION.search(q):
        return PATH
    if _CODE_QUESTION.search(q):
        return CODE
    if q.startswith(("what", "which")) and _VALUE_QUESTION.search(q):
        return VALUE
    return None


def asks_for_code(question: str) -> bool:
    """A question a code line, a command synopsis or a signature may answer."""
    q = question.lower()
    return asked_kind(question) in (OPTION, PATH, CODE) or any(word in q for word in _CODE_WORDS)


def _normal(span: str) -> str:
    return span.strip("`\"'<>()").lower()


NEAR = 12  # words: a span answers only this close to a word of the question


def answer_spans(question: str, text: str) -> list[str]:
    """The spans of the asked kind in the text that the question does not hold itself, each within NEAR words of a
    word of the question ([] when nothing is asked)."""
    kind = asked_kind(question)
    if kind is None:
        return []
    asked = question.lower()
    wanted = content_words(question) - _ASKING
    anchors = [m.start() for m in re.finditer(r"[A-Za-z0-9][\w.-]*", text) if content_words(m.group()) & wanted]
    found = []
    for pattern in _KIND_SPANS[kind]:
        for m in pattern.finditer(text):
            word = _normal(m.group())
            if not word or word in asked or (kind == PERSON and set(word.split()) & set(asked.split())):
                continue
            if any(abs(len(text[min(a, m.start()):max(a, m.start())].split()) - 1) <= NEAR for a in anchors):
                found.append(m.group())
    return found


_ASKING = {"default", "value", "option", "version", "name", "named", "called", "number", "many", "long", "year"}


def answer_type_fit(question: str, sentence: str) -> float:
    """1 when the sentence holds a span of the kind the question asks for (a number, a name, an option ...), else 0."""
    return float(bool(answer_spans(question, sentence)))


def wants_type(question: str) -> bool:
    return asked_kind(question) is not None


_KEY = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)*\b|\b\w+(?:[-_./]\w+)+\b|\b[a-z]+[A-Z]\w*|"
                  r"\b\w*\d\w*\b|\"[^\"]+\"|`[^`]+`")


def key_terms(question: str) -> set[str]:
    """The question's names, codes and numbers ("Fedora", "ssh.socket", "DEB_GAIN_ROOT_CMD", "1:6.6p1-1"): what the
    answer must be about. A document set that holds none of one of them cannot answer it."""
    found = {m.group().strip("\"`").lower() for m in _KEY.finditer(question.strip())}
    return {k for k in found if not (k.isdigit() and len(k) < 4)} - {"i"}


def answers_question(question: str, text: str, lexicon) -> bool:
    """The text covers the question's rare words and, where the question asks for a kind of answer, holds a span of
    that kind the question does not hold."""
    if lexicon.coverage(question, text) < ANSWERS_COVERAGE:
        return False
    relation = _RELATION.search(question.lower())  # "the default value of X" is answered by a text that says default
    if relation and relation.group(1) not in text.lower():
        return False
    return not wants_type(question) or bool(answer_spans(question, text))
