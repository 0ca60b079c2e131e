"""Evaluation: answer metrics and runs of a QA set through the backends.

The answer metrics themselves live in answering/scoring.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backends.core.config import DATA_DIR
from backends.core.errors import BadInput
from backends.core.jobs import BackgroundJob, Eta
from backends.apps.labels import SYSTEMS, title  # noqa: F401 - SYSTEMS: the systems an evaluation can run
from backends.apps.runs import (
    STAGES, EvalRow, EvalRun, FreshCount, FreshnessResult, IndexInfo, Spread, SystemMetrics,
)
from backends.learning.examples import read_qa_file
from backends.core.threads import IN_FLIGHT
from backends.core.types import QAItem
from backends.answering.scoring import contains_gold, cosine, percentile, score_answer


def load_qa(path: str | Path) -> list[QAItem]:
    """Read and validate a QA JSONL file (BadInput names the first bad line)."""
    return read_qa_file(path)


# ---- runs --------------------------------------------------------------------------------
RUN_FILES = ("metrics.json", "results.csv", "report.html")


def retrieval_hit(answer, source: str) -> float | None:
    """1.0 when the gold source document is among the top k retrieved chunks (None: not applicable); a chunk shown
    only because the evidence came from it, from beyond the top k, does not count."""
    if not source or answer.backend == "ft":
        return None
    return float(any(s.file_name == source for s in answer.sources if s.in_top_k))


def evaluate_answer(duet, item: QAItem, answer) -> EvalRow:
    """One row of a run: the answer, its metrics, its claims' groundedness, its timings (a failed answer: its
    message, and no score)."""
    from backends.answering.claims import groundedness
    from backends.core.types import FailedAnswer

    if isinstance(answer, FailedAnswer):
        return EvalRow(question=item.question, gold=item.answer, source=item.source, system=answer.backend,
                       prediction="", exact_match=0.0, f1=0.0, contains=0.0, semantic=0.0, groundedness=0.0, claims=0,
                       recall_at_k=None, tokens_out=0, tokens_per_s=0.0, error=answer.error)

    claims = duet.tracer.trace(answer)
    gold_vector, answer_vector = duet.tracer.embed([item.answer, answer.text or " "])
    return EvalRow(
        question=item.question, gold=item.answer, source=item.source, system=answer.backend,
        prediction=answer.text, **score_answer(answer.text, item.answer),
        semantic=round(cosine(gold_vector, answer_vector), 4),
        groundedness=round(groundedness(claims), 4), claims=len(claims),
        recall_at_k=retrieval_hit(answer, item.source),
        tokens_out=answer.tokens_out, tokens_per_s=answer.tokens_per_s, abstained=float(answer.abstained),
        **{f"t_{stage}": round(getattr(answer.timings, stage), 4) for stage in STAGES},
    )


def aggregate(rows: list[EvalRow]) -> dict[str, SystemMetrics]:
    """Per-system means of the metrics and p50/p95 of every stage's latency."""
    summary = {}
    for system in dict.fromkeys(r.system for r in rows):
        failed = sum(1 for r in rows if r.system == system and r.error)
        mine = [r for r in rows if r.system == system and not r.error]
        if not mine:
            summary[system] = SystemMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, 0,
                                            {stage: Spread(0.0, 0.0) for stage in STAGES}, failed=failed)
            continue
        recall = [r.recall_at_k for r in mine if r.recall_at_k is not None]
        mean = lambda metric: round(sum(getattr(r, metric) for r in mine) / len(mine), 4)  # noqa: E731
        spread = lambda stage: Spread(round(percentile([r.seconds(stage) for r in mine], 50), 4),  # noqa: E731
                                      round(percentile([r.seconds(stage) for r in mine], 95), 4))
        summary[system] = SystemMetrics(
            exact_match=mean("exact_match"), f1=mean("f1"), contains=mean("contains"), semantic=mean("semantic"),
            groundedness=mean("groundedness"), tokens_per_s=generating_speed(mine),
            recall_at_k=round(sum(recall) / len(recall), 4) if recall else None, questions=len(mine),
            latency={stage: spread(stage) for stage in STAGES}, abstained=mean("abstained"), failed=failed)
    return summary


