"""The batched decoder against the plain transformers path: same greedy tokens, one batch for Compare."""

from __future__ import annotations

import pytest

from backends.answering.prompts import build_messages
from backends.core.config import DATA_DIR
from backends.core.errors import ModelUnavailable
from backends.core.types import Answer
from backends.engines.base import BASE_MODEL
from backends.engines.scheduler import Decoder, encode_chat, stream_chat, system_prefix_length
from backends.learning.examples import chat_messages
from tests.helpers import LONG_FREE_ROW, QUESTIONS, assert_decided_alike, decoder_text, rag_prompt


@pytest.mark.parametrize("question", QUESTIONS)
def test_fine_tuned_greedy_output_follows_generate(duet, tiny_adapter, question):
    duet.ft.use("tiny")
    assert_decided_alike(duet.llm, duet.llm, chat_messages(question), 40, "tiny")


@pytest.mark.parametrize("question", QUESTIONS[:2])
def test_rag_greedy_output_follows_generate(duet, question):
    messages, copy_from = rag_prompt(duet, question)
    assert_decided_alike(duet.llm, duet.llm, messages, 40, copy_from=copy_from)
    assert_decided_alike(duet.llm, duet.llm, messages, 24)


def test_copied_spans_go_through_the_model_as_chunks(duet):
    """Forced tokens are not decoded one by one, and the system message's KV is reused (answers equal generate's, above)."""
    from backends.engines.torch_passes import base_causal_lm

    passes = []  # tokens per pass: every decoding path embeds the tokens it feeds
    embed = base_causal_lm(duet.llm.engine.model).model.embed_tokens
    hook = embed.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape[-1]))
    try:
        duet.ask("rag", QUESTIONS[0])  # its system message is now cached
        passes.clear()
        answer = duet.ask("rag", QUESTIONS[1])
    finally:
        hook.remove()
    prompt, *chunks = passes
    assert 0 < prompt < answer.tokens_in - 50  # the question's part only
    assert answer.tokens_out >= 10 and len(passes) <= answer.tokens_out // 3
    assert sum(chunks) < answer.tokens_out  # each token fed at most once; the last one needs no pass


@pytest.mark.parametrize("lean_step", [True, False], ids=["lean step", "plain step"])
def test_both_columns_answer_side_by_side_as_alone(duet, tiny_adapter, monkeypatch, lean_step):
    from backends.engines.torch_passes import LlamaPass

    if not lean_step:  # the path of architectures LlamaPass does not know: model(...) per row
        monkeypatch.setattr(LlamaPass, "supports", staticmethod(lambda model: False))
    question = QUESTIONS[1]
    alone = {name: duet.ask(name, question, "tiny").text for name in ("rag", "ft")}
    finals = {name: item for name, item in duet.stream_both(question, "tiny") if isinstance(item, Answer)}
    assert {name: answer.text for name, answer in finals.items()} == alone


def side_by_side(duet, late: dict) -> dict:
    """A long free row, and once its first words are out (it is running) the `late` request, as RAG's after retrieval.

    Returns each row's text (or the exception it raised).
    """
    import threading

    texts, running = {}, threading.Event()

    def late_row():
        running.wait(120)
        try:
            texts["rag"] = decoder_text(duet.llm, **late)
        except Exception as error:  # the test looks at it
            texts["rag"] = error

    worker = threading.Thread(target=late_row)
    worker.start()
    for item in stream_chat(duet.llm, LONG_FREE_ROW["messages"], LONG_FREE_ROW["max_new_tokens"]):
        running.set()
        if not isinstance(item, str):
            texts["free"] = item.text
    worker.join(120)
    return texts


