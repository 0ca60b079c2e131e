"""The blind vote on the Compare page (`?present=1&vote=1`): the presenter puts a question to the vote, every viewer
sees "Answer A" and "Answer B" and votes once per question, and the reveal names the sides with the tally.

The round on screen is read from the store every few seconds, so viewers on other machines follow the presenter.
"""

from __future__ import annotations

import uuid

import plotly.graph_objects as go
import streamlit as st

from backends.apps.labels import SYSTEM_COLOURS, title
from backends.apps.votes import CHOICES, Round, Tally, cast, current_round, open_round, reveal, tally, vote_of
from backends.core.errors import DuetError
from pages.common import demo_questions, duet, is_admin, key, literal

PAGE = "vote"
REFRESH_S = 2  # how often a viewer's page looks for the presenter's next question or the reveal


def viewer() -> str:
    """This browser session's id: one vote per viewer per question."""
    return st.session_state.setdefault(key(PAGE, "viewer"), uuid.uuid4().hex)


def presenter_controls() -> None:
    """The presenter picks a prepared question or types one; it goes to both systems and on every screen."""
    with st.expander("Presenter: put a question to the vote", expanded=current_round(duet().settings) is None):
        with st.form(key(PAGE, "form")):
            picked = st.selectbox("Prepared question", ["(type your own below)"] + demo_questions(), key=key(PAGE, "pick"))
            typed = st.text_input("Question", key=key(PAGE, "question"))
            asked = st.form_submit_button("Put to the vote", type="primary")
        if asked:
            question = typed.strip() or (picked if not picked.startswith("(") else "")
            try:
                with st.spinner("Asking both sides…"):
                    open_round(duet(), question, duet().registry.active_name())
            except DuetError as error:
                st.error(literal(str(error)))


def tally_chart(chosen: Round, counted: Tally) -> go.Figure:
    systems = [chosen.sides["A"], chosen.sides["B"]]
    figure = go.Figure(go.Bar(x=[f"{title(s)} (answer {side})" for side, s in zip("AB", systems)] + ["Both wrong"],
                              y=[counted.preferred[s] for s in systems] + [counted.votes["neither"]],
                              marker_color=[SYSTEM_COLOURS[s] for s in systems] + ["#7a7a7a"],
                              text=[counted.preferred[s] for s in systems] + [counted.votes["neither"]]))
    figure.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="votes")
    return figure


def revealed(chosen: Round, counted: Tally) -> None:
    st.subheader("The reveal")
    for side in "AB":
        st.markdown(f"**Answer {side}** was **{title(chosen.sides[side])}**.")
    if counted.rag_share is None:
        st.info(f"{counted.total} votes, none preferring one answer: nothing to tell.")
    else:
        decided = counted.preferred["rag"] + counted.preferred["ft"]
        st.markdown(f"**{counted.rag_share:.0%}** of the {decided} viewers who preferred one answer preferred RAG "
                    f"(95% interval {counted.low:.0%} to {counted.high:.0%}, Wilson); "
                    f"{counted.votes['neither']} said both were wrong.")
    st.plotly_chart(tally_chart(chosen, counted), key=key(PAGE, f"tally-{chosen.id}"))


@st.fragment(run_every=REFRESH_S)
def ballot() -> None:
    """The round on screen: its two answers, this viewer's vote, and the reveal once the presenter shows it."""
    settings = duet().settings
    chosen = current_round(settings)
    if chosen is None:
        st.info("Waiting for the presenter's first question.")
        return
    st.markdown(f"**Question:** {literal(chosen.question)}")
    for side, column in zip("AB", st.columns(2, gap="large")):
        with column:
            st.subheader(f"Answer {side}")
            st.text(chosen.answers[side] or "(no answer)")
    mine = vote_of(settings, chosen.id, viewer())
    buttons = st.columns(len(CHOICES))
    for (choice, label), column in zip(CHOICES.items(), buttons):
        if column.button(label, key=key(PAGE, f"{choice}-{chosen.id}"), width="stretch",
                         type="primary" if mine == choice else "secondary"):
            cast(settings, chosen.id, viewer(), choice)
            mine = choice
    counted = tally(settings, chosen)
    st.caption(f"Your vote: {CHOICES[mine]} (you can change it)." if mine else "You have not voted yet.")
    st.caption(f"{counted.total} votes so far.")
    if chosen.revealed:
        revealed(chosen, counted)
    elif is_admin() and st.button("Reveal", key=key(PAGE, f"reveal-{chosen.id}")):
        reveal(settings, chosen.id)
        st.rerun()


def show_vote() -> None:
    st.header("Blind vote: which answer is better?")
    st.caption("Each question goes to both systems; the answers are shown as A and B in a shuffled order, with no "
               "system named, until the reveal.")
    if is_admin():
        presenter_controls()
    ballot()
