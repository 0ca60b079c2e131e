"""The performance harness behind `python -m backends bench [--quick] [--json]`.

Every figure is measured several times and reported as median and spread (min-max):
- decode tokens/s and time to first token of the generation engine, base weights (RAG)
  and base + adapter (fine-tuned), on the same prompt and thread count, with llama.cpp
  on the very same GGUF beside them when llama-cpp-python is installed;
- the two backends' real answers (first token, tokens/s);
- side by side: both answering at once vs the slower one alone, and the same on Duet's llama.cpp
  engine beside it when llama-cpp-python is installed (in a child process, as llama.cpp's own run);
- retrieval p50/p95 at 1k, 10k and 100k chunks of synthetic text;
- ingest throughput vs raw embedding of the same chunks;
- cold start (a fresh `python -m backends ask` process to its answer) and peak memory;
- evaluation: questions per minute per system, and the wall time of an evaluation over the sum
  of the same answers asked one at a time (`eval.wall_vs_sum`);
- dataset building (templates only, the default): chunks and pairs per second;
- training: trained (non-padding) tokens per second on the demo dataset, at the demo adapter's
  hyperparameters and at the defaults, beside the arithmetic limit (forward and backward FLOPs
  of every token over the measured peak matrix-product rate; the shared prompt prefix and the
  answer-only head skip part of that work, so the rate may pass it).

Synthetic retrieval stores hold random unit vectors (embedding 100k chunks would take
most of an hour on two cores; search cost depends on the count and dimension of the
vectors, not on what they say); the query is embedded by the real model. They are kept
under `<store>/bench/` so a second run does not rebuild them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from backends.core.config import DATA_DIR, REPO_ROOT, Settings
from backends.core.threads import run_concurrently
from backends.models.files import llm_source

PROMPT_QUESTION = "Explain in a few sentences what a travel policy is and why companies have one."
ANSWER_QUESTIONS = ["What is the daily meal allowance for travel?", "How many days of annual leave do employees get?",
                    "Who approves expenses above the limit?"]
WORDS = ("policy travel invoice warranty sensor calibration leave allowance manager approval budget contract "
         "supplier shipment battery firmware meeting quarter revenue customer ticket escalation audit safety "
         "training laptop office parking holiday refund order region report").split()
DEMO_TRAIN, DEMO_EVAL = DATA_DIR / "qa" / "train.jsonl", DATA_DIR / "qa" / "eval.jsonl"

# Figure names per generation engine (settings.engine); "llama_cpp" is llama.cpp's own run beside them.
ENGINE_KEYS = {"transformers": "transformers", "onnxruntime": "onnxruntime", "llama.cpp": "duet_llama_cpp"}


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, or --quick (a smoke test under a minute)."""

    repeats: int = 3
    decode_tokens: int = 64
    questions: int = 3
    retrieval_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    retrieval_queries: int = 50
    ingest_chunks: int = 300
    cold_starts: int = 3
    train_steps: int = 12
    dataset_documents: int = 0  # 0: the whole index
    eval_questions: int = 30
    sessions: tuple[int, ...] = (1, 4, 8)  # users asking at once in the many-sessions figure
    session_questions: int = 3  # questions each of them asks, one after the other


FULL = Plan()
QUICK = Plan(repeats=1, decode_tokens=8, questions=1, retrieval_sizes=(1_000,), retrieval_queries=5,
             ingest_chunks=20, cold_starts=1, train_steps=1, dataset_documents=1, eval_questions=2, sessions=(1, 2),
             session_questions=1)


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float] = field(default_factory=list)
    target: str = ""
    meets: bool | None = None

    def to_dict(self) -> dict:
        ordered = sorted(self.runs)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {"median": round(statistics.median(ordered), 4), "min": round(ordered[0], 4),
                "max": round(ordered[-1], 4), "p95": round(p95, 4), "runs": len(ordered), "unit": self.unit,
                "target": self.target, "meets": self.meets}


class Report:
    """The figures measured so far, what was skipped and why."""

    def __init__(self, progress: Callable[[str], None]):
        self.figures: dict[str, Figure] = {}
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.progress = progress

    def add(self, name: str, unit: str, runs: list[float]) -> Figure:
        self.figures[name] = Figure(name, unit, list(runs))
        return self.figures[name]

    def median(self, name: str) -> float | None:
        return statistics.median(self.figures[name].runs) if name in self.figures else None

    def judge(self, name: str, target: str, ok: bool | None) -> None:
        if name in self.figures:
            self.figures[name].target, self.figures[name].meets = target, ok


