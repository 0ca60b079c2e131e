"""Evaluate: run a QA set through the backends, see the metrics and charts, compare two runs, freshness."""

from __future__ import annotations

import streamlit as st

from backends.apps.charts import (curve_chart, experiment_chart, freshness_chart, latency_chart, metrics_chart,
                                  scatter_chart, stress_chart)
from backends.apps.evaluation import SYSTEMS, EvalJob, list_runs, load_qa, load_run
from backends.apps.experiment import (ARMS, DEFAULT_ARMS, ExperimentJob, ExperimentOptions, best_per_column,
                                      experiment_folders, fresh_result, load_experiment, new_experiment_folder,
                                      paraphrase_curve, table)
from backends.apps.votes import all_rounds, overall
from backends.apps.labels import METRIC_HELP, METRIC_LABELS, METRICS, counted, metric_label, title
from backends.apps.runs import EvalRun
from backends.core.config import DATA_DIR
from backends.core.errors import DuetError
from backends.learning.datasets import saved_datasets
from backends.learning.examples import read_qa_bytes
from pages.common import duet, key, literal, may_change_data, may_read, page_errors, watch_job
from pages.panels import eval_progress

PAGE = "evaluate"
BEST_CELL = "font-weight: bold; background-color: #e6f2e6"
EVAL_SET = DATA_DIR / "qa" / "eval.jsonl"


def question_set() -> tuple[str, list] | None:
    """(label, questions) of the chosen set: the demo set, a built dataset's held-out questions or an upload."""
    built = [(name, folder) for name, folder, _ in saved_datasets(duet().settings.store_dir) if (folder / "eval.jsonl").is_file()]
    choices = ["Demo set (data/qa/eval.jsonl)"] + [f"Held-out questions of {name}" for name, _ in built] + ["Upload a JSONL file"]
    choice = st.radio("Questions", choices, horizontal=True, key=key(PAGE, "set"),
                      help="Built datasets hold out questions whose facts they train on (Fine-tune → Build a dataset)")
    if choice.startswith("Demo"):
        return "data/qa/eval.jsonl", load_qa(EVAL_SET)
    if choice.startswith("Held-out"):
        name, folder = built[choices.index(choice) - 1]
        return f"{name}/eval.jsonl", load_qa(folder / "eval.jsonl")
    upload = st.file_uploader("JSONL with one {\"question\": …, \"answer\": …} object per line", type=["jsonl", "json"],
                              key=key(PAGE, "upload"))
    if upload is None:
        return None
    try:
        items = read_qa_bytes(upload.getvalue(), upload.name)
    except DuetError as error:
        st.error(f"This question set cannot be used: {literal(str(error))}")
        return None
    st.success(f"{len(items)} valid question/answer pairs in {literal(upload.name)}.")
    return upload.name, items


def new_run_section() -> None:
    chosen = question_set()
    if chosen is None:
        return
    label, items = chosen
    left, right = st.columns(2)
    limit = left.number_input("Questions", 1, len(items), min(10, len(items)), key=key(PAGE, "limit"),
                              help=f"The first N of the {len(items)} questions in {label}")
    systems = right.multiselect("Systems", list(SYSTEMS), select_all=False, default=["rag", "ft"], format_func=title, key=key(PAGE, "systems"))
    freshness = st.checkbox("Also run the freshness experiment (on a copy of the index)", key=key(PAGE, "fresh"))
    running = (job := duet().jobs["evaluation"]) is not None and job.running
    if st.button("Run evaluation", type="primary", disabled=not systems or running, key=key(PAGE, "run")):
        try:
            duet().jobs.start("evaluation", EvalJob(duet(), items[: int(limit)], tuple(systems), freshness))
            st.session_state[key(PAGE, "set-label")] = label
        except DuetError as error:
            st.error(literal(str(error)))


def eval_job_view() -> None:
    """The running (or just ended) evaluation: progress with ETA and cancel; the new run opens below when it is done."""
    job = duet().jobs["evaluation"]
    if job is None:
        return

    def finished() -> None:
        run = job.result
        if job.state == "done" and st.session_state.get(key(PAGE, "opened")) != run.id:
            st.session_state[key(PAGE, "opened")] = run.id
            st.session_state[key(PAGE, "run-a")] = run.id  # the runs below open on the new run
        if job.state == "done":
            failed = sum(m.failed for m in run.metrics.values())
            st.success(f"Run {run.id} saved ({counted(run.questions, 'question')} from "
                       f"{st.session_state.get(key(PAGE, 'set-label'), 'the set')}, "
                       f"{counted(len(run.rows) - failed, 'answer')} scored"
                       + (f", {failed} failed: see results.csv" if failed else "") + ").")

    watch_job(job, f"{PAGE}.eval", eval_progress, finished)