def generating_speed(rows: list[EvalRow]) -> float:
    """Mean tokens/s of the answers that generated tokens: an abstention has no speed, not a speed of 0."""
    speeds = [r.tokens_per_s for r in rows if r.tokens_out]
    return round(sum(speeds) / len(speeds), 4) if speeds else 0.0


def run_eval(duet, items: list[QAItem], systems=("rag", "ft"), adapter: str | None = None,
             on_progress: Callable[[int, int, str], None] = lambda done, total, label: None,
             cancel: threading.Event | None = None) -> EvalRun:
    """Every item through every system; returns the run (metadata, per-system metrics, rows)."""
    import hashlib
    from datetime import datetime, timezone

    uses_adapter = bool({"ft", "rag_ft"} & set(systems))  # a RAG-only run needs no adapter in the store
    adapter = (adapter or duet.registry.active_name()) if uses_adapter else None
    duet.warm()
    if adapter:
        duet.registry.get(adapter)  # a missing or foreign adapter is the run's bad input (exit 2), not N failed rows
    jobs = [(item, system) for item in items for system in systems]
    rows: list = [None] * len(jobs)
    done = 0

    def finished(number: int, answer) -> None:  # claims are traced here while the next answers decode
        nonlocal done
        item, system = jobs[number]
        rows[number], done = evaluate_answer(duet, item, answer), done + 1
        on_progress(done, len(jobs), f"{system}: {item.question}")

    on_progress(0, len(jobs), "starting")
    duet.ask_many([(system, item.question, adapter) for item, system in jobs], on_done=finished, cancel=cancel)
    snapshot = duet.index.snapshot()
    created = datetime.now(timezone.utc)
    return EvalRun(
        id=created.strftime("%Y%m%d-%H%M%S-%f")[:-3], created_at=created.isoformat(timespec="seconds"), systems=list(systems),
        model=duet.llm.name, adapter=adapter or "",
        adapter_created_at=duet.registry.get(adapter, check_base=False).created_at if adapter else "",
        index=IndexInfo(documents=len(snapshot), chunks=duet.index.chunk_count(),
                        version=hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:12]),
        config={**{k: str(v) for k, v in duet.settings.public().items()}, "active_adapter": adapter or ""},
        questions=len(items),
        metrics=aggregate(rows), rows=rows, latency_in_flight=IN_FLIGHT,
    )


