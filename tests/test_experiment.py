"""The knowledge-injection experiment: paired bootstrap, a tiny real grid, re-use, resume after cancel."""

import dataclasses
import json
import threading

import pytest

from backends.apps.experiment import ExperimentOptions, paired_bootstrap, run_experiment, table, within_budget
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
    assert "<script" not in (out / "report.html").read_text()
    rows = {r["arm"]: r for r in table(experiment)}
    assert rows["rag"]["recall@k"] is not None and rows["ft"]["recall@k"] is None
    assert rows["rag"]["context tokens"] > 0 == rows["ft"]["context tokens"]
    assert "vs_reference" in experiment.intervals["ft"]
    assert set(experiment.stress) == {"rag"} and len(experiment.stress["rag"]) == 5
    # A new run in another folder trains nothing: the adapter of the same data and settings is re-used.
    again = run_experiment(duet, dataclasses.replace(options, stress=False), root / "again")
    assert again.adapters["ft"]["reused"] and again.adapters["ft"]["name"] == experiment.adapters["ft"]["name"]


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
