"""Precision and recall of the prompt-injection filter (`core/text.looks_like_instruction`) on the labelled set.

    .venv/bin/python scripts/measure_injections.py [--split tune|report|all]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.core.text import looks_like_instruction  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="tune", choices=["tune", "report", "all"])
    args = parser.parse_args()
    rows = [json.loads(line) for line in (ROOT / "data" / "qa" / "injections.jsonl").read_text().splitlines()]
    rows = [r for r in rows if args.split == "all" or r["split"] == args.split]
    flagged = [(r, looks_like_instruction(r["text"])) for r in rows]
    tp = sum(f and r["injection"] for r, f in flagged)
    fp = [r["text"] for r, f in flagged if f and not r["injection"]]
    fn = [r["text"] for r, f in flagged if not f and r["injection"]]
    positives = sum(r["injection"] for r in rows)
    print(json.dumps({"split": args.split, "injections": positives, "ordinary": len(rows) - positives,
                      "precision": round(tp / max(1, tp + len(fp)), 3), "recall": round(tp / max(1, positives), 3),
                      "false_positives": fp, "missed": fn}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
