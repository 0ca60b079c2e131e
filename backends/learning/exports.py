"""Training data for other trainers: a built dataset as Alpaca and ShareGPT (OpenAI chat) JSONL.

LLaMA-Factory, Unsloth and axolotl read these; the rows carry exactly the prompts Duet trains with (system message,
RAFT's numbered sources), and `provenance.jsonl` keeps, line for line, where each row came from. LLaMA-Factory's
`dataset_info.json` entries for both files are written beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from backends.core.errors import BadInput
from backends.learning.examples import chat_messages, read_training_file, rag_messages

EXPORTS = ("alpaca", "sharegpt")
ALPACA, SHAREGPT, PROVENANCE, INFO = "alpaca.jsonl", "sharegpt.jsonl", "provenance.jsonl", "dataset_info.json"
KEPT = ("source", "doc_id", "chunk_id", "evidence", "gold_in_context")  # a row's provenance fields


def conversation(example) -> list[dict]:
    """The chat a row trains: the fine-tuned conversation, or RAG's with the row's sources (RAFT)."""
    if example.context is not None:
        return rag_messages(example.question, list(example.context), example.answer)
    return chat_messages(example.question, example.answer)


def alpaca_row(messages: list[dict]) -> dict:
    system, user, assistant = (m["content"] for m in messages)
    return {"instruction": user, "input": "", "output": assistant, "system": system}


def export_dataset(folder: str | Path, formats: tuple[str, ...] = EXPORTS) -> list[Path]:
    """Write the formats beside the dataset's train.jsonl, all or nothing; returns the files written."""
    folder = Path(folder)
    unknown = [f for f in formats if f not in EXPORTS]
    if unknown:
        raise BadInput(f"unknown export format {', '.join(unknown)}: choose from {', '.join(EXPORTS)}")
    examples = read_training_file(folder / "train.jsonl")
    if any(e.text for e in examples):
        raise BadInput("continued-pretraining rows have no question and answer: export a qa or raft dataset")
    raw = [json.loads(line) for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    chats = [conversation(e) for e in examples]
    files = {PROVENANCE: [{k: row[k] for k in KEPT if k in row} for row in raw]}
    info = {}
    if "alpaca" in formats:
        files[ALPACA] = [alpaca_row(m) for m in chats]
        info[f"{folder.name}_alpaca"] = {"file_name": ALPACA, "columns": {
            "prompt": "instruction", "query": "input", "response": "output", "system": "system"}}
    if "sharegpt" in formats:
        files[SHAREGPT] = [{"messages": m} for m in chats]
        info[f"{folder.name}_sharegpt"] = {"file_name": SHAREGPT, "formatting": "sharegpt",
                                           "columns": {"messages": "messages"},
                                           "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                                    "assistant_tag": "assistant", "system_tag": "system"}}
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        for name, rows in files.items():
            (work / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        (work / INFO).write_text(json.dumps(info, indent=2))
        written = [*files, INFO]
        for name in written:
            os.replace(work / name, folder / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [folder / name for name in written]
