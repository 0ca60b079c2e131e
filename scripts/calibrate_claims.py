"""Calibrate the claim tracer's weights and thresholds on the demo data.

True claims: answers of data/qa/train.jsonl (sentences stating facts of the demo corpus,
worded differently from the documents). False claims: the same sentences with a number
changed or a name taken from another answer. Each claim is compared with its evidence
candidates in the demo index (no training examples); a grid search then picks the
similarity weight and the 'supported' threshold that classify the claims best.

    python scripts/calibrate_claims.py [--limit 80]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.answering import claims  # noqa: E402
from backends.core.config import DATA_DIR, load_settings  # noqa: E402
from backends.service import get_duet  # noqa: E402
from backends.learning.examples import read_qa_file  # noqa: E402
from backends.core.types import Answer  # noqa: E402


def false_versions(sentence: str, others: list[str], rng: random.Random) -> list[str]:
    out = []
    found = re.search(r"\d+", sentence)
    if found:
        changed = str(int(found.group()) + rng.choice([3, 7, 11, 40]))
        out.append(sentence[: found.start()] + changed + sentence[found.end():])
    own = sorted(claims.names(sentence))
    other = sorted({n for o in others for n in claims.names(o)} - own_words(sentence))
    if own and other:
        pattern = re.compile(re.escape(own[-1]), re.IGNORECASE)
        out.append(pattern.sub(rng.choice(other).title(), sentence, count=1))
    return out


def own_words(sentence: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z0-9-]+", sentence)}


def supported(supports, weight: float, threshold: float) -> bool:
    claims.SIMILARITY_WEIGHT = weight
    return any(s.verdict(threshold, 0.0)[0] == claims.SUPPORTED for _, s in supports)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=80)
    args = parser.parse_args()
    rng = random.Random(0)
    tracer = get_duet(load_settings()).tracer
    answers = list(dict.fromkeys(item.answer for item in read_qa_file(DATA_DIR / "qa" / "train.jsonl")))
    rng.shuffle(answers)
    cases = []  # (is true, claim, supports)
    for sentence in answers[: args.limit]:
        for truth, text in [(True, sentence)] + [(False, s) for s in false_versions(sentence, answers, rng)]:
            _, indexed, _ = tracer.candidates(text, Answer(backend="rag", question="", text=text), [])
            cases.append((truth, text, tracer.supports(text, indexed)))
    n_true, n_false = sum(c[0] for c in cases), sum(not c[0] for c in cases)
    print(f"{n_true} true claims, {n_false} false claims")
    default = (claims.SIMILARITY_WEIGHT, claims.SUPPORTED_SCORE)
    grid = [(w / 10, t / 100) for w in range(0, 11) for t in range(40, 91, 2)]
    results = []
    for weight, threshold in grid + [default]:
        hits = sum(supported(s, weight, threshold) == truth for truth, _, s in cases)
        true_ok = sum(supported(s, weight, threshold) for truth, _, s in cases if truth) / n_true
        false_ok = sum(not supported(s, weight, threshold) for truth, _, s in cases if not truth) / n_false
        results.append((hits / len(cases), true_ok, false_ok, weight, threshold))
    *_, current = results
    best = max(results[:-1])
    for label, (accuracy, true_ok, false_ok, weight, threshold) in (("current", current), ("best", best)):
        print(f"{label:8} weight {weight:.1f} threshold {threshold:.2f}: accuracy {accuracy:.3f}, "
              f"true claims supported {true_ok:.3f}, false claims not supported {false_ok:.3f}")
    claims.SIMILARITY_WEIGHT = default[0]
    for truth, text, s in cases:
        if truth and not supported(s, *default):
            print("  missed:", text)
        if not truth and supported(s, *default):
            print("  false accepted:", text)


if __name__ == "__main__":
    main()
