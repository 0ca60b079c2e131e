"""The optional llama.cpp engine: the transformers engine's answers, prompt re-use, adapters per context, refusals.

Most tests need llama-cpp-python, which `make engine` compiles and a fresh clone does not
have; the refusal without it runs where it is missing (CI).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import threading
import time

import pytest

from backends.core.config import DATA_DIR
from backends.core.errors import BadInput, ModelUnavailable
from backends.answering.scoring import contains_gold
from backends.engines.scheduler import stream_chat
from backends.learning.examples import chat_messages
from backends.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tests.helpers import (
    QUESTIONS, assert_decided_alike, decoder_text, failure_beside_rag, on_model, rag_prompt, registered_demo_adapter, run_cli,
)

INSTALLED = importlib.util.find_spec("llama_cpp") is not None
needs_engine = pytest.mark.skipif(not INSTALLED, reason="llama-cpp-python is not installed (`make engine` compiles it)")
DEMO = DATA_DIR / "adapters" / "demo"


@pytest.fixture(scope="module")
def engine_llm(settings):
    from backends.engines import load_llm

    llm = load_llm(dataclasses.replace(settings, engine="llama.cpp"))
    yield llm
    # Its decoder thread's OpenMP pool ends with it: the later tests' torch decoding runs at full speed again.
    llm.decoder.stop()


@pytest.fixture(scope="module")
def demo_adapter(settings):
    """The demo adapter registered in the test adapters folder, on both engines' models."""
    yield from registered_demo_adapter(settings, "demo-engine")


@needs_engine
@pytest.mark.parametrize("question", QUESTIONS)
def test_rag_answers_follow_the_transformers_engines(duet, engine_llm, question):
    """Copied answers choose among few tokens, so Q4_1 arithmetic changes them only at near-ties (85 of 85 eval
    questions identical when measured)."""
    messages, copy_from = rag_prompt(duet, question)
    assert_decided_alike(engine_llm, duet.llm, messages, 40, copy_from=copy_from, tolerance=0.5)


@needs_engine
def test_fine_tuned_answers_keep_their_quality(duet, settings, engine_llm, demo_adapter):
    """The adapter runs on Q4_1 weights in llama.cpp, on their float32 copy in torch: near-ties may go either way.

    Measured on all 85 eval questions: 58 answers identical, the gold answer found in 26 on both
    engines, for 83 of the 85 questions alike. Here: the first 24.
    """
    items = [json.loads(line) for line in (DATA_DIR / "qa" / "eval.jsonl").read_text().splitlines()[:24]]
    name_t, name_l = on_model(duet.llm, settings, demo_adapter), on_model(engine_llm, settings, demo_adapter)
    # One engine after the other: llama.cpp's OpenMP workers spin a while after each pass and slow torch beside them.
    torch_texts = [decoder_text(duet.llm, chat_messages(i["question"]), 24, name_t) for i in items]
    pairs = list(zip(torch_texts, [decoder_text(engine_llm, chat_messages(i["question"]), 24, name_l) for i in items]))
    assert sum(t == l for t, l in pairs) >= len(items) // 2
    found = [(contains_gold(t, i["answer"]), contains_gold(l, i["answer"])) for (t, l), i in zip(pairs, items)]
    assert sum(a == b for a, b in found) >= len(items) - 2
    assert sum(a for a, _ in found) > 0


@needs_engine
def test_the_engine_answers_with_an_adapter_without_torchs_copy_of_the_weights(engine_llm, settings, demo_adapter):
    answer = decoder_text(engine_llm, chat_messages(QUESTIONS[0]), 24, on_model(engine_llm, settings, demo_adapter))
    assert answer and engine_llm.engine.name == "llama.cpp" and engine_llm.weights == "gguf"
    assert engine_llm.eos == {engine_llm.tokenizer.eos_token_id}  # from the model's generation config


