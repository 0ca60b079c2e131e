"""Measure RAG on a question set: gold contained, recall@k of the gold document, abstention, latency.

    .venv/bin/python scripts/measure_rag.py --set data/qa/eval.jsonl --unanswerable data/qa/unanswerable.jsonl
    .venv/bin/python scripts/measure_rag.py --docs tests/data/realdocs/docs --set tests/data/realdocs/questions.jsonl

With --docs the documents are indexed into a temporary store first (the demo store is not touched).
Prints one JSON object; --rows adds every answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.answering.scoring import contains_gold  # noqa: E402
from backends.core.config import load_settings  # noqa: E402
from backends.service import Duet  # noqa: E402


def read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def measure(duet, rows: list[dict], backend: str) -> tuple[dict, list[dict]]:
    answers = []
    for row in rows:
        answer = duet.ask(backend, row["question"])
        answers.append({"question": row["question"], "gold": row.get("answer", ""), "answer": answer.text,
                        "abstained": bool(getattr(answer, "abstained", False)),
                        "contains": contains_gold(answer.text, row["answer"]) if row.get("answer") else None,
                        "hit": any(s.file_name == row.get("source") for s in answer.sources if s.in_top_k) if row.get("source") else None,
                        "total_s": answer.timings.total, "sources": [s.file_name for s in answer.sources]})
    answerable = [a for a in answers if a["gold"]]
    unanswerable = [a for a in answers if not a["gold"]]
    share = lambda items, key: round(sum(bool(a[key]) for a in items) / len(items), 3) if items else None  # noqa: E731
    summary = {"questions": len(answers), "contains": share(answerable, "contains"), "recall_at_k": share(answerable, "hit"),
               "abstained_answerable": share(answerable, "abstained"),
               "abstained_unanswerable": share(unanswerable, "abstained"),
               "p50_total_s": round(statistics.median(a["total_s"] for a in answers), 3)}
    return summary, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True)
    parser.add_argument("--unanswerable", help="questions the documents do not answer (their answers are ignored)")
    parser.add_argument("--docs", help="a folder of documents to index into a temporary store")
    parser.add_argument("--backend", default="rag")
    parser.add_argument("--rows", action="store_true")
    args = parser.parse_args()
    rows = read(args.set) + [{**r, "answer": "", "source": ""} for r in (read(args.unanswerable) if args.unanswerable else [])]
    with tempfile.TemporaryDirectory(prefix="duet-measure-") as scratch:
        settings = load_settings()
        if args.docs:
            settings = settings.with_store(Path(scratch) / "store")
        duet = Duet(settings)
        if args.docs:
            for result in duet.index.ingest_paths([args.docs]):
                print(result.describe(), file=sys.stderr)
        duet.ask(args.backend, rows[0]["question"])  # warm: models loaded, caches filled
        summary, answers = measure(duet, rows, args.backend)
        duet.index.close()
    print(json.dumps({**summary, **({"rows": answers} if args.rows else {})}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
