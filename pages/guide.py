"""How to choose: the advisor turns the user's situation and the latest measurements into a recommendation."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from backends.apps.evaluation import Criteria, advise, list_runs, load_run
from backends.apps.experiment import advisor_arms, advisor_intervals, advisor_metrics, latest_experiment
from backends.apps.labels import SYSTEM_COLOURS, title
from backends.core.config import DATA_DIR
from backends.learning.datasets import saved_datasets
from backends.learning.examples import read_qa_file
from pages.common import duet, key, page_errors

PAGE = "guide"
LEVELS = ["low", "medium", "high"]


def criteria_form() -> Criteria:
    left, right = st.columns(2)
    with left:
        changing = st.select_slider("How often does the knowledge change?", LEVELS, value="medium", key=key(PAGE, "changing"))
        external = st.checkbox("Answers need facts the base model cannot know (internal or recent data)", value=True,
                               key=key(PAGE, "external"))
        traceability = st.select_slider("How important is tracing each answer to its source?", LEVELS, value="high",
                                        key=key(PAGE, "trace"))
    with right:
        terminology = st.select_slider("How much do precise domain terms and style matter?", LEVELS, value="medium",
                                       key=key(PAGE, "terms"))
        known, where = training_rows()
        examples = st.number_input("Clean question/answer pairs you have for training", 0, 10_000_000, known, step=50,
                                   key=key(PAGE, "examples"), help=f"Filled in from {where}.")
        clean = st.checkbox("The training data is reviewed and correct", value=True, key=key(PAGE, "clean"))
    return Criteria(LEVELS.index(changing), external, LEVELS.index(terminology), int(examples), clean, LEVELS.index(traceability))


def training_rows() -> tuple[int, str]:
    """How many training rows the user has: the active adapter's dataset, else the newest saved dataset, else the
    demo's; and where the number comes from."""
    registry = duet().registry
    active = registry.active_name()
    if active and (rows := duet().ft.adapter_info(active).metadata.get("dataset", {}).get("examples")):
        return int(rows), f"the {rows} rows adapter {active} was trained on"
    saved = saved_datasets(duet().settings.store_dir)
    if saved and (rows := saved[0][2].get("counts", {}).get("train")):
        return int(rows), f"dataset {saved[0][0]} ({rows} training rows)"
    demo = len(read_qa_file(DATA_DIR / "qa" / "train.jsonl"))
    return demo, f"the demo dataset ({demo} rows)"


def score_chart(scores: dict) -> go.Figure:
    figure = go.Figure(go.Bar(x=[title(s) for s in scores], y=list(scores.values()),
                              marker_color=[SYSTEM_COLOURS[s] for s in scores]))
    figure.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="points")
    return figure


st.title("How to choose: RAG, fine-tuning, or both")
st.caption("Your situation plus what Duet measured on your documents (the latest evaluation run).")
with page_errors():
    criteria = criteria_form()
    runs = list_runs(duet().settings)
    run = load_run(runs[0]) if runs else None
    experiment = latest_experiment(duet().settings)
    measured = advisor_metrics(experiment) if experiment and experiment.metrics else None
    if measured:
        used = ", ".join(f"{title(system)} = arm {arm}" for system, arm in advisor_arms(experiment).items())
        st.caption(f"Measurements from experiment {experiment.id} ({experiment.questions} held-out questions on your "
                   f"documents): {used}; differences judged by its paired bootstrap intervals.")
    elif run is None:
        st.info("No evaluation run yet: the advice uses your answers only. Run one on the Evaluate page.")
    else:
        st.caption(f"Measurements from run {run.id} ({run.questions} questions).")
    advice = advise(criteria, run, run.freshness if run else None, measured,
                    advisor_intervals(experiment) if measured else None)
    st.subheader(f"Recommendation: {title(advice.recommendation)}")
    for warning in advice.warnings:
        st.warning(warning[0].upper() + warning[1:] + ". Run more questions on the Evaluate page.")
    st.plotly_chart(score_chart(advice.scores), key=key(PAGE, "scores"))
    st.markdown("**Why, point by point** (what decided first)")
    for system, points, why in advice.reasons:
        st.markdown(f"- **+{points} {title(system)}**: {why}")