@needs_engine
def test_a_new_prompt_computes_only_what_it_does_not_share_with_the_last(duet, engine_llm):
    messages_a, copy_a = rag_prompt(duet, QUESTIONS[0])
    messages_b, copy_b = rag_prompt(duet, QUESTIONS[1])
    decoder_text(engine_llm, messages_a, 40, copy_from=copy_a)
    from backends.engines.base import BASE_MODEL

    context = engine_llm.engine.idle[BASE_MODEL][-1]
    fed, eval_tokens = [], context.llama.eval
    context.llama.eval = lambda tokens: (fed.append(len(tokens)), eval_tokens(tokens))[1]
    try:
        *_, stats = stream_chat(engine_llm, messages_b, 40, copy_from=copy_b)
    finally:
        del context.llama.eval
    prompt, *chunks = fed
    assert 0 < prompt < stats.tokens_in - 50  # the system message came from the cache
    assert len(fed) <= max(3, stats.tokens_out // 3)  # copied spans go through in chunks here too
    assert stats.text == decoder_text(duet.llm, messages_b, 40, copy_from=copy_b)


@needs_engine
def test_a_row_that_llama_cpp_refuses_fails_alone(engine_llm):
    """A token id beyond the vocabulary makes llama_decode fail for real: that row fails, the one beside it answers."""
    from backends.engines.scheduler import REPETITION_PENALTY, Done, Request, encode_chat

    ids = encode_chat(engine_llm, chat_messages(QUESTIONS[0]))
    alone = decoder_text(engine_llm, chat_messages(QUESTIONS[0]), 24)
    good = Request(input_ids=ids, max_new_tokens=24, repetition_penalty=REPETITION_PENALTY)
    bad = Request(input_ids=ids[:-3] + [10**6] + ids[-2:], max_new_tokens=8)
    decoder = engine_llm.decoder
    decoder.submit(good)
    decoder.submit(bad)  # joins the running rounds, or starts in the same batch

    def last_item(request):
        while not isinstance(item := request.output.get(timeout=60), (Done, BaseException)):
            pass
        return item

    failure, text = last_item(bad), last_item(good).text
    assert isinstance(failure, RuntimeError) and "llama_decode" in str(failure)
    assert text == alone


@needs_engine
def test_a_request_joins_the_running_rounds_and_answers_as_alone(duet, engine_llm, settings, demo_adapter):
    adapter = on_model(engine_llm, settings, demo_adapter)
    messages, copy_from = rag_prompt(duet, QUESTIONS[0])
    alone = decoder_text(engine_llm, messages, 40, copy_from=copy_from)
    long_answer = chat_messages(QUESTIONS[2])
    started = threading.Event()

    def fine_tuned():
        for _ in stream_chat(engine_llm, long_answer, 200, adapter, stop_at_eos=False):
            started.set()

    before = engine_llm.decoder.batches
    worker = threading.Thread(target=fine_tuned)
    worker.start()
    assert started.wait(60)
    together = decoder_text(engine_llm, messages, 40, copy_from=copy_from)
    worker.join(120)
    assert together == alone
    assert engine_llm.decoder.batches == before + 1  # it joined the running rounds: no batch of its own


@needs_engine
def test_a_retrained_adapter_is_not_answered_from_its_old_context(engine_llm, settings, tiny_adapter, tmp_path):
    registered = settings.adapters_dir / "retrained"
    shutil.copytree(DEMO, registered)
    try:
        adapter = on_model(engine_llm, settings, "retrained")
        messages = chat_messages(QUESTIONS[0])
        before = decoder_text(engine_llm, messages, 24, adapter)
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):  # retrained: same name, new weights (and their rank, alpha)
            shutil.copyfile(tiny_adapter["path"] / name, registered / name)
        time.sleep(0.01)
        os.utime(registered / ADAPTER_WEIGHTS)
        after = decoder_text(engine_llm, messages, 24, on_model(engine_llm, settings, "retrained"))  # as Ask does
        tiny = decoder_text(engine_llm, messages, 24, on_model(engine_llm, settings, "tiny"))
        assert after == tiny != before
        kept = [version for version in engine_llm.engine.idle if version.name == "retrained"]
        assert kept == [engine_llm.host.version("retrained")]  # the old version's contexts were closed
    finally:
        shutil.rmtree(registered)


