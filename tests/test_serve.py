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
    assert ids[0] == "duet-rag" and "duet-ft:tiny" in ids and "duet-rag-ft:tiny" in ids
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


@pytest.mark.fast
def test_serving_beyond_loopback_needs_an_api_key(settings, tmp_path):
    done = run_cli("serve", "--host", "0.0.0.0", "--store", str(tmp_path / "store"), settings=settings,
                   env={"DUET_API_KEY": ""})
    assert done.returncode == 2 and "DUET_API_KEY" in done.stderr