def rows_csv(rows: list[EvalRow]) -> str:
    """results.csv: one line per answer."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in dataclasses.fields(EvalRow)])
    writer.writeheader()
    writer.writerows(row.to_csv() for row in rows)
    return buffer.getvalue()


def read_rows_csv(path: Path) -> list[EvalRow]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [EvalRow.from_csv(r) for r in csv.DictReader(f)]


def write_files(out: Path, contents: dict[str, str]) -> None:
    """Each file written to a temporary name beside it, then renamed over it, in the order given."""
    import os
    import tempfile

    for name, text in contents.items():
        handle, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)


def save_run(run: EvalRun, out_dir: str | Path) -> Path:
    """metrics.json (everything but the rows), results.csv (the rows) and report.html, written atomically."""
    from backends.apps.reports import eval_report_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_files(out, {
        "metrics.json": json.dumps(run.to_json(), indent=2),
        "results.csv": rows_csv(run.rows),
        "report.html": eval_report_html(run),
    })
    return out


def load_run(folder: str | Path) -> EvalRun:
    """A saved run: metrics.json plus its rows from results.csv."""
    folder = Path(folder)
    rows = read_rows_csv(folder / "results.csv")
    return EvalRun.from_json(json.loads((folder / "metrics.json").read_text()), rows, str(folder))


def list_runs(settings) -> list[Path]:
    """Saved runs of the store, newest first."""
    root = settings.runs_dir
    return sorted((p for p in root.glob("*") if (p / "metrics.json").is_file()), reverse=True) if root.is_dir() else []


@dataclass(frozen=True)
class EvalProgress:
    done: int
    total: int
    label: str
    eta_s: float | None


class EvalJob(BackgroundJob):
    """An evaluation (and, if asked, the freshness experiment) in a background thread, saved as a run when it ends;
    the Evaluate page watches it, and a click elsewhere does not lose it. `result` is the saved EvalRun."""

    what = "the evaluation"

    def __init__(self, duet, items: list[QAItem], systems: tuple[str, ...], freshness: bool = False):
        super().__init__("evaluation")
        self.duet, self.items, self.systems, self.freshness = duet, items, systems, freshness

    def work(self, on_progress, cancel: threading.Event) -> EvalRun:
        def reporter():  # an ETA per phase: the freshness experiment has its own rate
            eta = Eta()
            return lambda done, total, label: on_progress(EvalProgress(done, total, label, eta.seconds_left(done, total)))

        run = run_eval(self.duet, self.items, self.systems, on_progress=reporter(), cancel=cancel)
        if self.freshness:
            run.freshness = freshness_experiment(self.duet, DATA_DIR / "corpus_updates", DATA_DIR / "qa" / "updates.jsonl",
                                                 self.systems, on_progress=reporter())
        save_run(run, self.duet.settings.runs_dir / run.id)
        return run


# ---- freshness ---------------------------------------------------------------------------
def freshness_experiment(duet, updates_dir: str | Path, questions_path: str | Path, systems=("rag", "ft"),
                         adapter: str | None = None, limit: int = 0,
                         on_progress: Callable[[int, int, str], None] = lambda done, total, label: None) -> FreshnessResult:
    """Ingest the updated documents into a COPY of the store, ask the update questions, count new vs old facts.

    Each question has the new `answer` and the `old_answer` of the earlier document. The copy is
    deleted afterwards: the store the user works with never changes.
    """
    rows = [json.loads(line) for line in Path(questions_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    with store_copy(duet) as copy:
        on_progress(0, len(rows) * len(systems) + 1, "ingesting the updated documents into a copy of the index")
        ingested = [r.describe() for r in copy.index.ingest_paths([updates_dir])]
        return ask_updated(copy, rows, systems, adapter or duet.registry.active_name(), ingested, on_progress)


@contextmanager
def store_copy(duet):
    """A Duet on a temporary copy of the store, for what-if changes; the copy is deleted afterwards."""
    import shutil
    import tempfile

    from backends.service import Duet

    if duet.settings.chroma_server:
        raise BadInput("the freshness experiment copies the embedded store; it is not available with a Chroma server")
    with tempfile.TemporaryDirectory(prefix="duet-freshness-") as scratch:
        copy_settings = duet.settings.with_store(Path(scratch) / "store")
        with duet.index.writing():  # no write may land halfway through the copy
            shutil.copytree(duet.settings.store_dir, copy_settings.store_dir,
                            ignore=shutil.ignore_patterns("models", "runs", "datasets", "bench", "logs", ".writer.lock", ".store.lock"))
        copy = Duet(copy_settings)  # same settings for the models: the same loaded model and adapter host
        try:
            yield copy
        finally:
            copy.index.close()


def ask_updated(duet, rows: list[dict], systems, adapter: str | None, ingested: list[str],
                on_progress: Callable[[int, int, str], None] = lambda done, total, label: None) -> FreshnessResult:
    """Each update question (its new `answer`, its `old_answer`) asked of each system, counted new vs old."""
    jobs, counted = [(row, system) for row in rows for system in systems], itertools.count(2)
    answers = duet.ask_many([(system, row["question"], adapter) for row, system in jobs],
                            on_done=lambda n, a: on_progress(next(counted), len(jobs) + 1,
                                                             f"{jobs[n][1]}: {jobs[n][0]['question']}"))
    results = [{"system": system, "question": row["question"], "new": row["answer"], "old": row["old_answer"],
                "prediction": getattr(answer, "text", ""), "error": getattr(answer, "error", ""),
                "has_new": contains_gold(getattr(answer, "text", ""), row["answer"]),
                "has_old": contains_gold(getattr(answer, "text", ""), row["old_answer"])}
               for (row, system), answer in zip(jobs, answers)]  # a failed row keeps its error and counts neither
    summary = {s: FreshCount(new=int(sum(r["has_new"] for r in results if r["system"] == s)),
                             old=int(sum(r["has_old"] for r in results if r["system"] == s))) for s in systems}
    return FreshnessResult(questions=len(rows), ingested=ingested, systems=summary, rows=results, adapter=adapter)


# ---- advisor -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Criteria:
    """The user's situation, as the advisor asks it (levels: 0 low, 1 medium, 2 high)."""

    changing_data: int = 1  # how often the knowledge changes
    external_data: bool = True  # answers need facts the base model cannot know
    terminology: int = 1  # precise domain wording and style matter
    training_examples: int = 0  # clean question/answer pairs available
    training_clean: bool = True
    traceability: int = 2  # answers must be traced to sources


