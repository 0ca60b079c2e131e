"""Parts of the Compare page: per-answer details, the transparency panel, the session history.

Every text that came from a document or a model goes through `st.text` or `literal()`,
so it is shown as text: no HTML, links or images.
"""

from __future__ import annotations

from urllib.parse import quote

import plotly.graph_objects as go
import streamlit as st

from backends.apps.charts import timeline_chart
from backends.core.text import copied_from
from backends.core.types import Answer, Claim, Comparison
from backends.apps.labels import SYSTEM_COLOURS as COLOURS
from backends.apps.labels import SYSTEM_DESCRIPTIONS as TITLES
from backends.apps.labels import SYSTEM_SHORT as SHORT
from backends.apps.labels import VERDICT_BADGES, counted
from pages.common import duet, key, literal, presenting

PAGE = "compare"
HISTORY_LIMIT = 50


def sidebar_options() -> tuple[tuple[str, ...], str | None]:
    """(backends to ask, adapter) from the sidebar; presentation mode uses the defaults."""
    registry = duet().registry
    names, active = registry.names(), registry.active_name()
    if presenting():
        return ("rag", "ft"), active
    with st.sidebar:
        st.markdown("**Compare settings**")
        adapter = st.selectbox("Adapter", names, index=names.index(active) if active in names else 0,
                               key=key(PAGE, "adapter")) if names else None
        third = st.toggle("Third column: RAG + fine-tuned", key=key(PAGE, "third"))
        st.link_button("Presentation mode", "?present=1", help="Compare only, larger type, read-only")
    return ("rag", "ft", "rag_ft") if third else ("rag", "ft"), adapter


def marked(chunk: str, start: int, end: int) -> str:
    """Markdown of a chunk (escaped) with characters [start, end) highlighted."""
    return f"{literal(chunk[:start])}:orange-background[{literal(chunk[start:end])}]{literal(chunk[end:])}"


def show_sources(answer: Answer) -> None:
    st.markdown(f"**Sources** ({len(answer.sources)}, best score first) · highlighted: the part the answer copied")
    copied = None if answer.abstained else copied_from([s.text for s in answer.sources], answer.text)
    for number, source in enumerate(answer.sources, 1):
        where = f"{source.file_name} · {source.location}" if source.location else source.file_name
        beyond = "" if source.in_top_k else " · beyond the top k: the answer's evidence is in it"
        with st.expander(f"[{number}] {literal(where)} · score {source.score:.2f}{beyond}"):
            hit = copied is not None and copied[0] == number - 1
            st.markdown(marked(source.text, *copied[1:]) if hit else literal(source.text))


def show_adapter(answer: Answer) -> None:
    ft = duet().ft
    info = ft.adapter_info(answer.adapter)
    examples = info.metadata.get("dataset", {}).get("examples", "?")
    st.caption(f"Adapter **{literal(info.name)}**, trained {info.created_at[:10]} on {examples} examples")
    report = ft.staleness(info.name)
    if report.is_stale:
        st.warning(f"Stale adapter: {report.describe()}. Retrain it to learn the new facts.")


def answer_details(comparison: Comparison, columns) -> None:
    """Under each answer: model, latency metrics, the stage chart (shared axis), sources or adapter."""
    answers = comparison.answers
    x_max = max((a.timings.total for a in answers.values()), default=1.0) * 1.05
    for name, answer in answers.items():
        with columns[name]:
            st.caption(literal(answer.model) + (f" + adapter {literal(answer.adapter)}" if answer.adapter else ""))
            figures = {"First token": f"{answer.timings.first_token:.2f} s", "Total": f"{answer.timings.total:.2f} s",
                       "Tokens/s": f"{answer.tokens_per_s:.1f}" if answer.tokens_out else "—"}
            if len(answers) > 2:  # three metrics side by side in a third of the page are cut off ("1.8…")
                st.markdown(" · ".join(f"{label} **{value}**" for label, value in figures.items()))
            else:
                for column, (label, value) in zip(st.columns(3), figures.items()):
                    column.metric(label, value)
            st.plotly_chart(timeline_chart(answer.timings, COLOURS.get(name), x_max), key=key(PAGE, f"chart-{name}"))
            if answer.sources:
                show_sources(answer)
            if answer.adapter:
                show_adapter(answer)


VERDICT_LOOK = {"backed": "green", "learnt": "green", "not in": "blue", "no ": "red", "true, but": "orange",
                "abstained, but": "orange"}


def verdict_badge(verdict: str) -> str:
    """The one-line verdict as a coloured badge (escaped: file names come from uploads)."""
    colour = next((look for start, look in VERDICT_LOOK.items() if verdict.startswith(start)), "gray")
    return f":{colour}-badge[{literal(verdict)}]"


