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