@dataclass(frozen=True)
class Advice:
    recommendation: str  # "rag", "ft" or "rag_ft"
    scores: dict
    reasons: tuple[tuple[str, int, str], ...]  # (system favoured, points, why): the recommendation's first, by weight
    warnings: tuple[str, ...] = ()  # measurements too small to count


MIN_QUESTIONS_TO_TELL = 20  # fewer answered questions: a measured difference counts for nothing
POINTS_PER_SURE_TENTH, MAX_MEASURED_POINTS = 1, 4  # a measured point per 0.1 the difference surely (95%) exceeds


def advise(criteria: Criteria, run: EvalRun | None = None, freshness: FreshnessResult | None = None,
           metrics: dict[str, SystemMetrics] | None = None, intervals: dict | None = None) -> Advice:
    """Score RAG, fine-tuning and their combination from the criteria and the latest measurements
    (`metrics`, an experiment's, in preference to the run's; `intervals`: its paired bootstrap per system)."""
    reasons: list[tuple[str, int, str]] = []
    warnings: list[str] = []
    add = lambda system, points, why: reasons.append((system, points, why))  # noqa: E731
    if criteria.changing_data:
        add("rag", 2 * criteria.changing_data, "the knowledge changes: RAG follows a new document at once, an adapter only after retraining")
    if criteria.external_data:
        add("rag", 2, "answers need facts the base model cannot know: retrieval supplies them with every question")
    if criteria.traceability:
        add("rag", 2 * criteria.traceability, "answers must be traced: RAG shows the chunks it used; an adapter cannot say where a fact came from")
    if criteria.terminology:
        add("ft", 2 * criteria.terminology, "domain wording and style matter: an adapter learns them, retrieval does not")
    if criteria.training_examples < 100:
        add("rag", 2, f"only {criteria.training_examples} training pairs: too few for an adapter to learn the facts reliably")
    else:
        add("ft", 1 if criteria.training_examples < 1000 else 2, f"{criteria.training_examples} training pairs are enough to train an adapter")
    if not criteria.training_clean:
        add("rag", 2, "the training data is not clean: an adapter learns its mistakes and cannot be audited")
    if metrics or run:
        _measured(metrics or run.metrics, add, warnings.append, intervals or {})
    if freshness:
        counts = freshness.systems
        adapter_new = counts["ft"].new if "ft" in counts else 0
        for system, c in counts.items():
            if system != "ft" and c.new > adapter_new:
                add(system, 2, f"freshness: {title(system)} gave {c.new} of {freshness.questions} updated facts, "
                               f"the adapter {adapter_new}")
    scores = {s: sum(p for system, p, _ in reasons if system == s) for s in ("rag", "ft", "rag_ft")}
    if criteria.terminology and (criteria.changing_data or criteria.traceability):
        add("rag_ft", min(scores["rag"], scores["ft"]), "both needs apply: retrieval for facts and sources, the adapter for wording")
        scores["rag_ft"] = sum(p for system, p, _ in reasons if system == "rag_ft")
    best = max(scores, key=scores.get)
    ordered = sorted(reasons, key=lambda r: (r[0] != best, -r[1]))  # what decided first, each side by weight
    return Advice(best, scores, tuple(ordered), tuple(warnings))


