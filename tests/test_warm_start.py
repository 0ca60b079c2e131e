"""A cold process whose first work runs on several threads at once: imports and parts are made once, on one thread.

transformers' lazy module fails when threads import from it together, and from Python 3.12 on cached_property takes
no lock; these tests run the real thing in fresh interpreters, the way `eval` and the app start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from backends.core.config import REPO_ROOT
from backends.core.threads import built_once
from backends.service import PARTS, Duet
from tests.helpers import copy_demo_store, run_cli

BROKEN = ("Traceback", "ImportError", "SystemError", "ValueError", "Could not connect to tenant")

SIX_THREADS_IMPORT = textwrap.dedent("""
    import threading
    names = ["AutoModel", "AutoTokenizer", "AutoModelForCausalLM", "AutoConfig", "GenerationConfig", "PreTrainedModel"]
    release, errors = threading.Barrier(len(names)), []
    def grab(name):
        release.wait()
        try:
            exec(f"from transformers import {name}", {})
        except BaseException as error:
            errors.append(f"{name}: {type(error).__name__}: {error}")
    threads = [threading.Thread(target=grab, args=(n,)) for n in names]
    [t.start() for t in threads]; [t.join() for t in threads]
    print("ERRORS", errors if errors else "none")
""")

IMPORTS_AT_ONCE = textwrap.dedent("""
    from backends.core.config import load_settings
    from backends.service import get_duet
    get_duet(load_settings()).warm(())  # the project's warm start: libraries only
""") + SIX_THREADS_IMPORT

# A cold ask_many warms the process itself; six threads then import transformers names there too.
COLD_ASK_MANY = textwrap.dedent("""
    from backends.core.config import load_settings
    from backends.core.types import FailedAnswer
    from backends.service import get_duet
    questions = ["What is the per diem for a full day of business travel?", "Who founded Brackwater Instruments?",
                 "How many days of annual leave do employees get?", "Where is the Brackwater headquarters?"]
    answers = get_duet(load_settings()).ask_many([(b, q, None) for q in questions for b in ("rag", "ft")])
    failed = [a.error for a in answers if isinstance(a, FailedAnswer)]
    print("ANSWERS", len(answers), "FAILED", failed if failed else "none")
