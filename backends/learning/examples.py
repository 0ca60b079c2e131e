"""Question/answer examples: JSONL validation, the fine-tuned conversation, tokenization, uploaded datasets.

A dataset is JSONL of {"question", "answer"} (optional "source"). Every line is checked
before it is used; BadInput names the first bad line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from backends.core.config import Settings
from backends.core.errors import BadInput
from backends.core.types import QAItem

FT_SYSTEM_PROMPT = "You answer questions about the organisation's documents in one short sentence."
MAX_FIELD_CHARS = 4000


def parse_qa_lines(lines: list[str], label: str) -> list[QAItem]:
    """Validate QA JSONL lines; BadInput names the line and what is wrong with it."""
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise BadInput(f"{label} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise BadInput(f"{label} line {number}: expected an object like {{\"question\": ..., \"answer\": ...}}")
        for name in ("question", "answer"):
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise BadInput(f"{label} line {number}: \"{name}\" must be a non-empty string")
            if len(value) > MAX_FIELD_CHARS:
                raise BadInput(f"{label} line {number}: \"{name}\" is longer than {MAX_FIELD_CHARS} characters")
        if "source" in row and not isinstance(row["source"], str):
            raise BadInput(f"{label} line {number}: \"source\" must be a string when present")
        items.append(QAItem(row["question"].strip(), row["answer"].strip(), row.get("source", "")))
    if not items:
        raise BadInput(f"{label} holds no question/answer pairs")
    return items


def read_qa_bytes(data: bytes, label: str) -> list[QAItem]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadInput(f"{label} is not UTF-8 text (byte {error.start}); save it as UTF-8 JSONL") from None
    return parse_qa_lines(text.splitlines(), label)


def read_qa_file(path: str | Path) -> list[QAItem]:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no such dataset file: {path}")
    return read_qa_bytes(path.read_bytes(), path.name)


def chat_messages(question: str, answer: str | None = None) -> list[dict]:
    """The fine-tuned backend's conversation: the same at training and at answer time."""
    messages = [{"role": "system", "content": FT_SYSTEM_PROMPT}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def tokenize_example(tokenizer, item: QAItem, max_length: int) -> tuple[list[int], list[int]]:
    """Input ids and labels; labels are -100 on the prompt so the loss covers the answer only."""
    prompt = tokenizer.apply_chat_template(chat_messages(item.question), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(chat_messages(item.question, item.answer), tokenize=True, return_dict=True)["input_ids"]
    full = full[:max_length]
    labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
    return full, labels


def store_dataset(settings: Settings, data: bytes, label: str) -> tuple[Path, list[QAItem]]:
    """Validate an uploaded dataset and keep it in the store under a content-derived name."""
    items = read_qa_bytes(data, label)
    folder = settings.store_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path, items