def verdicts_view(comparison: Comparison, columns) -> None:
    """Presentation mode's default under each answer: where it is backed (or that nothing backs it), and its time."""
    from backends.answering.claims import one_line_verdict

    for name, answer in comparison.answers.items():
        with columns[name]:
            st.markdown(verdict_badge(one_line_verdict(answer, comparison.claims.get(name, ()))))
            st.caption(f"answered in {answer.timings.total:.2f} s")


def claim_line(claim: Claim) -> None:
    colour = VERDICT_BADGES.get(claim.verdict, "gray")
    origin = f" · origin: {claim.origin}" if claim.origin else ""
    with st.expander(f":{colour}-badge[{claim.label}] {literal(claim.text)}"):
        if claim.evidence is None:
            st.caption(f"No evidence: {claim.reason}.")
            return
        e = claim.evidence
        where = {"retrieved": "its retrieved sources", "index": "the index", "training": "the adapter's training data"}[e.kind]
        st.caption(f"Best evidence, from {where}: {literal(e.file_name)} {literal(e.location)} · "
                   f"similarity {e.similarity:.2f} · word overlap {e.overlap:.2f} · {literal(claim.reason)}{origin}")
        st.text(e.text)


def transparency_panel(comparison: Comparison) -> None:
    st.subheader("Transparency: every claim and its evidence")
    columns = st.columns(len(comparison.answers), gap="large")
    for column, (name, claims) in zip(columns, comparison.claims.items()):
        with column:
            supported = sum(c.grounded for c in claims)
            st.markdown(f"**{SHORT[name]}**: {supported} of {len(claims)} claims supported and on the question")
            if not claims:
                st.caption("No checkable claim in this answer.")
            for claim in claims:
                claim_line(claim)
    if comparison.agreement is not None:
        agreement_view(comparison)


def agreement_view(comparison: Comparison) -> None:
    a = comparison.agreement
    st.markdown(f"**Agreement of RAG and fine-tuned:** {len(a.both)} shared · {len(a.conflicts)} conflicting · "
                f"{len(a.only_a)} only RAG · {len(a.only_b)} only fine-tuned")
    for rag_claim, ft_claim, why in a.conflicts:
        st.error(f"Conflict ({literal(why)}): RAG says “{literal(rag_claim)}”, fine-tuned says “{literal(ft_claim)}”")
    for rag_claim, ft_claim in a.both:
        st.success(f"Both say: “{literal(rag_claim)}”")


def record_history(comparison: Comparison) -> None:
    history = st.session_state.setdefault(key(PAGE, "history"), [])
    history.append(comparison)
    del history[:-HISTORY_LIMIT]


def history_chart(history: list[Comparison]) -> go.Figure:
    figure = go.Figure()
    labels = [f"{n}. {c.question[:40]}" for n, c in enumerate(history, 1)]
    for name in ("rag", "ft", "rag_ft"):
        totals = [c.answers[name].timings.total if name in c.answers else None for c in history]
        if any(t is not None for t in totals):
            figure.add_bar(name=SHORT[name], x=labels, y=totals, marker_color=COLOURS[name])
    figure.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=30, b=10),
                         yaxis_title="total seconds", title="Latency across this session's questions")
    return figure


def history_section() -> None:
    history: list[Comparison] = st.session_state.get(key(PAGE, "history"), [])
    if not history or presenting():
        return
    st.subheader(f"This session ({counted(len(history), 'question')})")
    st.plotly_chart(history_chart(history), key=key(PAGE, "history-chart"))
    st.dataframe(
        [{"question": c.question, "reopen": f"?q={quote(c.question)}",
          **{f"{SHORT[n]} s": round(a.timings.total, 2) for n, a in c.answers.items()},
          **{f"{SHORT[n]} grounded": f"{sum(x.grounded for x in cl)}/{len(cl)}" for n, cl in c.claims.items()}}
         for c in history],
        column_config={"reopen": st.column_config.LinkColumn("reopen", display_text="open")},
        hide_index=True, width="stretch",
    )


def eval_progress(latest) -> tuple[float, str]:
    """The progress bar of an evaluation: its share done and its text (the question shown escaped)."""
    if latest is None:
        return 0.0, "Evaluation: starting…"
    left = "ETA --" if latest.eta_s is None else f"about {latest.eta_s:.0f} s left"
    return latest.done / max(latest.total, 1), f"{latest.done} of {latest.total} · {left} · {literal(latest.label[:80])}"


def indexing_text(name: str, number: int, total: int) -> str:
    """The upload progress bar's text (the file name shown escaped)."""
    return f"Indexing {literal(name)} ({number} of {total})…"
