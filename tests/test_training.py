"""LoRA training: validation before training, real loss decrease, atomic save, refusals."""

import json
import os

import pytest

from backends.core.errors import BadInput
from backends.learning.adapters import AdapterRegistry
from backends.learning.examples import read_qa_bytes
from backends.learning.training import TrainConfig, TrainingJob, save_adapter_atomically, train_adapter
from tests.helpers import copy_adapter


def test_tiny_training_writes_a_loadable_adapter_whose_loss_went_down(tiny_adapter, settings):
    losses = tiny_adapter["losses"]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    info = AdapterRegistry(settings).get("tiny")
    meta = info.metadata
    assert meta["dataset"]["examples"] == 8 and len(meta["dataset"]["sha256"]) == 64
    assert meta["hyperparameters"]["rank"] == 4
    assert [h["loss"] for h in meta["loss_history"]] == losses
    assert meta["base_model"]["sha256"] and meta["index_snapshot"]
    assert set(os.listdir(info.path)) == {"adapter_config.json", "adapter_model.safetensors", "metadata.json",
                                          "training_data.jsonl"}
    assert (info.path / "training_data.jsonl").read_bytes() == tiny_adapter["data"].read_bytes()


@pytest.mark.parametrize("lines,message", [
    (['{"question": "q", "answer": "a"}', '{"question": "q2"'], "line 2: not valid JSON"),
    (['{"question": "q", "answer": "a"}', '', '{"question": "q3", "answer": 5}'], 'line 3: "answer" must be a non-empty string'),
    (['["q", "a"]'], "line 1: expected an object"),
    (['{"question": " ", "answer": "a"}'], 'line 1: "question" must be a non-empty string'),
    ([''], "holds no question/answer pairs"),
])
def test_malformed_jsonl_is_rejected_with_its_line_number(lines, message):
    with pytest.raises(BadInput, match=message):
        read_qa_bytes("\n".join(lines).encode(), "data.jsonl")


def test_bad_dataset_is_rejected_before_any_training(tmp_path, settings):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\nnot json\n')
    with pytest.raises(BadInput, match="line 2"):
        train_adapter(settings, bad, "never")
    assert not (settings.adapters_dir / "never").exists()


def test_crash_during_save_leaves_the_registry_unchanged(tiny_adapter, settings, monkeypatch):
    from peft import PeftModel

    registry = AdapterRegistry(settings)
    before = sorted(os.listdir(settings.adapters_dir))

    def crash(*args, **kwargs):
        raise OSError("power cut while writing the weights (simulated)")

    monkeypatch.setattr(PeftModel, "save_pretrained", crash)
    model = object.__new__(PeftModel)
    with pytest.raises(OSError):
        save_adapter_atomically(model, {"name": "x"}, settings.adapters_dir / "crashed")
    assert sorted(os.listdir(settings.adapters_dir)) == before
    assert "crashed" not in registry.names()


def test_existing_name_is_not_overwritten_by_accident(tiny_adapter, settings):
    with pytest.raises(BadInput, match="already exists"):
        train_adapter(settings, tiny_adapter["data"], "tiny", TrainConfig(max_steps=1))


def test_adapter_for_another_base_model_is_refused(tiny_adapter, settings):
    def other_base(meta):
        meta["base_model"] = {"id": "HuggingFaceTB/SmolLM2-360M-Instruct", "sha256": ""}

    copy_adapter(tiny_adapter["path"], settings.adapters_dir / "otherbase", other_base)
    with pytest.raises(BadInput, match="trained on base model 'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        AdapterRegistry(settings).get("otherbase")


def test_pickle_adapter_is_refused(tiny_adapter, settings):
    folder = copy_adapter(tiny_adapter["path"], settings.adapters_dir / "pickled")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BadInput, match="pickle"):
        AdapterRegistry(settings).get("pickled")
    assert "pickled" not in [a.name for a in AdapterRegistry(settings).list()]


def test_bad_adapter_names_are_refused(settings):
    for name in ("../evil", "Has Space", "", "x" * 65):
        with pytest.raises(BadInput, match="adapter name"):
            AdapterRegistry(settings).path_for_new(name)


def test_interrupted_replacement_is_restored(tiny_adapter, settings):
    folder = copy_adapter(tiny_adapter["path"], settings.adapters_dir / "swap")
    os.replace(folder, settings.adapters_dir / ".replaced-swap")  # died between the two renames
    assert "swap" in AdapterRegistry(settings).names()
    assert json.loads((settings.adapters_dir / "swap" / "metadata.json").read_text())["name"] == "tiny"


def test_background_job_reports_progress_and_a_cancel_leaves_the_registry_unchanged(settings, tiny_adapter):
    config = TrainConfig(rank=2, alpha=4, epochs=1, batch_size=4, max_length=64, max_steps=2)
    job = TrainingJob(settings, tiny_adapter["data"], "job-done", config).start()
    job.wait(300)
    assert job.state == "done" and [p.step for p in job.progress] == [1, 2] and job.path.is_dir()
    assert job.progress[-1].total_steps == 2 and job.progress[-1].eta_s == 0
    before = AdapterRegistry(settings).names()
    cancelled = TrainingJob(settings, tiny_adapter["data"], "job-cancelled", config)
    cancelled.cancel()
    cancelled.start().wait(300)
    assert cancelled.state == "cancelled" and "unchanged" in cancelled.error
    assert AdapterRegistry(settings).names() == before
