"""Each document format yields text with its location; unreadable input is refused with a reason."""

import io

import pytest

from backends.core.errors import BadInput
from backends.knowledge.loaders import decode_text, load_document

pytestmark = pytest.mark.fast


def make_pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    for text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_docx(heading: str, body: str) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    document.add_paragraph(body)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "code", "ZX-9"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_pdf_keeps_page_numbers():
    segments = load_document("a.pdf", make_pdf(["First page about otters.", "Second page about herons."]))
    assert [s.location for s in segments] == ["page 1", "page 2"]
    assert "herons" in segments[1].text


def test_docx_headings_become_sections_and_tables_are_read():
    segments = load_document("a.docx", make_docx("Budget", "The budget is 7 euros."))
    assert segments[0].location == "section Budget"
    assert "7 euros" in segments[0].text and "ZX-9" in segments[0].text


def test_html_drops_scripts_and_keeps_sections():
    html = b"<html><head><title>t</title><script>alert('x')</script></head><body><h2>Fees</h2><p>Fee is 9.</p></body></html>"
    segments = load_document("a.html", html)
    assert segments[0].location == "section Fees"
    assert "alert" not in " ".join(s.text for s in segments)


def test_markdown_sections():
    segments = load_document("a.md", b"intro\n# One\nalpha\n## Two\nbeta\n")
    assert [s.location for s in segments] == ["", "section One", "section Two"]


def test_csv_groups_rows_with_header_names():
    rows = "code,price\n" + "".join(f"P{i},{i}\n" for i in range(10))
    segments = load_document("a.csv", rows.encode(), csv_rows_per_chunk=4)
    assert [s.location for s in segments] == ["rows 2-5", "rows 6-9", "rows 10-11"]
    assert "code: P0; price: 0" in segments[0].text
    assert not segments[0].splittable


def test_odd_bytes_are_decoded_not_fatal():
    assert decode_text("Café".encode("latin-1")) == "Café"
    assert decode_text(b"ok \xff\xfe\x81 end").startswith("ok")
    assert load_document("a.txt", "Préface à 5 €".encode("cp1252"))[0].text == "Préface à 5 €"
    assert decode_text("Grüße ".encode() * 100 + b"\xff") == "Grüße " * 100 + "\ufffd"  # a bad byte: UTF-8 still
    assert load_document("w.txt", "Windows Notepad: Grüße".encode("utf-16"))[0].text == "Windows Notepad: Grüße"
    with pytest.raises(BadInput, match="does not look like text"):
        load_document("notes.md", bytes(range(256)) * 16)


@pytest.mark.parametrize("name,data,reason", [
    ("empty.txt", b"  \n", "empty"),
    ("a.exe", b"MZ", "unsupported file type"),
    ("a.pdf", b"PK\x03\x04 zip pretending", "not a PDF"),
    ("a.pdf", b"%PDF-1.7\n1 0 obj garbage", "damaged"),
    ("a.docx", b"not a zip at all", "damaged or not a Word document"),
    ("a.csv", b"only,a,header\n", "header row and at least one data row"),
])
def test_bad_documents_are_refused_with_a_reason(name, data, reason):
    with pytest.raises(BadInput, match=reason):
        load_document(name, data)


def test_html_inline_code_stays_inside_its_sentence():
    html = (b"<html><body><h2>Users</h2><dl><dt>sync</dt><dd>The shell of user sync is <code>/bin/sync</code>. "
            b"Thus, anyone can <em>sync</em> the system at the <a href='#c'>console</a>.</dd></dl></body></html>")
    [segment] = load_document("users.html", html)
    assert segment.location == "section Users"
    assert "The shell of user sync is /bin/sync. Thus, anyone can sync the system at the console." in segment.text
    assert "\nsync\n" in f"\n{segment.text}\n"  # the term stays a block of its own, before its definition


def test_html_navigation_tables_of_contents_and_author_lists_are_not_content():
    html = (b"<html><body><nav>Home | Docs</nav><div class='TITLEPAGE'><h1>Guide</h1><h3 class='AUTHOR'>Joey Hess</h3>"
            b"</div><div class='TOC'><dl><dt>1. Introduction</dt></dl></div><h2>Introduction</h2>"
            b"<p>The tool keeps the files in sync.</p><pre>#include &lt;stdio.h&gt;\nint main();</pre></body></html>")
    segments = load_document("guide.html", html)
    text = "\n".join(s.text for s in segments)
    assert [s.location for s in segments] == ["section Introduction"]
    assert "Joey Hess" not in text and "Home | Docs" not in text and "1. Introduction" not in text
    assert "#include <stdio.h>\nint main();" in text  # code keeps its lines and never becomes a heading


def test_pdf_table_of_contents_page_numbers_and_running_heads_are_dropped():
    toc = "Table of Contents\n1 Introduction . . . . . . . . . . . . 1\n2 Usage . . . . . . . . . . . . . . 2\n"
    pages = [toc] + [f"Chapter 1: Introduction {n}\nThe library parses ASN.1 definitions on page {n}.\n{n}" for n in range(2, 6)]
    segments = load_document("manual.pdf", make_pdf(pages))
    text = "\n".join(s.text for s in segments)
    assert ". . ." not in text and "Table of Contents" not in text and "Chapter 1: Introduction" not in text
    assert [s.location for s in segments] == ["page 2", "page 3", "page 4", "page 5"]
    assert all(s.text.strip() == f"The library parses ASN.1 definitions on page {n}." for s, n in zip(segments, range(2, 6)))


def test_pdf_wrapped_lines_and_hyphenated_breaks_are_joined():
    [segment] = load_document("a.pdf", make_pdf(["This manual describes a library for Abstract Syntax Notation One and\n"
                                                 "Distinguished Encoding Rules manip-\nulation. Next sentence."]))
    assert ("This manual describes a library for Abstract Syntax Notation One and Distinguished Encoding Rules "
            "manipulation. Next sentence.") in segment.text