@needs_engine
def test_an_adapter_llama_cpp_cannot_apply_fails_its_answer_alone(duet, engine_llm, settings):
    """A LoRA on the output layer has no llama.cpp adapter form: that answer says so, the RAG answer beside it goes on."""
    error = failure_beside_rag(duet, engine_llm, settings, "odd-layers", BadInput)
    assert "not on a layer llama.cpp adapters support" in error


@needs_engine
def test_a_prompt_longer_than_the_context_is_refused_with_the_reason(engine_llm):
    from backends.engines.llamacpp import CONTEXT_TOKENS

    huge = chat_messages("Summarise: " + "travel policy " * CONTEXT_TOKENS)
    with pytest.raises(BadInput, match=r"do not fit llama\.cpp's context of \d+ tokens: lower top_k"):
        decoder_text(engine_llm, huge, 24)
    assert decoder_text(engine_llm, chat_messages(QUESTIONS[0]), 8)  # the engine goes on answering


@needs_engine
def test_the_engine_runs_gguf_files_only():
    from backends.engines.llamacpp import require_engine

    with pytest.raises(ModelUnavailable, match=r"runs \.gguf files only.*DUET_ENGINE=transformers"):
        require_engine(None)


@pytest.mark.skipif(INSTALLED, reason="llama-cpp-python is installed here")
def test_without_llama_cpp_python_the_engine_says_how_to_install_it(settings):
    from backends.engines.llamacpp import require_engine
    from backends.models.files import bundled_gguf_path

    with pytest.raises(ModelUnavailable, match=r"needs llama-cpp-python: run `make engine`"):
        require_engine(str(bundled_gguf_path()))


def test_the_cli_refuses_an_engine_it_cannot_run_with_exit_code_2(settings, tmp_path):
    """Without llama-cpp-python (CI) or with a model that is no GGUF file: one line that says what to do."""
    done = run_cli("ask", "What is a travel policy?", "--backend", "ft", settings=settings,
                   env={"DUET_ENGINE": "llama.cpp", "DUET_LLM": str(tmp_path)})
    assert done.returncode == 2
    assert "DUET_ENGINE=transformers" in done.stderr and "Traceback" not in done.stderr


@needs_engine
def test_the_compare_page_answers_on_the_engine(engine_llm, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from backends.core.config import REPO_ROOT
    from pages import common
    from tests.helpers import PER_DIEM, copy_demo_store

    monkeypatch.setenv("DUET_STORE", str(copy_demo_store(tmp_path / "store")))
    monkeypatch.setenv("DUET_ENGINE", "llama.cpp")
    common.app_settings.clear()
    common.duet.clear()
    try:
        app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=240)
        app.run()
        app.selectbox(key="compare.demo").select(PER_DIEM)
        app.button[0].click().run()
        # The transparency panel may show the two answers in conflict (llama.cpp's Q4_1 arithmetic can settle the
        # fine-tuned answer's near-ties its own way): that is the page working; any other error is a failure.
        assert not app.exception and all(e.value.startswith("Conflict (") for e in app.error)
        assert "55 euros" in app.text[0].value
        assert any("via llama" in c.value for c in app.caption)  # the model caption names the engine
    finally:
        common.app_settings.clear()
        common.duet.clear()


def test_an_engine_whose_probe_child_dies_falls_back_to_the_default_engine_with_a_message(settings, monkeypatch):
    """llama.cpp built for the wrong vector units dies with SIGSEGV in its first forward pass: the probe's child
    dies instead of the app (here a child that really kills itself with that signal), and the default engine answers."""
    from backends.engines import _load_llm_uncached, llamacpp

    dying = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert "SIGSEGV" in llamacpp.probe_failure("model.gguf", dying)
    monkeypatch.setattr(llamacpp, "require_engine", lambda gguf: None)
    monkeypatch.setattr(llamacpp, "PROBE_CODE", dying)
    llm = _load_llm_uncached(dataclasses.replace(settings, engine="llama.cpp"))
    assert llm.engine.name == "onnxruntime" and "via onnxruntime" in llm.name
    assert "crashed the process (SIGSEGV)" in llm.notice and "Duet uses onnxruntime instead" in llm.notice
    assert decoder_text(llm, chat_messages(QUESTIONS[0]), 8)
    llm.decoder.stop()
