"""The knowledge-injection experiment: paired bootstrap, a tiny real grid, re-use, resume after cancel."""

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


def test_a_tiny_grid_writes_the_three_files_reuses_adapters_and_resumes_after_a_cancel(lab):
    duet, root = lab
    tiny = TrainConfig(max_steps=2, batch_size=2)
    options = ExperimentOptions(arms=("rag", "ft", "base"), paraphrases=(0,), limit=3, train=tiny)
    cancel, seen = threading.Event(), []

    def progress(p):
        seen.append(p)
        if p.arm == "base":  # rag and ft are done: stop before the last arm
            cancel.set()

    out = root / "run"
    with pytest.raises(Cancelled):
        run_experiment(duet, options, out, progress, cancel)
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["metrics"]) == {"rag", "ft"} and not saved["adapters"]["ft"]["reused"]
    experiment = run_experiment(duet, options, out)
    assert set(experiment.metrics) == {"rag", "ft", "base"} and experiment.questions == 3
    for name in ("metrics.json", "results.csv", "report.html"):
        assert (out / name).is_file()
    assert "<script" not in (out / "report.html").read_text()
    rows = {r["arm"]: r for r in table(experiment)}
    assert rows["rag"]["recall@k"] is not None and rows["ft"]["recall@k"] is None
    assert rows["rag"]["context tokens"] > 0 == rows["ft"]["context tokens"]
    assert "vs_reference" in experiment.intervals["ft"]
    # A new run in another folder trains nothing: the adapter of the same data and settings is re-used.
    again = run_experiment(duet, options, root / "again")
    assert again.adapters["ft"]["reused"] and again.adapters["ft"]["name"] == experiment.adapters["ft"]["name"]
