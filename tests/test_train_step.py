"""The faster training step computes the loss peft and transformers compute, on the bundled model."""

import dataclasses
import threading

import pytest
import torch

from backends.core.config import DATA_DIR
from backends.core.jobs import Cancelled
from backends.core.threads import run_concurrently
from backends.core.types import Source
from backends.learning import train_step
from backends.learning.examples import TrainExample, read_training_file, tokenize_example
from backends.learning.training import TrainConfig, _trainable_model


@pytest.fixture(scope="module")
def trainable(settings):
    model, tokenizer, _, _ = _trainable_model(settings, TrainConfig(precision="fp32"))
    # Non-zero LoRA B so the adapter path changes the logits and a wrong prefix cache would show.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    model.train()
    items = read_training_file(DATA_DIR / "qa" / "train.jsonl")[:6]
    return model, tokenizer, [tokenize_example(tokenizer, item, 128) for item in items]


def test_the_shared_prefix_and_answer_only_head_give_the_standard_loss_and_gradients(trainable):
    model, tokenizer, batch = trainable
    ids, labels, mask = train_step.collate(batch, tokenizer.pad_token_id)
    assert train_step.shared_prefix(ids, labels, mask) >= train_step.MIN_SHARED_PREFIX  # the system prompt
    lora = [p for n, p in model.named_parameters() if "lora_A" in n][:3]

    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected = torch.autograd.grad(reference, lora)
    loss, tokens = train_step.batch_loss(model, batch, tokenizer.pad_token_id, "fp32", torch.device("cpu"))
    got = torch.autograd.grad(loss, lora)
    assert tokens == int(mask.sum())
    assert loss.item() == pytest.approx(reference.item(), rel=1e-4)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_bf16_products_stay_close_to_fp32(trainable):
    model, tokenizer, batch = trainable
    fp32, _ = train_step.batch_loss(model, batch, tokenizer.pad_token_id, "fp32", torch.device("cpu"))
    bf16, _ = train_step.batch_loss(model, batch, tokenizer.pad_token_id, "bf16", torch.device("cpu"))
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.03)


def test_no_shared_prefix_for_text_rows_whose_first_tokens_carry_the_loss(trainable):
    _, tokenizer, _ = trainable
    rows = [tokenize_example(tokenizer, TrainExample(text=t), 64) for t in ("The same start, then one end.",
                                                                           "The same start, then another.")]
    ids, labels, mask = train_step.collate(rows, tokenizer.pad_token_id)
    assert train_step.shared_prefix(ids, labels, mask) == 0


@pytest.mark.fast
def test_fast_dropout_drops_the_share_asked_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = train_step.FastDropout(0.05).train()
    x = torch.ones(1000, 1000)
    y = drop(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.05, abs=0.002)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(drop.eval()(x), x)


def test_a_long_raft_row_loses_sources_from_its_middle_not_its_answer(trainable):
    _, tokenizer, _ = trainable
    sources = [Source(f"c{i}", f"d{i}", f"doc{i}.md", "", "filler text " * 60, 0.5) for i in range(4)]
    example = TrainExample(question="What is the limit?", answer="The limit is 42 euros.", context=tuple(sources))
    ids, labels = tokenize_example(tokenizer, example, 128)
    assert len(ids) <= 128
    answer = tokenizer.decode([t for t in labels if t != -100])
    assert "The limit is 42 euros." in answer
    assert "What is the limit?" in tokenizer.decode(ids)


@pytest.mark.fast
def test_run_concurrently_keeps_order_reports_each_and_stops_on_cancel():
    release = threading.Event()
    seen = []
    results = run_concurrently([lambda n=n: n * n for n in range(10)], 3, lambda n, r: seen.append(n))
    assert results == [n * n for n in range(10)] and sorted(seen) == list(range(10))

    cancel, started = threading.Event(), []

    def slow(n):
        started.append(n)
        if n:
            release.wait(5)
        return n

    def stop(n, result):
        cancel.set()
        release.set()

    with pytest.raises(Cancelled):
        run_concurrently([lambda n=n: slow(n) for n in range(20)], 2, stop, cancel)
    assert len(started) < 20  # nothing new started after the cancel


@pytest.mark.fast
def test_precision_auto_is_fp32_or_native_bf16():
    config = TrainConfig()
    assert dataclasses.asdict(config)["precision"] == "auto"
    assert train_step.precision_for("auto", torch.device("cpu")) in ("fp32", "bf16")
    assert train_step.precision_for("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.fast
def test_int8_rows_run_apart_however_many_wait_and_float_rows_share():
    """An int8 row beside others gets other last bits (and at near-ties another answer): each int8 row keeps a run of
    its own, however crowded the server; float rows share a run per adapter."""
    import types

    from backends.engines.base import BASE_MODEL, AdapterVersion, Feed
    from backends.engines.onnx.runtime import OrtEngine

    engine = object.__new__(OrtEngine)
    engine.passes = types.SimpleNamespace(shares_rows=False)
    tuned = AdapterVersion("tuned", "v1")
    feeds = list(enumerate([Feed(None, [1], BASE_MODEL), Feed(None, [1], tuned), Feed(None, [1], tuned),
                            Feed(None, [1], BASE_MODEL), Feed(None, [1], tuned)]))
    assert engine._runs(feeds) == [(f.version, [i]) for i, f in feeds], "eight users or one: int8 rows run apart"
    engine.passes.shares_rows = True  # float: every row shares
    assert engine._runs(feeds[:3]) == [(tuned, [1, 2, 0])]
    prompts = list(enumerate([Feed(None, [1] * 200, tuned), Feed(None, [1] * 200, tuned),
                              Feed(None, [1], tuned), Feed(None, [1] * 300, BASE_MODEL)]))
    assert engine._runs(prompts) == [(tuned, [0]), (tuned, [1, 2]), (tuned, [3])], "long prefills do not pile up in one run"
