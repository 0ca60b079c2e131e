"""Choose RAG's evidence weights and abstention rules on the tune sets, and report on the held-out sets once.

    .venv/bin/python scripts/calibrate_rag.py             # choose on the tune sets (prints the weights)
    .venv/bin/python scripts/calibrate_rag.py --report    # and score old and chosen weights on the report sets

Tune sets: the demo's calibration half (data/qa/split/calibrate_*), data/qa/outside/tune*.jsonl on
data/qa/outside/tune_docs, the written-first questions (data/qa/written_first, Debian documents) and
tests/data/realdocs. Report sets: the demo's report half and data/qa/outside/report*.jsonl on report_docs, whose
questions were written before Duet answered any of them. No generation runs: with one evidence sentence the extractive
answer is the best-ranked candidate copied whole, so "gold contained" is whether it holds the gold answer, unless RAG
abstains. Each document set is indexed into a scratch store with the default settings.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.answering.rag import (  # noqa: E402
    DEFAULT_WEIGHTS, EVIDENCE_POOL, Weights, abstains, abstention_margin, evidence_features,
)
from backends.answering.relevance import key_terms, wants_type  # noqa: E402
from backends.answering.scoring import contains_gold  # noqa: E402
from backends.core.config import DATA_DIR, REPO_ROOT as ROOT, load_settings  # noqa: E402
from backends.service import Duet  # noqa: E402

QA = DATA_DIR / "qa"
OUTSIDE = QA / "outside"
WRITTEN_FIRST = {"nodejs-governance.md": "/usr/share/doc/nodejs/GOVERNANCE.md",
                 "nss-mdns-README.md": "/usr/share/doc/libnss-mdns/README.md.gz"}
# name: (documents: None for the demo store, answerable, unanswerable)
TUNE = {"demo calibration half": (None, QA / "split/calibrate_answerable.jsonl", QA / "split/calibrate_unanswerable.jsonl"),
        "outside tune": (OUTSIDE / "tune_docs", OUTSIDE / "tune.jsonl", OUTSIDE / "tune_unanswerable.jsonl"),
        "written first": ("written-first", QA / "written_first/questions.jsonl", None),
        "realdocs": (ROOT / "tests/data/realdocs/docs", ROOT / "tests/data/realdocs/questions.jsonl", None)}
REPORT = {"demo report half": (None, QA / "split/report_answerable.jsonl", QA / "split/report_unanswerable.jsonl"),
          "outside report (held out)": (OUTSIDE / "report_docs", OUTSIDE / "report.jsonl",
                                        OUTSIDE / "report_unanswerable.jsonl")}
GRID = {"lexical": (1.0, 1.5, 2.0, 2.5), "answer_type": (0.0, 0.15, 0.3, 0.5, 0.8),
        "unknown_penalty": (0.0, 0.4, 0.8, 1.2), "untyped_penalty": (0.0, 0.1, 0.2, 0.4, 0.7, 1.0),
        "keep_coverage": (0.6, 0.75, 0.9, 1.01), "unknown_max": (0.35, 0.4, 0.45, 0.5, 0.6, 1.01)}
MAX_WRONG_ABSTENTIONS = 0.07  # of the answerable questions, on the tune sets together (the goal is 0.1)


def read(path) -> list[dict]:
    if path is None:
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Seen:
    question: str
    gold: str
    features: list
    unknown: float
    key_missing: bool


def written_first_docs(folder: Path) -> Path:
    for name, path in WRITTEN_FIRST.items():
        data = Path(path).read_bytes()
        (folder / name).write_bytes(gzip.decompress(data) if path.endswith(".gz") else data)
    return folder


def observe(sets: dict, scratch: Path) -> dict[str, list[Seen]]:
    """Retrieval and candidate features of every question, once; every weighting is scored on them later."""
    seen = {}
    for number, (name, (docs, answerable, unanswerable)) in enumerate(sets.items()):
        settings = load_settings()
        if docs is not None:
            settings = settings.with_store(scratch / f"store-{number}")
        duet = Duet(settings)
        if docs == "written-first":
            docs = written_first_docs(Path(tempfile.mkdtemp(dir=scratch)))
        if docs is not None:
            list(duet.index.ingest_paths([str(docs)]))
        lexicon, rows = duet.index.lexicon(), read(answerable) + [{**r, "answer": ""} for r in read(unanswerable)]
        seen[name] = []
        for row in rows:
            question = row["question"]
            query = duet.index.embeddings.embed_query(question)
            pool, _ = duet.index.hybrid(question, query, EVIDENCE_POOL * duet.settings.top_k)
            features = evidence_features(question, pool, duet.index.embeddings, lexicon, query)
            seen[name].append(Seen(question, row.get("answer", ""), features, lexicon.unknown_share(question),
                                   bool(lexicon.missing(key_terms(question)))))
        duet.index.close()
    return seen


class _Lexicon:
    """What `abstains` asks of a lexicon, answered from what was observed."""

    def __init__(self, item: Seen):
        self.item = item

    def unknown_share(self, question: str) -> float:
        return self.item.unknown

    def missing(self, names) -> set:
        return {"?"} if self.item.key_missing else set()


def outcome(items: list[Seen], weights: Weights) -> dict:
    """Gold contained (abstentions count as misses), wrong abstentions, and correct abstentions."""
    right = wrong = correct = answerable = unanswerable = 0
    for item in items:
        abstained = abstains(item.question, item.features, _Lexicon(item), weights)
        if item.gold:
            answerable += 1
            wrong += abstained
            best = max(item.features, key=lambda f: f.score(weights)) if item.features else None
            right += (not abstained) and best is not None and bool(contains_gold(best.sentence, item.gold))
        else:
            unanswerable += 1
            correct += abstained
    return {"contains": round(right / max(answerable, 1), 3), "abstained_answerable": round(wrong / max(answerable, 1), 3),
            "abstained_unanswerable": round(correct / max(unanswerable, 1), 3) if unanswerable else None,
            "answerable": answerable, "unanswerable": unanswerable}


def _ranked(items: list[Seen], lexical: float, answer_type: float) -> list[tuple]:
    """Per question, what the later weightings need once the evidence is ranked: (gold?, whether the top sentence
    holds the gold, the top sentence's features, wants a kind, best coverage among evidence of the asked kind)."""
    weights, rows = Weights(lexical, answer_type), []
    for item in items:
        best = max(item.features, key=lambda f: f.score(weights)) if item.features else None
        hit = bool(item.gold) and best is not None and bool(contains_gold(best.sentence, item.gold))
        rows.append((bool(item.gold), hit, best, wants_type(item.question),
                     max((f.coverage for f in item.features if f.fit), default=0.0), item))
    return rows


def choose(seen: dict[str, list[Seen]]) -> tuple[Weights, dict]:
    """The weighting with the best mean of the tune sets' rates (gold contained per set, unanswerable abstained per
    set: a small set of unanswerable questions weighs as much as a large answerable one), wrong abstentions at most
    MAX_WRONG_ABSTENTIONS of all answerable questions. Each question's margin (rag.abstention_margin, RAG's own rule)
    is computed once per weighting; the thresholds are swept over it."""
    groups = list(seen.values())
    answerable = sum(bool(i.gold) for group in groups for i in group)
    best = None
    for lexical, answer_type in itertools.product(GRID["lexical"], GRID["answer_type"]):
        ranked = [_ranked(group, lexical, answer_type) for group in groups]
        for penalty, untyped, keep, most in itertools.product(GRID["unknown_penalty"], GRID["untyped_penalty"],
                                                              GRID["keep_coverage"], GRID["unknown_max"]):
            weights = Weights(lexical, answer_type, penalty, 0.0, untyped, keep, most)
            margins = [[(gold, hit, abstention_margin(top, wants, item.unknown, item.key_missing, cover, weights))
                        for gold, hit, top, wants, cover, item in group] for group in ranked]
            for step in range(20, 200, 2):
                threshold = step / 100
                rates, wrong = [], 0
                for group in margins:
                    asked = [(hit, margin < threshold) for gold, hit, margin in group if gold]
                    unasked = [margin < threshold for gold, _, margin in group if not gold]
                    wrong += sum(abstained for _, abstained in asked)
                    rates += ([sum(hit and not abstained for hit, abstained in asked) / len(asked)] if asked else []) + (
                        [sum(unasked) / len(unasked)] if unasked else [])
                value = sum(rates) / len(rates)
                if wrong / answerable <= MAX_WRONG_ABSTENTIONS and (best is None or value > best[0]):
                    best = (value, Weights(lexical, answer_type, penalty, threshold, untyped, keep, most))
    chosen = best[1]
    return chosen, {name: outcome(group, chosen) for name, group in seen.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="also score the report sets, old and chosen weights")
    parser.add_argument("--old", help="the weights before, as JSON (default: the current defaults)")
    args = parser.parse_args()
    old = Weights(**json.loads(args.old)) if args.old else DEFAULT_WEIGHTS
    scratch = Path(tempfile.mkdtemp(prefix="duet-calibrate-"))
    try:
        tune = observe(TUNE, scratch)
        chosen, fitted = choose(tune)
        result = {"chosen": chosen.__dict__, "tune sets, chosen weights (in-sample)": fitted,
                  "tune sets, old weights": {name: outcome(group, old) for name, group in tune.items()}}
        if args.report:
            report = observe(REPORT, scratch)
            result["report sets, chosen weights"] = {name: outcome(group, chosen) for name, group in report.items()}
            result["report sets, old weights"] = {name: outcome(group, old) for name, group in report.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
