"""A real llama.cpp server as Duet's model server: llama-cpp-python's `python -m llama_cpp.server` with the bundled
GGUF as "base" and the demo adapter, exported to GGUF, as "demo" (`make engine` installs it with its server extra).

Skipped where llama-cpp-python or its server extra is not installed, like the other llama.cpp tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from backends.core.config import DATA_DIR, REPO_ROOT

INSTALLED = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "fastapi", "sse_starlette",
                                                                  "starlette_context"))
pytestmark = pytest.mark.skipif(not INSTALLED, reason="llama-cpp-python's server is not installed (`make engine`)")
TRAINING = [json.loads(line) for line in (DATA_DIR / "qa" / "train.jsonl").read_text().splitlines()]


def start_server(tmp_path, models: list[dict], *extra: str):
    """`python -m llama_cpp.server` on a free loopback port with these models; (url, process) once it lists them."""
    from tests.helpers import free_port

    port = free_port()
    config = tmp_path / f"server-{port}.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
    log = open(tmp_path / f"server-{port}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(config), *extra],
                               cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return url, process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"llama_cpp.server did not start: {(tmp_path / f'server-{port}.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(settings, tmp_path_factory):
    """The server with base and demo, on llama-cpp-python's defaults (one request at a time, a new one cutting it)."""
    from backends.models.files import bundled_gguf_path
    from backends.models.lora import base_config_of, export_gguf

    folder = tmp_path_factory.mktemp("llama-server")
    adapter = export_gguf(DATA_DIR / "adapters" / "demo", base_config_of(settings), folder / "demo.gguf")
    model = {"model": str(bundled_gguf_path()), "n_ctx": 2048, "verbose": False}
    url, process = start_server(folder, [{**model, "model_alias": "base"},
                                         {**model, "model_alias": "demo", "lora_path": str(adapter)}])
    yield url
    process.terminate()
    process.wait(30)


def remote_duet(settings, tmp_path, url: str, **more):
    from backends.service import Duet
    from tests.helpers import copy_demo_store

    remote = dataclasses.replace(settings.with_store(copy_demo_store(tmp_path / "store")), **{
        "engine": "openai", "llm_server": url, "llm_server_model": "base", "adapters_dir": DATA_DIR / "adapters",
        "max_new_tokens": 64, "llm_timeout_s": 120.0, **more})
    return Duet(remote)


def test_the_served_adapter_answers_the_fine_tuned_column_as_the_local_llama_cpp_engine(served, settings, tmp_path):
    from backends.engines import load_llm
    from backends.engines.scheduler import stream_chat
    from backends.learning.examples import chat_messages
    from tests.helpers import on_model

    duet = remote_duet(settings, tmp_path, served)
    local = load_llm(dataclasses.replace(duet.settings, engine="llama.cpp"))
    try:
        on_model(local, duet.settings, "demo")
        same, differs = 0, 0
        questions = [item["question"] for item in TRAINING[:8]]
        for question in questions:
            ft = duet.ask("ft", question, "demo")
            assert ft.adapter == "demo" and ft.text and duet.llm.engine.registered["demo"] == "listed"
            prompt = duet.llm.tokenizer.apply_chat_template(chat_messages(question), add_generation_prompt=True,
                                                            return_dict=True)["input_ids"]
            assert ft.tokens_in == len(prompt), "the whole prompt (this server's stream reports no usage)"
            *_, base = stream_chat(duet.llm, chat_messages(question), 64)
            *_, mine = stream_chat(local, chat_messages(question), 64, "demo")
            differs += ft.text != base.text.strip()
            same += ft.text == mine.text.strip()
        assert differs == len(questions), "the adapter changes every answer"
        # Q4_1 arithmetic settles near-ties its own way in llama.cpp's server and in Duet's llama.cpp engine alike;
        # the server's repetition penalty counts only its last 64 tokens (measured: docs/engines.md)
        assert same >= len(questions) // 2, (same, len(questions))
    finally:
        local.decoder.stop()
        duet.index.close()


def test_an_adapter_the_server_lacks_gets_a_clear_error_never_the_base_models_text(served, settings, tmp_path):
    import shutil

    from backends.core.errors import ModelUnavailable

    duet = remote_duet(settings, tmp_path, served, adapters_dir=tmp_path / "adapters")
    shutil.copytree(DATA_DIR / "adapters" / "demo", tmp_path / "adapters" / "other")  # registered here, not served
    try:
        items = dict(duet.stream_both(TRAINING[0]["question"], "other"))  # each column's last item
        failure = items["ft"]
        assert isinstance(failure, ModelUnavailable), failure
        assert "does not serve adapter 'other'" in str(failure) and "lora_path" in str(failure)
        assert "--lora-modules other=" in str(failure) and "ADAPTER" in str(failure)
        assert items["rag"].text, "RAG still answers from the base model"
    finally:
        duet.index.close()


def test_an_eval_through_the_server_answers_every_row_or_marks_it_failed_never_empty(served, settings, tmp_path):
    """llama.cpp's server on its defaults cuts a running answer when another request arrives. With Duet's default
    of one request in flight every row is answered; with eight, the cut rows are failures that say the fix."""
    from backends.apps.evaluation import load_qa, run_eval

    items = load_qa(DATA_DIR / "qa" / "eval.jsonl")[:8]
    for in_flight in (1, 8):
        duet = remote_duet(settings, tmp_path / str(in_flight), served, llm_server_in_flight=in_flight)
        try:
            run = run_eval(duet, items, ("rag", "ft"), "demo")
        finally:
            duet.index.close()
        assert len(run.rows) == 16 and all(row.prediction.strip() or row.error for row in run.rows), "none empty"
        failed = [row for row in run.rows if row.error]
        if in_flight == 1:
            assert not failed, failed[0].error
        for row in failed:
            assert "--interrupt_requests False" in row.error and "--parallel" in row.error
        assert {s: m.failed for s, m in run.metrics.items()} == {s: sum(r.system == s for r in failed) for s in ("rag", "ft")}


def test_rag_through_the_server_copies_one_of_its_evidence_sentences_held_by_the_grammar(served, settings, tmp_path):
    from backends.engines.remote import gbnf_choice
    from tests.helpers import PER_DIEM

    assert gbnf_choice(['say "hi"', "a\\b", "two\nlines", 'say "hi"']) == 'root ::= "say \\"hi\\"" | "a\\\\b" | "two\\nlines"'
    duet = remote_duet(settings, tmp_path, served)
    try:
        assert duet.llm.engine.constrains_choice() and "grammar" in duet.llm.notice
        answer = duet.ask("rag", PER_DIEM)
        assert "55 euros" in answer.text  # copied from the travel policy; written freely, the 135M model misses it
        assert any(" ".join(answer.text.split()) in " ".join(s.text.split()).replace("**", "") for s in answer.sources)
    finally:
        duet.index.close()
