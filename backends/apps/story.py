"""The guided demo story (`?present=1&story=1`): six steps built from the store's own data, one at a time.

Each step asks real questions of RAG and the fine-tuned model (the live change on a temporary copy of the store,
so the user's store never changes) and says in one sentence what the room sees.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from backends.answering.claims import one_line_verdict
from backends.apps.labels import title
from backends.core.config import DATA_DIR
from backends.core.jobs import BackgroundJob, Cancelled

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
    gold: str = ""  # the answer the question's fact has (steps that check their answers against it)


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


def _pick(duet, adapter, wanted, candidates: list):
    """(item, fits): a QAItem whose gold contained per system satisfies `wanted`, from the latest run, else among
    `candidates` asked now; the first candidate (fits False) when none does."""
    from backends.answering.scoring import contains_gold

    by_question = {item.question: item for item in candidates}
    scored = {q: s for q, s in _scored_questions(duet).items() if q in by_question and set(SYSTEMS) <= s.keys()}
    found = next((q for q, s in scored.items() if wanted(s)), None)
    if found:
        return by_question[found], True
    for first in range(0, min(len(candidates), CANDIDATES), BATCH):
        batch = candidates[first:first + BATCH]
        answers = duet.ask_many([(system, item.question, adapter) for item in batch for system in SYSTEMS])
        for number, item in enumerate(batch):
            mine = answers[number * len(SYSTEMS):(number + 1) * len(SYSTEMS)]
            if wanted({system: contains_gold(getattr(a, "text", ""), item.answer) for system, a in zip(SYSTEMS, mine)}):
                return item, True
    return (candidates[0], False) if candidates else (None, False)


def _holds(step: StoryStep, gold: str) -> dict[str, bool]:
    """Which system's answer shown in the step holds the gold answer."""
    from backends.answering.scoring import contains_gold

    return {system: bool(contains_gold(answer.text, gold)) and not answer.abstained
            for system, answer in step.answers.items()}


def _said(holds: dict[str, bool], gold: str) -> str:
    """What the room sees, checked: which side's answer holds the gold answer."""
    right = [title(s) for s, ok in holds.items() if ok]
    wrong = [title(s) for s, ok in holds.items() if not ok]
    if not wrong:
        return f"both answers hold it ({gold})"
    if not right:
        return f"neither answer holds it ({gold})"
    return f"{' and '.join(right)} holds it ({gold}), {' and '.join(wrong)} does not"


def _not_changing(items: list) -> list:
    changing = {row["question"] for row in _updates()}
    return [item for item in items if item.question not in changing]


def _known(duet, adapter, number) -> StoryStep:
    """A question of the adapter's own training data that RAG answers too, checked on the answers shown."""
    from backends.answering.claims import training_examples_of

    trained = _not_changing(training_examples_of(duet.registry.get(adapter, check_base=False).path)) if adapter else []
    item, _ = _pick(duet, adapter, lambda s: s["rag"] and s["ft"], trained or _demo_questions())
    if item is None:
        return StoryStep(number, TITLES[number], "There is no question to ask yet: build a dataset and train an "
                                                 "adapter on the Fine-tune page.")
    step = _asked(duet, item.question, adapter, number, "")
    holds = _holds(step, item.answer)
    if all(holds.values()):
        narration = ("Both answer from what they know: RAG reads it in the documents, the adapter learnt it in "
                     "training.")
    else:  # no question of the training data was answered by both: say what happened instead
        narration = (f"No question the adapter was trained on got a right answer from both sides; on this one "
                     f"{_said(holds, item.answer)}.")
    return StoryStep(number, TITLES[number], narration, step.question, step.answers, step.verdicts, gold=item.answer)


def _documents_only(duet, adapter, number) -> StoryStep:
    """A question that RAG answers and the adapter does not; the narration says only what holds for this store."""
    from backends.answering.claims import training_examples_of

    trained = {i.question for i in training_examples_of(duet.registry.get(adapter, check_base=False).path)} \
        if adapter else set()
    held_out = [item for item in _not_changing(_demo_questions()) if item.question not in trained]
    item, _ = _pick(duet, adapter, lambda s: s["rag"] and not s["ft"], held_out)
    if item is None:
        return StoryStep(number, TITLES[number], "The documents have no question prepared that the adapter was not "
                                                 "trained on.")
    step = _asked(duet, item.question, adapter, number, "")
    holds = _holds(step, item.answer)
    stale = duet.ft.staleness(adapter) if adapter else None
    why = "the adapter was not trained on this question" + (f" ({stale.describe()})" if stale and stale.is_stale else "")
    if holds["rag"] and not holds["ft"]:
        narration = f"The documents hold this fact and {why}: RAG finds it, the adapter guesses."
    else:
        narration = f"The documents hold this fact and {why}; {_said(holds, item.answer)}."
    return StoryStep(number, TITLES[number], narration, step.question, step.answers, step.verdicts, gold=item.answer)


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
    step = _asked(duet, OUTSIDE_QUESTION, adapter, number, "")
    rag, ft = step.answers["rag"], step.verdicts["ft"]
    parts = ["Nothing in the documents answers this: " + ("RAG says so" if rag.abstained else "RAG still answers")]
    if not ft.startswith(("backed", "learnt")):
        parts.append("the fine-tuned model makes something up, and the tracer finds no source for it")
    else:
        parts.append(f"the fine-tuned model's answer is {ft}")
    return StoryStep(number, TITLES[number], ", ".join(parts) + ".", step.question, step.answers, step.verdicts)


