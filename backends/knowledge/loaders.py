"""Turning a document's bytes into text segments, one loader per format.

Each loader returns `Segment`s that remember where they came from (a PDF page, a
heading's section, a range of CSV rows). Loaders never trust the bytes: text is decoded
with fallbacks, and anything unreadable raises `BadInput` with a reason a person can act on.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import PurePath

from backends.core.errors import BadInput

TEXT_TYPES = {".txt", ".md", ".markdown"}
SUPPORTED_TYPES = TEXT_TYPES | {".pdf", ".docx", ".html", ".htm", ".csv"}
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Segment:
    """A piece of a document with its location; `splittable` is False for pre-grouped CSV rows."""

    text: str
    location: str = ""
    splittable: bool = True


def file_type(name: str) -> str:
    return PurePath(name).suffix.lower()


def decode_text(data: bytes) -> str:
    """Decode bytes as UTF-8 (with or without BOM), else Windows-1252, else Latin-1: never fails."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding).replace("\x00", "")
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1").replace("\x00", "")


def load_document(name: str, data: bytes, csv_rows_per_chunk: int = 8) -> list[Segment]:
    """Segments of a document, or BadInput saying why it cannot be read."""
    kind = file_type(name)
    if kind not in SUPPORTED_TYPES:
        supported = " ".join(sorted(SUPPORTED_TYPES))
        raise BadInput(f"unsupported file type {kind or '(none)'!r}: Duet reads {supported}")
    if not data.strip():
        raise BadInput("the file is empty")
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


def _load_pdf(data: bytes) -> list[Segment]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.startswith(b"%PDF"):
        raise BadInput("the file is not a PDF (its content does not start with %PDF); check the file or its extension")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadInput("the PDF is encrypted: remove its password and upload it again")
        return [Segment(page.extract_text() or "", f"page {number}") for number, page in enumerate(reader.pages, 1)]
    except BadInput:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        raise BadInput(f"the PDF is damaged or truncated ({type(error).__name__}); export it again and retry") from None


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


def _load_html(data: bytes) -> list[Segment]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for hidden in soup(["script", "style", "noscript", "template", "head"]):
        hidden.decompose()
    # Headings become Markdown headings so sections are found the same way for every format.
    for heading in soup.find_all(["h1", "h2", "h3", "h4"]):
        heading.replace_with(f"\n# {heading.get_text(' ', strip=True)}\n")
    text = soup.get_text("\n")
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return sections_from_markdown(text)


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
