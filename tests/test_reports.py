"""Exports of a comparison: complete, and hostile model output stays text."""

import json

import pytest

from backends.apps.reports import comparison_html, comparison_json, comparison_markdown
from backends.core.text import used_span
from backends.core.types import Answer, Claim, Comparison, Evidence, Source, Timings

pytestmark = pytest.mark.fast

HOSTILE = 'PWNED <img src="https://evil.example/x.png"> <a href="javascript:alert(1)">click</a> <script>x()</script>'


def comparison() -> Comparison:
    source = Source("c1", "d1", "policy<b>.pdf", "page 1", "The per diem is 55 euros.", 0.7)
    rag = Answer("rag", "per diem?", "The per diem is 55 euros.", (source,), Timings(total=1.5, first_token=0.4), model="m")
    ft = Answer("ft", "per diem?", HOSTILE, timings=Timings(total=2.0), model="m", adapter="demo")
    claims = {"rag": (Claim("The per diem is 55 euros.", "supported", Evidence("The per diem is 55 euros.", "retrieved", "policy.pdf")),),
              "ft": (Claim(HOSTILE, "unsupported"),)}
    return Comparison("per diem?", {"rag": rag, "ft": ft}, claims, None, "2026-11-23T10:00:00+00:00")


def test_html_export_escapes_every_untrusted_text():
    page = comparison_html(comparison())
    assert "<img" not in page and "<script>x()" not in page and 'href="javascript' not in page
    assert "&lt;img src=&quot;https://evil.example/x.png&quot;&gt;" in page
    assert "policy&lt;b&gt;.pdf" in page and "supported" in page and "1.50 s" in page


def test_markdown_export_quotes_answers_as_code_and_json_round_trips():
    text = comparison_markdown(comparison())
    assert "```text\n" + HOSTILE + "\n```" in text and "## RAG" in text and "## Fine-tuned" in text
    data = json.loads(comparison_json(comparison()))
    assert data["answers"]["ft"]["text"] == HOSTILE and data["claims"]["rag"][0]["verdict"] == "supported"


def test_a_source_location_is_quoted_in_the_markdown_export_never_rendered():
    source = Source("c1", "d1", "policy.pdf", "[click](javascript:alert(1)) ![x](https://evil.example/x.png)",
                    "The per diem is 55 euros.", 0.7)
    rag = Answer("rag", "per diem?", "The per diem is 55 euros.", (source,), Timings(total=1.5), model="m")
    text = comparison_markdown(Comparison("per diem?", {"rag": rag}, {"rag": ()}, None, "2026-11-23T10:00:00+00:00"))
    line = next(line for line in text.splitlines() if line.startswith("- source [1]"))
    assert "` [click](javascript:alert(1)) ![x](https://evil.example/x.png) `" in line


def test_results_csv_cells_that_look_like_formulas_are_written_as_text_and_read_back_unchanged(tmp_path):
    import csv

    from backends.apps.evaluation import read_rows_csv, rows_csv
    from backends.apps.runs import EvalRow

    texts = ['=HYPERLINK("https://evil.example","x")', "+1", "-cmd", "@SUM(A1)", "'=quoted", "plain -0.5"]
    rows = [EvalRow(question=t, gold="g", source="s.md", system="rag", prediction=t, exact_match=0.0, f1=-0.5,
                    contains=0.0, semantic=0.0, groundedness=0.0, claims=0, recall_at_k=None, tokens_out=1,
                    tokens_per_s=1.0) for t in texts]
    path = tmp_path / "results.csv"
    path.write_text(rows_csv(rows))
    cells = [row["prediction"] for row in csv.DictReader(path.open())]
    assert all(not cell.startswith(("=", "+", "-", "@")) for cell in cells)
    assert [r.prediction for r in read_rows_csv(path)] == texts and read_rows_csv(path)[0].f1 == -0.5


def test_used_span_finds_the_copied_stretch():
    chunk = "Hotels. The nightly hotel limit is 160 euros in most cities. Trains are preferred."
    start, end = used_span(chunk, "The nightly hotel limit is 160 euros in most cities.")
    assert chunk[start:end] == "The nightly hotel limit is 160 euros in most cities."
    assert used_span(chunk, "Something else entirely.") is None


def test_the_highlight_is_the_copied_span_on_word_boundaries_in_the_source_it_came_from():
    from backends.core.text import copied_from

    # The answer is clean text; the chunk has Markdown marks and a line break inside the sentence.
    chunk = "- **Dry dock week**: The first full week of August, with no\ninternal meetings. Ferris numbers go 1 to 5."
    start, end = used_span(chunk, "Dry dock week: The first full week of August, with no internal meetings.")
    assert chunk[start:end] == "Dry dock week**: The first full week of August, with no\ninternal meetings."
    # A partial match never starts or ends inside a word ("T he first", "w ith").
    start, end = used_span(chunk, "he first full week of August, w")
    assert chunk[start:end] == "The first full week of August, with"
    other = "Brackwater Instruments: the first full week of August is busy."
    assert copied_from([other, chunk], "Dry dock week: The first full week of August, with no internal meetings.")[0] == 1


def test_the_stage_bars_follow_each_other_and_add_up_to_the_total():
    from backends.apps.charts import stage_spans, timeline_chart

    # A RAG answer as answer_from_stream times it: first token and total from the question, generate after the first token.
    timings = Timings(embed=0.05, retrieve=0.02, prompt=0.4, first_token=1.1, generate=3.1, total=4.2)
    spans = stage_spans(timings)
    assert [name for name, _, _ in spans] == ["embed", "retrieve", "prompt", "first_token", "generate"]
    assert spans[0][1] == 0 and all(spans[n][2] == pytest.approx(spans[n + 1][1]) for n in range(4)), "no overlap, no gap"
    assert sum(end - start for _, start, end in spans) == pytest.approx(timings.total)
    assert spans[3][2] == pytest.approx(timings.first_token), "the first-token bar ends where the tile says"
    bars = timeline_chart(timings, "#000", 5.0).data[0]
    assert bars.base[-1] + bars.x[-1] == pytest.approx(timings.total)


def test_the_one_line_verdict_names_the_source_or_says_nothing_backs_it():
    from backends.answering.claims import one_line_verdict

    rag, ft = comparison().answers["rag"], comparison().answers["ft"]
    document = Evidence("The per diem is 55 euros.", "retrieved", "travel_policy.pdf", "page 2")
    learnt = Evidence("The per diem is 55 euros.", "training", "travel_policy.pdf")
    assert one_line_verdict(rag, (Claim("55 euros.", "supported", document, answers=True),)) == "backed by travel_policy.pdf page 2"
    assert one_line_verdict(ft, (Claim("55 euros.", "supported", learnt),)) == "learnt in training from travel_policy.pdf"
    assert one_line_verdict(ft, (Claim("60 euros.", "unsupported"),)) == "no source supports this"
    assert one_line_verdict(Answer("rag", "q", "The documents do not say.", abstained=True), ()) == "not in the documents"
