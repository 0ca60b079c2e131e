"""Helpers shared by test modules (test modules never import each other)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from backends.answering.rag import rank_evidence
from backends.answering.prompts import build_messages
from backends.core.config import DATA_DIR, REPO_ROOT
from backends.engines.scheduler import REPETITION_PENALTY, Done, chat_request, stream_chat
from backends.learning.examples import chat_messages

CORPUS = DATA_DIR / "corpus"
PER_DIEM = "What is the per diem for a full day of business travel?"


def run_cli(*args, settings, timeout=300, env: dict | None = None):
    env = {**os.environ, "DUET_ADAPTERS_DIR": str(settings.adapters_dir), "DUET_MAX_NEW_TOKENS": "24", **(env or {})}
    return subprocess.run([sys.executable, "-m", "backends", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def copy_adapter(src: Path, dst: Path, edit_metadata=None) -> Path:
    shutil.copytree(src, dst)
    if edit_metadata:
        meta_path = dst / "metadata.json"
        meta = json.loads(meta_path.read_text())
        edit_metadata(meta)
        meta_path.write_text(json.dumps(meta))
    return dst


def copy_demo_store(target: Path) -> Path:
    """A copy of the demo store prepared by `make test` (no models, runs, benchmark stores or locks)."""
    shutil.copytree(DATA_DIR / "store", target,
                    ignore=shutil.ignore_patterns("models", "runs", "datasets", "bench", "logs", ".writer.lock", ".store.lock"))
    return target


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LONG_FREE_ROW = dict(messages=chat_messages("Describe the company in detail."), max_new_tokens=60)
QUESTIONS = ["How many days of annual leave do employees get?", "What is the daily meal allowance for travel?",
             "Who approves expenses above the limit?"]


# Two float32 kernels (or engines) may settle a near-tie either way: logits closer than this decide nothing.
NEAR_TIE = 1e-2


def reference_steps(llm, messages, max_new_tokens, adapter=None, copy_from=None) -> tuple[list[int], list]:
    """Greedy tokens from `model.generate` (the path the decoder replaces), and the scores each was chosen from
    (after repetition penalty and copy constraint)."""
    import torch
    from peft import PeftModel
    from transformers import LogitsProcessorList

    request = chat_request(llm, messages, max_new_tokens, adapter, copy_from)  # the decoder's rules and length
    ids, max_new_tokens = request.input_ids, request.max_new_tokens
    processors = LogitsProcessorList([request.constraint] if request.constraint else [])
    model = llm.engine.model
    if not isinstance(model, PeftModel):
        weights = torch.inference_mode()
    elif adapter is None:
        weights = model.disable_adapter()
    else:
        model.set_adapter(adapter)
        weights = torch.inference_mode()
    with llm.lock, weights, torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, logits_processor=processors,
                             repetition_penalty=1.0 if copy_from else REPETITION_PENALTY,
                             pad_token_id=llm.tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(ids):].tolist(), [scores[0].float() for scores in out.scores]


def decoder_tokens(llm, messages, max_new_tokens, adapter=None, copy_from=None) -> list[int]:
    """The decoder's greedy tokens for the chat (as `stream_chat` asks for them)."""
    request = chat_request(llm, messages, max_new_tokens, adapter, copy_from)
    llm.decoder.submit(request)
    while not isinstance(item := request.output.get(timeout=300), Done):
        if isinstance(item, BaseException):
            raise item
    return request.generated


def parting_point(tokens: list[int], reference: list[int], scores: list, tolerance: float = NEAR_TIE) -> str | None:
    """None when `tokens` follow `reference` wherever the reference's choice was clear: they may part only at a
    token whose two best scores were within `tolerance` (after that the continuations differ legitimately)."""
    for step, (mine, theirs) in enumerate(zip(tokens, reference)):
        if mine != theirs:
            best, second = scores[step].topk(2).values.tolist()
            return None if best - second < tolerance else (
                f"token {step}: {mine} instead of {theirs}, which led by {best - second:.4f} (> {tolerance})")
    return None if len(tokens) == len(reference) else f"{len(tokens)} tokens instead of {len(reference)}"