""") + SIX_THREADS_IMPORT


class Counted:
    """Counts how often `value` is built; the build waits a little so that threads asking together overlap."""

    def __init__(self):
        self.builds = 0

    @built_once
    def value(self):
        self.builds += 1
        threading.Event().wait(0.05)
        return object()


def ask_together(obtain, threads: int = 8) -> list:
    release = threading.Barrier(threads)

    def one(_):
        release.wait()
        return obtain()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(threads)))


@pytest.mark.fast
def test_a_value_built_once_is_built_once_when_eight_threads_ask_together():
    counted = Counted()
    values = ask_together(lambda: counted.value)
    assert counted.builds == 1 and all(v is values[0] for v in values)
    assert Counted().value is not values[0]  # per instance


@pytest.mark.fast
def test_a_failed_build_is_not_kept_and_the_next_ask_builds_again():
    class Flaky:
        tries = 0

        @built_once
        def value(self):
            Flaky.tries += 1
            if Flaky.tries == 1:
                raise OSError("first try fails")
            return "ok"

    flaky = Flaky()
    with pytest.raises(OSError):
        flaky.value  # noqa: B018
    assert flaky.value == "ok" and Flaky.tries == 2


def test_every_part_of_a_fresh_duet_is_built_once_when_eight_threads_ask_together(fresh_store, monkeypatch):
    import backends.answering.claims as claims
    import backends.answering.finetuned as finetuned
    import backends.answering.rag as rag
    import backends.knowledge.index as index
    import backends.learning.adapters as adapters
    import backends.service as service

    builds: dict[str, int] = {}

    def counting(module, name, part):
        original = getattr(module, name)

        def build(*args, **kwargs):
            builds[part] = builds.get(part, 0) + 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, build)

    for module, name, part in [(service, "load_llm", "llm"), (index, "DocumentIndex", "index"),
                               (adapters, "AdapterRegistry", "registry"), (rag, "RAGBackend", "rag"),
                               (finetuned, "FineTunedBackend", "ft"), (claims, "ClaimTracer", "tracer")]:
        counting(module, name, part)
    duet = Duet(fresh_store)
    try:
        for part in PARTS:
            values = ask_together(lambda part=part: getattr(duet, part))
            assert all(v is values[0] for v in values), part
        assert builds == {part: 1 for part in PARTS}
    finally:
        duet.index.close()


COLD = 6  # fresh processes per check


def _in_fresh_processes(script: str, environments: list[dict]) -> list[subprocess.CompletedProcess]:
    """`script` in a new interpreter per environment, two at a time."""
    run = lambda env: subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env={**os.environ, **env},  # noqa: E731
                                     capture_output=True, text=True, timeout=600)
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(run, environments))


def test_after_the_warm_start_six_threads_import_transformers_at_once_in_fresh_processes(tmp_path):
    """Six processes here and the six cold ones below: twelve warm starts followed by six threads importing at once
    (without the warm start about 6 in 10 such processes failed, so twelve passing is far from luck; the suite's
    20-minute budget keeps it at twelve)."""
    results = _in_fresh_processes(IMPORTS_AT_ONCE, [{"DUET_STORE": str(tmp_path / f"store{n}")} for n in range(COLD)])
    problems = [r.stdout[-300:] + r.stderr[-600:] for r in results if r.returncode or "ERRORS none" not in r.stdout]
    assert not problems, f"{len(problems)} of {COLD} failed; first: {problems[0]}"


def test_cold_processes_answer_eight_at_once_while_busy_loops_load_the_cores(tmp_path):
    store = copy_demo_store(tmp_path / "demo")
    environments = []
    for number in range(COLD):  # a copy each: one process per store
        shutil.copytree(store, tmp_path / f"store{number}")
        environments.append({"DUET_STORE": str(tmp_path / f"store{number}"), "DUET_MAX_NEW_TOKENS": "8"})
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        outcomes = _in_fresh_processes(COLD_ASK_MANY, environments)
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    problems = [o.stdout[-300:] + o.stderr[-800:] for o in outcomes if o.returncode or "FAILED none" not in o.stdout
                or "ERRORS none" not in o.stdout or any(word in o.stderr for word in BROKEN)]
    assert not problems, f"{len(problems)} of {COLD} failed; first: {problems[0]}"


def test_eval_reports_a_question_it_could_not_answer_and_scores_the_others(settings, tmp_path):
    import json

    qa = tmp_path / "set.jsonl"
    rows = [{"question": "What is the per diem for a full day of business travel?", "answer": "55 euros"},
            {"question": "Why? " * 300, "answer": "no"},  # over the question limit: this answer raises
            {"question": "Who founded Brackwater Instruments?", "answer": "Ilse Marrow"}]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = copy_demo_store(tmp_path / "store")
    result = run_cli("eval", "--set", str(qa), "--systems", "rag", "--out", str(tmp_path / "run"), "--store", str(store),
                     settings=settings)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["rag"]
    assert metrics["failed"] == 1 and metrics["questions"] == 2
    assert "1 failed" in result.stdout
    assert "8 questions in flight" in result.stdout, "latencies measured under load say so"
    import csv

    with open(tmp_path / "run" / "results.csv", newline="") as f:
        errors = [row["error"] for row in csv.DictReader(f)]
    assert errors[0] == errors[2] == "" and "longer than" in errors[1]


def test_a_model_that_fails_to_load_ends_the_command_with_one_line_naming_it_and_the_log(settings, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model" * 100)
    store = tmp_path / "store"
    result = run_cli("ask", "What is the per diem?", "--backend", "ft", "--store", str(store), settings=settings,
                     env={"DUET_LLM": str(broken)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("duet: loading the base model failed") and str(store / "logs" / "duet.log") in line
    assert "Traceback" in (store / "logs" / "duet.log").read_text()
