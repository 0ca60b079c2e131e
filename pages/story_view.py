"""The guided demo story on the Compare page (`?present=1&story=1`): one step at a time, next/back or the arrow keys.

Steps are computed when first shown and kept in the session, so going back shows the same answers.
"""

from __future__ import annotations

import streamlit as st

from backends.apps.story import TITLES, story_step
from pages.common import duet, key, literal
from pages.panels import TITLES as SYSTEM_TITLES
from pages.panels import verdict_badge

PAGE = "story"


def current_step() -> int:
    try:
        return min(max(int(st.query_params.get("step", "1")) - 1, 0), len(TITLES) - 1)
    except ValueError:
        return 0


def go(number: int) -> None:
    st.query_params["step"] = str(number + 1)  # a reload or a shared link opens the same step


def show_story() -> None:
    number = current_step()
    st.progress((number + 1) / len(TITLES), text=f"Step {number + 1} of {len(TITLES)}: {TITLES[number]}")
    kept = st.session_state.setdefault(key(PAGE, "steps"), {})
    if number not in kept:
        with st.spinner("Asking both sides…"):
            kept[number] = story_step(duet(), number)
    step = kept[number]
    st.header(step.title)
    st.markdown(f"#### {literal(step.narration)}")
    if step.question:
        st.markdown(f"**Question:** {literal(step.question)}")
        for name, column in zip(step.answers, st.columns(len(step.answers), gap="large")):
            with column:
                st.subheader(SYSTEM_TITLES[name])
                st.text(step.answers[name].text or "(no answer)")
                st.markdown(verdict_badge(step.verdicts[name]))
                st.caption(f"answered in {step.answers[name].timings.total:.2f} s")
    if step.rows:
        st.dataframe(step.rows, hide_index=True, width="stretch")
    back, forward = st.columns(2)
    if back.button("← Back", disabled=number == 0, shortcut="Left", key=key(PAGE, "back"), width="stretch"):
        go(number - 1)
        st.rerun()
    if forward.button("Next →", disabled=number == len(TITLES) - 1, shortcut="Right", type="primary",
                      key=key(PAGE, "next"), width="stretch"):
        go(number + 1)
        st.rerun()