def _time(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# ---- generation engine: same prompt, same threads -----------------------------------------
def engine_figures(duet, report: Report, plan: Plan, adapter: str) -> None:
    from backends.engines.scheduler import stream_chat
    from backends.learning.examples import chat_messages

    messages = chat_messages(PROMPT_QUESTION)
    duet.ft.use(adapter)
    engine = ENGINE_KEYS[duet.llm.engine.name]
    for label, name in (("base (RAG)", None), ("adapter (fine-tuned)", adapter)):
        report.progress(f"decode: {duet.llm.engine.name} engine, {label}")
        stream_chat_stats = lambda: list(stream_chat(duet.llm, messages, plan.decode_tokens, name, stop_at_eos=False))[-1]
        stream_chat_stats()  # warm-up
        runs = [stream_chat_stats() for _ in range(plan.repeats)]
        key = "adapter" if name else "base"
        report.add(f"decode_tokens_per_s.{engine}.{key}", "tokens/s",
                   [(s.tokens_out - 1) / max(s.generate_s - s.first_token_s, 1e-9) for s in runs])
        report.add(f"first_token_s.{engine}.{key}", "s", [s.first_token_s for s in runs])
    llama_cpp_figures(duet, report, plan, messages)


def llama_cpp_figures(duet, report: Report, plan: Plan, messages: list[dict]) -> None:
    """llama.cpp on the same GGUF, prompt and thread count (skipped without llama-cpp-python or a GGUF)."""
    import torch

    if _skipped_llama_cpp(duet, report, "llama_cpp"):
        return
    report.progress("decode: llama.cpp, base")
    job = {"kind": "decode", "gguf": llm_source(duet.settings), "threads": torch.get_num_threads(),
           "tokens": plan.decode_tokens, "repeats": plan.repeats,
           "prompt": duet.llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)}
    runs = _child_runs(job, report, "llama_cpp")
    if runs is not None:
        report.add("decode_tokens_per_s.llama_cpp.base", "tokens/s", [r[1] for r in runs])
        report.add("first_token_s.llama_cpp.base", "s", [r[0] for r in runs])
        report.figures["threads"] = Figure("threads", "", [job["threads"]])


def llama_cpp_side_by_side_figures(duet, report: Report, plan: Plan, adapter: str) -> None:
    """Compare's figures on Duet's llama.cpp engine (DUET_ENGINE=llama.cpp), beside this engine's.

    The same questions, adapter and store, in a child process (as above). Whether the ratio
    target holds is best seen beside the engine decoding is measured against.
    """
    key = ENGINE_KEYS["llama.cpp"]
    if duet.settings.engine == "llama.cpp" or _skipped_llama_cpp(duet, report, f"side_by_side.{key}"):
        return
    report.progress("side by side: llama.cpp engine")
    job = {"kind": "side_by_side", "store": str(duet.settings.store_dir), "adapter": adapter,
           "plan": dataclasses.asdict(plan)}
    figures = _child_runs(job, report, f"side_by_side.{key}")
    for name, (unit, runs) in (figures or {}).items():
        report.add(name.replace("side_by_side.", f"side_by_side.{key}.", 1), unit, runs)


def _skipped_llama_cpp(duet, report: Report, name: str) -> bool:
    """Whether llama.cpp cannot run here (llama-cpp-python missing, the model no GGUF file): then skipped, and why."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        report.skipped[name] = "llama-cpp-python is not installed (pip install llama-cpp-python compiles it)"
    elif not llm_source(duet.settings).endswith(".gguf"):
        report.skipped[name] = "the configured LLM is not a GGUF file"
    return name in report.skipped


def _child_runs(job: dict, report: Report, name: str):
    """The job's result from a child process (`python -m backends.apps.bench`), or None with the failure in skipped.

    llama.cpp's worker threads keep polling after a generation, and in this process they halved
    the speed of every answer measured after them: so llama.cpp runs in a child.
    """
    child = subprocess.run([sys.executable, "-m", "backends.apps.bench"], input=json.dumps(job), capture_output=True,
                           text=True, cwd=REPO_ROOT, timeout=1200)
    if child.returncode != 0:
        report.skipped[name] = f"the llama.cpp run failed: {child.stderr.strip()[-300:]}"
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


def llama_cpp_runs(job: dict) -> list[tuple[float, float]]:
    """(first token s, decode tokens/s) per run of llama.cpp: the child process's work."""
    from llama_cpp import Llama

    model = Llama(model_path=job["gguf"], n_threads=job["threads"], n_threads_batch=job["threads"], n_ctx=2048,
                  verbose=False)
    tokens = model.tokenize(job["prompt"].encode(), add_bos=False, special=True)

    def once() -> tuple[float, float]:
        model.reset()
        started = time.perf_counter()
        first = 0.0
        for count, _ in enumerate(model.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True), 1):
            if count == 1:
                first = time.perf_counter() - started
            if count == job["tokens"]:
                break
        return first, (job["tokens"] - 1) / (time.perf_counter() - started - first)

    once()
    return [once() for _ in range(job["repeats"])]


