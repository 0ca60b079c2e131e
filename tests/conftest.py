"""Shared fixtures: real models, a real Chroma store in a temporary folder, a tiny real adapter.

Heavy fixtures are session-scoped so the suite loads each model once. Model conversion
uses the project's normal cache (data/store/models), which `make test` prepares.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.core.config import DATA_DIR, load_settings
from backends.service import Duet
from tests.helpers import CORPUS, free_port

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




def pytest_collection_modifyitems(items):
    """Every test not marked fast belongs to the model tier."""
    for item in items:
        if item.get_closest_marker("fast") is None:
            item.add_marker(pytest.mark.model)
