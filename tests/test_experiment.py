"""The knowledge-injection experiment: paired bootstrap, a tiny real grid, re-use, resume after cancel."""

import dataclasses
import json
import threading

import pytest

from backends.apps.experiment import (ExperimentOptions, best_per_column, changed_facts, paired_bootstrap,
                                      run_experiment, table, within_budget)
from backends.core.config import load_settings
from backends.core.jobs import Cancelled
from backends.learning.training import TrainConfig
from backends.service import Duet
from tests.helpers import copy_demo_store


@pytest.mark.fast
def test_the_paired_bootstrap_tells_a_real_difference_from_noise():
    same = [1, 0, 1, 1, 0, 0, 1, 0] * 5
    result = paired_bootstrap({"rag": same, "ft": list(same)})
    assert result["ft"]["vs_reference"]["low"] <= 0 <= result["ft"]["vs_reference"]["high"]
    assert not result["ft"]["vs_reference"]["real"]
    better = paired_bootstrap({"rag": [0, 1, 0, 0, 1, 0, 0, 0] * 5, "rag_ft": [1, 1, 1, 0, 1, 1, 1, 0] * 5})
    assert better["rag_ft"]["vs_reference"]["low"] > 0 and better["rag_ft"]["vs_reference"]["real"]
    assert better["rag"]["low"] <= better["rag"]["mean"] <= better["rag"]["high"]


@pytest.mark.fast
def test_a_budget_drops_the_largest_k_first_then_the_costliest_arms():
    options = ExperimentOptions(paraphrases=(0, 3))
    fitted, left_out = within_budget(options, 20, chunks=152, questions=90)
    assert left_out[0] == "K=3" and fitted.paraphrases == (0,)
    everything, none = within_budget(options, 10_000, chunks=152, questions=90)
    assert everything == options and none == []


@pytest.mark.fast
def test_the_best_arm_of_each_column_is_the_highest_or_the_fastest_and_ties_share_it():
    rows = [{"arm": "rag", "contains": 0.6, "f1": 0.3, "p50 s": 0.4, "training min": None},
            {"arm": "ft", "contains": 0.3, "f1": 0.3, "p50 s": 2.0, "training min": 5.0},
            {"arm": "raft", "contains": 0.5, "f1": 0.2, "p50 s": 0.5, "training min": 8.0}]
    best = best_per_column(rows)
    assert best["contains"] == {"rag"} and best["f1"] == {"rag", "ft"} and best["p50 s"] == {"rag"}
    assert best["training min"] == {"ft"} and "semantic" not in best


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    settings = load_settings(store_dir=copy_demo_store(root / "store"), adapters_dir=root / "adapters",
                             max_new_tokens=24)
    duet = Duet(settings)
    yield duet, root
    duet.index.close()


@pytest.fixture(scope="module")
def grid(lab):
    """A tiny real grid, cancelled before its last arm and then resumed."""
    duet, root = lab
    options = ExperimentOptions(arms=("rag", "ft", "base"), paraphrases=(0,), limit=3,
                                train=TrainConfig(max_steps=2, batch_size=2))
    cancel = threading.Event()

    def progress(p):
        if p.arm == "base":  # rag and ft are done: stop before the last arm
            cancel.set()

    out = root / "run"
    with pytest.raises(Cancelled):
        run_experiment(duet, options, out, progress, cancel)
    saved = json.loads((out / "metrics.json").read_text())
    return options, out, saved, run_experiment(duet, options, out)


def test_a_tiny_grid_writes_the_three_files_reuses_adapters_and_resumes_after_a_cancel(lab, grid):
    duet, root = lab
    options, out, saved, experiment = grid
    assert set(saved["metrics"]) == {"rag", "ft"} and not saved["adapters"]["ft"]["reused"]
    assert set(experiment.metrics) == {"rag", "ft", "base"} and experiment.questions == 3
    for name in ("metrics.json", "results.csv", "report.html"):
        assert (out / name).is_file()
    report = (out / "report.html").read_text()
    assert report.count("plotly.js v") == 1 and "Retrieval stress test" in report and "★" in report
    rows = {r["arm"]: r for r in table(experiment)}
    assert rows["rag"]["recall@k"] is not None and rows["ft"]["recall@k"] is None
    assert rows["rag"]["context tokens"] > 0 == rows["ft"]["context tokens"]
    assert "vs_reference" in experiment.intervals["ft"]
    assert set(experiment.stress) == {"rag"} and len(experiment.stress["rag"]) == 5
    assert experiment.freshness.get("systems") or experiment.freshness.get("skipped")
    assert ("Change a fact" in report) == bool(experiment.freshness.get("systems"))
    # A new run in another folder trains nothing: the adapter of the same data and settings is re-used.
    again = run_experiment(duet, dataclasses.replace(options, stress=False), root / "again")
    assert again.adapters["ft"]["reused"] and again.adapters["ft"]["name"] == experiment.adapters["ft"]["name"]


def test_a_resume_with_other_options_starts_fresh_and_says_so(lab, grid):
    import shutil

    duet, root = lab
    options, out, _, experiment = grid
    changed = shutil.copytree(out, root / "changed")
    said = []
    fewer = dataclasses.replace(options, limit=2, stress=False, fact_change=False)
    again = run_experiment(duet, fewer, changed, lambda p: said.append(p.step))
    assert any(step.startswith("starting fresh") and "options" in step for step in said), said
    assert again.questions == 2 and again.id != experiment.id
    assert len([r for r in again.rows if r.system == "rag"]) == 2, "no row of the 3-question run is mixed in"
    resumed = []
    run_experiment(duet, fewer, changed, lambda p: resumed.append(p.step))
    assert not any(step.startswith("starting fresh") for step in resumed), "the same options resume"


