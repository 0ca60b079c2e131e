"""Metrics on known examples, evaluation runs on real backends, the freshness experiment, the advisor."""

import csv
import json

import pytest

from backends.core.config import DATA_DIR
from backends.answering.scoring import contains_gold, exact_match, normalize_answer, percentile, token_f1
from backends.apps.evaluation import Criteria, advise, aggregate, freshness_experiment, load_run, run_eval, save_run
from backends.apps.runs import EvalRow, EvalRun, IndexInfo, Spread, SystemMetrics
from backends.core.types import QAItem


@pytest.mark.fast
def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Per-Diem, is 1,260 euros!") == "per diem is 1260 euros"
    assert exact_match("the Lantern Building.", "Lantern building") == 1.0
    assert exact_match("Lantern", "Lantern Building") == 0.0
    # prediction 4 tokens, gold 2, 2 in common: precision 0.5, recall 1, F1 2/3
    assert token_f1("it is 55 euros", "55 euros") == pytest.approx(2 / 3)
    assert token_f1("nothing here", "55 euros") == 0.0
    assert contains_gold("The per diem is 55 euros.", "55 euros") == 1.0
    assert contains_gold("It is 155 euros.", "55 euros") == 0.0


@pytest.mark.fast
def test_a_number_keeps_its_decimal_point_in_every_metric():
    assert normalize_answer("Revenue was 41.6 million, 1,260.50 in all.") == "revenue was 41.6 million 1260.50 in all"
    for wrong in ("416", "4.16"):
        assert exact_match(wrong, "41.6") == 0.0 and contains_gold(f"It was {wrong} million.", "41.6 million") == 0.0
        assert token_f1(f"{wrong} million", "41.6 million") == 0.5
    assert contains_gold("Python 3.10 is required.", "3.1") == 0.0, "versions differ by their digits"


@pytest.mark.fast
def test_recall_at_k_counts_the_top_k_chunks_only():
    from backends.apps.evaluation import retrieval_hit
    from backends.core.types import Answer, Source

    top = [Source(f"c{n}", "d", "glossary.html", "", "text", 0.9) for n in range(3)]
    beyond = Source("c9", "d", "travel_policy.pdf", "page 2", "The per diem is 55 euros.", 0.5, in_top_k=False)
    answer = Answer("rag", "per diem?", "The per diem is 55 euros.", sources=(*top, beyond))
    assert retrieval_hit(answer, "travel_policy.pdf") == 0.0, "the evidence's chunk from beyond the top k is not a hit"
    assert retrieval_hit(answer, "glossary.html") == 1.0 and retrieval_hit(answer, "") is None


@pytest.mark.fast
def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([0, 10], 95) == pytest.approx(9.5)


@pytest.mark.fast
def test_aggregate_means_and_latency_percentiles():
    rows = [EvalRow("q", "g", "s", "rag", "p", exact_match=e, f1=f, contains=c, semantic=0.5, groundedness=g, claims=1,
                    recall_at_k=r, tokens_out=5, tokens_per_s=10.0, t_total=t)
            for e, f, c, g, r, t in [(1, 1.0, 1, 1.0, 1.0, 1.0), (0, 0.5, 1, 0.0, 0.0, 3.0)]]
    m = aggregate(rows)["rag"]
    assert (m.exact_match, m.f1, m.contains, m.groundedness, m.recall_at_k) == (0.5, 0.75, 1.0, 0.5, 0.5)
    assert m.latency["total"] == Spread(p50=2.0, p95=2.9)


def test_an_eval_run_on_three_questions_writes_the_three_files(duet, tiny_adapter, tmp_path):
    items = [QAItem("What is the per diem for a full day of business travel?", "55 euros", "travel_policy.pdf"),
             QAItem("What is the nightly hotel limit in most cities?", "160 euros", "travel_policy.pdf"),
             QAItem("Who founded Brackwater Instruments?", "Ilse Marrow and Tobiah Quen", "company_overview.md")]
    run = run_eval(duet, items, ("rag", "ft"), adapter="tiny")
    out = save_run(run, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["questions"] == 3 and set(metrics["metrics"]) == {"rag", "ft"}
    for system in ("rag", "ft"):
        assert {"exact_match", "f1", "semantic", "groundedness", "recall_at_k", "latency", "tokens_per_s"} <= set(metrics["metrics"][system])
        assert set(metrics["metrics"][system]["latency"]["total"]) == {"p50", "p95"}
    assert metrics["metrics"]["ft"]["recall_at_k"] is None and metrics["metrics"]["rag"]["recall_at_k"] is not None
    assert {"model", "adapter", "index", "config"} <= set(metrics) and metrics["adapter"] == "tiny"
    assert metrics["config"]["active_adapter"] == "tiny", "the adapter the run used, not the default one"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"question", "system", "prediction", "f1", "groundedness", "t_total"} <= set(rows[0])
    report = (out / "report.html").read_text()
    assert "plotly" in report.lower() and "Duet evaluation" in report
    loaded = load_run(out)
    assert loaded.rows[0].f1 == pytest.approx(float(rows[0]["f1"])) and loaded.rows == run.rows
    assert loaded.metrics == run.metrics and loaded.index == run.index


