"""Score an adapter against the bare base model (and RAG) on a QA set: exact match, token F1, gold contained.

Both fine-tuned runs use the fine-tuned backend's prompt; the only difference is the adapter.

    .venv/bin/python scripts/measure_adapter.py [--adapter demo] [--set data/qa/eval.jsonl] [--limit N] [--rag]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.core.config import load_settings  # noqa: E402
from backends.answering.scoring import quick_eval  # noqa: E402
from backends.apps.evaluation import load_qa  # noqa: E402
from backends.answering.streaming import answer_from_stream  # noqa: E402
from backends.service import get_duet  # noqa: E402
from backends.learning.examples import chat_messages  # noqa: E402
from backends.core.types import final_answer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default="demo")
    parser.add_argument("--set", default="data/qa/eval.jsonl")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--rag", action="store_true", help="also score the RAG backend")
    args = parser.parse_args()
    duet = get_duet(load_settings())
    items = load_qa(args.set)[: args.limit or None]
    duet.ft.use(args.adapter)

    def bare(question: str) -> str:
        stream = answer_from_stream("ft", question, duet.llm, chat_messages(question), duet.settings)
        return final_answer(stream).text

    systems = {
        f"ft+{args.adapter}": lambda q: final_answer(duet.stream("ft", q, args.adapter)).text,
        "base (no adapter)": bare,
    }
    if args.rag:
        systems["rag"] = lambda q: final_answer(duet.stream("rag", q)).text
    report = {}
    for name, answer in systems.items():
        started = time.perf_counter()
        means, rows = quick_eval(items, answer)
        report[name] = {**means, "questions": len(items), "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:20s} {json.dumps(report[name])}", flush=True)
        for row in rows[:5]:
            print(f"    gold {row['gold']!r} -> {row['prediction'][:100]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