def _measured(metrics: dict[str, SystemMetrics], add, warn, intervals: dict) -> None:
    """Points from measurements: the better system on quality and groundedness, weighted by how much better it
    surely is (the lower end of the difference's 95% interval); nothing from a run too small to tell."""
    for metric, label in (("contains", "gold answer contained"), ("f1", "token F1"), ("groundedness", "groundedness")):
        values = {s: m.get(metric) for s, m in metrics.items() if m.get(metric) is not None}
        if len(values) < 2:
            continue
        ranked = sorted(values, key=values.get, reverse=True)
        first, second = ranked[0], ranked[1]
        listing = ", ".join(f"{title(s)} {values[s]:.2f}" for s in ranked)
        n = min(metrics[s].questions for s in values)
        needed = questions_needed(values[first], values[second])
        enough = (f"about {needed} questions would show a difference of this size ({values[first] - values[second]:.2f})"
                  f" at 95% confidence, 4 times in 5" if needed else "no difference was measured")
        if n < MIN_QUESTIONS_TO_TELL:
            warn(f"too few questions to tell (n = {n}): measured {label} ({listing}) is not counted; {enough}")
            continue
        low, high = _difference_interval(metric, first, second, values, n, intervals)
        if low <= 0:
            add(first, 0, f"measured {label}: {listing}; the difference ({low:+.2f} to {high:+.2f}, 95%) may be noise; "
                          f"{enough}")
            continue
        points = min(MAX_MEASURED_POINTS, max(1, round(POINTS_PER_SURE_TENTH * low * 10)))
        add(first, points, f"measured {label}: {listing}; {title(first)} is better by {low:.2f} to {high:.2f} "
                           f"(95%, n = {n})")


def questions_needed(p: float, q: float, z_level: float = 1.96, z_power: float = 0.8416) -> int | None:
    """Questions per system for a difference p - q of scores in [0, 1] to stand clear of noise: a two-sided 95% test
    with 80% power, on the variance bound p(1 - p) + q(1 - q). None when the scores are equal."""
    if abs(p - q) < 1e-9:
        return None
    variance = max(p * (1 - p) + q * (1 - q), 1e-9)
    return math.ceil((z_level + z_power) ** 2 * variance / (p - q) ** 2)


def _difference_interval(metric: str, first: str, second: str, values: dict, n: int, intervals: dict) -> tuple[float, float]:
    """95% interval of values[first] - values[second]: the experiment's paired bootstrap where it has one (gold
    contained against RAG), else a normal interval whose variance bound p(1 - p) holds for any score in [0, 1]."""
    versus = {s: intervals.get(s, {}).get("vs_reference") for s in (first, second)}
    if metric == "contains" and second == "rag" and versus[first]:
        return versus[first]["low"], versus[first]["high"]
    if metric == "contains" and first == "rag" and versus[second]:
        return -versus[second]["high"], -versus[second]["low"]
    p, q = values[first], values[second]
    spread = 1.96 * ((p * (1 - p) + q * (1 - q)) / n) ** 0.5
    return p - q - spread, p - q + spread