def assert_decided_alike(llm, reference_llm, messages, max_new_tokens, adapter=None, copy_from=None,
                         tolerance: float = NEAR_TIE) -> list[int]:
    """`llm`'s decoder gives `reference_llm`'s `model.generate` tokens except past a near-tie; returns its tokens."""
    reference, scores = reference_steps(reference_llm, messages, max_new_tokens, adapter, copy_from)
    tokens = decoder_tokens(llm, messages, max_new_tokens, adapter, copy_from)
    problem = parting_point(tokens, reference, scores, tolerance)
    assert problem is None, f"{problem}: {as_text(llm, tokens)!r} vs {as_text(reference_llm, reference)!r}"
    return tokens


def decoder_text(llm, messages, max_new_tokens, adapter=None, copy_from=None) -> str:
    *_, stats = stream_chat(llm, messages, max_new_tokens, adapter, copy_from=copy_from)
    return stats.text


def rag_prompt(duet, question: str) -> tuple[list[dict], list[str]]:
    """The extractive RAG backend's messages and copy passage for a question."""
    sources, _, _ = duet.index.search(question, 3)
    evidence = rank_evidence(question, sources, duet.index.embeddings)[:2]
    return build_messages(question, evidence), [" ".join(e.text for e in evidence)]


def as_text(llm, tokens) -> str:
    return llm.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def registered_demo_adapter(settings, name: str):
    """The demo adapter registered under `name` in the test adapters folder (a fixture's body: yields the name)."""
    target = settings.adapters_dir / name
    shutil.copytree(DATA_DIR / "adapters" / "demo", target)
    yield name
    shutil.rmtree(target)


def on_model(llm, settings, adapter: str) -> str:
    """The registered adapter, as its files are now, on this loaded model (as every fine-tuned answer does)."""
    from backends.learning.adapters import AdapterRegistry

    info = AdapterRegistry(settings).get(adapter)
    llm.host.ensure(info.name, info.path)
    return adapter


def failure_beside_rag(duet, llm, settings, name: str, error_type) -> str:
    """An adapter with a LoRA on the output layer (which the GGUF engines do not apply), registered as `name`: its
    answer fails in one thread while a RAG answer runs in this one. Asserts the RAG answer is its answer alone;
    returns the fine-tuned answer's error message."""
    import threading

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from backends.models.lora import ADAPTER_WEIGHTS

    registered = settings.adapters_dir / name
    shutil.copytree(DATA_DIR / "adapters" / "demo", registered)
    tensors = load_file(str(registered / ADAPTER_WEIGHTS))
    tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((8, 576), dtype=np.float32)
    save_file(tensors, str(registered / ADAPTER_WEIGHTS))
    try:
        adapter = on_model(llm, settings, name)
        messages, copy_from = rag_prompt(duet, QUESTIONS[1])
        alone = decoder_text(llm, messages, 40, copy_from=copy_from)
        outcome = {}

        def fine_tuned():
            try:
                decoder_text(llm, chat_messages(QUESTIONS[1]), 24, adapter)
            except error_type as error:
                outcome["error"] = str(error)

        worker = threading.Thread(target=fine_tuned)
        worker.start()
        assert decoder_text(llm, messages, 40, copy_from=copy_from) == alone
        worker.join(60)
        return outcome["error"]
    finally:
        shutil.rmtree(registered)


REAL_DOCS = REPO_ROOT / "tests" / "data" / "realdocs"


def supported_precision_recall(tracer, labelled_path: Path) -> tuple[float, float, int]:
    """Precision and recall of the tracer's "supported" on a labelled claim set (claims traced against the index,
    as a claim of an answer without sources is), and how many claims it has."""
    from backends.core.types import Answer

    rows = [json.loads(line) for line in labelled_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    said = [(row["true"], tracer.trace_claim(row["claim"], Answer("rag", "", row["claim"]), []).verdict == "supported")
            for row in rows]
    supported = [truth for truth, yes in said if yes]
    precision = sum(supported) / len(supported) if supported else 0.0
    recall = sum(yes for truth, yes in said if truth) / sum(truth for truth, _ in said)
    return precision, recall, len(rows)


@contextlib.contextmanager
def streamlit_server(store: Path, log=subprocess.DEVNULL, **settings: str):
    """A real `streamlit run app.py` on a loopback port over `store`; yields (url, process), stopped afterwards."""
    import time
    import urllib.request

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO_ROOT, env={**os.environ, "DUET_STORE": str(store), **{f"DUET_{k.upper()}": v for k, v in settings.items()}},
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("streamlit did not start within 120 s")
        yield url, process
    finally:
        process.terminate()
        process.wait(60)
