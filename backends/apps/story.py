"""The guided demo story (`?present=1&story=1`): six steps built from the store's own data, one at a time.

Each step asks real questions of RAG and the fine-tuned model (the live change on a temporary copy of the store,
so the user's store never changes) and says in one sentence what the room sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from backends.answering.claims import one_line_verdict
from backends.apps.labels import title
from backends.core.config import DATA_DIR

SYSTEMS = ("rag", "ft")
UPDATES_DIR, UPDATES = DATA_DIR / "corpus_updates", DATA_DIR / "qa" / "updates.jsonl"
DEMO_QUESTIONS = DATA_DIR / "qa" / "eval.jsonl"
# Answers RAG finds nothing for (it abstains) and a small fine-tuned model answers anyway.
OUTSIDE_QUESTION = "What is the company's policy on bringing dogs to the office?"
# Questions tried when no evaluation run says which ones fit a step, asked BATCH at a time as rows of shared passes
# (the demo adapter knows about 1 in 15 of its training facts as well as RAG does).
CANDIDATES, BATCH = 64, 16
TITLES = ("A fact both sides know", "A fact only the documents hold", "A live change", "A question outside the documents",
          "What the measurements say", "The recommendation")


@dataclass(frozen=True)
class StoryStep:
    number: int
    title: str
    narration: str
    question: str = ""
    answers: dict = field(default_factory=dict)  # system -> Answer
    verdicts: dict = field(default_factory=dict)  # system -> one-line verdict
    rows: list = field(default_factory=list)  # the summary's table


def story_step(duet, number: int, adapter: str | None = None) -> StoryStep:
    """Step `number` (0-based) of the story, computed now."""
    adapter = adapter or duet.registry.active_name()
    build = (_known, _documents_only, _live_change, _outside, _summary, _recommendation)[number]
    return build(duet, adapter, number)


def _asked(duet, question: str, adapter: str | None, number: int, narration: str, on=None) -> StoryStep:
    """Both systems' answers to `question` (on `on`, a copy of the store, when given), traced, with their verdicts."""
    target = on or duet
    answers = {system: target.ask(system, question, adapter) for system in SYSTEMS}
    comparison = target.trace(question, answers)
    verdicts = {system: one_line_verdict(answers[system], comparison.claims[system]) for system in SYSTEMS}
    return StoryStep(number, TITLES[number], narration, question, answers, verdicts)


def _scored_questions(duet) -> dict[str, dict[str, float]]:
    """question -> system -> gold contained, from the latest evaluation run (empty without one)."""
    from backends.apps.evaluation import list_runs, load_run

    runs = list_runs(duet.settings)
    scores: dict[str, dict[str, float]] = {}
    for row in load_run(runs[0]).rows if runs else []:
        scores.setdefault(row.question, {})[row.system] = row.contains
    return scores


def _pick(duet, adapter, wanted, candidates: list) -> str:
    """A question whose gold contained per system satisfies `wanted`: from the latest run, else among `candidates`
    (QAItems) asked now; the first candidate when none does."""
    from backends.answering.scoring import contains_gold

    asked = {item.question for item in candidates}
    scored = {q: s for q, s in _scored_questions(duet).items() if q in asked and set(SYSTEMS) <= s.keys()}
    found = next((q for q, s in scored.items() if wanted(s)), None)
    if found:
        return found
    for first in range(0, min(len(candidates), CANDIDATES), BATCH):
        batch = candidates[first:first + BATCH]
        answers = duet.ask_many([(system, item.question, adapter) for item in batch for system in SYSTEMS])
        for number, item in enumerate(batch):
            mine = answers[number * len(SYSTEMS):(number + 1) * len(SYSTEMS)]
            if wanted({system: contains_gold(getattr(a, "text", ""), item.answer) for system, a in zip(SYSTEMS, mine)}):
                return item.question
    return candidates[0].question if candidates else OUTSIDE_QUESTION


def _not_changing(items: list) -> list:
    changing = {row["question"] for row in _updates()}
    return [item for item in items if item.question not in changing]


def _known(duet, adapter, number) -> StoryStep:
    """A question of the adapter's own training data that RAG answers too."""
    from backends.answering.claims import training_examples_of

    trained = _not_changing(training_examples_of(duet.registry.get(adapter, check_base=False).path)) if adapter else []
    question = _pick(duet, adapter, lambda s: s["rag"] and s["ft"], trained or _demo_questions())
    return _asked(duet, question, adapter, number, "Both answer from what they know: RAG reads it in the documents, "
                                                   "the adapter learnt it in training.")