# ---- the backends' real answers ---------------------------------------------------------------
def answer_figures(duet, report: Report, plan: Plan, adapter: str) -> None:
    questions = ANSWER_QUESTIONS[: plan.questions]
    for backend in ("rag", "ft"):
        report.progress(f"answers: {backend}")
        answers = [duet.ask(backend, q, adapter) for q in questions for _ in range(plan.repeats)]
        report.add(f"answer.{backend}.first_token_s", "s", [a.timings.first_token for a in answers])
        report.add(f"answer.{backend}.tokens_per_s", "tokens/s", [a.tokens_per_s for a in answers])
        report.add(f"answer.{backend}.total_s", "s", [a.timings.total for a in answers])


def side_by_side_figures(duet, report: Report, plan: Plan, adapter: str) -> None:
    """Compare's wait: both at once vs each alone, and when each column's first text and whole answer came.

    `both_vs_sum` is both at once over the two alone one after the other: on a machine whose
    cores one answer already keeps busy, 1.0 is what running them side by side cannot beat.
    """
    runs: dict[str, list[float]] = {}
    for question in ANSWER_QUESTIONS[: plan.questions]:
        for _ in range(plan.repeats):
            report.progress("side by side")
            alone = [_time(lambda b=b: duet.ask(b, question, adapter)) for b in ("rag", "ft")]
            both, columns = _side_by_side(duet, question, adapter)
            for name, value in [("both_s", both), ("slower_alone_s", max(alone)), ("ratio", both / max(alone)),
                                ("both_vs_sum", both / sum(alone)), *columns.items()]:
                runs.setdefault(name, []).append(value)
    for name, values in runs.items():
        report.add(f"side_by_side.{name}", "x" if name in ("ratio", "both_vs_sum") else "s", values)


def _side_by_side(duet, question: str, adapter: str) -> tuple[float, dict[str, float]]:
    """Seconds until both answers were complete, and per column until its first text and its whole answer."""
    from backends.core.types import Answer

    columns, started = {}, time.perf_counter()
    for name, item in duet.stream_both(question, adapter):
        if isinstance(item, Exception):
            raise item
        key = f"{name}.done_s" if isinstance(item, Answer) else f"{name}.first_text_s"
        columns.setdefault(key, time.perf_counter() - started)
    return time.perf_counter() - started, columns


def sessions_figures(duet, report: Report, plan: Plan, adapter: str) -> None:
    """The server's own curve of many users: N sessions each asking its own eval questions one after the other,
    both answers streamed and every claim traced (what a Compare does, without the browser); time to both answers
    and their claims per question. `sessions.p95_vs_one` is N's p95 over one session's (goal <= 3 at 8)."""
    questions = [json.loads(line)["question"] for line in DEMO_EVAL.read_text().splitlines()]
    duet.warm()
    p95 = {}
    for sessions in plan.sessions:
        report.progress(f"{sessions} sessions at once")
        times: list[float] = []

        def session(number: int) -> None:
            for asked in questions[number::sessions][: plan.session_questions]:
                started = time.perf_counter()
                answers = {}
                for name, item in duet.stream_both(asked, adapter):
                    if isinstance(item, Exception):
                        raise item
                    if not isinstance(item, str):
                        answers[name] = item
                duet.trace(asked, answers)
                times.append(time.perf_counter() - started)

        run_concurrently([lambda n=n: session(n) for n in range(sessions)], sessions)
        report.add(f"sessions.{sessions}.time_to_both_s", "s", times)
        p95[sessions] = report.figures[f"sessions.{sessions}.time_to_both_s"].to_dict()["p95"]
    report.add("sessions.p95_vs_one", "x", [p95[max(p95)] / p95[min(p95)]])