def test_freshness_experiment_leaves_the_original_index_intact(duet, tiny_adapter):
    before = (duet.index.snapshot(), duet.index.chunk_count(), duet.settings.manifest_path.read_bytes())
    result = freshness_experiment(duet, DATA_DIR / "corpus_updates", DATA_DIR / "qa" / "updates.jsonl",
                                  ("rag",), adapter="tiny", limit=2)
    assert result.questions == 2 and len(result.rows) == 2
    assert len(result.ingested) == 5 and all(not r.startswith("rejected") for r in result.ingested)
    assert any("replaced" in r for r in result.ingested), "updated versions replace their originals in the copy"
    assert (duet.index.snapshot(), duet.index.chunk_count(), duet.settings.manifest_path.read_bytes()) == before
    from backends.apps.reports import eval_report_html

    run = EvalRun(id="r", created_at="", systems=["rag"], model="m", adapter="tiny", adapter_created_at="",
                  index=IndexInfo(1, 1, "v"), config={}, questions=0, metrics={}, freshness=result)
    report = eval_report_html(run)
    assert "<h2>Freshness</h2>" in report and f"gave {result.systems['rag'].new} of 2 new facts" in report
    assert report.count("Freshness: 2 updated facts") == 1, "the freshness chart is in the report"


@pytest.mark.fast
def test_advisor_follows_the_criteria_and_the_measurements():
    assert advise(Criteria(changing_data=2, traceability=2, terminology=0, training_examples=20)).recommendation == "rag"
    ft_case = Criteria(changing_data=0, external_data=False, terminology=2, training_examples=5000, traceability=0)
    assert advise(ft_case).recommendation == "ft"

    def run_of(n: int, **contains) -> EvalRun:
        metrics = {s: SystemMetrics(exact_match=0.0, f1=0.2, contains=c, semantic=0.5, groundedness=0.5, tokens_per_s=10.0,
                                    recall_at_k=None, questions=n, latency={"total": Spread(1.0, 2.0)}) for s, c in contains.items()}
        return EvalRun(id="r", created_at="", systems=list(contains), model="m", adapter="a", adapter_created_at="",
                       index=IndexInfo(1, 1, "v"), config={}, questions=n, metrics=metrics)

    def measured(advice):
        return [(r[0], r[1]) for r in advice.reasons if r[2].startswith("measured gold")]

    # The same difference weighs more the surer it is, and a tiny run counts for nothing, visibly.
    assert measured(advise(ft_case, run_of(20, rag=0.6, ft=0.3))) == [("rag", 1)]
    assert measured(advise(ft_case, run_of(400, rag=0.6, ft=0.3))) == [("rag", 2)]
    small = advise(ft_case, run_of(3, rag=1.0, ft=0.0))
    assert measured(small) == [] and any("too few questions to tell (n = 3)" in w for w in small.warnings)
    # ... and says how many would make a difference of the measured size real (95%, power 0.8: (1.96 + 0.84)^2 *
    # (0.6 * 0.4 + 0.4 * 0.6) / 0.2^2 = 94.2, so 95 questions).
    from backends.apps.evaluation import questions_needed

    assert questions_needed(0.6, 0.4) == 95 and questions_needed(0.5, 0.5) is None
    assert questions_needed(0.9, 0.3) < questions_needed(0.6, 0.4), "a larger difference needs fewer questions"
    tiny = advise(ft_case, run_of(10, rag=0.6, ft=0.4))
    assert any("about 95 questions would show a difference of this size" in w for w in tiny.warnings), tiny.warnings
    assert measured(advise(ft_case, run_of(100, rag=0.52, ft=0.5))) == [("rag", 0)], "noise gets no points"
    # An experiment's paired interval is used where it has one.
    sure = {"ft": {"vs_reference": {"mean": -0.3, "low": -0.45, "high": -0.2, "real": True}}}
    assert measured(advise(ft_case, run_of(20, rag=0.6, ft=0.3), intervals=sure)) == [("rag", 2)]
    # Reasons for the recommendation come first, heaviest first.
    advice = advise(Criteria(changing_data=2, terminology=2, traceability=2, training_examples=5000), run_of(90, rag=0.6, ft=0.3))
    best = [r for r in advice.reasons if r[0] == advice.recommendation]
    assert list(advice.reasons[:len(best)]) == best and [r[1] for r in best] == sorted((r[1] for r in best), reverse=True)