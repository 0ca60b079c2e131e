"""The onnxruntime engine (the default for the bundled GGUF): exact weights, the transformers engine's answers, its cache.

`duet` (conftest) runs the transformers engine; the engine here reads the same GGUF file.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types

import numpy as np
import pytest

from backends.core.config import DATA_DIR
from backends.core.errors import ModelUnavailable
from backends.answering.scoring import contains_gold
from backends.engines.base import BASE_MODEL, Feed
from backends.learning.examples import chat_messages
from tests.helpers import (
    QUESTIONS, assert_decided_alike, decoder_text, failure_beside_rag, on_model, rag_prompt, registered_demo_adapter, run_cli,
)


DEMO = DATA_DIR / "adapters" / "demo"
INT8_TIE = 0.5  # int8 inputs move logits by up to a few tenths: closer choices may go either way
SAME_LOGITS = 1e-3  # float32 sums over the other rows differ in their last bits (logits of ~10: up to ~1e-4 seen)


def largest_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def engine_llm(settings, accuracy: str):
    from backends.engines import load_llm

    return load_llm(dataclasses.replace(settings, engine="onnxruntime", onnx_accuracy=accuracy))


@pytest.fixture(scope="module")
def float_llm(settings):
    return engine_llm(settings, "float")


@pytest.fixture(scope="module")
def int8_llm(settings):
    return engine_llm(settings, "int8")


@pytest.fixture(scope="module")
def demo_adapter(settings):
    yield from registered_demo_adapter(settings, "demo-ort")


@pytest.mark.parametrize("question", QUESTIONS)
def test_float_arithmetic_gives_the_transformers_engines_answers(duet, settings, tiny_adapter, float_llm, question):
    """The same 4-bit values, the adapter's low-rank term per token: the float32 torch path's greedy tokens, wherever
    that path's choice was not a near-tie."""
    messages, copy_from = rag_prompt(duet, question)
    assert_decided_alike(float_llm, duet.llm, messages, 40, copy_from=copy_from)
    on_model(duet.llm, settings, "tiny")
    assert_decided_alike(float_llm, duet.llm, chat_messages(question), 40, on_model(float_llm, settings, "tiny"))


def test_int8_arithmetic_keeps_the_answers_quality(duet, settings, int8_llm, demo_adapter):
    """int8 inputs, as llama.cpp computes: copied answers stay, free answers may settle near-ties the other way.

    Measured on all 85 eval questions: RAG 85 identical; fine-tuned 59 identical, the gold answer in
    25 (transformers: 26). Here: the first 24.
    """
    items = [json.loads(line) for line in (DATA_DIR / "qa" / "eval.jsonl").read_text().splitlines()[:24]]
    name_t, name_o = on_model(duet.llm, settings, demo_adapter), on_model(int8_llm, settings, demo_adapter)
    pairs = [(decoder_text(duet.llm, chat_messages(i["question"]), 24, name_t),
              decoder_text(int8_llm, chat_messages(i["question"]), 24, name_o)) for i in items]
    assert sum(t == o for t, o in pairs) >= len(items) // 2
    found = [(contains_gold(t, i["answer"]), contains_gold(o, i["answer"])) for (t, o), i in zip(pairs, items)]
    assert sum(a == b for a, b in found) >= len(items) - 2 and sum(a for a, _ in found) > 0
    messages, copy_from = rag_prompt(duet, QUESTIONS[0])
    assert_decided_alike(int8_llm, duet.llm, messages, 40, copy_from=copy_from, tolerance=INT8_TIE)


def test_the_engine_answers_without_torchs_copy_of_the_weights(int8_llm):
    assert int8_llm.engine.name == "onnxruntime" and "int8" in int8_llm.weights
    assert not hasattr(int8_llm.engine, "model")  # no torch copy of the weights
    assert decoder_text(int8_llm, chat_messages(QUESTIONS[0]), 16)


def test_compare_gives_the_answers_ask_gives(settings, tmp_path, demo_adapter):
    """Rows beside each other in Compare (int8: a run each; float: one run) answer as they do alone."""
    from backends.service import Duet
    from backends.core.types import Answer
    from tests.helpers import copy_demo_store

    store = copy_demo_store(tmp_path / "store")
    for accuracy in ("int8", "float"):
        duet = Duet(dataclasses.replace(settings.with_store(store), engine="onnxruntime", onnx_accuracy=accuracy))
        for question in QUESTIONS:
            alone = {name: duet.ask(name, question, demo_adapter).text for name in ("rag", "ft")}
            both = {name: item.text for name, item in duet.stream_both(question, demo_adapter) if isinstance(item, Answer)}
            assert both == alone, (accuracy, question)


