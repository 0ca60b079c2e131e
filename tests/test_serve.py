"""`python -m backends serve`: a real OpenAI-compatible server on a loopback port, asked over HTTP."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from backends.core.config import REPO_ROOT
from tests.helpers import copy_demo_store, free_port, run_cli

KEY = "test-key-3f9a"
PER_DIEM = "What is the per diem for a full day of business travel?"


def request(url: str, body: dict | None = None, key: str | None = KEY):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=240)


@pytest.fixture(scope="module")
def server(tmp_path_factory, settings):
    store = copy_demo_store(tmp_path_factory.mktemp("serve") / "store")
    port = free_port()
    env = {**os.environ, "DUET_ADAPTERS_DIR": str(settings.adapters_dir), "DUET_API_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "backends", "serve", "--port", str(port), "--store", str(store)],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            request(f"{url}/models")
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"serve exited: {process.stderr.read()[-2000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(30)


def test_models_lists_every_system_and_the_key_is_enforced(server, tiny_adapter):
    ids = [m["id"] for m in json.load(request(f"{server}/models"))["data"]]
    assert ids[0] == "duet-llm" and {"tiny", "duet-rag", "duet-ft:tiny", "duet-rag-ft:tiny"} <= set(ids)
    for key in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(f"{server}/models", key=key)
        assert refused.value.code == 401


@pytest.mark.parametrize("model", ["duet-rag", "duet-ft:tiny", "duet-rag-ft:tiny"])
def test_a_streaming_chat_completion_from_each_system(server, tiny_adapter, model):
    body = {"model": model, "stream": True, "messages": [{"role": "system", "content": "ignored"},
                                                          {"role": "user", "content": PER_DIEM}]}
    events = [line.decode().removeprefix("data: ").strip() for line in request(f"{server}/chat/completions", body)
              if line.startswith(b"data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    last = chunks[-1]
    assert text.strip() and last["choices"][0]["finish_reason"] == "stop"
    assert last["duet"]["timings"]["total"] > 0 and (bool(last["duet"]["sources"]) == (model != "duet-ft:tiny"))
    if model == "duet-rag":
        assert "55 euros" in text and last["duet"]["sources"][0]["file_name"]


def test_a_plain_completion_and_bad_requests(server, tiny_adapter):
    reply = json.load(request(f"{server}/chat/completions",
                              {"model": "duet-rag", "messages": [{"role": "user", "content": PER_DIEM}]}))
    assert reply["object"] == "chat.completion" and "55 euros" in reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] > 0 and reply["duet"]["sources"]
    for body, reason in (({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, "unknown model"),
                         ({"model": "duet-rag", "messages": []}, "user message"),
                         ({"model": "duet-rag", "messages": [{"role": "user", "content": "x" * 5000}]}, "longer than")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(f"{server}/chat/completions", body)
        assert refused.value.code == 400 and reason in json.load(refused.value)["error"]["message"]


def test_a_foreign_host_an_oversized_body_and_too_many_at_once_are_refused(duet, tiny_adapter):
    """In process (Starlette's test client over the real app): the checks come before any answer is generated."""
    from starlette.testclient import TestClient

    from backends.apps.serve import MAX_BODY_BYTES, create_app

    ask = {"model": "duet-rag", "messages": [{"role": "user", "content": PER_DIEM}]}
    local = TestClient(create_app(duet), base_url="http://localhost:8000")
    rebound = local.post("/v1/chat/completions", json=ask, headers={"Host": "attacker.example"})
    assert rebound.status_code == 403 and "localhost only" in rebound.json()["error"]["message"]
    assert local.get("/v1/models", headers={"Host": "attacker.example"}).status_code == 403
    assert local.get("/v1/models", headers={"Host": "[::1]:8000"}).status_code == 200
    huge = local.post("/v1/chat/completions", content=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}",
                      headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    streamed = local.post("/v1/chat/completions", content=(b" " * (MAX_BODY_BYTES + 10) for _ in range(1)),
                          headers={"Content-Type": "application/json"})  # no Content-Length: counted while read
    assert streamed.status_code == 413
    full = TestClient(create_app(duet, max_in_flight=0), base_url="http://127.0.0.1:8000")
    busy = full.post("/v1/chat/completions", json=ask)
    assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
    opened = TestClient(create_app(duet, any_host=True), base_url="http://duet.example:8000")
    assert opened.get("/v1/models").status_code == 200


def test_an_adapter_named_like_a_built_in_model_never_takes_its_place(duet, tiny_adapter, settings):
    import shutil

    from backends.apps.serve import model_ids, system_of

    impostor = settings.adapters_dir / "duet-rag"
    shutil.copytree(settings.adapters_dir / "tiny", impostor)
    try:
        assert "duet-rag" in duet.registry.names()
        assert system_of("duet-rag", duet) == ("rag", None)
        assert model_ids(duet).count("duet-rag") == 1 and "duet-ft:duet-rag" not in model_ids(duet)
    finally:
        shutil.rmtree(impostor)


@pytest.mark.fast
def test_serving_beyond_loopback_needs_an_api_key(settings, tmp_path):
    done = run_cli("serve", "--host", "0.0.0.0", "--store", str(tmp_path / "store"), settings=settings,
                   env={"DUET_API_KEY": ""})
    assert done.returncode == 2 and "DUET_API_KEY" in done.stderr


# ---- Duet as a client of an OpenAI-compatible server (DUET_ENGINE=openai), pointed at the real server above ----
def client(settings, tmp_path, url: str):
    import dataclasses

    from backends.service import Duet

    remote = dataclasses.replace(settings.with_store(copy_demo_store(tmp_path / "client-store")), engine="openai",
                                 llm_server=url, llm_api_key=KEY, llm_timeout_s=120.0)
    return Duet(remote)


def test_the_openai_engine_answers_both_columns_from_the_server_with_timings(server, settings, tiny_adapter, tmp_path):
    duet = client(settings, tmp_path, server)
    try:
        assert duet.llm.engine.name == "openai" and "model server" in duet.llm.notice
        rag = duet.ask("rag", PER_DIEM)
        # Free generation from the sources (no logits for extraction): the 135M model may word it wrongly, so the
        # retrieval is what is checked here; docs/engines.md has the measured effect.
        assert rag.text and any("55 euros" in s.text for s in rag.sources)
        assert 0 < rag.timings.first_token <= rag.timings.total
        assert rag.tokens_in > 0 and rag.tokens_out > 0
        ft = duet.ask("ft", PER_DIEM, "tiny")
        assert ft.text and ft.adapter == "tiny" and ft.timings.total > 0
        assert duet.llm.engine.registered["tiny"] == "listed", "confirmed by /v1/models before it answered"
        comparison = duet.trace(PER_DIEM, {"rag": rag, "ft": ft})
        assert comparison.claims["rag"], "claims are traced as with a local engine"
    finally:
        duet.index.close()


def test_a_stopped_server_gives_each_column_a_clear_message(settings, tiny_adapter, tmp_path):
    from backends.core.errors import ModelUnavailable

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    duet = client(settings, tmp_path, url)
    try:
        failures = {name: item for name, item in duet.stream_both(PER_DIEM, "tiny") if isinstance(item, Exception)}
        assert set(failures) == {"rag", "ft"}
        for failure in failures.values():
            assert isinstance(failure, ModelUnavailable) and url in str(failure) and "Start it" in str(failure)
    finally:
        duet.index.close()


def test_the_compare_page_runs_on_the_openai_engine(server, settings, tiny_adapter, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from pages import common

    for name, value in {"DUET_STORE": str(copy_demo_store(tmp_path / "page-store")), "DUET_ENGINE": "openai",
                        "DUET_LLM_SERVER": server, "DUET_LLM_API_KEY": KEY,
                        "DUET_ADAPTERS_DIR": str(settings.adapters_dir), "DUET_ACTIVE_ADAPTER": "tiny"}.items():
        monkeypatch.setenv(name, value)
    common.app_settings.clear()
    common.duet.clear()
    try:
        app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=300)
        app.run()
        app.text_input(key="compare.question").set_value(PER_DIEM)
        app.button[0].click().run()
        assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
        assert any("model server" in w.value for w in app.warning), "the page says where answers come from"
        assert len([m for m in app.metric if m.label == "Total"]) == 2, "both columns answered, with timings"
    finally:
        common.duet().index.close()
        common.app_settings.clear()
        common.duet.clear()
