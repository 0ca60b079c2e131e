"""Build the demo corpus's PDF and DOCX documents from their Markdown sources.

The binary documents in data/corpus/ and data/corpus_updates/ are generated from
scripts/demo_sources/ (and its updates/ folder) so that they can be edited as text:

    .venv/bin/python scripts/build_demo_docs.py

A line `---pagebreak---` starts a new PDF page; `# `/`## ` lines become headings,
`- ` lines bullets, `1. ` lines numbered items. Needs fpdf2 (a test dependency).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "scripts" / "demo_sources"
FORMATS = {
    "travel_policy": "pdf",
    "incident_report_ir_2025_014": "pdf",
    "field_deployment_guide": "pdf",
    "sustainability_report_2025": "pdf",
    "employee_handbook": "docx",
    "research_roadmap": "docx",
    "onboarding_guide": "docx",
    "supplier_code_of_conduct": "docx",
}
PAGE_BREAK = "---pagebreak---"
FIXED_DATE = datetime(2026, 1, 15, tzinfo=timezone.utc)  # reproducible output


def write_pdf(markdown: str, target: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    for line in markdown.splitlines():
        if line.strip() == PAGE_BREAK:
            pdf.add_page()
            continue
        heading = re.match(r"^(#+)\s+(.*)", line)
        if heading:
            pdf.set_font("Helvetica", "B", 16 if len(heading.group(1)) == 1 else 13)
            pdf.multi_cell(0, 8, heading.group(2), new_x="LMARGIN", new_y="NEXT")
        elif line.strip():
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, line.replace("- ", "* ", 1) if line.startswith("- ") else line, new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.ln(3)
    pdf.output(str(target))


def write_docx(markdown: str, target: Path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.created = FIXED_DATE.replace(tzinfo=None)
    for line in markdown.splitlines():
        heading = re.match(r"^(#+)\s+(.*)", line)
        numbered = re.match(r"^\d+\.\s+(.*)", line)
        if line.strip() == PAGE_BREAK or not line.strip():
            continue
        if heading:
            document.add_heading(heading.group(2), level=min(len(heading.group(1)), 3))
        elif line.startswith("- "):
            document.add_paragraph(line[2:], style="List Bullet")
        elif numbered:
            document.add_paragraph(numbered.group(1), style="List Number")
        else:
            document.add_paragraph(line)
    document.save(str(target))


def build(source_dir: Path, target_dir: Path) -> list[Path]:
    written = []
    for source in sorted(source_dir.glob("*.md")):
        kind = FORMATS.get(source.stem)
        if kind is None:
            continue
        target = target_dir / f"{source.stem}.{kind}"
        (write_pdf if kind == "pdf" else write_docx)(source.read_text(encoding="utf-8"), target)
        written.append(target)
    return written


def main() -> int:
    written = build(SOURCES, ROOT / "data" / "corpus") + build(SOURCES / "updates", ROOT / "data" / "corpus_updates")
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