def test_one_run_gives_each_row_what_it_gets_alone(float_llm, settings, tiny_adapter):
    """Rows of any length laid end to end, with and without the adapter: each gets its logits alone (float)."""
    from backends.engines.scheduler import encode_chat

    decoder = float_llm.engine
    version = float_llm.host.version(on_model(float_llm, settings, "tiny"))
    tiny = decoder._tensors(version)
    prompts = [encode_chat(float_llm, chat_messages(question)) for question in QUESTIONS[:2]]
    feeds = [[(prompts[0], version), (prompts[1], BASE_MODEL)], [([11], version), ([12, 13, 14], BASE_MODEL)]]

    def logits_of(together: bool) -> list:
        caches, out = [decoder.passes.cache(64), decoder.passes.cache(64)], []
        for fed in feeds:
            rows = [Feed(cache, tokens, adapter) for cache, (tokens, adapter) in zip(caches, fed)]
            out += list(decoder.passes(rows, tiny, {"tiny"})) if together else [
                decoder.passes([row], tiny, {"tiny"})[0] for row in rows]
        return out

    together, alone = logits_of(True), logits_of(False)
    for row in range(4):
        assert (gap := largest_gap(together[row], alone[row])) < SAME_LOGITS, gap
    base = decoder._tensors(BASE_MODEL)
    cache = decoder.passes.cache(64)
    assert largest_gap(decoder.passes([Feed(cache, prompts[1], BASE_MODEL)], base, set())[0], together[1]) < SAME_LOGITS
    cache = decoder.passes.cache(64)
    assert not np.allclose(decoder.passes([Feed(cache, prompts[0], BASE_MODEL)], base, set())[0], together[0], atol=1e-2)


def test_blocks_keep_the_gguf_values_exactly():
    """Q4_1, Q8_0 (the bundled file's) and Q4_0 blocks re-laid for MatMulNBits hold the very values gguf reads."""
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize, quantize

    from backends.models.files import bundled_gguf_path
    from backends.engines.onnx.graph import dense_of, read_blocks

    tensors = {t.name: t for t in GGUFReader(str(bundled_gguf_path())).tensors}
    for name in ("blk.0.ffn_down.weight", "token_embd.weight"):
        tensor = tensors[name]
        assert np.array_equal(dense_of(read_blocks(tensor)), dequantize(tensor.data, tensor.tensor_type)), name
    values = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q4_0 = types.SimpleNamespace(name="q4_0", tensor_type=GGMLQuantizationType.Q4_0,
                                 data=quantize(values, GGMLQuantizationType.Q4_0))
    assert np.array_equal(dense_of(read_blocks(q4_0)), dequantize(q4_0.data, GGMLQuantizationType.Q4_0))


def test_the_graph_is_built_once_rebuilt_when_broken_and_never_left_half_written(settings, tmp_path, monkeypatch):
    from backends.engines.onnx import graph as onnxengine
    from backends.models.files import bundled_gguf_path

    cache = dataclasses.replace(settings, model_cache_dir=tmp_path / "models")
    gguf = bundled_gguf_path()
    folder = onnxengine.prepare_graph(gguf, cache)
    weights = folder / onnxengine.WEIGHTS_FILE
    built = weights.stat().st_mtime_ns
    assert onnxengine.prepare_graph(gguf, cache) == folder and weights.stat().st_mtime_ns == built
    with open(weights, "r+b") as handle:  # a copy cut short
        handle.truncate(1000)
    assert onnxengine.prepare_graph(gguf, cache) == folder and weights.stat().st_size > 1000

    shutil.rmtree(folder)

    def crash(*args, **kwargs):
        raise MemoryError("killed while building")

    monkeypatch.setattr(onnxengine, "build_graph", crash)
    with pytest.raises(MemoryError):
        onnxengine.prepare_graph(gguf, cache)
    assert list((tmp_path / "models").iterdir()) == []  # no folder, no temporary leftovers


