"""Measure the tracer's "supported and answers the question" on labelled claims from documents nobody here wrote.

    .venv/bin/python scripts/measure_tracer_answers.py --build    # write data/qa/outside/answer_claims_*.jsonl once
    .venv/bin/python scripts/measure_tracer_answers.py            # precision and recall per set

Each question of data/qa/outside/{tune,report}.jsonl gives labelled claims, made from its documents by rule, not by
Duet's answers:
- true: the document's sentence that holds the gold answer and most of the question's words (the answer, copied);
- false, beside the point: the document's sentence closest to the question's words that does not hold the gold;
- false, unsupported: the true sentence with its gold answer swapped for another of the same kind from the document.
The tune file is the one the tracer's rules were checked on; the report file is scored once at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.answering.evidence import candidates  # noqa: E402
from backends.answering.scoring import contains_gold  # noqa: E402
from backends.core.config import DATA_DIR, load_settings  # noqa: E402
from backends.core.types import Answer, Source  # noqa: E402
from backends.service import Duet  # noqa: E402

OUTSIDE = DATA_DIR / "qa" / "outside"
SETS = {"tune": (OUTSIDE / "tune_docs", OUTSIDE / "tune.jsonl"), "report": (OUTSIDE / "report_docs", OUTSIDE / "report.jsonl")}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _swapped(sentence: str, gold: str, others: list[str]) -> str | None:
    """The sentence with its gold answer replaced by another span of the same shape from the document."""
    shape = "number" if re.fullmatch(r"[\d.,/%…v-]+", gold.strip("v")) else "word"
    for other in others:
        if other.lower() != gold.lower() and (re.fullmatch(r"[\d.,/%…v-]+", other.strip("v")) is not None) == (shape == "number"):
            if other.lower() not in sentence.lower():
                return re.sub(re.escape(gold), other, sentence, count=1, flags=re.IGNORECASE)
    return None


def build(duet: Duet, rows: list[dict]) -> list[dict]:
    lexicon, claims = duet.index.lexicon(), []
    documents = {d.name: d for d in duet.index.documents()}
    for row in rows:
        chunks = duet.index.chunks_of(documents[row["source"]].doc_id)
        sources = [Source(c.chunk_id, c.doc_id, row["source"], c.location, c.text, 0.0) for c in chunks]
        found = candidates(sources, row["question"])
        ranked = sorted(found, key=lambda c: -lexicon.coverage(row["question"], f"{c.context} {c.text}"))
        holding = [c for c in ranked if contains_gold(c.text, row["answer"]) and len(c.text.split()) <= 60]
        if not holding:
            continue
        true = holding[0].text
        claims.append({"question": row["question"], "claim": true, "answers": True, "kind": "copied"})
        beside = next((c.text for c in ranked if not contains_gold(c.text, row["answer"]) and c.text != true), None)
        if beside:
            claims.append({"question": row["question"], "claim": beside, "answers": False, "kind": "beside the point"})
        others = [r["answer"] for r in rows if r["source"] == row["source"]]
        swapped = _swapped(true, row["answer"], others)
        if swapped and swapped != true:
            claims.append({"question": row["question"], "claim": swapped, "answers": False, "kind": "swapped answer"})
    return claims


def score(duet: Duet, claims: list[dict]) -> dict:
    said = []
    for row in claims:
        traced = duet.tracer.trace(Answer("rag", row["question"], row["claim"]))
        said.append((row["answers"], bool(traced) and all(c.grounded for c in traced), row["kind"]))
    predicted = [truth for truth, yes, _ in said if yes]
    precision = sum(predicted) / len(predicted) if predicted else 0.0
    recall = sum(yes for truth, yes, _ in said if truth) / max(sum(truth for truth, _, _ in said), 1)
    wrong = {}
    for truth, yes, kind in said:
        if truth != yes:
            wrong[kind] = wrong.get(kind, 0) + 1
    return {"claims": len(said), "precision": round(precision, 3), "recall": round(recall, 3), "errors by kind": wrong}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--sets", default="tune", help="comma-separated: tune, report")
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory(prefix="duet-tracer-") as scratch:
        for name in args.sets.split(","):
            docs, questions = SETS[name]
            duet = Duet(load_settings().with_store(Path(scratch) / name))
            list(duet.index.ingest_paths([str(docs)]))
            path = OUTSIDE / f"answer_claims_{name}.jsonl"
            if args.build:
                path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in build(duet, read(questions))))
            result[name] = score(duet, read(path))
            duet.index.close()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