@pytest.mark.parametrize("copied", [True, False], ids=["copied row", "free row (no evidence to copy)"])
def test_rags_row_joins_the_running_batch_and_rides_on_its_passes(duet, monkeypatch, copied):
    """RAG's row in Compare: joins the free row's running passes (no pass of its own), same text as alone."""
    messages, copy_from = rag_prompt(duet, QUESTIONS[1])
    late = dict(messages=messages, max_new_tokens=40 if copied else 8, copy_from=copy_from if copied else None)
    passes, forward = [], Decoder._forward
    monkeypatch.setattr(Decoder, "_forward", lambda self, rows: passes.append(len(rows)) or forward(self, rows))
    alone = decoder_text(duet.llm, **late)
    free_alone = decoder_text(duet.llm, **LONG_FREE_ROW)
    decoder, passes[:] = duet.llm.decoder, []
    free_passes_alone = (decoder_text(duet.llm, **LONG_FREE_ROW), len(passes))[1]
    before, passes[:] = decoder.batches, []
    texts = side_by_side(duet, late)
    assert decoder.batches == before + 1  # RAG's row joined the batch already running
    assert texts == {"rag": alone, "free": free_alone}
    assert len(passes) == free_passes_alone and 2 in passes  # RAG's prompt and chunks took no pass of their own


def test_a_row_that_fails_fails_alone(duet):
    """A copied row that cannot run (its adapter is not loaded) fails; the free row in its batch answers as alone."""
    messages, copy_from = rag_prompt(duet, QUESTIONS[1])
    alone = decoder_text(duet.llm, **LONG_FREE_ROW)
    texts = side_by_side(duet, dict(messages=messages, max_new_tokens=40, adapter="not-loaded", copy_from=copy_from))
    assert isinstance(texts["rag"], ModelUnavailable) and "not loaded" in str(texts["rag"])
    assert texts["free"] == alone


def test_one_pass_gives_each_row_what_it_gets_alone(duet, tiny_adapter):
    """Rows of any length, on caches of any length, with and without an adapter, laid end to end in one pass."""
    import torch

    from backends.engines.base import Feed
    from backends.engines.torch_passes import LlamaPass, ModelPass

    duet.ft.use("tiny")
    route, tiny = duet.llm.engine.route, duet.llm.host.version("tiny")
    prompts = [encode_chat(duet.llm, chat_messages(question)) for question in QUESTIONS[:2]]
    feeds = [[(prompts[0], tiny), (prompts[1], BASE_MODEL)], [([11], tiny), ([12, 13, 14], BASE_MODEL)]]  # prompts, more

    def logits_of(passes, together: bool) -> list[torch.Tensor]:
        caches, out = [passes.cache(64), passes.cache(64)], []
        for fed in feeds:
            rows = [Feed(cache, tokens, adapter) for cache, (tokens, adapter) in zip(caches, fed)]
            out += [passes(rows, route)] if together else [passes([row], route) for row in rows]
        return list(torch.cat(out))

    with duet.llm.lock, torch.inference_mode():
        model = duet.llm.engine.model
        together, alone, plain = logits_of(LlamaPass(model), True), logits_of(LlamaPass(model), False), \
            logits_of(ModelPass(model), False)
    for row in range(4):
        assert torch.allclose(together[row], alone[row], atol=1e-4)
        assert torch.allclose(together[row], plain[row], atol=1e-3)  # model(...) with peft's own LoRA
    assert not torch.allclose(together[0], together[1], atol=1e-1)  # the rows did not see each other's tokens


@pytest.mark.parametrize("sliding", [False, True], ids=["full attention", "sliding window"])
def test_a_qwen2_model_takes_the_shared_pass_unless_its_attention_slides(sliding):
    """A user's Qwen2 model (biased projections): one pass of ragged rows gives model(...)'s logits, row by row."""
    import contextlib

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from backends.engines.base import Feed
    from backends.engines.torch_passes import LlamaPass, ModelPass, passes_for

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=sliding, sliding_window=8,
                         max_window_layers=0, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).eval()
    assert isinstance(passes_for(model), ModelPass if sliding else LlamaPass)
    if sliding:
        return
    route = lambda adapters: contextlib.nullcontext()
    rows = [[5, 9, 14, 3, 7], [8, 2], [11, 4, 6]]
    with torch.inference_mode():
        lean, plain = LlamaPass(model), ModelPass(model)
        caches = [lean.cache(16) for _ in rows], [plain.cache(16) for _ in rows]
        for fed in (rows, [[1], [2, 3], [4]]):  # prompts, then more tokens on their caches
            together = lean([Feed(cache, tokens, BASE_MODEL) for cache, tokens in zip(caches[0], fed)], route)
            one_by_one = plain([Feed(cache, tokens, BASE_MODEL) for cache, tokens in zip(caches[1], fed)], route)
            assert torch.allclose(together, one_by_one, atol=1e-5)


