"""The fine-tuned backend: shared weights, correct adapter per request, staleness."""

import threading

import pytest

from backends.answering.finetuned import FineTunedBackend
from backends.core.errors import BadInput
from backends.core.types import Answer, final_answer
from backends.engines import _load_llm_uncached
from backends.learning.adapters import staleness


QUESTION = "What is the per diem for a full day of business travel?"


def test_ft_answer_has_the_shared_type_and_no_sources(duet, tiny_adapter):
    pieces, answer = [], None
    for item in duet.stream("ft", QUESTION, adapter="tiny"):
        if isinstance(item, Answer):
            answer = item
        else:
            pieces.append(item)
    assert answer.backend == "ft" and answer.adapter == "tiny" and answer.sources == ()
    assert answer.text == "".join(pieces).strip() and answer.tokens_out > 0
    t = answer.timings
    assert t.embed == 0 and t.retrieve == 0 and t.prompt <= t.first_token <= t.total
    assert t.generate == pytest.approx(t.total - t.first_token)


def test_one_copy_of_base_weights_serves_both_backends(duet, tiny_adapter):
    final_answer(duet.stream("ft", QUESTION, adapter="tiny"))
    base = duet.llm.engine.model.get_base_model()
    assert duet.rag.llm is duet.ft.llm
    assert sum(1 for name, _ in base.named_parameters() if name.endswith("q_proj.base_layer.weight")) == base.config.num_hidden_layers


def test_concurrent_answers_equal_sequential_ones(duet, tiny_adapter):
    questions = [QUESTION, "Who is the Bosun?"]
    sequential = {(b, q): final_answer(duet.stream(b, q, "tiny")).text for b in ("rag", "ft") for q in questions}
    results, errors = {}, []

    def ask(backend, question):
        try:
            results[(backend, question)] = final_answer(duet.stream(backend, question, "tiny")).text
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=ask, args=key) for key in sequential]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == sequential


def test_save_load_round_trip_gives_identical_greedy_output(settings, duet, tiny_adapter):
    """Greedy output from a freshly loaded copy with the saved adapter equals the served one."""
    served = final_answer(duet.stream("ft", QUESTION, adapter="tiny")).text
    fresh_llm = _load_llm_uncached(settings, lambda message: None)
    fresh = FineTunedBackend(fresh_llm, duet.registry, settings)
    assert served and final_answer(fresh.stream(QUESTION, adapter="tiny")).text == served


@pytest.mark.fast
def test_staleness_reports_added_changed_and_deleted():
    then = {"a": "1", "b": "2", "c": "3"}
    now = {"a": "1", "b": "9", "d": "4"}
    report = staleness(then, now)
    assert (report.added, report.changed, report.deleted) == (("d",), ("b",), ("c",))
    assert report.is_stale and report.describe().startswith("1 document added, 1 document changed")
    assert staleness({}, {"a": "1", "b": "2"}).describe().startswith("2 documents added since")
    assert not staleness(now, now).is_stale


def test_backend_staleness_follows_the_index(duet, tiny_adapter):
    assert not duet.ft.staleness("tiny").is_stale
    duet.index.ingest_bytes("late_memo.txt", b"A memo written after training.")
    try:
        assert duet.ft.staleness("tiny").added == ("late-memo-txt",)
    finally:
        duet.index.delete("late-memo-txt")


def foreign_copy(adapter_path, folder):
    """The two files a peft trainer elsewhere (LLaMA-Factory, Unsloth) leaves: no Duet metadata."""
    import shutil

    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(adapter_path / name, folder / name)
    return folder


def test_an_adapter_trained_elsewhere_imports_and_answers_as_the_same_adapter_trained_here(settings, duet, tiny_adapter,
                                                                                           tmp_path):
    from backends.learning.adapters import AdapterRegistry, import_adapter
    from backends.learning.examples import chat_messages
    from tests.helpers import QUESTIONS, decoder_text, on_model

    registry = AdapterRegistry(settings)
    path = import_adapter(registry, foreign_copy(tiny_adapter["path"], tmp_path / "elsewhere"), "imported-tiny",
                          duet.llm.config)
    try:
        assert registry.get("imported-tiny").metadata["imported_from"].endswith("elsewhere") and path.is_dir()
        for question in QUESTIONS[:2]:
            messages = chat_messages(question)
            trained = decoder_text(duet.llm, messages, 24, on_model(duet.llm, settings, "tiny"))
            assert decoder_text(duet.llm, messages, 24, on_model(duet.llm, settings, "imported-tiny")) == trained
    finally:
        registry.delete("imported-tiny")


def test_a_bad_import_is_refused_with_its_reason_and_writes_nothing(settings, duet, tiny_adapter, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from backends.learning.adapters import AdapterRegistry, import_adapter

    registry = AdapterRegistry(settings)
    pickled = foreign_copy(tiny_adapter["path"], tmp_path / "pickled")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    missing = foreign_copy(tiny_adapter["path"], tmp_path / "missing")
    (missing / "adapter_config.json").unlink()
    other = foreign_copy(tiny_adapter["path"], tmp_path / "other-base")  # a LoRA for a 2048-wide model
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 2048), np.float32)},
              str(other / "adapter_model.safetensors"))
    before = sorted(p.name for p in registry.root.iterdir())
    for folder, reason in ((pickled, "pickled weights"), (missing, "adapter_config.json is missing"),
                           (other, "trained for another base model")):
        with pytest.raises(BadInput, match=reason):
            import_adapter(registry, folder, "refused", duet.llm.config)
    assert sorted(p.name for p in registry.root.iterdir()) == before, "nothing written, not even a temporary folder"
    from tests.helpers import run_cli

    done = run_cli("adapter", "import", str(other), "--name", "refused", "--store", str(tmp_path / "store"),
                   settings=settings)
    assert done.returncode == 2 and "trained for another base model" in done.stderr, done.stderr
    assert sorted(p.name for p in registry.root.iterdir()) == before