def test_each_experiment_keeps_its_folder_and_the_newest_is_the_latest(lab, grid, tmp_path):
    import os
    import shutil

    from backends.apps.experiment import experiment_folders, latest_experiment, new_experiment_folder

    duet, _ = lab
    _, out, _, experiment = grid
    settings = duet.settings.with_store(tmp_path / "store")
    first, second = new_experiment_folder(settings), new_experiment_folder(settings)
    assert first != second, "a new run never lands in an earlier run's folder"
    for number, folder in enumerate((first, second)):
        shutil.copytree(out, folder, ignore=shutil.ignore_patterns("datasets"), dirs_exist_ok=True)
        os.utime(folder / "metrics.json", (1_000_000 + number, 1_000_000 + number))
    assert experiment_folders(settings) == [second, first]
    assert latest_experiment(settings).id == experiment.id


@pytest.mark.fast
def test_a_question_an_arm_could_not_answer_is_left_out_and_reported_not_scored_zero():
    from backends.apps.experiment import Experiment, _scores, _unanswered
    from backends.apps.runs import EvalRow
    from backends.core.types import QAItem

    items = [QAItem(f"q{n}", "a") for n in range(3)]
    row = lambda q, system, contains, error="": EvalRow(q, "a", "", system, "", 0.0, 0.0, contains, 0.0, 0.0, 0,  # noqa: E731
                                                       None, 1, 1.0, error=error)
    experiment = Experiment("x", "now", {}, 3, rows=[row("q0", "rag", 1.0), row("q1", "rag", 1.0), row("q2", "rag", 0.0),
                                                      row("q0", "ft", 1.0), row("q1", "ft", 0.0, "ValueError: boom"),
                                                      row("q2", "ft", 0.0), row("q0", "base", 0.0, "OSError: x")],
                            metrics={"rag": {}, "ft": {}})  # base answered nothing: not finished, not scored
    assert _scores(experiment, items) == {"rag": [1.0, 0.0], "ft": [1.0, 0.0]}, "q1 left out for every arm"
    assert _unanswered(experiment, items) == {"rag": [], "ft": ["q1"], "base": ["q0", "q1", "q2"]}


def test_the_evaluate_page_shows_the_latest_experiment_and_the_advisor_uses_it(grid, tmp_path, monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    from backends.core.config import REPO_ROOT
    from pages import common

    _, out, _, experiment = grid
    store = copy_demo_store(tmp_path / "store")
    shutil.copytree(out, store / "runs" / "experiments" / "latest", ignore=shutil.ignore_patterns("datasets"))
    monkeypatch.setenv("DUET_STORE", str(store))
    common.app_settings.clear()
    common.duet.clear()
    try:
        app = AppTest.from_file(str(REPO_ROOT / "pages" / "evaluate.py"), default_timeout=240)
        app.run()
        assert not app.exception, app.exception
        shown = [frame.value for frame in app.dataframe]
        assert any(list(frame["arm"]) == list(experiment.metrics) for frame in shown if "arm" in frame)
        assert any("3 questions" in c.value for c in app.caption)
        guide = AppTest.from_file(str(REPO_ROOT / "pages" / "guide.py"), default_timeout=240)
        guide.run()
        assert not guide.exception, guide.exception
        assert any(f"experiment {experiment.id}" in c.value for c in guide.caption), "the advisor uses the experiment"
    finally:
        common.app_settings.clear()
        common.duet.clear()


def test_the_stress_test_really_leaves_the_gold_chunk_out_of_retrieval(lab, grid):
    duet, _ = lab
    _, out, _, _ = grid
    rows = [json.loads(line) for line in (out / "datasets" / "qa-k0" / "eval.jsonl").read_text().splitlines()][:3]
    found = [duet.ask("rag", r["question"]) for r in rows]
    assert any(r["chunk_id"] in {s.chunk_id for s in a.sources} for r, a in zip(rows, found)), "gold is found at all"
    for row in rows:
        answer = duet.ask("rag", row["question"], leave_out=frozenset({row["chunk_id"]}))
        assert row["chunk_id"] not in {s.chunk_id for s in answer.sources} and answer.sources


def test_change_a_fact_edits_a_copy_that_rag_follows_and_leaves_the_store_as_it_was(lab, grid):
    from backends.apps.evaluation import ask_updated, store_copy
    from backends.learning.examples import read_qa_file

    duet, _ = lab
    questions = grid[1] / "datasets" / "qa-k0"
    changes = changed_facts(questions, read_qa_file(questions / "eval.jsonl"), limit=4)
    assert changes and all(c["old_text"] != c["new_text"] and c["new_text"] in c["answer"] for c in changes)
    before = duet.index.snapshot()
    with store_copy(duet) as copy:
        for change in changes:
            revised = copy.index.revise_chunk(change["chunk_id"], change["old_text"], change["new_text"])
            assert change["new_text"] in revised.text
        assert copy.index.snapshot() != before, "the changed documents count as changed (staleness)"
        result = ask_updated(copy, changes, ("rag",), None, [])
    assert duet.index.snapshot() == before
    assert all(c["old_text"] in next(s.text for s in duet.index.chunks_of(_doc(duet, c)) if s.chunk_id == c["chunk_id"])
               for c in changes), "the user's chunks keep the old facts"
    assert result.systems["rag"].new >= 1 and result.systems["rag"].new > result.systems["rag"].old


def _doc(duet, change) -> str:
    return next(d.doc_id for d in duet.index.documents() if d.name == change["source"])
