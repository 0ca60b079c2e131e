"""Compare: one question, both backends answering side by side, with sources and timings."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from backends.errors import DuetError
from backends.types import Answer
from pages.common import duet, demo_questions, key

PAGE = "compare"
STAGES = ("embed", "retrieve", "prompt", "first_token", "generate")
TITLES = {"rag": "RAG (retrieval + base model)", "ft": "Fine-tuned (base model + LoRA, no retrieval)"}


def ask_form() -> str | None:
    """The question box and demo picker; returns the question to answer, if any."""
    questions = demo_questions()
    initial = st.query_params.get("q", "")
    with st.form(key(PAGE, "form")):
        picked = st.selectbox("Demo question", ["(type your own below)"] + questions, key=key(PAGE, "demo"))
        typed = st.text_input("Question", value=initial, key=key(PAGE, "question"), max_chars=1000,
                              placeholder="Ask about the documents in the index…")
        asked = st.form_submit_button("Ask both", type="primary")
    if not asked:
        return initial or None
    question = typed.strip() or (picked if picked in questions else "")
    if not question:
        st.warning("Type a question or pick a demo question.")
        return None
    st.query_params["q"] = question
    return question


def timing_chart(answers: dict[str, Answer], name: str, x_max: float) -> go.Figure:
    timings = answers[name].timings
    values = [getattr(timings, stage) for stage in STAGES]
    figure = go.Figure(go.Bar(x=values, y=list(STAGES), orientation="h", marker_color="#0f6e8c",
                              text=[f"{v * 1000:.0f} ms" for v in values], textposition="auto"))
    figure.update_layout(height=220, margin=dict(l=10, r=10, t=10, b=10), xaxis=dict(range=[0, x_max], title="seconds"))
    return figure


def show_sources(answer: Answer) -> None:
    st.markdown(f"**Sources** ({len(answer.sources)})")
    for number, source in enumerate(answer.sources, 1):
        where = f"{source.file_name} · {source.location}" if source.location else source.file_name
        with st.expander(f"[{number}] {where} · score {source.score:.2f}"):
            st.text(source.text)


def show_adapter(d, answer: Answer) -> None:
    info = d.ft.adapter_info(answer.adapter)
    st.caption(f"Adapter **{info.name}**, trained {info.created_at[:10]} on {info.metadata['dataset']['examples']} examples")
    report = d.ft.staleness(info.name)
    if report.is_stale:
        st.warning(f"Stale adapter: {report.describe()}. Retrain it to learn the new facts.")


def answer_side_by_side(question: str) -> dict[str, Answer]:
    d = duet()
    columns = dict(zip(("rag", "ft"), st.columns(2, gap="large")))
    slots, texts, answers = {}, {"rag": "", "ft": ""}, {}
    for name, column in columns.items():
        with column:
            st.subheader(TITLES[name])
            slots[name] = st.empty()
    for name, item in d.stream_both(question):
        if isinstance(item, Exception):
            columns[name].error(str(item) if isinstance(item, DuetError) else f"This backend failed: {item}")
        elif isinstance(item, Answer):
            answers[name] = item
            slots[name].text(item.text or "(no answer)")
        else:
            texts[name] += item
            slots[name].text(texts[name] + " ▌")
    x_max = max((a.timings.total for a in answers.values()), default=1.0) * 1.05
    for name, answer in answers.items():
        with columns[name]:
            st.caption(answer.model + (f" + adapter {answer.adapter}" if answer.adapter else ""))
            a, b, c = st.columns(3)
            a.metric("First token", f"{answer.timings.first_token:.2f} s")
            b.metric("Total", f"{answer.timings.total:.2f} s")
            c.metric("Tokens/s", f"{answer.tokens_per_s:.1f}")
            st.plotly_chart(timing_chart(answers, name, x_max), key=key(PAGE, f"chart-{name}"))
            show_sources(answer) if name == "rag" else show_adapter(d, answer)
    return answers


st.title("Compare: RAG vs fine-tuned")
st.caption("One question goes to both backends. Both use the same base model; only the route to knowledge differs.")
asked = ask_form()
if asked:
    try:
        answer_side_by_side(asked)
    except DuetError as error:
        st.error(str(error))
