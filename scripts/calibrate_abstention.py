"""Choose RAG's abstention threshold: the best evidence score of answerable and unanswerable questions.

    .venv/bin/python scripts/calibrate_abstention.py --set data/qa/eval.jsonl --unanswerable data/qa/unanswerable.jsonl

Prints, for thresholds in steps of 0.01, the share of answerable questions that would abstain and of
unanswerable ones that would, and the threshold that keeps answerable abstentions at or under 5% while
abstaining on the most unanswerable questions. No generation runs: only retrieval and evidence ranking.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.answering.rag import EVIDENCE_POOL, confidence, rank_evidence  # noqa: E402
from backends.core.config import load_settings  # noqa: E402
from backends.service import Duet  # noqa: E402


def best_scores(duet, questions: list[str]) -> list[float]:
    scores = []
    for question in questions:
        query = duet.index.embeddings.embed_query(question)
        sources, _ = duet.index.hybrid(question, query, EVIDENCE_POOL * duet.settings.top_k)
        ranked = rank_evidence(question, sources, duet.index.embeddings, duet.index.lexicon(), query=query)
        scores.append(confidence(question, ranked, duet.index.lexicon()))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True)
    parser.add_argument("--unanswerable", required=True)
    parser.add_argument("--max-answerable", type=float, default=0.05)
    args = parser.parse_args()
    read = lambda path: [json.loads(line)["question"] for line in Path(path).read_text().splitlines() if line.strip()]  # noqa: E731
    duet = Duet(load_settings())
    answerable, unanswerable = best_scores(duet, read(args.set)), best_scores(duet, read(args.unanswerable))
    table, best = [], None
    for step in range(20, 121):
        threshold = step / 100
        a = sum(s < threshold for s in answerable) / len(answerable)
        u = sum(s < threshold for s in unanswerable) / len(unanswerable)
        table.append({"threshold": threshold, "abstain_answerable": round(a, 3), "abstain_unanswerable": round(u, 3)})
        if a <= args.max_answerable and (best is None or u > best["abstain_unanswerable"]):
            best = table[-1]
    print(json.dumps({"chosen": best, "answerable": sorted(round(s, 3) for s in answerable),
                      "unanswerable": sorted(round(s, 3) for s in unanswerable)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