def _summary(duet, adapter, number) -> StoryStep:
    from backends.apps.evaluation import MIN_QUESTIONS_TO_TELL, list_runs, load_run, questions_needed
    from backends.apps.experiment import latest_experiment, table

    experiment = latest_experiment(duet.settings)
    if experiment and experiment.metrics:
        rows = [{"system": r["what"], "gold answer contained": round(r["contains"], 2), "95% interval": r["95% interval"],
                 "difference from RAG (95%)": r["vs RAG"], "typical time (s)": round(r["p50 s"], 2)}
                for r in table(experiment)]
        return StoryStep(number, TITLES[number], f"Measured on {experiment.questions} held-out questions from these "
                         f"documents (experiment {experiment.id}); a difference is real when its interval leaves out 0.",
                         rows=rows)
    runs = list_runs(duet.settings)
    if runs:
        run = load_run(runs[0])
        rows = [{"system": title(s), "gold answer contained": round(m.contains, 2),
                 "backed by sources": round(m.groundedness, 2), "typical time (s)": round(m.latency["total"].p50, 2)}
                for s, m in run.metrics.items()]
        if run.questions >= MIN_QUESTIONS_TO_TELL:
            return StoryStep(number, TITLES[number], f"Measured on {run.questions} questions (evaluation {run.id}).",
                             rows=rows)
        scores = sorted((m.contains for m in run.metrics.values()), reverse=True)
        needed = questions_needed(scores[0], scores[1]) if len(scores) > 1 else None
        more = f"; about {needed} would show a difference of this size" if needed else ""
        return StoryStep(number, TITLES[number], f"Evaluation {run.id} asked only {run.questions} questions: too few "
                         f"to tell the systems apart (How to choose counts {MIN_QUESTIONS_TO_TELL} or more{more}).",
                         rows=rows)
    return StoryStep(number, TITLES[number], "Nothing is measured yet: run an evaluation or the experiment on the "
                     "Evaluate page, and this step shows its numbers.")


def _recommendation(duet, adapter, number) -> StoryStep:
    from backends.apps.evaluation import Criteria, advise, list_runs, load_run
    from backends.apps.experiment import advisor_intervals, advisor_metrics, latest_experiment

    experiment = latest_experiment(duet.settings)
    runs = list_runs(duet.settings)
    run = load_run(runs[0]) if runs else None
    measured = advisor_metrics(experiment) if experiment and experiment.metrics else None
    examples = (duet.ft.adapter_info(adapter).metadata.get("dataset", {}).get("examples") or 0) if adapter else 0
    advice = advise(Criteria(training_examples=int(examples)), run, run.freshness if run else None, measured,
                    advisor_intervals(experiment) if measured else None)
    why = [r for r in advice.reasons if r[0] == advice.recommendation][:3]
    rows = [{"for": title(system), "points": points, "why": reason} for system, points, reason in why]
    return StoryStep(number, TITLES[number], f"For documents that change now and then, answers that must be traced "
                     f"and the {examples} training rows the adapter learnt from, Duet recommends "
                     f"{title(advice.recommendation)}.", rows=rows)


def story_key(duet, adapter: str | None) -> tuple:
    """What the story's answers depend on: the documents, the adapter's weights, the latest run and experiment."""
    from backends.apps.evaluation import list_runs
    from backends.apps.experiment import latest_experiment
    from backends.engines.adapters import adapter_version

    runs = list_runs(duet.settings)
    experiment = latest_experiment(duet.settings)
    version = adapter_version(adapter, duet.registry.get(adapter, check_base=False).path) if adapter else None
    return (tuple(sorted(duet.index.snapshot().items())), tuple(version) if version else None,
            runs[0].name if runs else "", experiment.id if experiment else "")


class StoryJob(BackgroundJob):
    """Every step of the story, computed in order in the background; each is readable as soon as it is done."""

    what = "preparing the story"

    def __init__(self, duet, adapter: str | None, key: tuple):
        super().__init__("story")
        self.duet, self.adapter, self.key = duet, adapter, key
        self.steps: dict[int, StoryStep] = {}

    def work(self, on_progress, cancel):
        for number in range(len(TITLES)):
            if cancel.is_set():
                raise Cancelled("the story's preparation was stopped")
            self.steps[number] = story_step(self.duet, number, self.adapter)
            on_progress(number + 1)
        return self.steps


def prepared_story(duet, adapter: str | None = None) -> StoryJob:
    """The story's job for the store as it is now: the running or finished one when nothing it depends on changed,
    else a new one, started (the app starts one at launch, so the story opens at once)."""
    adapter = adapter or duet.registry.active_name()
    key = story_key(duet, adapter)
    with _PREPARING:
        job = duet.jobs["story"]
        if job is not None and job.key == key and job.state != "failed":
            return job
        if job is not None and job.running:
            job.cancel()
            job.wait()
        return duet.jobs.start("story", StoryJob(duet, adapter, key))


_PREPARING = threading.Lock()  # two sessions opening the story at once start one job
