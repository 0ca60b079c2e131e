"""The guided demo story on the Compare page (`?present=1&story=1`): one step at a time, next/back or the arrow keys.

Steps come from the store's prepared story (backends/apps/story.py, `prepared_story`): the same answers for every
viewer until the documents, the adapter or the measurements change. The buttons' arrow-key shortcuts show as arrows.
"""

from __future__ import annotations

import time

import streamlit as st

from backends.apps.story import TITLES, StoryStep, prepared_story, story_step
from pages.common import duet, key, literal
from pages.panels import TITLES as SYSTEM_TITLES
from pages.panels import verdict_badge

PAGE = "story"
POLL_S = 0.2


def current_step() -> int:
    try:
        return min(max(int(st.query_params.get("step", "1")) - 1, 0), len(TITLES) - 1)
    except ValueError:
        return 0


def go(number: int) -> None:
    st.query_params["step"] = str(number + 1)  # a reload or a shared link opens the same step


def prepared(number: int) -> StoryStep:
    """Step `number` as the background job prepared it for this store (waiting while it prepares it), or asked now."""
    job = prepared_story(duet())
    if number not in job.steps and job.running:
        with st.spinner("Asking both sides…"):
            while number not in job.steps and job.running:
                time.sleep(POLL_S)
    return job.steps.get(number) or story_step(duet(), number)


def show_story() -> None:
    number = current_step()
    st.progress((number + 1) / len(TITLES), text=f"Step {number + 1} of {len(TITLES)}: {TITLES[number]}")
    step = prepared(number)
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
    if back.button("Back", disabled=number == 0, shortcut="Left", key=key(PAGE, "back"), width="stretch"):
        go(number - 1)
        st.rerun()
    if forward.button("Next", disabled=number == len(TITLES) - 1, shortcut="Right", type="primary",
                      key=key(PAGE, "next"), width="stretch"):
        go(number + 1)
        st.rerun()
