"""The naturalness floor of the questions a dataset build generates from a folder of documents.

    .venv/bin/python scripts/measure_questions.py DOCS_FOLDER [--sample 20] [--seed 0]

Indexes the documents into a temporary store (the demo store is not touched), builds a dataset with the default
options, and prints one JSON object: the share of training and held-out questions that pass the floor
(backends/learning/naturalness.py), the commonest problems, and `--sample` questions drawn at random.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.core.config import load_settings  # noqa: E402
from backends.learning.datasets import DatasetOptions, build_dataset  # noqa: E402
from backends.learning.naturalness import floor_problems  # noqa: E402
from backends.service import Duet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs")
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="duet-questions-") as scratch:
        duet = Duet(load_settings().with_store(Path(scratch) / "store"))
        for result in duet.index.ingest_paths([args.docs]):
            print(f"{result.name}: {result.describe()}", file=sys.stderr)
        dataset = build_dataset(duet.index, DatasetOptions())
        duet.index.close()
    asked = [(row["question"], row["evidence"]["text"], "train") for row in dataset.train] + [
        (row["question"], row["answer"], "eval") for row in dataset.eval]
    problems = [(question, answer, part, floor_problems(question, answer)) for question, answer, part in asked]
    counts = collections.Counter(p.split(" (")[0].split('"')[0].strip() for *_, found in problems for p in found)
    drawn = random.Random(args.seed).sample(problems, min(args.sample, len(problems)))
    share = lambda part: round(sum(not f for _, _, p, f in problems if p == part)  # noqa: E731
                               / max(1, sum(p == part for _, _, p, _ in problems)), 3)
    print(json.dumps({"questions": len(problems), "train": sum(p == "train" for *_, p, _ in problems),
                      "eval": len(dataset.eval), "pass_train": share("train"), "pass_eval": share("eval"),
                      "pass_all": round(sum(not f for *_, f in problems) / max(1, len(problems)), 3),
                      "problems": counts.most_common(), "filters": dataset.manifest["filters"],
                      "seconds": dataset.manifest["seconds"],
                      "sample": [{"question": q, "answer": a[:120], "part": p, "problems": f} for q, a, p, f in drawn]},
                     indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
