"""Shared fixtures: real models, a real Chroma store in a temporary folder, a tiny real adapter.

Heavy fixtures are session-scoped so the suite loads each model once. Model conversion
uses the project's normal cache (data/store/models), which `make test` prepares.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backends.core.config import DATA_DIR, load_settings
from backends.service import Duet

CORPUS = DATA_DIR / "corpus"
SMALL_CORPUS = ["travel_policy.pdf", "glossary.html", "product_catalog.csv", "support_escalation.txt", "company_overview.md"]


@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    """The transformers engine: tests of the torch decoder reach into its model. The default engine (onnxruntime
    for the bundled GGUF) answers in tests/test_onnxengine.py and wherever the app or CLI runs with default settings."""
    root = tmp_path_factory.mktemp("duet")
    return load_settings(store_dir=root / "store", adapters_dir=root / "adapters", max_new_tokens=24,
                         engine="transformers")


@pytest.fixture(scope="session")
def duet(settings):
    """Backends over a store holding five demo documents (one of each kind but DOCX)."""
    instance = Duet(settings)
    for name in SMALL_CORPUS:
        assert instance.index.ingest_file(CORPUS / name).status == "added"
    return instance


@pytest.fixture(scope="session")
def tiny_adapter(settings, duet):
    """A real LoRA adapter from a few training steps on eight examples."""
    from backends.learning.training import TrainConfig, train_adapter

    data = settings.store_dir.parent / "tiny.jsonl"
    lines = (DATA_DIR / "qa" / "train.jsonl").read_text().splitlines()[:8]
    data.write_text("\n".join(lines) + "\n")
    losses = []
    config = TrainConfig(rank=4, alpha=8, epochs=3, batch_size=8, learning_rate=3e-3, max_length=96)
    path = train_adapter(settings, data, "tiny", config, on_progress=lambda p: losses.append(p.loss),
                         index_snapshot=duet.index.snapshot())
    return {"path": path, "losses": losses, "data": data}


@pytest.fixture
def fresh_store(tmp_path, settings):
    """Settings for an empty store of this test's own (same models and adapters)."""
    return settings.with_store(tmp_path / "store")


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
                    ignore=shutil.ignore_patterns("models", "runs", "datasets", "bench", ".writer.lock", ".store.lock"))
    return target


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real `chroma run` server on a loopback port, for client/server mode; yields "host:port"."""
    import subprocess
    import sys
    import time

    import chromadb

    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    server = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path_factory.mktemp("chroma-server")),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the chroma server did not start") from None
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def registered_demo_adapter(settings, name: str):
    """The demo adapter registered under `name` in the test adapters folder (a fixture's body: yields the name)."""
    target = settings.adapters_dir / name
    shutil.copytree(DATA_DIR / "adapters" / "demo", target)
    yield name
    shutil.rmtree(target)


def on_model(llm, settings, adapter: str) -> str:
    """The registered adapter, as its files are now, on this loaded model (as every fine-tuned answer does)."""
    from backends.answering.finetuned import AdapterHost, AdapterRegistry

    AdapterHost.of(llm).ensure(AdapterRegistry(settings).get(adapter))
    return adapter


def failure_beside_rag(duet, llm, settings, name: str, error_type) -> str:
    """An adapter with a LoRA on the output layer (which the GGUF engines do not apply), registered as `name`: its
    answer fails in one thread while a RAG answer runs in this one. Asserts the RAG answer is its answer alone;
    returns the fine-tuned answer's error message."""
    import threading

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from backends.learning.training import ADAPTER_WEIGHTS, chat_messages
    from tests.test_generation import QUESTIONS, decoder_text, rag_prompt

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