# ---- retrieval and ingest -------------------------------------------------------------------
def synthetic_text(rng: random.Random, words: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def synthetic_store(settings: Settings, size: int, embeddings, progress) -> "DocumentIndex":  # noqa: F821
    """A store of `size` synthetic chunks, built once and kept under <store>/bench/."""
    import shutil

    import numpy as np

    from backends.knowledge.index import DocumentIndex

    store = settings.with_store(settings.store_dir / "bench" / f"retrieval-{size}")
    index = DocumentIndex(store, embeddings)
    if index.chunk_count() == size:
        return index
    progress(f"retrieval: building a synthetic store of {size} chunks (once)")
    index.close()
    shutil.rmtree(store.store_dir)
    index = DocumentIndex(store, embeddings)
    rng, vectors = random.Random(size), np.random.default_rng(size).standard_normal((size, 384)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add_synthetic_chunks([f"c{i}" for i in range(size)], [synthetic_text(rng, 20) for _ in range(size)], vectors)
    return index


def retrieval_figures(duet, report: Report, plan: Plan) -> None:
    """Query embedding + nearest-neighbour search; median is p50, and p95 is reported beside it."""
    rng = random.Random(7)
    for size in plan.retrieval_sizes:
        index = synthetic_store(duet.settings, size, duet.index.embeddings, report.progress)
        report.progress(f"retrieval: {plan.retrieval_queries} queries at {size} chunks")
        index.search("warm up", duet.settings.top_k)
        times = []
        for _ in range(plan.retrieval_queries):
            _, embed_s, retrieve_s = index.search(synthetic_text(rng, 8), duet.settings.top_k)
            times.append((embed_s + retrieve_s) * 1000)
        index.close()
        report.add(f"retrieval_ms.{size}", "ms", times)


def ingest_figures(duet, report: Report, plan: Plan) -> None:
    from backends.knowledge.index import DocumentIndex, embedding_text, split_segments
    from backends.knowledge.loaders import load_document

    rng = random.Random(11)
    ingest_runs, embed_runs = [], []
    for run in range(plan.repeats):
        report.progress(f"ingest: {plan.ingest_chunks} chunks, run {run + 1}")
        text = "\n\n".join(synthetic_text(rng, 90) + f" Paragraph {run}-{i}." for i in range(plan.ingest_chunks))
        data = text.encode()
        chunks = split_segments(load_document("bench.txt", data, duet.settings.csv_rows_per_chunk), "x",
                                duet.settings.chunk_size, duet.settings.chunk_overlap)
        texts = [embedding_text(c["text"], "bench.txt", c["location"]) for c in chunks]
        embed_s = _time(lambda: duet.index.embeddings.embed_documents(texts))
        with tempfile.TemporaryDirectory() as folder:
            index = DocumentIndex(duet.settings.with_store(folder), duet.index.embeddings)
            ingest_s = _time(lambda: index.ingest_bytes("bench.txt", data))
            index.close()
        ingest_runs.append(len(chunks) / ingest_s)
        embed_runs.append(len(chunks) / embed_s)
    report.add("ingest.chunks_per_s", "chunks/s", ingest_runs)
    report.add("embedding.chunks_per_s", "chunks/s", embed_runs)
    report.add("ingest.overhead", "x", [e / i for e, i in zip(embed_runs, ingest_runs)])


# ---- training, dataset building, evaluation ---------------------------------------------------------
def training_figures(duet, report: Report, plan: Plan) -> None:
    """Tokens/s on the demo dataset at the demo adapter's hyperparameters and at the defaults, beside the limit."""
    from backends.learning.training import TrainConfig, training_rate

    demo = duet.registry.get("demo", check_base=False).metadata.get("hyperparameters", {}) \
        if "demo" in {a.name for a in duet.registry.list()} else {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    configs = {"": TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in demo.items() if k in known}),
               ".defaults": TrainConfig()}
    for suffix, config in configs.items():
        runs = []
        for run in range(plan.repeats):
            report.progress(f"training: {plan.train_steps} steps on {DEMO_TRAIN.name}{suffix or ' (demo hyperparameters)'}, "
                            f"run {run + 1}")
            runs.append(training_rate(duet.settings, DEMO_TRAIN, config, plan.train_steps))
        report.add(f"train.tokens_per_s{suffix}", "tokens/s", [r["tokens_per_s"] for r in runs])
        report.add(f"train.limit_tokens_per_s{suffix}", "tokens/s", [r["limit_tokens_per_s"] for r in runs])
    report.add("train.peak_matmul_gflops", "GFLOP/s", [r["peak_matmul_gflops"] for r in runs])
    report.notes["train.precision"] = runs[-1]["precision"]


def dataset_figures(duet, report: Report, plan: Plan) -> None:
    """Building a templates-only dataset (the default) from the index: chunks and pairs per second."""
    from backends.learning.datasets import DatasetOptions, build_dataset

    doc_ids = tuple(sorted(duet.index.snapshot())[: plan.dataset_documents]) if plan.dataset_documents else ()
    chunks, pairs = [], []
    for run in range(plan.repeats):
        report.progress(f"dataset: building from {len(doc_ids) or 'all'} documents, run {run + 1}")
        started = time.perf_counter()
        built = build_dataset(duet.index, DatasetOptions(doc_ids=doc_ids))
        seconds = time.perf_counter() - started
        chunks.append(built.manifest["counts"]["chunks"] / seconds)
        pairs.append((len(built.train) + len(built.eval)) / seconds)
    report.add("dataset.chunks_per_s", "chunks/s", chunks)
    report.add("dataset.pairs_per_s", "pairs/s", pairs)


def eval_figures(duet, report: Report, plan: Plan, adapter: str) -> None:
    """Evaluation as it runs (questions as concurrent rows of the decoder, claims traced meanwhile) against the
    sum of the same answers asked one at a time."""
    from backends.apps.evaluation import load_qa, run_eval

    items = load_qa(DEMO_EVAL)[: plan.eval_questions]
    runs: dict[str, list[float]] = {}
    for run in range(plan.repeats):
        report.progress(f"evaluation: {len(items)} questions one at a time, run {run + 1}")
        single = sum(_time(lambda b=b, q=item.question: duet.ask(b, q, adapter)) for item in items for b in ("rag", "ft"))
        for system in ("rag", "ft"):
            report.progress(f"evaluation: {len(items)} questions, {system}, run {run + 1}")
            seconds = _time(lambda s=system: run_eval(duet, items, (s,), adapter))
            runs.setdefault(f"questions_per_min.{system}", []).append(60 * len(items) / seconds)
        report.progress(f"evaluation: {len(items)} questions, both systems, run {run + 1}")
        runs.setdefault("wall_vs_sum", []).append(_time(lambda: run_eval(duet, items, ("rag", "ft"), adapter)) / single)
    for name, values in runs.items():
        report.add(f"eval.{name}", "x" if name == "wall_vs_sum" else "questions/min", values)


# ---- cold start and memory --------------------------------------------------------------------
def cold_start_figures(duet, report: Report, plan: Plan) -> None:
    """A new `python -m backends ask --backend rag --json` process: from its start to its printed answer, and to its end."""
    command = [sys.executable, "-m", "backends", "ask", ANSWER_QUESTIONS[0], "--backend", "rag",
               "--store", str(duet.settings.store_dir), "--json"]
    to_answer, to_exit = [], []
    for run in range(plan.cold_starts):
        report.progress(f"cold start: a new process answers, run {run + 1}")
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ))
        for line in child.stdout:  # the JSON answer (indent 2) ends with a line "}"
            if line.rstrip("\n") == "}":
                to_answer.append(time.perf_counter() - started)
                break
        child.stdout.read()
        error = child.stderr.read()
        if child.wait() != 0 or len(to_answer) <= run:
            report.skipped["cold_start"] = f"ask failed: {error.strip()[-300:]}"
            return
        to_exit.append(time.perf_counter() - started)
    report.add("cold_start_s", "s", to_answer)
    report.add("cold_start_to_exit_s", "s", to_exit)
    report.add("peak_memory_mb.cold_start_process", "MB", [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024])