def _documents_only(duet, adapter, number) -> StoryStep:
    """A held-out question (not in the adapter's training data) that RAG answers and the adapter does not."""
    stale = duet.ft.staleness(adapter) if adapter else None
    question = _pick(duet, adapter, lambda s: s["rag"] and not s["ft"], _not_changing(_demo_questions()))
    since = f" ({stale.describe()})" if stale and stale.is_stale else ""
    return _asked(duet, question, adapter, number, f"The documents hold this fact; the adapter never learnt it{since}. "
                                                   "RAG finds it, the adapter guesses.")


def _demo_questions() -> list:
    from backends.learning.examples import read_qa_file

    return read_qa_file(DEMO_QUESTIONS) if DEMO_QUESTIONS.is_file() else []


def _updates() -> list[dict]:
    return [json.loads(line) for line in UPDATES.read_text().splitlines() if line.strip()] if UPDATES.is_file() else []


def _live_change(duet, adapter, number) -> StoryStep:
    """The first updated document whose original is in the store, ingested into a copy; its question asked there."""
    from backends.apps.evaluation import store_copy

    names = {d.name for d in duet.index.documents()}
    update = next((row for row in _updates() if row["source"] in names and (UPDATES_DIR / row["source"]).is_file()), None)
    if update is None:
        return StoryStep(number, TITLES[number], "No updated document is prepared for these documents: add a new version "
                         "on the Documents page and ask again, and RAG answers from it at once.")
    with store_copy(duet) as copy:
        copy.index.ingest_file(UPDATES_DIR / update["source"])
        step = _asked(duet, update["question"], adapter, number,
                      f"We update {update['source']} ({update['old_answer']} becomes {update['answer']}) in a copy of "
                      "the store: RAG follows at once; the adapter knows nothing of the change until it is retrained.", on=copy)
    return step


def _outside(duet, adapter, number) -> StoryStep:
    return _asked(duet, OUTSIDE_QUESTION, adapter, number, "Nothing in the documents answers this: RAG says so, the "
                                                           "fine-tuned model makes something up, and the tracer flags it.")


def _summary(duet, adapter, number) -> StoryStep:
    from backends.apps.evaluation import list_runs, load_run
    from backends.apps.experiment import latest_experiment, table

    experiment = latest_experiment(duet.settings)
    if experiment and experiment.metrics:
        rows = [{"system": r["what"], "gold answer contained": r["contains"], "95% interval": r["95% interval"],
                 "vs RAG": r["vs RAG"], "p50 s": r["p50 s"]} for r in table(experiment)]
        return StoryStep(number, TITLES[number], f"Measured on {experiment.questions} held-out questions from these "
                         f"documents (experiment {experiment.id}).", rows=rows)
    runs = list_runs(duet.settings)
    if runs:
        run = load_run(runs[0])
        rows = [{"system": title(s), "gold answer contained": m.contains, "grounded": m.groundedness,
                 "p50 s": m.latency["total"].p50} for s, m in run.metrics.items()]
        return StoryStep(number, TITLES[number], f"Measured on {run.questions} questions (evaluation {run.id}).", rows=rows)
    return StoryStep(number, TITLES[number], "Nothing is measured yet: run an evaluation or the experiment on the "
                     "Evaluate page, and this step shows its numbers.")


def _recommendation(duet, adapter, number) -> StoryStep:
    from backends.apps.evaluation import Criteria, advise, list_runs, load_run
    from backends.apps.experiment import advisor_intervals, advisor_metrics, latest_experiment

    experiment = latest_experiment(duet.settings)
    runs = list_runs(duet.settings)
    run = load_run(runs[0]) if runs else None
    measured = advisor_metrics(experiment) if experiment and experiment.metrics else None
    advice = advise(Criteria(), run, run.freshness if run else None, measured,
                    advisor_intervals(experiment) if measured else None)
    why = [r for r in advice.reasons if r[0] == advice.recommendation][:3]
    rows = [{"for": title(system), "points": points, "why": reason} for system, points, reason in why]
    return StoryStep(number, TITLES[number], f"For documents that change and answers that must be traced, Duet "
                     f"recommends {title(advice.recommendation)}.", rows=rows)
