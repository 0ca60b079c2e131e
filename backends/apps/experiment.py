"""The knowledge-injection experiment: every arm on the same held-out questions, with paired bootstrap intervals.

    questions: the held-out eval.jsonl of a qa dataset built from the index with K = the smallest paraphrase count
    datasets:  one per adapter the arms need (qa at each K, raft, text), none trained on a wording near a question
    adapters:  trained at the defaults, named by their training file's hash, so a re-run re-uses them
    arms:      answered on the same questions, scored like `eval`, with 95% intervals on gold contained
               for every arm and for its difference to RAG (the same resampled questions for both)
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from backends.apps.evaluation import aggregate, evaluate_answer, read_rows_csv, rows_csv, write_files
from backends.apps.reports import page
from backends.apps.runs import EvalRow
from backends.core.errors import BadInput
from backends.core.jobs import BackgroundJob, Cancelled
from backends.core.threads import IN_FLIGHT, run_concurrently
from backends.core.types import FailedAnswer, QAItem, final_answer

ARMS = ("base", "rag", "ft", "ft_par", "rag_ft", "raft", "text")
DEFAULT_ARMS = ("base", "rag", "ft", "ft_par", "rag_ft", "raft")
DEFAULT_PARAPHRASES = (0, 3)
RETRIEVING = ("rag", "rag_ft", "raft")
# The retrieval stress test: (leave out the gold chunk | its whole document | nothing, top_k or None for the setting).
STRESS = {"gold chunk removed": ("chunk", None), "gold document removed": ("document", None),
          "top-k 1": (None, 1), "top-k 3": (None, 3), "top-k 5": (None, 5)}
ARM_TITLES = {
    "base": "base model alone", "rag": "RAG", "ft": "fine-tuned, no paraphrases", "ft_par": "fine-tuned, K paraphrases",
    "rag_ft": "RAG + the paraphrase adapter", "raft": "RAG + a RAFT adapter", "text": "continued pretraining on the chunks",
}
BOOTSTRAP_SAMPLES = 2000


def paired_bootstrap(scores: dict[str, list[float]], reference: str = "rag", samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> dict[str, dict]:
    """Each arm's mean with a 95% interval, and its difference to `reference` with one, by the paired bootstrap:
    the same resampled questions for every arm, so a difference is judged on questions both answered."""
    import numpy as np

    names = list(scores)
    matrix = np.asarray([scores[n] for n in names], dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise BadInput("every arm needs a score for the same, non-empty list of questions")
    picks = np.random.default_rng(seed).integers(0, matrix.shape[1], size=(samples, matrix.shape[1]))
    means = matrix[:, picks].mean(axis=2)  # arms x samples
    result = {}
    for row, name in enumerate(names):
        low, high = np.percentile(means[row], [2.5, 97.5])
        entry = {"mean": round(float(matrix[row].mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4)}
        if reference in scores and name != reference:
            other = names.index(reference)
            d_low, d_high = np.percentile(means[row] - means[other], [2.5, 97.5])
            entry["vs_reference"] = {"mean": round(float(matrix[row].mean() - matrix[other].mean()), 4),
                                     "low": round(float(d_low), 4), "high": round(float(d_high), 4),
                                     "real": bool(d_low > 0 or d_high < 0)}
        result[name] = entry
    return result


@dataclass(frozen=True)
class ExperimentOptions:
    arms: tuple[str, ...] = DEFAULT_ARMS
    paraphrases: tuple[int, ...] = DEFAULT_PARAPHRASES  # ft: the smallest K, ft_par: the largest
    limit: int | None = None
    dataset: Path | None = None  # a built qa dataset: its eval.jsonl are the questions, its train.jsonl ft's data
    train: object = None  # a TrainConfig (None: the defaults)
    stress: bool = True  # the retrieval stress test for the arms that retrieve
    fact_change: bool = True  # change held-out facts in a copy of the store: RAG follows, the adapter does not

    def check(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise BadInput(f"unknown arm {', '.join(unknown) or '(none)'}: choose from {', '.join(ARMS)}")
        if not self.paraphrases or any(not 0 <= k <= 10 for k in self.paraphrases):
            raise BadInput("--paraphrases takes counts between 0 and 10, for example 0,3")
        if self.limit is not None and self.limit < 1:
            raise BadInput("--limit must be at least 1")
        if self.dataset is not None and not (Path(self.dataset) / "eval.jsonl").is_file():
            raise BadInput(f"{self.dataset} holds no eval.jsonl: build one with `python -m backends dataset build`")


@dataclass(frozen=True)
class ExperimentProgress:
    arm: str
    step: str
    done: int
    total: int  # 0: not known in steps (training steps and questions are counted as they come)
    eta_s: float


@dataclass
class Experiment:
    id: str
    created_at: str
    options: dict
    questions: int
    datasets: dict = field(default_factory=dict)  # adapter role -> manifest summary
    adapters: dict = field(default_factory=dict)  # adapter role -> {name, reused, training_minutes}
    metrics: dict = field(default_factory=dict)  # arm -> SystemMetrics as a dict, with context tokens
    intervals: dict = field(default_factory=dict)  # arm -> paired bootstrap of gold contained
    index: dict = field(default_factory=dict)
    stress: dict = field(default_factory=dict)  # arm -> condition -> gold contained
    freshness: dict = field(default_factory=dict)  # "change a fact" on a copy: a FreshnessResult as a dict, and more
    seconds: float = 0.0
    parts: dict = field(default_factory=dict)  # "building ft", "training ft", "answering rag", "stress rag" -> seconds
    fingerprint: dict = field(default_factory=dict)  # options, question-set hash, index version: what a resume must match
    unanswered: dict = field(default_factory=dict)  # arm -> questions that failed (left out of every interval)
    latency_in_flight: int = IN_FLIGHT  # questions answered at once while latencies were measured
    rows: list[EvalRow] = field(default_factory=list)


# The grid's training: every fact seen about EXPOSURES times whatever K, so that arms differ in their data and not in
# their compute (K=0: 3 epochs, K=3: 1). RAFT teaches reading the sources, whose gold a row carries: one epoch, with
# the room for the sources (its rows are ~5x a QA row's tokens).
EXPOSURES, RAFT_MAX_LENGTH = 3, 640
# Measured on 2 cores with the bundled model (docs/quality.md): seconds per trained row-epoch by format at the
# grid's defaults, rows a chunk yields per wording, seconds per answered question and arm (rows sharing passes).
FACT_CHANGES = 5  # facts the "change a fact" demo changes
# Questions the stress test asks per condition: its point is the shape of each arm's drop, and 3 arms x 4 asked
# conditions x 90 questions was the grid's largest part (docs/quality.md).
STRESS_QUESTIONS = 40
SECONDS_PER_ROW = {"qa": 0.18, "raft": 1.2, "text": 0.5}
ROWS_PER_CHUNK_WORDING = 2.1
SECONDS_PER_ANSWER = {"base": 0.7, "rag": 0.4, "ft": 0.4, "ft_par": 1.0, "rag_ft": 3.4, "raft": 2.5, "text": 1.0}
LEAVE_OUT_FIRST = ("text", "raft", "ft_par", "rag_ft", "ft")  # what a budget drops first


def train_config(options: "ExperimentOptions", form: str, k: int):
    """The hyperparameters an adapter of this format and K trains with: the user's, or the grid's defaults."""
    from backends.learning.training import TrainConfig

    if form == "raft":
        config = options.train or TrainConfig(epochs=1)
        return dataclasses.replace(config, max_length=max(config.max_length, RAFT_MAX_LENGTH))
    return options.train or TrainConfig(epochs=max(1, round(EXPOSURES / (k + 1))))


def estimate_s(options: "ExperimentOptions", chunks: int, questions: int) -> float:
    """Seconds the grid should take: training every adapter it needs, then answering every arm and the stress test."""
    training = sum(chunks * ROWS_PER_CHUNK_WORDING * (k + 1) * train_config(options, form, k).epochs * SECONDS_PER_ROW[form]
                   for form, k in _adapters_needed(options.arms, options.paraphrases).values())
    answering = questions * sum(SECONDS_PER_ANSWER.get(arm, 1.0) for arm in options.arms)
    stressed = sum(SECONDS_PER_ANSWER[arm] for arm in RETRIEVING if arm in options.arms) * (len(STRESS) - 1) \
        * min(questions, STRESS_QUESTIONS) if options.stress else 0
    return training + answering + stressed


def within_budget(options: ExperimentOptions, minutes: float, chunks: int, questions: int) -> tuple[ExperimentOptions, list[str]]:
    """The largest grid that fits `minutes`, and what it left out (smaller K first, then arms)."""
    left_out = []
    while estimate_s(options, chunks, questions) > minutes * 60:
        if len(options.paraphrases) > 1:
            dropped = max(options.paraphrases)
            options = dataclasses.replace(options, paraphrases=tuple(k for k in options.paraphrases if k != dropped))
            left_out.append(f"K={dropped}")
            continue
        arm = next((a for a in LEAVE_OUT_FIRST if a in options.arms), None)
        if arm is None:
            break
        options = dataclasses.replace(options, arms=tuple(a for a in options.arms if a != arm))
        left_out.append(arm)
    return options, left_out


def _adapters_needed(arms: tuple[str, ...], paraphrases: tuple[int, ...]) -> dict[str, tuple[str, int]]:
    """Adapter role -> (dataset format, K) for the chosen arms."""
    needed = {}
    if "ft" in arms:
        needed["ft"] = ("qa", min(paraphrases))
    if {"ft_par", "rag_ft"} & set(arms):
        needed["ft_par"] = ("qa", max(paraphrases))
    if "ft_par" in arms:  # the paraphrase curve's points between the smallest and the largest K
        needed.update({f"ft_k{k}": ("qa", k) for k in sorted(set(paraphrases))[1:-1]})
    if "raft" in arms:
        needed["raft"] = ("raft", min(paraphrases))
    if "text" in arms:
        needed["text"] = ("text", min(paraphrases))
    return needed


def run_experiment(duet, options: ExperimentOptions, out: Path,
                   on_progress: Callable[[ExperimentProgress], None] = lambda p: None,
                   cancel: threading.Event | None = None) -> Experiment:
    """Build, train (or re-use), answer and score every arm; completed arms are saved as they finish."""
    from backends.learning.datasets import DatasetOptions, build_dataset, save_dataset
    from backends.learning.examples import read_qa_file

    options.check()
    cancel, started, out, parts = cancel or threading.Event(), time.perf_counter(), Path(out), {}
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(on_progress, cancel, started,
                         estimate_s(options, duet.index.chunk_count(), options.limit or 90))
    k0 = min(options.paraphrases)
    if options.dataset is not None:
        questions_dir = Path(options.dataset)
    else:
        progress("questions", "building the held-out questions")
        with _timed(parts, "building questions"):
            questions_dir = save_dataset(build_dataset(duet.index, DatasetOptions(paraphrases=k0)), out / "datasets" / f"qa-k{k0}")
    items = read_qa_file(questions_dir / "eval.jsonl")[: options.limit]
    asked = [item.question for item in items]
    wanted = fingerprint(options, items, duet.index.snapshot())
    experiment = _resumed(out)
    if experiment is not None and experiment.fingerprint != wanted:
        changed = ", ".join(k for k in wanted if experiment.fingerprint.get(k) != wanted[k])
        progress("resume", f"starting fresh: the run saved in {out} had other {changed or 'settings'}")
        experiment = None
    experiment = experiment or Experiment(
        id=datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        options={"arms": list(options.arms), "paraphrases": list(options.paraphrases), "limit": options.limit,
                 "dataset": str(questions_dir)}, questions=len(items), fingerprint=wanted)
    experiment.index = {"documents": duet.index.snapshot(), "chunks": duet.index.chunk_count()}
    experiment.parts = {**parts, **experiment.parts}
    for role, (form, k) in _adapters_needed(options.arms, options.paraphrases).items():
        if role in experiment.adapters:
            continue
        folder = questions_dir if (role == "ft" and form == "qa" and k == k0 and options.dataset is None) else None
        if folder is None:
            progress(role, f"building the {form} dataset, K={k}")
            with _timed(experiment.parts, f"building {role}"):
                folder = save_dataset(build_dataset(duet.index, DatasetOptions(paraphrases=k, format=form, eval_share=0),
                                                    exclude=asked), out / "datasets" / f"{form}-k{k}")
        manifest = json.loads((folder / "dataset.json").read_text())
        experiment.datasets[role] = {"folder": str(folder), "format": form, "paraphrases": k,
                                     "train_rows": manifest["counts"]["train"], "id": manifest.get("id")}
        with _timed(experiment.parts, f"training {role}"):
            experiment.adapters[role] = _adapter_for(duet, folder, manifest, options, progress, role, cancel)
        _save(experiment, out)
    curve = [role for role in experiment.adapters if role.startswith("ft_k")]
    arms = [a for a in (*options.arms, *curve) if a not in experiment.metrics]
    for arm in arms:
        rows, context = [None] * len(items), 0

        def scored(number: int, answer) -> None:  # traced here while the next answers decode
            nonlocal context
            rows[number] = dataclasses.replace(evaluate_answer(duet, items[number], answer), system=arm)
            context += sum(len(duet.llm.tokenizer(s.text)["input_ids"]) for s in getattr(answer, "sources", ()))
            progress(arm, f"{sum(r is not None for r in rows)} of {len(items)} questions answered")

        progress(arm, f"answering {len(items)} questions")
        with _timed(experiment.parts, f"answering {arm}"):
            run_concurrently([lambda q=item.question: _answer_or_failure(duet, arm, q, experiment.adapters)
                              for item in items], IN_FLIGHT, scored)
        experiment.rows = [r for r in experiment.rows if r.system != arm] + rows
        metrics = aggregate(rows)[arm]
        if metrics.questions:  # an arm none of whose questions could be answered is not done: a re-run tries it again
            experiment.metrics[arm] = {**dataclasses.asdict(metrics),
                                       "context_tokens": round(context / max(1, len(items)), 1)}
        experiment.unanswered = {a: q for a, q in _unanswered(experiment, items).items() if q}
        scores = _scores(experiment, items)
        experiment.intervals = paired_bootstrap(scores, reference="rag") \
            if (len(experiment.metrics) > 1 or "rag" in experiment.metrics) and scores and all(scores.values()) else {}
        experiment.seconds = round(experiment.seconds + time.perf_counter() - started, 1)
        started = time.perf_counter()
        _save(experiment, out)
    if options.fact_change and not experiment.freshness:
        progress("freshness", f"changing up to {FACT_CHANGES} facts in a copy of the index")
        with _timed(experiment.parts, "change a fact"):
            experiment.freshness = _fact_change(duet, experiment, questions_dir, items)
        _save(experiment, out)
    if options.stress:
        _stress(duet, experiment, questions_dir, items, options, progress, out)
        experiment.seconds = round(experiment.seconds + time.perf_counter() - started, 1)
        _save(experiment, out)
    return experiment


def _stress(duet, experiment: Experiment, questions_dir: Path, items: list[QAItem], options, progress, out) -> None:
    """The retrieving arms again, with the gold chunk or document left out of retrieval and at top-k 1/3/5, on the
    first STRESS_QUESTIONS questions; the top-k the arm itself used is its own answers, not asked again."""
    from backends.answering.scoring import contains_gold

    items = items[:STRESS_QUESTIONS]
    asked_now = {item.question for item in items}

    gold = {}
    for line in (questions_dir / "eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        gold.setdefault(row["question"], (row.get("chunk_id", ""), row.get("doc_id", "")))
    for arm in (a for a in RETRIEVING if a in options.arms and a not in experiment.stress):
        results, arm_started = {}, time.perf_counter()
        for condition, (leave, k) in STRESS.items():
            if leave is None and k == duet.settings.top_k:  # the arm's own retrieval: its answers are the rows
                own = [r.contains for r in experiment.rows if r.system == arm and r.question in asked_now]
                results[condition] = round(sum(own) / max(1, len(own)), 4)
                continue

            def asked(item, leave=leave, k=k):
                chunk_id, doc_id = gold.get(item.question, ("", ""))
                left_out = {chunk_id} if leave == "chunk" else (
                    {c.chunk_id for c in duet.index.chunks_of(doc_id)} if leave == "document" and doc_id else set())
                return lambda: _answer_or_failure(duet, arm, item.question, experiment.adapters, k=k,
                                                  leave_out=frozenset(left_out - {""}))

            answers = run_concurrently([asked(item) for item in items], IN_FLIGHT,
                                       lambda n, a, c=condition: progress(arm, f"stress test, {c}: {items[n].question[:50]}"))
            scores = [contains_gold(answer.text, item.answer) for answer, item in zip(answers, items)
                      if not isinstance(answer, FailedAnswer)]  # a failed answer is not a wrong one
            results[condition] = round(sum(scores) / len(scores), 4) if scores else None  # None: nothing answered
        experiment.stress[arm] = results
        experiment.parts[f"stress {arm}"] = round(time.perf_counter() - arm_started, 1)
        _save(experiment, out)


@contextmanager
def _timed(parts: dict, name: str):
    """Adds the seconds of the block to parts[name] (the grid's wall time by part)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        parts[name] = round(parts.get(name, 0) + time.perf_counter() - started, 1)


def changed_facts(questions_dir: Path, items: list[QAItem], limit: int = 0) -> list[dict]:
    """Update questions from asked questions whose evidence holds a number: that number one higher in the chunk
    (`old_text` -> `new_text`), with the new and the old answer; one per chunk."""
    asked, changes, chunks = {item.question for item in items}, [], set()
    for line in (questions_dir / "eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        evidence = (row.get("evidence") or {}).get("text", "")
        number = re.search(r"\d+", evidence)
        if row["question"] not in asked or not number or row.get("chunk_id") in chunks or evidence not in row["answer"]:
            continue
        new = evidence[:number.start()] + str(int(number.group()) + 1) + evidence[number.end():]
        changes.append({"question": row["question"], "answer": row["answer"].replace(evidence, new, 1),
                        "old_answer": row["answer"], "chunk_id": row["chunk_id"], "source": row.get("source", ""),
                        "old_text": evidence, "new_text": new})
        chunks.add(row["chunk_id"])
    return changes[:limit or FACT_CHANGES]


def _fact_change(duet, experiment: Experiment, questions_dir: Path, items: list[QAItem]) -> dict:
    """The freshness experiment on the user's documents: facts changed in a copy of the store, asked of RAG, the
    paraphrase adapter (or the plain one) and both together; the adapter would need retraining to follow."""
    from backends.apps.evaluation import ask_updated, store_copy

    role = next((r for r in ("ft_par", "ft") if r in experiment.adapters), None)
    changes = changed_facts(questions_dir, items)
    if role is None or not changes:
        return {"skipped": "no adapter arm" if role is None else "no held-out fact with a number to change"}
    with store_copy(duet) as copy:
        for change in changes:
            copy.index.revise_chunk(change["chunk_id"], change["old_text"], change["new_text"])
        result = ask_updated(copy, changes, ("rag", "ft", "rag_ft"), experiment.adapters[role]["name"],
                             [f"{c['source']}: {c['old_text']} -> {c['new_text']}" for c in changes])
    return {**dataclasses.asdict(result), "adapter_role": role,
            "retrain_minutes": experiment.adapters[role]["training_minutes"]}


class _Progress:
    """Which arm and step, and the time left of the estimate made from measured rates (`estimate_s`)."""

    def __init__(self, on_progress, cancel, started: float, estimate: float):
        self.on_progress, self.cancel, self.started, self.estimate, self.steps = on_progress, cancel, started, estimate, 0

    def __call__(self, arm: str, step: str) -> None:
        if self.cancel.is_set():
            raise Cancelled("the experiment was cancelled; completed arms are kept and a re-run resumes")
        self.steps += 1
        left = max(0.0, self.estimate - (time.perf_counter() - self.started))
        self.on_progress(ExperimentProgress(arm, step, self.steps, 0, round(left, 1)))


def _adapter_for(duet, folder: Path, manifest: dict, options, progress, role: str, cancel) -> dict:
    """The adapter trained on this dataset at these hyperparameters: re-used when the registry has it."""
    from backends.learning.training import train_adapter
    from backends.models.files import file_sha256

    config = train_config(options, manifest.get("format", "qa"), manifest.get("paraphrases", 0))
    key = file_sha256(folder / "train.jsonl")[:10]
    name = f"exp-{role.replace('_', '-')}-{key}"
    existing = {a.name: a for a in duet.registry.list()}
    wanted = {**dataclasses.asdict(config), "target_modules": list(config.target_modules)}
    if name in existing and existing[name].metadata.get("hyperparameters") == wanted:
        return {"name": name, "reused": True, "training_minutes": round(existing[name].metadata.get("training_seconds", 0) / 60, 1)}
    progress(role, f"training {name}")

    def on_step(p):
        progress(role, f"training {name}: step {p.step} of {p.total_steps}, about {p.eta_s:.0f} s left")

    path = train_adapter(duet.settings, folder / "train.jsonl", name, config, on_step, cancel, duet.index.snapshot())
    seconds = json.loads((path / "metadata.json").read_text())["training_seconds"]
    return {"name": name, "reused": False, "training_minutes": round(seconds / 60, 1)}


def _answer_or_failure(duet, arm: str, question: str, adapters: dict, **retrieval):
    """The arm's answer, or a FailedAnswer: a question that could not be answered is reported, not scored 0."""
    from backends.service import answer_or_failure

    return answer_or_failure(arm, question, lambda: _answer(duet, arm, question, adapters, **retrieval))


def _answer(duet, arm: str, question: str, adapters: dict, **retrieval):
    from backends.answering.streaming import answer_from_stream
    from backends.learning.examples import chat_messages

    if arm == "base":
        return final_answer(answer_from_stream("ft", question, duet.llm, chat_messages(question), duet.settings))
    if arm == "rag":
        return duet.ask("rag", question, **retrieval)
    if arm in ("rag_ft", "raft"):
        return duet.ask("rag_ft", question, adapters[_role(arm)]["name"], **retrieval)
    return duet.ask("ft", question, adapters[_role(arm)]["name"])


def _role(arm: str) -> str | None:
    """The adapter an arm answers with (None: no adapter): RAG + fine-tuned uses the paraphrase adapter."""
    return None if arm in ("base", "rag") else {"rag_ft": "ft_par"}.get(arm, arm)


def _answered(experiment: Experiment) -> dict[str, dict[str, float]]:
    """arm -> question -> gold contained, for the questions the arm answered (a failed row is not an answer)."""
    by_arm: dict[str, dict[str, float]] = {}
    for row in experiment.rows:
        if not row.error:
            by_arm.setdefault(row.system, {})[row.question] = row.contains
        else:
            by_arm.setdefault(row.system, {})
    return by_arm


def _finished(experiment: Experiment) -> dict[str, dict[str, float]]:
    """`_answered` for the finished arms (those in metrics): an arm that answered nothing is left out, not scored 0."""
    return {arm: scores for arm, scores in _answered(experiment).items() if arm in experiment.metrics}


def _unanswered(experiment: Experiment, items: list[QAItem]) -> dict[str, list[str]]:
    """arm -> the held-out questions it has no score for (its answer failed)."""
    return {arm: [i.question for i in items if i.question not in scores] for arm, scores in _answered(experiment).items()}


def _scores(experiment: Experiment, items: list[QAItem]) -> dict[str, list[float]]:
    """Every arm's gold contained on the questions every arm answered: the paired bootstrap compares like with like,
    and a question one arm could not answer is left out (and reported in `unanswered`), never scored 0."""
    by_arm = _finished(experiment)
    common = [i.question for i in items if all(i.question in scores for scores in by_arm.values())]
    return {arm: [scores[q] for q in common] for arm, scores in by_arm.items()}


def fingerprint(options: ExperimentOptions, items: list[QAItem], documents: dict[str, str]) -> dict:
    """What a saved run must share with this one to be resumed: its options, its questions and the index."""
    import hashlib

    digest = lambda value: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]  # noqa: E731
    chosen = {**dataclasses.asdict(options), "dataset": str(options.dataset) if options.dataset else None,
              "train": dataclasses.asdict(options.train) if options.train is not None else None}
    return {"options": digest(chosen), "questions": digest([[i.question, i.answer, i.source] for i in items]),
            "index": digest(documents)}


# ---- saving and resuming ------------------------------------------------------------------
def _save(experiment: Experiment, out: Path) -> None:
    payload = dataclasses.asdict(experiment)
    payload["rows"] = len(experiment.rows)
    write_files(out, {"results.csv": rows_csv(experiment.rows), "report.html": report_html(experiment),
                      "metrics.json": json.dumps(payload, indent=2)})  # metrics.json last: it marks the arms done


def _resumed(out: Path) -> Experiment | None:
    """The experiment saved in `out` by an earlier (cancelled) run, with its completed arms."""
    if not (out / "metrics.json").is_file() or not (out / "results.csv").is_file():
        return None
    data = json.loads((out / "metrics.json").read_text())
    data["rows"] = [r for r in read_rows_csv(out / "results.csv") if r.system in data.get("metrics", {})]
    return Experiment(**data)


def table(experiment: Experiment, documents_now: dict[str, str] | None = None) -> list[dict]:
    """One row per arm: the figures the report, the CLI and the page show. With the index's documents now, an
    adapter arm says whether they changed since its adapter learnt them."""
    from backends.learning.adapters import staleness

    rows = []
    for arm, m in experiment.metrics.items():
        interval = experiment.intervals.get(arm, {})
        versus = interval.get("vs_reference")
        adapter = _role(arm)
        stale = staleness(experiment.index.get("documents", {}), documents_now) if adapter and documents_now is not None else None
        rows.append({
            "arm": arm, "what": ARM_TITLES.get(arm, f"fine-tuned, K={arm[4:]}"), "contains": m["contains"],
            "95% interval": f"{interval.get('low', 0):.2f}-{interval.get('high', 0):.2f}" if interval else "",
            "vs RAG": (f"{versus['mean']:+.2f} ({versus['low']:+.2f} to {versus['high']:+.2f})"
                       f"{' real' if versus['real'] else ''}") if versus else "",
            "f1": m["f1"], "semantic": m["semantic"], "grounded": m["groundedness"], "recall@k": m["recall_at_k"],
            "p50 s": m["latency"]["total"]["p50"], "p95 s": m["latency"]["total"]["p95"],
            "context tokens": m["context_tokens"],
            "training min": experiment.adapters.get(adapter, {}).get("training_minutes") if adapter else None,
            "train rows": experiment.datasets.get(adapter, {}).get("train_rows") if adapter else None,
            "documents since": (stale.describe().replace(" since this adapter was trained", "") if stale.is_stale
                                else "unchanged") if stale else "",
        })
    return rows


HIGHER_IS_BETTER = ("contains", "f1", "semantic", "grounded", "recall@k")
LOWER_IS_BETTER = ("p50 s", "p95 s", "context tokens", "training min")


def best_per_column(rows: list[dict]) -> dict[str, set[str]]:
    """Column -> the arms with its best value (ties share it); columns where no arm has a value are left out."""
    best = {}
    for column in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        values = {r["arm"]: r[column] for r in rows if isinstance(r.get(column), (int, float))}
        if values:
            top = (max if column in HIGHER_IS_BETTER else min)(values.values())
            best[column] = {arm for arm, v in values.items() if v == top}
    return best


def advisor_arms(experiment: Experiment) -> dict[str, str]:
    """The advisor's three systems as arms: RAG, the best fine-tuned arm, the best RAG + adapter arm."""
    def best(*arms):
        found = [a for a in arms if a in experiment.metrics]
        return max(found, key=lambda a: experiment.metrics[a]["contains"]) if found else None

    chosen = {"rag": best("rag"), "ft": best("ft", "ft_par", "text"), "rag_ft": best("rag_ft", "raft")}
    return {system: arm for system, arm in chosen.items() if arm}


def advisor_metrics(experiment: Experiment) -> dict:
    """The chosen arms' metrics, by system (`advisor_arms`)."""
    from backends.apps.runs import SystemMetrics

    return {system: SystemMetrics.from_json({k: v for k, v in experiment.metrics[arm].items() if k != "context_tokens"})
            for system, arm in advisor_arms(experiment).items()}


def advisor_intervals(experiment: Experiment) -> dict:
    """The chosen arms' paired-bootstrap intervals (against RAG), by system."""
    return {system: experiment.intervals[arm] for system, arm in advisor_arms(experiment).items() if arm in experiment.intervals}


def paraphrase_curve(experiment: Experiment) -> list[tuple[int, float]]:
    """(K, gold contained) of the fine-tuned arms, by K."""
    points = [(d["paraphrases"], experiment.metrics[role]["contains"]) for role, d in experiment.datasets.items()
              if d["format"] == "qa" and role in experiment.metrics and (role == "ft" or role.startswith("ft_"))]
    return sorted(set(points))


def experiment_folders(settings) -> list[Path]:
    """The store's saved experiments (folders under runs/experiments with a metrics.json), newest first."""
    root = settings.runs_dir / "experiments"
    found = [p for p in root.glob("*") if (p / "metrics.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: (p / "metrics.json").stat().st_mtime, reverse=True)


def latest_experiment(settings) -> Experiment | None:
    """The experiment saved last (the CLI's `latest` folder or one the Evaluate page started), or None."""
    folders = experiment_folders(settings)
    return load_experiment(folders[0]) if folders else None


def new_experiment_folder(settings) -> Path:
    """A new, empty folder of its own for an experiment, named by the time it starts (made here, so two starts in
    the same millisecond still get two folders)."""
    root = settings.runs_dir / "experiments"
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]
    for number in itertools.count(1):
        folder = root / (stamp if number == 1 else f"{stamp}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def load_experiment(folder: str | Path) -> Experiment | None:
    """A saved experiment, or None when the folder holds none."""
    return _resumed(Path(folder))


def report_html(experiment: Experiment) -> str:
    """A self-contained page: the table with the best per column marked, the charts (plotly inlined once), the
    stress test and the wall time by part; every value escaped."""
    from backends.apps.charts import curve_chart, experiment_chart, freshness_chart, stress_chart

    e = html.escape
    rows = table(experiment)
    if not rows:
        return page("Duet experiment", "<h1>Knowledge-injection experiment</h1><p>No arm has finished yet.</p>")
    best = best_per_column(rows)
    head = "".join(f"<th>{e(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(
        f"<td class='best'>{e(str(v))} ★</td>" if r["arm"] in best.get(k, ()) else f"<td>{e('' if v is None else str(v))}</td>"
        for k, v in r.items()) + "</tr>" for r in rows)
    points = paraphrase_curve(experiment)
    charts = [experiment_chart(rows, experiment.intervals)] + ([curve_chart(points)] if len(points) > 1 else []) \
        + ([stress_chart(experiment.stress)] if experiment.stress else []) \
        + ([freshness_chart(fresh_result(experiment.freshness))] if experiment.freshness.get("systems") else [])
    figures = "".join(c.to_html(full_html=False, include_plotlyjs=(n == 0)) for n, c in enumerate(charts))
    stress = "".join(f"<tr><td>{e(arm)}</td>" + "".join(f"<td>{v:.3f}</td>" for v in results.values()) + "</tr>"
                     for arm, results in experiment.stress.items())
    stress_head = "".join(f"<th>{e(c)}</th>" for c in STRESS)
    parts = ", ".join(f"{e(name)} {seconds:.0f} s" for name, seconds in experiment.parts.items())
    return page(f"Duet experiment {experiment.id}",
                f"<h1>Knowledge-injection experiment {e(experiment.id)}</h1>"
                f"<p>{experiment.questions} held-out questions, {experiment.seconds:.0f} s. Gold contained with paired "
                f"bootstrap 95% intervals ({BOOTSTRAP_SAMPLES} resamples); 'real': the difference to RAG excludes 0. "
                "★ marks the best arm of each column.</p>"
                f"<table><tr>{head}</tr>{body}</table>"
                + (f"<h2>Retrieval stress test (gold contained)</h2><table><tr><th>arm</th>{stress_head}</tr>{stress}</table>"
                   if stress else "")
                + _freshness_html(experiment.freshness) + f"<h2>Charts</h2>{figures}" + (f"<p class='small'>Wall time by part: {parts}.</p>" if parts else ""),
                head_extra="<style>td.best{font-weight:bold;background:#e6f2e6}</style>")


def fresh_result(freshness: dict):
    """The "change a fact" result as the FreshnessResult the freshness chart draws."""
    from backends.apps.runs import FreshnessResult

    return FreshnessResult.from_json({f.name: freshness[f.name] for f in dataclasses.fields(FreshnessResult)})


def _freshness_html(freshness: dict) -> str:
    if not freshness.get("systems"):
        return ""
    e = html.escape
    counts = "".join(f"<tr><td>{e(system)}</td><td>{c['new']}</td><td>{c['old']}</td></tr>"
                     for system, c in freshness["systems"].items())
    return (f"<h2>Change a fact</h2><p>{freshness['questions']} facts changed in a copy of the index "
            f"({e('; '.join(freshness['ingested']))}). RAG follows at once; the adapter {e(freshness['adapter'])} keeps "
            f"what it learnt until it is retrained (about {freshness['retrain_minutes']} min).</p>"
            f"<table><tr><th>system</th><th>new fact</th><th>old fact</th></tr>{counts}</table>")


class ExperimentJob(BackgroundJob):
    """A grid in a background thread, watched by the Evaluate page; `result` is the Experiment."""

    what = "the experiment"

    def __init__(self, duet, options: ExperimentOptions, out: Path):
        super().__init__("experiment")
        self.duet, self.options, self.out = duet, options, Path(out)

    def work(self, on_progress, cancel: threading.Event) -> Experiment:
        return run_experiment(self.duet, self.options, self.out, on_progress, cancel)
