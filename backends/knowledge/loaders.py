"""Turning a document's bytes into text segments, one loader per format.

Each loader returns `Segment`s that remember where they came from (a PDF page, a
heading's section, a range of CSV rows). Loaders never trust the bytes: text is decoded
with fallbacks, and anything unreadable raises `BadInput` with a reason a person can act on.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import PurePath

from backends.core.errors import BadInput

TEXT_TYPES = {".txt", ".md", ".markdown"}
SUPPORTED_TYPES = TEXT_TYPES | {".pdf", ".docx", ".html", ".htm", ".csv"}
PLAIN_TEXT_TYPES = TEXT_TYPES | {".html", ".htm", ".csv"}  # formats whose bytes must be text
# Random bytes read as Latin-1 are ~20% control characters; text, even with a few bad bytes, well under 1%.
MAX_CONTROL_SHARE = 0.02
MAX_BAD_UTF8_SHARE = 0.005  # more invalid UTF-8 than this: the file is in a one-byte encoding
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Segment:
    """A piece of a document with its location; `splittable` is False for pre-grouped CSV rows."""

    text: str
    location: str = ""
    splittable: bool = True


def file_type(name: str) -> str:
    return PurePath(name).suffix.lower()


def decode_text(data: bytes, keep_nul: bool = False) -> str:
    """Decode bytes as UTF-16 (with its BOM), UTF-8 (with or without BOM), else Windows-1252, else Latin-1: never
    fails. NUL bytes are dropped unless kept (the text check counts them)."""
    utf16 = ("utf-16",) if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ()
    mostly_utf8 = data.decode("utf-8-sig", errors="replace")
    for encoding in utf16 + ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            if encoding == "utf-8-sig" and mostly_utf8.count("\ufffd") <= MAX_BAD_UTF8_SHARE * len(mostly_utf8):
                text = mostly_utf8  # UTF-8 with a few bad bytes: those become U+FFFD, the rest reads right
                break
    else:
        text = data.decode("latin-1")
    return text if keep_nul else text.replace("\x00", "")


def check_looks_like_text(data: bytes) -> None:
    """BadInput when the bytes of a text format are not text (a binary file under a .md name, say)."""
    text = decode_text(data, keep_nul=True)
    share = len(CONTROL.findall(text)) / max(1, len(text))
    if share > MAX_CONTROL_SHARE:
        raise BadInput(f"this does not look like text: {share:.0%} of its characters are NUL or control bytes, "
                       "as in a binary file. Upload the document in its own format (PDF, DOCX) or save it as plain text")


def load_document(name: str, data: bytes, csv_rows_per_chunk: int = 8) -> list[Segment]:
    """Segments of a document, or BadInput saying why it cannot be read."""
    kind = file_type(name)
    if kind not in SUPPORTED_TYPES:
        supported = " ".join(sorted(SUPPORTED_TYPES))
        raise BadInput(f"unsupported file type {kind or '(none)'!r}: Duet reads {supported}")
    if not data.strip():
        raise BadInput("the file is empty")
    if kind in PLAIN_TEXT_TYPES:
        check_looks_like_text(data)
    if kind in TEXT_TYPES:
        segments = sections_from_markdown(decode_text(data)) if kind != ".txt" else [Segment(decode_text(data))]
    elif kind == ".pdf":
        segments = _load_pdf(data)
    elif kind == ".docx":
        segments = _load_docx(data)
    elif kind in (".html", ".htm"):
        segments = _load_html(data)
    else:
        segments = _load_csv(data, csv_rows_per_chunk)
    segments = [s for s in segments if s.text.strip()]
    if not segments:
        raise BadInput("no text found in the file (a scanned PDF needs OCR before it can be indexed)")
    return segments


def sections_from_markdown(text: str) -> list[Segment]:
    """Split Markdown-style text at headings; each section keeps its heading as location."""
    segments: list[Segment] = []
    heading, lines = "", []
    for line in text.splitlines():
        match = HEADING.match(line)
        if match:
            segments.append(Segment("\n".join(lines).strip(), f"section {heading}" if heading else ""))
            heading, lines = match.group(2), [line]
        else:
            lines.append(line)
    segments.append(Segment("\n".join(lines).strip(), f"section {heading}" if heading else ""))
    return [s for s in segments if s.text]


TOC_LINE = re.compile(r"(?:\.\s*){4,}\s*(?:\d+|[ivxlc]+)\s*$", re.IGNORECASE)  # dot leaders, then a page number
PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?(?:\d+|[ivxlc]+)(?:\s*(?:/|of)\s*\d+)?\s*$", re.IGNORECASE)
LIST_ITEM = re.compile(r"^\s*(?:[•\-*–]|\d+[.)]\s)")
SENTENCE_END = (".", "!", "?", ":", ";")
CONTENTS = {"table of contents", "contents"}
RUNNING_TITLE = re.compile(r"^(?:Chapter|Section|Appendix)\s+[\dA-Z]+:\s.*\s\d+$")  # "Chapter 2: Title 3", a page's head


def _load_pdf(data: bytes) -> list[Segment]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.startswith(b"%PDF"):
        raise BadInput("the file is not a PDF (its content does not start with %PDF); check the file or its extension")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadInput("the PDF is encrypted: remove its password and upload it again")
        pages = [(page.extract_text() or "").splitlines() for page in reader.pages]
        outline = _outline_titles(reader)
    except BadInput:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        raise BadInput(f"the PDF is damaged or truncated ({type(error).__name__}); export it again and retry") from None
    running = _running_lines(pages)
    segments, heading = [], ""
    for number, lines in enumerate(pages, 1):
        lines = [line.strip() for line in lines if line.strip() and not TOC_LINE.search(line)
                 and not PAGE_NUMBER.match(line) and not RUNNING_TITLE.match(line) and _shape(line) not in running
                 and _shape(line) not in CONTENTS]
        pieces: list[tuple[str, list[str]]] = [(heading, [])]
        for index, line in enumerate(lines):
            following = lines[index + 1] if index + 1 < len(lines) else ""
            title = _heading_of(line, outline) if outline else (line if _looks_like_heading(line, following) else "")
            if title:
                heading = title
                pieces.append((heading, []))
            else:
                pieces[-1][1].append(line)
        for title, body in pieces:
            paragraphs = _paragraphs(body)
            if paragraphs:
                text = "\n".join(([f"# {title}"] if title else []) + paragraphs)
                segments.append(Segment(text, f"page {number}" + (f", {title}" if title else "")))
    return segments


def _looks_like_heading(line: str, following: str) -> bool:
    """A short title-like line before a sentence (a PDF without an outline still shows its headings so)."""
    words = line.split()
    return (0 < len(words) <= 6 and line[0].isupper() and not line.endswith(SENTENCE_END + (",",))
            and following[:1].isupper() and not any(ch.isdigit() for ch in line[-3:]))


def _shape(line: str) -> str:
    """A line with its digits blanked: a running header or footer keeps its shape from page to page."""
    return re.sub(r"\d+", "#", " ".join(line.split())).lower()


def _running_lines(pages: list[list[str]]) -> set[str]:
    """Lines at the top or bottom of many pages (running headers and footers)."""
    if len(pages) < 3:
        return set()
    counts: dict[str, int] = {}
    for lines in pages:
        edges = [line for line in lines if line.strip()]
        for shape in {_shape(line) for line in edges[:1] + edges[-1:]}:
            counts[shape] = counts.get(shape, 0) + 1
    return {shape for shape, count in counts.items() if count >= max(3, len(pages) * 0.3) and len(shape) < 80}


def _outline_titles(reader) -> list[str]:
    """The PDF's bookmarks (its outline), flattened: they name the document's headings."""
    titles = []

    def walk(items) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            elif getattr(item, "title", None):
                titles.append(" ".join(str(item.title).split()))

    try:
        walk(reader.outline)
    except Exception:  # a broken outline only costs the section names
        return []
    return titles


def _heading_of(line: str, outline: list[str]) -> str:
    """The outline title this line is (its text, with or without the section number), else ''."""
    text = " ".join(line.split())
    if not text or len(text) > 120:
        return ""
    for title in outline:
        bare = re.sub(r"^[\d.]+\s+", "", title)
        if text == title or (len(bare) > 3 and (text == bare or re.fullmatch(r"[\d.]+\s+" + re.escape(bare), text))):
            return text
    return ""


def _paragraphs(lines: list[str]) -> list[str]:
    """A page's lines joined into paragraphs: a wrapped line continues its sentence, a hyphen at a break is undone."""
    paragraphs: list[str] = []
    for raw in lines:
        line = raw.strip()
        if paragraphs and not paragraphs[-1].endswith(SENTENCE_END) and not LIST_ITEM.match(line):
            previous = paragraphs[-1]
            if previous.endswith("-") and line[:1].islower():  # "manip-" + "ulation"
                paragraphs[-1] = previous[:-1] + line
            else:
                paragraphs[-1] = f"{previous} {line}"
        else:
            paragraphs.append(line)
    return paragraphs


