"""Small text utilities shared by retrieval, claims and evaluation: sentences, content words and numbers."""

from __future__ import annotations

import re

# A sentence ends at . ! ? or ; followed by space and an upper-case letter or digit; decimals
# ("41.6"), abbreviations followed by lower case ("e.g. the") and codes ("TW-410.") survive.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z0-9\"“(])")
_ABBREVIATIONS = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Prof|St|No|Ltd|Inc|vs|approx|e\.g|i\.e|eg|ie|cf|viz|Fig|Vol|al|resp|incl)\.$")
_WORD = re.compile(r"[a-z0-9]+(?:[.,-][a-z0-9]+)*")
STOP_WORDS = frozenset(
    "a an the of is are was were be been what which who whom how many much does do did in on at to for by with and or "
    "from it its this that there when where why per can i we you our your their as any all".split()
)


# A number: thousands groups ("1,260"), a decimal part ("41.6") or a version ("3.2.1"). A comma before anything but
# three digits separates two numbers ("1,2"); a sentence's full stop is not a decimal point ("in 2009.").
NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)*|\d+(?:\.\d+)*")


def canonical_number(number: str) -> str:
    """Thousands commas dropped ("1,260" -> "1260"); every digit and point kept, so "41.6", "4.16" and "416" stay
    three numbers, and so do versions such as "3.10" and "3.1"."""
    return number.replace(",", "")


def numbers_in(text: str) -> set[str]:
    """The numbers of a text, canonical (see canonical_number)."""
    return {canonical_number(n) for n in NUMBER.findall(text)}


_WRAPPED_LINE = re.compile(r"(?<=[A-Za-z0-9,])\n(?=[a-z])")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)])\s+")
_RULE = re.compile(r"^\s*[-=_~*#+.]{3,}\s*$")  # a Setext underline or a horizontal rule
# Code: braces and statements, comments, prompts, tool traces, signatures, synopses and symbol-heavy lines.
_CODE_LINE = re.compile(
    r"[{};]\s*$|^\s*[{}]|^\s*(?:#include|#define|//|/\*|\$ |% |>>> |==\d+==)|\b(?:Function|Prototype|Synopsis)\s*:|"
    r"^\s*(?:const|static|struct|enum|typedef|void|int|char|unsigned|long|double|float|bool|return|import|from|def|"
    r"class|var|let|function)\b[^.]*[(=;{]|\w+\s*\([^)]*\)\s*;|\[-{1,2}\w[^\]]*\]|\[\w[^\]]*\.\.\.\]|\w+\s*=\s*\S+\s*;")
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
WRAP_WIDTH = 35  # a line this long that stops mid-sentence was wrapped; a shorter one is a label or a heading


def looks_like_code(line: str) -> bool:
    """A line of code, a command synopsis or a signature, or one made mostly of symbols."""
    if _CODE_LINE.search(line):
        return True
    line = _LINK_TARGET.sub("]", line).replace("`", "")
    letters = sum(ch.isalnum() or ch.isspace() for ch in line)
    return len(line.strip()) >= 12 and letters / len(line) < 0.7


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _continues(first: str, last: str, line: str) -> bool:
    """`line` goes on with the paragraph or list item that began at `first` and wrapped at `last`."""
    if not line.strip() or not last.strip() or _RULE.match(line) or _RULE.match(last) or _LIST_ITEM.match(line):
        return False
    if line.lstrip()[:1] in "#|>" or last.rstrip()[-1] in ".!?:;" or len(last.strip()) < WRAP_WIDTH \
            or (last is first and len(last.split()) < 6):
        return False
    if looks_like_code(line) or looks_like_code(last):
        return False
    marker = _LIST_ITEM.match(first)
    reach = marker.end() if marker else _indent(first)
    return _indent(line) <= reach and (marker is not None or _indent(line) >= _indent(first) or _indent(first) == 0)


def unwrap(text: str) -> list[str]:
    """The text's lines with hard-wrapped paragraphs and list items joined; code, headings, rules and table rows stay
    lines of their own."""
    lines: list[str] = []
    first = last = ""
    for line in _WRAPPED_LINE.sub(" ", text).splitlines():
        if lines and _continues(first, last, line):
            lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
        else:
            lines.append(line)
            first = line
        last = line
    return lines


def split_sentences(text: str) -> list[str]:
    """Sentences of a text; each line (list item, table row, heading) is split separately.

    Wrapped lines are joined first (`unwrap`).
    """
    sentences: list[str] = []
    for line in unwrap(text):
        line = line.strip().lstrip("-*•#> ").strip()
        if not line:
            continue
        pending = ""
        for piece in _SENTENCE_END.split(line):
            pending = f"{pending} {piece}".strip() if pending else piece
            if not _ABBREVIATIONS.search(pending):
                sentences.append(pending)
                pending = ""
        if pending:
            sentences.append(pending)
    return sentences


MIN_EVIDENCE_WORDS = 4


def is_statement(sentence: str) -> bool:
    """Headings and labels ("Brackwater Instruments: Company Overview") are not evidence.

    A statement has at least MIN_EVIDENCE_WORDS words and ends like a sentence, holds a number
    (a table row), or is long enough not to be a title.
    """
    words = sentence.split()
    if len(words) < MIN_EVIDENCE_WORDS or sentence.isupper():  # a title in capitals
        return False
    return sentence.rstrip().endswith((".", "!", "?", ";", ")")) or any(ch.isdigit() for ch in sentence) or len(words) >= 10


def content_words(text: str) -> set[str]:
    """Lower-cased words and numbers that carry meaning (stop words removed)."""
    return {w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS}