def judge(report: Report) -> None:
    llama = report.median("decode_tokens_per_s.llama_cpp.base")
    for name in [f"decode_tokens_per_s.{engine}.{key}" for engine in ENGINE_KEYS.values() for key in ("base", "adapter")]:
        mine = report.median(name)
        report.judge(name, ">= 50% of llama.cpp", None if llama is None or mine is None else mine >= 0.5 * llama)
    # Two answers on two busy cores cost their sum: Compare is judged against that floor (the team's decision).
    for name in ("side_by_side.both_vs_sum", f"side_by_side.{ENGINE_KEYS['llama.cpp']}.both_vs_sum"):
        ratio = report.median(name)
        report.judge(name, "<= 1.1", None if ratio is None else ratio <= 1.1)
    p50 = report.median("retrieval_ms.100000")
    report.judge("retrieval_ms.100000", "p50 < 50 ms", None if p50 is None else p50 < 50)
    overhead = report.median("ingest.overhead")
    report.judge("ingest.overhead", "<= 1.3", None if overhead is None else overhead <= 1.3)
    ratio = report.median("sessions.p95_vs_one")
    at_eight = ratio is not None and "sessions.8.time_to_both_s" in report.figures  # --quick runs 2
    report.judge("sessions.p95_vs_one", "<= 3 at 8 sessions", ratio <= 3 if at_eight else None)
    cold = report.median("cold_start_s")
    report.judge("cold_start_s", "< 10 s", None if cold is None else cold < 10)