def experiment_section(allowed: bool) -> None:
    st.subheader("Knowledge-injection experiment")
    st.caption("Every arm answers the same held-out questions built from your documents; intervals are paired "
               "bootstrap 95%. Each run keeps its own folder and re-uses adapters trained on the same data; a "
               "cancelled run can be resumed with the same options, questions and index.")
    if allowed:
        left, right = st.columns([3, 1])
        arms = left.multiselect("Arms", ARMS, select_all=False, default=list(DEFAULT_ARMS), key=key(PAGE, "exp.arms"))
        limit = int(right.number_input("Questions", 1, 1000, 30, key=key(PAGE, "exp.limit")))
        job = duet().jobs["experiment"]
        running = job is not None and job.running
        options = ExperimentOptions(arms=tuple(arms), limit=limit)
        if st.button("Run the experiment", disabled=running or not arms, key=key(PAGE, "exp.run")):
            folder = new_experiment_folder(duet().settings)  # its own folder: an earlier result is kept
            duet().jobs.start("experiment", ExperimentJob(duet(), options, folder))
            st.rerun()
        if not running and job is not None and job.state == "cancelled" and \
                st.button("Resume the cancelled experiment", key=key(PAGE, "exp.resume")):
            duet().jobs.start("experiment", ExperimentJob(duet(), job.options, job.out))  # checked: same options
            st.rerun()
        if job is not None:
            watch_job(job, f"{PAGE}.exp", lambda p: (0.0, "Starting…") if p is None else
                      (0.0, f"{p.arm}: {p.step} · about {p.eta_s:.0f} s left"))
    folders = experiment_folders(duet().settings)
    if not folders:
        st.caption("No experiment yet.")
        return
    chosen = st.selectbox("Experiment", folders, format_func=lambda f: f.name, key=key(PAGE, "exp.chosen"))
    experiment = load_experiment(chosen)
    if experiment is None or not experiment.metrics:
        st.caption("This experiment has no finished arm yet.")
        return
    rows = table(experiment, duet().index.snapshot())
    best = max(rows, key=lambda r: r["contains"])
    st.dataframe(marked_best(rows), hide_index=True, width="stretch")
    st.caption(f"{experiment.questions} questions · {experiment.seconds:.0f} s · most gold answers: "
               f"{literal(best['what'])} · latencies measured with {experiment.latency_in_flight} questions in flight")
    for arm, questions in experiment.unanswered.items():
        st.warning(f"{literal(arm)}: {counted(len(questions), 'question')} could not be answered; they are left out "
                   "of every interval (their errors are in results.csv).")
    st.plotly_chart(experiment_chart(rows, experiment.intervals), key=key(PAGE, "exp.chart"))
    points = paraphrase_curve(experiment)
    if len(points) > 1:
        st.plotly_chart(curve_chart(points), key=key(PAGE, "exp.curve"))
    if experiment.stress:
        st.plotly_chart(stress_chart(experiment.stress), key=key(PAGE, "exp.stress"))
    fresh = experiment.freshness
    if fresh.get("systems"):
        st.plotly_chart(freshness_chart(fresh_result(fresh)), key=key(PAGE, "exp.fresh"))
        st.caption(f"Change a fact: {fresh['questions']} facts changed in a copy of the index. RAG follows at once; "
                   f"adapter {literal(fresh['adapter'])} keeps the old facts until retrained (about "
                   f"{fresh['retrain_minutes']} min).")


def marked_best(rows: list[dict]):
    """The experiment table with each column's best arm in bold on green (the report marks it with a star)."""
    import pandas as pd

    frame, best = pd.DataFrame(rows), best_per_column(rows)
    return frame.style.format(precision=3).apply(
        lambda column: [BEST_CELL if arm in best.get(column.name, ()) else "" for arm in frame["arm"]], axis=0)


def metrics_table(run: EvalRun) -> list[dict]:
    """Per system, the headline metrics under their plain names (their meaning in each column's help)."""
    return [{"system": title(s), **{metric_label(m): v.get(m) for m in run.headline(METRICS)},
             metric_label("p50 s"): v.latency["total"].p50, metric_label("p95 s"): v.latency["total"].p95,
             metric_label("p50 first token s"): v.latency["first_token"].p50} for s, v in run.metrics.items()]


def metric_columns() -> dict:
    """Each metric column's help: what it means, in a sentence."""
    return {METRIC_LABELS[m]: st.column_config.NumberColumn(METRIC_LABELS[m], help=METRIC_HELP[m], format="%.3f")
            for m in METRIC_HELP}