def test_the_system_prefix_is_found_and_a_refusing_template_only_turns_reuse_off(duet):
    import copy
    import types

    messages = build_messages("What is the per diem?", [])
    ids = encode_chat(duet.llm, messages)
    n = system_prefix_length(duet.llm, messages, ids)
    assert 0 < n < len(ids) and "per diem" not in duet.llm.tokenizer.decode(ids[:n])
    tokenizer = copy.deepcopy(duet.llm.tokenizer)  # a template that wants user and assistant turns
    tokenizer.chat_template = ("{% if messages|length < 2 %}{{ raise_exception('roles must alternate') }}{% endif %}"
                               + tokenizer.chat_template)
    assert system_prefix_length(types.SimpleNamespace(tokenizer=tokenizer), messages, ids) == 0


def test_an_abandoned_stream_frees_the_decoder(duet):
    stream = stream_chat(duet.llm, chat_messages("Describe the company in detail."), 64)
    next(stream)
    stream.close()  # the reader went away after the first piece
    *_, stats = stream_chat(duet.llm, chat_messages("What is RAG?"), 8)
    assert stats.tokens_out <= 8 and stats.text


def test_the_bundled_model_decodes_with_the_lean_step(duet, tiny_adapter):
    # The greedy-equality tests above then cover LlamaPass, with and without the peft wrapper.
    from backends.engines.torch_passes import LlamaPass, passes_for

    duet.ft.use("tiny")
    assert isinstance(passes_for(duet.llm.engine.model), LlamaPass)


def test_the_plain_step_follows_generate_too(duet, monkeypatch):
    # Architectures LlamaPass does not know decode through model(...), with its own kernels.
    from backends.engines.torch_passes import LlamaPass

    monkeypatch.setattr(LlamaPass, "supports", staticmethod(lambda model: False))
    assert_decided_alike(duet.llm, duet.llm, chat_messages(QUESTIONS[0]), 24)


def test_models_compute_only_in_the_decoder_or_passing_threads(duet):
    """A caller's thread never computes with torch (its OpenMP pool would slow the decoder: core/threads.py)."""
    import threading

    from backends.engines.torch_passes import base_causal_lm

    seen = []
    record = lambda module, args: seen.append((type(module).__name__, threading.current_thread().name))
    hooks = [base_causal_lm(duet.llm.engine.model).model.embed_tokens.register_forward_pre_hook(record),  # every pass embeds
             duet.index.embeddings.inner.model.register_forward_pre_hook(record)]
    try:
        answer = duet.ask("rag", QUESTIONS[1])
    finally:
        for hook in hooks:
            hook.remove()
    assert answer.text
    threads = {thread for _, thread in seen}
    assert threading.current_thread().name not in threads
    assert {name for name, _ in seen} >= {"BertModel", "Embedding"}
    assert threads <= {"duet-decoder", "duet-embed_batch"}


def test_an_adapter_replaced_under_its_name_answers_with_its_new_weights(duet, settings, tiny_adapter):
    """Fine-tune's "Replace": peft's layers and the cached keys and values of the system message follow the new weights."""
    import shutil

    def answer(name: str) -> str:
        duet.ft.use(name)  # as every fine-tuned answer does
        return decoder_text(duet.llm, chat_messages(QUESTIONS[0]), 24, name)

    registered = settings.adapters_dir / "replaced"
    shutil.copytree(DATA_DIR / "adapters" / "demo", registered)
    try:
        before = answer("replaced")
        assert answer("replaced") == before  # the second time its system message came from the cache
        shutil.rmtree(registered)
        shutil.copytree(tiny_adapter["path"], registered)  # same name and folder, other weights
        assert answer("replaced") == answer("tiny") != before
    finally:
        shutil.rmtree(registered, ignore_errors=True)