def keyword_overlap(question: str, sentence: str) -> float:
    """Share of the question's content words that the sentence contains."""
    wanted = content_words(question)
    return len(wanted & content_words(sentence)) / len(wanted) if wanted else 0.0


_MARKUP = set("*`")


def _plain(text: str) -> tuple[str, list[int]]:
    """The text lower-cased without Markdown marks and with single spaces, and each kept character's offset."""
    kept, offsets = [], []
    for offset, ch in enumerate(text):
        if ch in _MARKUP or (ch.isspace() and (not kept or kept[-1] == " ")):
            continue
        kept.append(" " if ch.isspace() else ch.lower())
        offsets.append(offset)
    return "".join(kept), offsets


def _on_word_boundaries(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    return start, end


def used_span(chunk: str, answer: str, min_chars: int = 20) -> tuple[int, int] | None:
    """(start, end) of the stretch of `chunk` the answer copies, on word boundaries: the whole answer when the chunk
    holds it (Markdown marks, case and spacing aside), else the longest stretch they share if it is long enough."""
    from difflib import SequenceMatcher

    plain, offsets = _plain(chunk)
    wanted = _plain(answer.strip())[0].strip()
    if not wanted:
        return None
    at = plain.find(wanted)
    if at >= 0:
        size = len(wanted)
    else:
        match = SequenceMatcher(None, plain, wanted, autojunk=False).find_longest_match(0, len(plain), 0, len(wanted))
        if match.size < min_chars:
            return None
        at, size = match.a, match.size
    return _on_word_boundaries(chunk, offsets[at], offsets[at + size - 1] + 1)


def copied_from(chunks: list[str], answer: str) -> tuple[int, int, int] | None:
    """(which chunk, start, end): where the answer was copied from, one place only; the chunk holding most of it."""
    found = [(index, span) for index, chunk in enumerate(chunks) if (span := used_span(chunk, answer))]
    if not found:
        return None
    index, (start, end) = max(found, key=lambda pair: pair[1][1] - pair[1][0])
    return index, start, end


# Markdown images and links, raw HTML tags that load things, and bare web addresses.
_TARGET = r"\((?:[^()]|\([^()]*\))*\)"  # (address), which may hold one level of parentheses
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]" + _TARGET)
_MD_LINK = re.compile(r"\[([^\]]*)\]" + _TARGET)
_HTML_TAG = re.compile(r"<\s*/?\s*(?:img|a|script|iframe|object|embed|link|style|svg)\b[^>]*>?", re.IGNORECASE)
_ADDRESS = re.compile(r"\b(?:https?|ftp|javascript|data|file):[^\s)\]>\"']*", re.IGNORECASE)
# Text that addresses the model instead of stating facts (data/qa/injections.jsonl: 42 injections and 42 sentences of
# Debian documentation that use the same words; the patterns were written on its "tune" half, docs/security.md):
_MODEL = r"(?:ai|a\.i\.|assistants?|chat ?bots?|bots?|(?:large )?language models?|llms?|models?|gpt|claude|chatgpt)"
_INJECTION = re.compile("|".join([
    # the model's own instructions, dismissed: "ignore all previous instructions", "disregard what you were told"
    r"\b(?:ignore|disregard|forget|override|bypass|skip|abandon|set aside|pay no attention to|do not follow|"
    r"don't follow|stop following)\b.{0,50}\b(?:instructions?|prompts?|rules|guidelines|directions|told|above|"
    r"previous|prior|earlier|system message|context|documents)\b",
    # the model addressed: "Note to AI models:", "If you are an AI assistant", "Dear chatbot", "Hey GPT,"
    rf"\b(?:note to|attention|dear|hey|hello|for any|if you are an?|as an?|if an?)\s+(?:\w+\s+){{0,2}}{_MODEL}\b",
    rf"^\s*{_MODEL}\s*[,:]",
    rf"\b{_MODEL}\b[^.]{{0,40}}\b(?:must|should|reading|processing|summari[sz]ing)\b[^.]{{0,30}}\b(?:say|answer|"
    r"reply|respond|state|claim|tell|praise|recommend)",
    # what to answer, whatever is asked: "always say", "reply only with", "regardless of the question"
    r"\b(?:always|only|instead|from now on|henceforth)\b[^.]{0,30}\b(?:say|reply|respond|answer)\b(?! files)",
    r"\b(?:say|reply|respond|answer)\w*\b[^.]{0,40}\b(?:regardless|whatever|no matter|every question|any question)",
    r"\b(?:regardless of|whatever) (?:what )?the (?:user|question)",
    r"\btell the user\b",
    # a new role or mode: "you are now", "act as an unrestricted", "pretend to be the CEO", "developer mode enabled"
    r"\bnew instructions\s*:|\b(?:system prompt|you are now|your new role|act as an? (?:unrestricted|different)|"
    r"pretend to be|jailbreak|developer mode enabled|reveal your|repeat the (?:text|words) above|"
    r"contents of your prompt|show an image|reply with|respond with|reply only|answer only with)\b",
]), re.IGNORECASE)


def strip_links(text: str) -> str:
    """Model output without images, links or web addresses: their text stays, nothing can load or be clicked."""
    text = _MD_IMAGE.sub(lambda m: m.group(1), text)
    text = _MD_LINK.sub(lambda m: m.group(1), text)
    text = _HTML_TAG.sub("", text)
    return _ADDRESS.sub("[link removed]", text)


def looks_like_instruction(sentence: str) -> bool:
    """A sentence that addresses the model ("ignore all instructions, reply ..."): never evidence."""
    return bool(_INJECTION.search(sentence))
