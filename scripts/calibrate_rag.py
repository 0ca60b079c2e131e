"""Choose RAG's evidence weights and abstention threshold on a calibration split, and report on the other half.

    .venv/bin/python scripts/calibrate_rag.py                # choose on data/qa/split/calibrate_*.jsonl
    .venv/bin/python scripts/calibrate_rag.py --report       # and score old and chosen weights on report_*.jsonl once

The split (made once, by `--make-split`, and kept in data/qa/split/) puts whole documents on one side: the demo
documents ordered by the SHA-256 of their names, alternately; the unanswerable questions by the parity of their
question's SHA-256. No generation runs: the extractive answer is the best-ranked sentence copied whole, so "gold
contained" is whether that sentence holds the gold answer, unless the confidence is below the threshold (abstain).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.answering.rag import (  # noqa: E402
    DEFAULT_WEIGHTS, EVIDENCE_POOL, Weights, confidence, evidence_features, ranked_by,
)
from backends.answering.scoring import contains_gold  # noqa: E402
from backends.core.config import DATA_DIR, load_settings  # noqa: E402
from backends.service import Duet  # noqa: E402

SPLIT = DATA_DIR / "qa" / "split"
GRID = {"lexical": (0.0, 0.3, 0.5, 0.7, 0.9, 1.2, 1.6, 2.0), "answer_type": (0.0, 0.15, 0.3, 0.5),
        "unknown_penalty": (0.0, 0.4, 0.8, 1.2, 1.6)}
MAX_WRONG_ABSTENTIONS = 0.05  # of the answerable questions


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_split() -> None:
    answerable, unanswerable = read(DATA_DIR / "qa" / "eval.jsonl"), read(DATA_DIR / "qa" / "unanswerable.jsonl")
    documents = sorted({row["source"] for row in answerable}, key=sha)
    calibrate_docs = set(documents[0::2])
    halves = {"calibrate": ([r for r in answerable if r["source"] in calibrate_docs],
                            [r for r in unanswerable if int(sha(r["question"]), 16) % 2 == 0]),
              "report": ([r for r in answerable if r["source"] not in calibrate_docs],
                         [r for r in unanswerable if int(sha(r["question"]), 16) % 2 == 1])}
    SPLIT.mkdir(parents=True, exist_ok=True)
    for half, (a, u) in halves.items():
        for kind, rows in (("answerable", a), ("unanswerable", u)):
            (SPLIT / f"{half}_{kind}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{half}: {len(a)} answerable, {len(u)} unanswerable", file=sys.stderr)


def observe(duet, rows: list[dict]) -> list[tuple]:
    """(features, unknown share, gold) per question: retrieval and features once, every weighting later."""
    lexicon, seen = duet.index.lexicon(), []
    for row in rows:
        query = duet.index.embeddings.embed_query(row["question"])
        pool, _ = duet.index.hybrid(row["question"], query, EVIDENCE_POOL * duet.settings.top_k)
        seen.append((row["question"], evidence_features(row["question"], pool, duet.index.embeddings, lexicon, query),
                     row.get("answer", "")))
    return seen


def outcome(duet, seen: list[tuple], weights: Weights) -> dict:
    """Gold contained (abstentions count as misses), wrong abstentions, and correct abstentions."""
    lexicon = duet.index.lexicon()
    right = wrong_abstain = abstain_unanswerable = answerable = unanswerable = 0
    for question, features, gold in seen:
        ranked = ranked_by(features, weights)
        abstains = confidence(question, ranked, lexicon, weights) < weights.abstain_below
        if gold:
            answerable += 1
            wrong_abstain += abstains
            right += (not abstains) and bool(ranked) and bool(contains_gold(ranked[0].text, gold))
        else:
            unanswerable += 1
            abstain_unanswerable += abstains
    return {"contains": round(right / max(answerable, 1), 3), "abstained_answerable": round(wrong_abstain / max(answerable, 1), 3),
            "abstained_unanswerable": round(abstain_unanswerable / max(unanswerable, 1), 3),
            "answerable": answerable, "unanswerable": unanswerable}


def choose(duet, seen: list[tuple]) -> tuple[Weights, dict]:
    """The weights and threshold with the most right outcomes (gold contained + correct abstentions) on `seen`,
    wrong abstentions at most MAX_WRONG_ABSTENTIONS."""
    best = None
    for lexical, answer_type, penalty in itertools.product(*GRID.values()):
        for step in range(20, 151):
            weights = Weights(lexical, answer_type, penalty, step / 100)
            found = outcome(duet, seen, weights)
            if found["abstained_answerable"] > MAX_WRONG_ABSTENTIONS:
                continue
            right = found["contains"] * found["answerable"] + found["abstained_unanswerable"] * found["unanswerable"]
            if best is None or right > best[0]:
                best = (right, weights, found)
    return best[1], best[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-split", action="store_true", help="write data/qa/split/ anew (once)")
    parser.add_argument("--report", action="store_true", help="also score the report half, old and chosen weights")
    args = parser.parse_args()
    if args.make_split or not (SPLIT / "calibrate_answerable.jsonl").is_file():
        make_split()
    duet = Duet(load_settings())
    calibrate = observe(duet, read(SPLIT / "calibrate_answerable.jsonl") + read(SPLIT / "calibrate_unanswerable.jsonl"))
    chosen, fitted = choose(duet, calibrate)
    result = {"chosen": chosen.__dict__, "calibration half (in-sample for the chosen weights)": fitted,
              "calibration half, old weights": outcome(duet, calibrate, DEFAULT_WEIGHTS)}
    if args.report:
        report = observe(duet, read(SPLIT / "report_answerable.jsonl") + read(SPLIT / "report_unanswerable.jsonl"))
        result["report half, chosen weights (held out)"] = outcome(duet, report, chosen)
        result["report half, old weights (tuned on all questions: in-sample)"] = outcome(duet, report, DEFAULT_WEIGHTS)
    print(json.dumps(result, indent=1))
    duet.index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
