"""Compare: one question, both backends answering side by side, with sources, timings and claims.

The last comparison is kept in the session, so reruns (a download, a toggle) re-draw it
instead of asking again; `?q=` reopens a question, `?present=1` is presentation mode (answers, verdicts and times;
a toggle shows the detail), `?present=1&story=1` the guided demo story, `?present=1&vote=1` the room's blind vote.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from urllib.parse import quote

import streamlit as st

from backends.core.errors import DuetError
from backends.apps.reports import comparison_html, comparison_json, comparison_markdown
from backends.core.types import Answer, Comparison
from pages.common import demo_questions, duet, key, literal, page_errors, presenting
from pages.panels import (
    TITLES, answer_details, history_section, record_history, sidebar_options, transparency_panel, verdicts_view,
)
from pages.story_view import show_story
from pages.vote_view import show_vote

PAGE = "compare"
STREAM_REDRAW_S = 0.15  # an answer's growing text is redrawn at most this often


def ask_form(systems: int = 2) -> tuple[str | None, bool]:
    """The question box and demo picker: (question to show, whether it was just asked); the button names how many
    systems answer."""
    questions = demo_questions()
    initial = st.query_params.get("q", "")
    with st.form(key(PAGE, "form")):
        picked = st.selectbox("Demo question", ["(type your own below)"] + questions, key=key(PAGE, "demo"))
        # No max_chars: a longer paste would be dropped by the browser without a word; it is refused below instead.
        typed = st.text_input("Question", value=initial, key=key(PAGE, "question"),
                              placeholder="Ask about the documents in the index…")
        asked = st.form_submit_button("Ask both" if systems == 2 else "Ask all three", type="primary")
    if not asked:
        return initial or None, False
    question = typed.strip() or (picked if picked in questions else "")
    if not question:
        st.warning("Type a question or pick a demo question.")
        return None, False
    limit = duet().settings.max_question_chars
    if len(question) > limit:
        st.error(f"The question is {len(question):,} characters long; the limit is {limit:,}. Shorten it to the "
                 "question itself (documents go on the Documents page).")
        return None, False
    st.query_params["q"] = question
    return question, True


def stream_answers(question: str, backends: tuple[str, ...], adapter: str | None, slots) -> dict[str, Answer]:
    """Both (or three) backends at once, each streaming into its own column."""
    texts, answers = {name: "" for name in backends}, {}
    shown = dict.fromkeys(backends, 0.0)
    for name, item in duet().stream_both(question, adapter, backends):
        if isinstance(item, str):
            texts[name] += item
            # A redraw per token was a message per token to every browser: a few a second read the same.
            if time.monotonic() - shown[name] >= STREAM_REDRAW_S:
                slots[name].text(texts[name] + " ▌")
                shown[name] = time.monotonic()
        elif isinstance(item, Exception):
            slots[name].error(literal(str(item)) if isinstance(item, DuetError) else f"This backend failed: {literal(str(item))}")
        elif isinstance(item, Answer):
            answers[name] = item
            slots[name].text(item.text or "(no answer)")
    return {name: answers[name] for name in backends if name in answers}


def new_comparison(question: str, backends, adapter, columns) -> Comparison | None:
    slots = {}
    for name, column in columns.items():
        with column:
            st.subheader(TITLES[name])
            slots[name] = st.empty()
    answers = stream_answers(question, backends, adapter, slots)
    if not answers:
        return None
    with st.spinner("Tracing every claim to its evidence…"):
        comparison = duet().trace(question, answers, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    st.session_state[key(PAGE, "current")] = comparison
    record_history(comparison)
    return comparison


def redraw(comparison: Comparison, columns) -> None:
    for name, column in columns.items():
        with column:
            st.subheader(TITLES[name])
            if name in comparison.answers:
                st.text(comparison.answers[name].text or "(no answer)")


def exports(comparison: Comparison) -> None:
    link = f"?q={quote(comparison.question)}"
    st.markdown(f"[Link to this question]({link}) · export:")
    md, web, raw = st.columns(3)
    stem = "duet-comparison"
    md.download_button("Markdown", comparison_markdown(comparison), f"{stem}.md", "text/markdown", on_click="ignore")
    web.download_button("HTML", comparison_html(comparison), f"{stem}.html", "text/html", on_click="ignore")
    raw.download_button("JSON", comparison_json(comparison), f"{stem}.json", "application/json", on_click="ignore")


def show(question: str, just_asked: bool, backends, adapter) -> None:
    columns = dict(zip(backends, st.columns(len(backends), gap="large")))
    current: Comparison | None = st.session_state.get(key(PAGE, "current"))
    same = current is not None and current.question == question and tuple(current.answers) == backends
    if just_asked or not same:
        current = new_comparison(question, backends, adapter, columns)
    else:
        redraw(current, columns)
    if current is None:
        return
    if presenting() and not st.session_state.get(key(PAGE, "detail")):
        verdicts_view(current, columns)  # a room reads the answer, where it comes from and how long it took
        return
    answer_details(current, columns)
    transparency_panel(current)
    if not presenting():
        exports(current)


st.title("Compare: RAG vs fine-tuned")
st.caption("One question goes to both backends. Both use the same base model; only the route to knowledge differs.")
with page_errors():
    if duet().llm.notice and not presenting():
        st.warning(duet().llm.notice)
    if presenting() and st.query_params.get("story") == "1":
        show_story()
    elif presenting() and st.query_params.get("vote") == "1":
        show_vote()
    else:
        if presenting():
            st.toggle("Show technical detail", key=key(PAGE, "detail"),
                      help="Models, stage timings, sources and every claim with its evidence")
        backends, adapter = sidebar_options()
        question, just_asked = ask_form(len(backends))
        if question:
            show(question, just_asked, backends, adapter)
        history_section()