def index_demo_corpus_if_empty(duet, report: Report) -> None:
    """Answers are measured on documents: an empty store gets the demo corpus first (`setup`, in a child process)."""
    manifest = duet.settings.manifest_path
    if manifest.is_file() and json.loads(manifest.read_text()).get("documents"):
        return
    report.progress("indexing the demo corpus into the empty store (once)")
    done = subprocess.run([sys.executable, "-m", "backends", "setup", "--store", str(duet.settings.store_dir)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"indexing the demo corpus failed: {done.stderr.strip()[-500:]}")


def run_bench(duet, quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Measure everything; return the JSON-ready result (also written to <store>/bench/)."""
    import torch

    plan = QUICK if quick else FULL
    report = Report(progress)
    adapter = duet.registry.active_name()
    started = time.perf_counter()
    # First, the children that open the store: it is this process's once opened (knowledge/index.py).
    index_demo_corpus_if_empty(duet, report)
    cold_start_figures(duet, report, plan)
    llama_cpp_side_by_side_figures(duet, report, plan, adapter)
    for section in (engine_figures, answer_figures, side_by_side_figures, sessions_figures):
        section(duet, report, plan, adapter)
    retrieval_figures(duet, report, plan)
    ingest_figures(duet, report, plan)
    eval_figures(duet, report, plan, adapter)
    dataset_figures(duet, report, plan)
    training_figures(duet, report, plan)
    report.add("peak_memory_mb.bench_process", "MB", [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    judge(report)
    result = {
        "quick": quick, "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "device": duet.llm.device,
                    "python": platform.python_version(), "torch": torch.__version__, "processor": platform.processor()},
        "model": duet.llm.name, "adapter": adapter, "weights": duet.llm.weights, "engine": duet.llm.engine.name,
        "figures": {name: figure.to_dict() for name, figure in report.figures.items()},
        "skipped": report.skipped, "notes": report.notes,
    }
    folder = duet.settings.store_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    rows = [f"{'figure':44} {'median':>10} {'min':>10} {'max':>10} {'p95':>10}  {'n':>3}  target"]
    for name, f in result["figures"].items():
        mark = {True: "ok", False: "MISSED", None: ""}[f["meets"]]
        rows.append(f"{name:44} {f['median']:>10.3f} {f['min']:>10.3f} {f['max']:>10.3f} {f['p95']:>10.3f}  {f['runs']:>3}  "
                    f"{f['target']} {mark}".rstrip() + f"  [{f['unit']}]")
    rows += [f"skipped {name}: {why}" for name, why in result["skipped"].items()]
    rows += [f"{name}: {value}" for name, value in result.get("notes", {}).items()]
    rows.append(f"{result['model']}, adapter {result['adapter']}, {result['engine']} engine, weights {result['weights']}, "
                f"{result['machine']['threads']} threads on {result['machine']['device']}; {result['seconds']} s")
    return "\n".join(rows)


def child_job(job: dict):
    """What a child process of this harness measures: llama.cpp's own decoding, or Compare on the llama.cpp engine."""
    if job["kind"] == "decode":
        return llama_cpp_runs(job)
    from backends.core.config import load_settings
    from backends.service import Duet

    duet = Duet(load_settings(store_dir=job["store"], engine="llama.cpp"))
    report = Report(lambda _: None)
    for backend in ("rag", "ft"):  # loads the model, converts the adapter: not part of any figure
        duet.ask(backend, ANSWER_QUESTIONS[0], job["adapter"])
    side_by_side_figures(duet, report, Plan(**job["plan"]), job["adapter"])
    return {name: (figure.unit, figure.runs) for name, figure in report.figures.items()}


if __name__ == "__main__":  # a child of _child_runs: a job as JSON in, its result as JSON on the last line out
    print(json.dumps(child_job(json.loads(sys.stdin.read()))))
