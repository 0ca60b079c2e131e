"""Datasets for other trainers: Alpaca and ShareGPT/OpenAI chat JSONL with the field names those tools read."""

import json

import pytest

from backends.core.errors import BadInput
from backends.learning.examples import FT_SYSTEM_PROMPT, RAG_SYSTEM_PROMPT
from backends.learning.exports import export_dataset

pytestmark = pytest.mark.fast

QA = {"question": "What is the per diem?", "answer": "55 euros.", "source": "travel_policy.pdf", "doc_id": "travel-policy-pdf",
      "chunk_id": "c1", "evidence": {"start": 0, "end": 9, "text": "55 euros"}}
RAFT = {"question": "What is the hotel limit?", "answer": 'Quote: "160 euros a night" Answer: 160 euros.',
        "context": [{"file_name": "travel_policy.pdf", "location": "page 2", "text": "Hotels: up to 160 euros a night."}],
        "gold_in_context": True, "chunk_id": "c2"}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_alpaca_and_sharegpt_rows_carry_duets_prompts_and_the_provenance_line_for_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(QA) + "\n" + json.dumps(RAFT) + "\n")
    written = {p.name for p in export_dataset(tmp_path)}
    assert written == {"alpaca.jsonl", "sharegpt.jsonl", "provenance.jsonl", "dataset_info.json"}
    alpaca = lines(tmp_path / "alpaca.jsonl")
    assert set(alpaca[0]) >= {"instruction", "input", "output"} and alpaca[0]["output"] == "55 euros."
    assert alpaca[0]["instruction"] == QA["question"] and alpaca[0]["system"] == FT_SYSTEM_PROMPT
    assert "[1] (travel_policy.pdf, page 2)" in alpaca[1]["instruction"] and alpaca[1]["system"] == RAG_SYSTEM_PROMPT
    chats = lines(tmp_path / "sharegpt.jsonl")
    assert [m["role"] for m in chats[0]["messages"]] == ["system", "user", "assistant"]
    assert chats[1]["messages"][-1]["content"] == RAFT["answer"]
    provenance = lines(tmp_path / "provenance.jsonl")
    assert provenance[0]["chunk_id"] == "c1" and provenance[0]["evidence"]["text"] == "55 euros"
    assert provenance[1] == {"chunk_id": "c2", "gold_in_context": True}
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    entry = info[f"{tmp_path.name}_sharegpt"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages"}
    assert entry["tags"]["role_tag"] == "role" and info[f"{tmp_path.name}_alpaca"]["columns"]["prompt"] == "instruction"


def test_text_rows_and_unknown_formats_are_refused_and_write_nothing(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "A chunk of a document."}) + "\n")
    with pytest.raises(BadInput, match="continued-pretraining"):
        export_dataset(tmp_path)
    with pytest.raises(BadInput, match="unknown export format"):
        export_dataset(tmp_path, ("csv",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]