def run_caption(run: EvalRun) -> str:
    return (f"{run.id} · {run.created_at} · {counted(run.questions, 'question')} · adapter {run.adapter} · "
            f"index {counted(run.index.documents, 'document')} (version {run.index.version})")


def run_details(run: EvalRun) -> None:
    st.caption(run.latency_note.capitalize() + ".")
    st.plotly_chart(metrics_chart(run), key=key(PAGE, f"metrics-{run.id}"))
    st.plotly_chart(latency_chart(run), key=key(PAGE, f"latency-{run.id}"))
    if len(run.metrics) > 1:
        st.plotly_chart(scatter_chart(run), key=key(PAGE, f"scatter-{run.id}"))
    if run.freshness:
        f = run.freshness
        st.markdown("**Freshness**: after ingesting the updated documents, "
                    + ", ".join(f"{title(s)} gave {c.new} of {f.questions} new facts ({c.old} old)"
                                for s, c in f.systems.items()))
        st.plotly_chart(freshness_chart(f), key=key(PAGE, f"freshness-{run.id}"))
    folder = run.folder
    files = (("report.html", "text/html"), ("results.csv", "text/csv"), ("metrics.json", "application/json"))
    for column, (name, mime) in zip(st.columns(3), files if may_read("Report downloads") else ()):
        with open(f"{folder}/{name}", "rb") as f:
            column.download_button(name, f.read(), f"duet-{run.id}-{name}", mime, on_click="ignore",
                                   key=key(PAGE, f"{name}-{run.id}"))
    with st.expander("Every answer"):
        st.dataframe([{"system": title(r.system), "question": r.question, "gold": r.gold, "answer": r.prediction,
                       **{metric_label(m): getattr(r, m) for m in ("f1", "contains", "groundedness")}} for r in run.rows],
                     hide_index=True, width="stretch", column_config=metric_columns())


def runs_section() -> None:
    runs = list_runs(duet().settings)
    if not runs:
        st.info("No evaluation run yet: start one above (or `python -m backends eval --set data/qa/eval.jsonl`).")
        return
    names = [p.name for p in runs]
    if st.session_state.get(key(PAGE, "run-a")) not in names:
        st.session_state.pop(key(PAGE, "run-a"), None)
    chosen = st.selectbox("Run", names, key=key(PAGE, "run-a"))
    other = st.selectbox("Compare with", ["(none)"] + [n for n in names if n != chosen], key=key(PAGE, "run-b"))
    shown = [load_run(runs[names.index(chosen)])] + ([] if other == "(none)" else [load_run(runs[names.index(other)])])
    # One full-width table for both runs (side by side, each was cut off), then each run's charts in its tab.
    st.dataframe([{"run": run.id, **row} for run in shown for row in metrics_table(run)], hide_index=True,
                 width="stretch", column_config=metric_columns())
    st.caption("Hover a column's name for what it means; docs/metrics.md explains each metric.")
    for run, tab in zip(shown, st.tabs([run.id for run in shown]) if len(shown) > 1 else [st.container()]):
        with tab:
            st.caption(run_caption(run))
            run_details(run)


def preference_section() -> None:
    """What the room preferred in blind votes, beside the automatic metrics."""
    rounds = all_rounds(duet().settings)
    st.subheader("Human preference (blind votes)")
    if not rounds:
        st.caption("No blind vote yet: open Compare with ?present=1&vote=1 and put a question to the room.")
        return
    together = overall(rounds)
    if together.rag_share is not None:
        decided = together.preferred["rag"] + together.preferred["ft"]
        st.markdown(f"Over {counted(len(rounds), 'question')}, **{together.rag_share:.0%}** of {decided} votes that "
                    f"preferred one answer preferred RAG (95% interval {together.low:.0%} to {together.high:.0%}); "
                    f"{together.votes['neither']} said both were wrong.")
    st.dataframe([{"question": r.question, "votes": t.total, "preferred RAG": t.preferred["rag"],
                   "preferred fine-tuned": t.preferred["ft"], "both wrong": t.votes["neither"],
                   "share preferring RAG": t.rag_share,
                   "95% interval": f"{t.low:.2f}-{t.high:.2f}" if t.low is not None else ""} for r, t in rounds],
                 hide_index=True, width="stretch")


st.title("Evaluate")
st.caption("Both backends on a question set with known answers: quality, groundedness, retrieval recall, latency.")
with page_errors():
    allowed = may_change_data("Running evaluations")
    if allowed:
        with st.expander("New run", expanded=not list_runs(duet().settings)):
            new_run_section()
        eval_job_view()
    runs_section()
    preference_section()
    experiment_section(allowed)