MAX_UNPACKED_BYTES = 200 * 1024 * 1024
MAX_ZIP_RATIO = 100


def check_zip_sizes(data: bytes, max_unpacked: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a ZIP (DOCX) whose declared contents are huge or compress suspiciously well, before unpacking it."""
    import zipfile

    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise BadInput(f"the DOCX is damaged or not a Word document ({type(error).__name__}); save it again as .docx") from None
    unpacked = sum(entry.file_size for entry in entries)
    packed = max(1, sum(entry.compress_size for entry in entries))
    if unpacked > max_unpacked or unpacked / packed > MAX_ZIP_RATIO:
        raise BadInput(f"the DOCX would unpack to {unpacked / 1e6:.0f} MB ({unpacked / packed:.0f} times its size), "
                       "which looks like a zip bomb; it was not opened")


def _load_docx(data: bytes) -> list[Segment]:
    import zipfile

    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    check_zip_sizes(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise BadInput(f"the DOCX is damaged or not a Word document ({type(error).__name__}); save it again as .docx") from None
    lines: list[str] = []
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            paragraph = Paragraph(block, document)
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
            prefix = "# " if style.startswith(("Heading", "Title")) else ""
            lines.append(prefix + paragraph.text)
        elif tag == "tbl":
            for row in Table(block, document).rows:
                lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    return sections_from_markdown("\n".join(lines))


# Elements whose text is one block of its own; everything else (code, a, em, tt, span, ...) stays inside its sentence.
BLOCKS = {"p", "div", "section", "article", "main", "li", "dt", "dd", "tr", "td", "th", "table", "ul", "ol", "dl",
          "blockquote", "pre", "br", "hr", "figure", "figcaption", "caption", "form", "fieldset", "body"}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# Navigation, tables of contents and author lists are not content (DocBook, Sphinx and site templates name them so).
BOILERPLATE_TAGS = ("script", "style", "noscript", "template", "head", "nav", "header", "footer", "aside", "address")
BOILERPLATE_CLASS = re.compile(r"\b(?:toc|navheader|navfooter|navigation|navbar|breadcrumbs?|sidebar|menu|"
                               r"authorgroup|author|copyright|legalnotice|footer|header)\b", re.IGNORECASE)


def _load_html(data: bytes) -> list[Segment]:
    """Sections under their headings, each a list of blocks; inline elements stay inside their block's sentences."""
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(data, "html.parser")
    for hidden in soup(BOILERPLATE_TAGS):
        hidden.decompose()
    for element in soup.find_all(True):
        if element.decomposed:
            continue
        classes = " ".join(element.get("class") or []) + " " + str(element.get("id") or "")
        if element.name not in ("html", "body") and BOILERPLATE_CLASS.search(classes):
            element.decompose()
    sections: list[tuple[str, list[str]]] = [("", [])]
    block: list[str] = []

    def end_block() -> None:
        text = " ".join("".join(block).split())
        if text:
            sections[-1][1].append(text)
        block.clear()

    def walk(node) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a comment, doctype or CDATA
                    block.append(str(child))
            elif isinstance(child, Tag):
                if child.name in HEADINGS:
                    end_block()
                    sections.append((" ".join(child.get_text(" ").split()), []))
                elif child.name == "pre":  # code keeps its lines, as one block of its own
                    end_block()
                    code = child.get_text().strip("\n")
                    if code.strip():
                        sections[-1][1].append(code)
                elif child.name in BLOCKS:
                    end_block()
                    walk(child)
                    end_block()
                else:
                    walk(child)

    walk(soup)
    end_block()
    return [Segment("\n\n".join(([f"# {heading}"] if heading else []) + blocks), f"section {heading}" if heading else "")
            for heading, blocks in sections if blocks]


def _load_csv(data: bytes, rows_per_chunk: int) -> list[Segment]:
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise BadInput("the CSV needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    segments = []
    for first in range(0, len(body), rows_per_chunk):
        group = body[first:first + rows_per_chunk]
        lines = ["; ".join(f"{h.strip()}: {v.strip()}" for h, v in zip(header, row) if v.strip()) for row in group]
        # Row numbers count the header as row 1, as a spreadsheet shows them.
        segments.append(Segment("\n".join(lines), f"rows {first + 2}-{first + 1 + len(group)}", splittable=False))
    return segments