def test_auto_picks_onnxruntime_for_a_gguf_it_can_run_and_transformers_otherwise(settings, tmp_path):
    import gguf as gguf_writer

    from backends.engines import resolve_engine
    from backends.models.files import bundled_gguf_path

    auto = dataclasses.replace(settings, engine="auto")
    assert resolve_engine(auto, str(bundled_gguf_path()), "cpu") == "onnxruntime"
    assert resolve_engine(auto, str(bundled_gguf_path()), "cuda") == "transformers"
    assert resolve_engine(auto, None, "cpu") == "transformers"  # a hub id or a folder
    assert resolve_engine(dataclasses.replace(settings, engine="transformers"), str(bundled_gguf_path()), "cpu") == \
        "transformers"
    other = tmp_path / "other.gguf"  # another architecture's GGUF file
    writer = gguf_writer.GGUFWriter(str(other), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert resolve_engine(auto, str(other), "cpu") == "transformers"
    from backends.engines.onnx.graph import prepare_graph

    with pytest.raises(ModelUnavailable, match=r"runs Llama-family GGUF files, not 'gpt2'; use DUET_ENGINE=transformers"):
        prepare_graph(other, settings)
    done = run_cli("ask", "What is a travel policy?", "--backend", "ft", settings=settings,
                   env={"DUET_ENGINE": "onnxruntime", "DUET_LLM": str(tmp_path)})  # a folder, not a .gguf file
    assert done.returncode == 2 and "runs .gguf files only" in done.stderr and "Traceback" not in done.stderr


def test_an_adapter_replaced_under_its_name_answers_with_its_new_weights(int8_llm, settings, tiny_adapter):
    registered = settings.adapters_dir / "replaced-ort"
    shutil.copytree(DEMO, registered)
    try:
        messages = chat_messages(QUESTIONS[0])
        before = decoder_text(int8_llm, messages, 24, on_model(int8_llm, settings, "replaced-ort"))
        shutil.rmtree(registered)
        shutil.copytree(tiny_adapter["path"], registered)  # same name and folder, other weights
        after = decoder_text(int8_llm, messages, 24, on_model(int8_llm, settings, "replaced-ort"))
        assert after == decoder_text(int8_llm, messages, 24, on_model(int8_llm, settings, "tiny")) != before
    finally:
        shutil.rmtree(registered)


def test_the_cli_answers_on_the_default_engine(settings, tmp_path, demo_adapter):
    from tests.helpers import copy_demo_store

    store = copy_demo_store(tmp_path / "store")
    done = run_cli("ask", QUESTIONS[1], "--backend", "both", "--adapter", demo_adapter, "--json", "--store", str(store),
                   settings=settings)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)
    assert all(answer["model"].endswith("via onnxruntime") and answer["text"] for answer in answers.values())


def test_an_adapter_the_engine_cannot_apply_fails_its_answer_alone(duet, settings, int8_llm):
    """A LoRA on the output layer: that answer says what to do; the RAG answer beside it goes on as alone."""
    error = failure_beside_rag(duet, int8_llm, settings, "odd-layers-ort", ModelUnavailable)
    assert "not on a projection this engine adapts; use DUET_ENGINE=transformers" in error


def test_an_int8_row_gets_the_same_logits_alone_and_among_other_rows(int8_llm):
    from backends.engines.scheduler import encode_chat

    engine = int8_llm.engine
    prompts = [encode_chat(int8_llm, chat_messages(q)) for q in QUESTIONS + ["Who founded Brackwater Instruments?",
                                                                             "Where is the head office?"]]
    crowd = engine.forward([Feed(engine.cache(256, BASE_MODEL), p, BASE_MODEL) for p in prompts])
    for prompt, together in zip(prompts, crowd):
        alone = engine.forward([Feed(engine.cache(256, BASE_MODEL), prompt, BASE_MODEL)])[0]
        assert np.array_equal(alone, together), "the rows beside it changed its logits"


def test_the_same_question_gets_the_same_answer_alone_and_with_seven_others_in_flight(duet, settings, tiny_adapter):
    """The default engine (onnxruntime, int8): eight concurrent asks, each equal to the same ask alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from backends.service import Duet
    from tests.helpers import PER_DIEM

    default = Duet(dataclasses.replace(settings, engine="onnxruntime", onnx_accuracy="int8"))
    try:
        requests = [(backend, question, "tiny") for question in QUESTIONS + [PER_DIEM] for backend in ("rag", "ft")]
        alone = [default.ask(*request).text for request in requests]
        release = threading.Barrier(len(requests))

        def together(request):
            release.wait()
            return default.ask(*request).text

        with ThreadPoolExecutor(len(requests)) as pool:
            assert list(pool.map(together, requests)) == alone
    finally:
        default.index.close()
