"""Write the labelled claim sets the tracer is measured on (tests/test_claims.py reads them).

- data/qa/claims.jsonl: true claims are answers of data/qa/train.jsonl (facts of the demo corpus in other
  words); false ones the same sentences with a number changed or a name swapped.
- tests/data/realdocs/claims.jsonl: true claims are sentences copied from the real documents; false ones the
  same with a number, a name, a path or a command swapped for another of the same document.

    .venv/bin/python scripts/build_claim_sets.py
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.answering.claims import codes, names, split_claims  # noqa: E402
from backends.core.config import DATA_DIR, REPO_ROOT  # noqa: E402
from backends.knowledge.loaders import load_document  # noqa: E402
from backends.learning.examples import read_qa_file  # noqa: E402

REAL = REPO_ROOT / "tests" / "data" / "realdocs"


def swapped(sentence: str, pool: dict[str, list[str]], rng: random.Random) -> list[str]:
    """False versions: one number, one name and one path or command replaced by another of the pool."""
    out = []
    number = re.search(r"\d+", sentence)
    if number:
        out.append(sentence[: number.start()] + str(int(number.group()) + rng.choice([3, 7, 11, 40])) + sentence[number.end():])
    for kind, found in (("names", sorted(names(sentence))), ("codes", sorted(codes(sentence)))):
        others = [o for o in pool[kind] if o.lower() not in sentence.lower()]
        if found and others:
            target = found[-1]
            out.append(re.compile(re.escape(target), re.IGNORECASE).sub(rng.choice(others), sentence, count=1))
    return out


def labelled(sentences: list[str], rng: random.Random, limit: int) -> list[dict]:
    pool = {"names": sorted({n.title() for s in sentences for n in names(s)}),
            "codes": sorted({c for s in sentences for c in codes(s)})}
    rng.shuffle(sentences)
    rows = []
    for sentence in sentences[:limit]:
        rows.append({"claim": sentence, "true": True})
        rows += [{"claim": s, "true": False} for s in swapped(sentence, pool, rng)]
    return rows


def real_sentences() -> list[str]:
    found = []
    for path in sorted((REAL / "docs").iterdir()):
        for segment in load_document(path.name, path.read_bytes()):
            found += [c for c in split_claims(segment.text)
                      if 6 <= len(c.split()) <= 40 and (re.search(r"\d", c) or names(c) or codes(c))]
    return list(dict.fromkeys(found))


def main() -> int:
    demo = list(dict.fromkeys(item.answer for item in read_qa_file(DATA_DIR / "qa" / "train.jsonl")))
    for rows, target in ((labelled(demo, random.Random(0), 80), DATA_DIR / "qa" / "claims.jsonl"),
                         (labelled(real_sentences(), random.Random(0), 60), REAL / "claims.jsonl")):
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{target}: {sum(r['true'] for r in rows)} true, {sum(not r['true'] for r in rows)} false claims")
    return 0


if __name__ == "__main__":
    sys.exit(main())
