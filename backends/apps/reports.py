"""Exports: a comparison as Markdown, HTML or JSON; the HTML page frame shared with evaluation reports.

Everything that came from a document or a model is escaped: an exported page shows the
text of an answer, never its markup, links or images.
"""

from __future__ import annotations

import html
import json
import re

from backends.apps.labels import METRICS, VERDICT_COLOURS, latency_line, title
from backends.apps.runs import EvalRun
from backends.core.types import Comparison

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2rem auto; color: #1d2733; line-height: 1.45; }
h1, h2, h3 { color: #0f4c5c; } table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
td, th { border: 1px solid #c9d3dc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
.answer { white-space: pre-wrap; background: #f3f6f8; padding: 0.6rem; border-radius: 6px; }
.small { color: #5b6875; font-size: 0.9em; }
"""


def comparison_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False)


def comparison_markdown(comparison: Comparison) -> str:
    """Markdown for a report or an issue; answers and sources are quoted as code, never as markup."""
    lines = ["# Duet comparison", "", f"**Question:** {_md_code(comparison.question)}", ""]
    if comparison.asked_at:
        lines += [f"Asked {comparison.asked_at}", ""]
    for name, answer in comparison.answers.items():
        lines += [f"## {title(name)}", "", f"Model: {_md_code(answer.model)}" + (f", adapter {_md_code(answer.adapter)}" if answer.adapter else ""),
                  "", "```text", answer.text.replace("```", "'''"), "```", "",
                  latency_line(answer).capitalize(), ""]
        for claim in comparison.claims.get(name, ()):
            where = f" ({claim.evidence.file_name or claim.evidence.kind})" if claim.evidence else ""
            lines.append(f"- {claim.label}{where}: {_md_code(claim.text)}")
        for number, source in enumerate(answer.sources, 1):
            where = f" {_md_code(source.location)}" if source.location else ""
            lines.append(f"- source [{number}] {_md_code(source.file_name)}{where} (score {source.score:.2f})")
        lines.append("")
    return "\n".join(lines)


def comparison_html(comparison: Comparison) -> str:
    """A self-contained HTML page of the comparison (all untrusted text escaped)."""
    e = html.escape
    parts = [f"<h1>Duet comparison</h1><p><b>Question:</b> {e(comparison.question)}</p>"]
    for name, answer in comparison.answers.items():
        parts.append(f"<h2>{e(title(name))}</h2><p class='small'>{e(answer.model)}"
                     + (f" + adapter {e(answer.adapter)}" if answer.adapter else "") + "</p>")
        parts.append(f"<div class='answer'>{e(answer.text)}</div>")
        parts.append(f"<p class='small'>{e(latency_line(answer).capitalize())}</p>")
        rows = [(f"<span style='color:{VERDICT_COLOURS.get(c.verdict, '#000')}'>{e(c.label)}</span>", e(c.text),
                 e(c.evidence.text if c.evidence else ""), e(c.evidence.file_name if c.evidence else ""))
                for c in comparison.claims.get(name, ())]
        if rows:
            parts.append(table(("verdict", "claim", "evidence", "from"), rows, escape=False))
        if answer.sources:
            parts.append(table(("#", "file", "where", "score", "text"),
                               [(n, s.file_name, s.location, f"{s.score:.2f}", s.text) for n, s in enumerate(answer.sources, 1)]))
    return page("Duet comparison", "".join(parts))


def table(headers, rows, escape: bool = True) -> str:
    cell = (lambda v: html.escape(str(v))) if escape else str
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(heading: str, body: str, head_extra: str = "") -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(heading)}</title>"
            f"<style>{PAGE_STYLE}</style>{head_extra}</head><body>{body}</body></html>")


def _md_code(text: str) -> str:
    """Inline code span that can hold any text (a longer backtick fence than the text has)."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"


def eval_report_html(run: EvalRun) -> str:
    """A self-contained evaluation report: metrics tables, plotly charts (library inlined once), rows."""
    from backends.apps.charts import freshness_chart, latency_chart, metrics_chart, scatter_chart

    e = html.escape
    charts = [metrics_chart(run), latency_chart(run)] + ([scatter_chart(run)] if len(run.metrics) > 1 else []) \
        + ([freshness_chart(run.freshness)] if run.freshness else [])
    figures = "".join(chart.to_html(full_html=False, include_plotlyjs=(n == 0)) for n, chart in enumerate(charts))
    summary = table(("system",) + METRICS + ("p50 total s", "p95 total s"),
                    [(title(s),) + tuple(_fmt(m.get(k)) for k in METRICS)
                     + (_fmt(m.latency["total"].p50), _fmt(m.latency["total"].p95))
                     for s, m in run.metrics.items()])
    about = (f"<p class='small'>Run {e(run.id)} · {e(run.created_at)} · {run.questions} questions · model "
             f"{e(run.model)} · adapter {e(str(run.adapter))} · index {run.index.documents} documents, "
             f"{run.index.chunks} chunks (version {e(run.index.version)}) · {e(run.latency_note)}</p>")
    rows = table(("system", "question", "gold", "answer", "F1", "grounded"),
                 [(title(r.system), r.question, r.gold, r.prediction, _fmt(r.f1), _fmt(r.groundedness)) for r in run.rows])
    fresh = ""
    if run.freshness:
        f = run.freshness
        fresh = ("<h2>Freshness</h2><p>After ingesting the updated documents into a copy of the index ("
                 + e("; ".join(f.ingested)) + "): "
                 + e(", ".join(f"{title(s)} gave {c.new} of {f.questions} new facts ({c.old} old)" for s, c in f.systems.items()))
                 + ".</p>" + table(("system", "question", "new fact", "old fact", "answer"),
                                   [(title(r["system"]), r["question"], r["new"], r["old"], r["prediction"]) for r in f.rows]))
    return page(f"Duet evaluation {run.id}", f"<h1>Duet evaluation</h1>{about}<h2>Summary</h2>{summary}{fresh}"
                f"<h2>Charts</h2>{figures}<h2>Every answer</h2>{rows}")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
