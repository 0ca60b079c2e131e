"""A blind vote for the room (`?present=1&vote=1`): one question's two answers as "Answer A" and "Answer B", sides
shuffled per question and no system named, one vote per viewer per question, then the reveal with the tally.

The store keeps each round in `votes/<round>/round.json` and each viewer's vote in a file of its own
(`votes/<round>/<viewer>.json`), written atomically: a killed server loses no vote that was cast, and two viewers
never write the same file. `votes/current` names the round on screen.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from backends.core.atomic import write_atomic
from backends.core.errors import BadInput

SYSTEMS = ("rag", "ft")
CHOICES = {"A": "Answer A is better", "B": "Answer B is better", "neither": "Both are wrong"}
_VIEWER = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class Round:
    id: str
    question: str
    sides: dict  # "A" / "B" -> system
    answers: dict  # "A" / "B" -> answer text
    created_at: str
    revealed: bool = False


@dataclass(frozen=True)
class Tally:
    votes: dict  # "A" / "B" / "neither" -> count
    preferred: dict  # system -> votes for its answer
    rag_share: float | None  # of the votes that prefer one answer, the share preferring RAG
    low: float | None  # its 95% Wilson interval
    high: float | None

    @property
    def total(self) -> int:
        return sum(self.votes.values())


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): sound for small n and shares near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def votes_dir(settings) -> Path:
    return Path(settings.store_dir) / "votes"


def open_round(duet, question: str, adapter: str | None = None) -> Round:
    """Ask both systems, shuffle which is A (seeded by the round, so the order is fixed once chosen), store the round
    and put it on screen."""
    question = question.strip()
    if not question:
        raise BadInput("type a question or pick one to put to the vote")
    answers = dict(zip(SYSTEMS, duet.ask_many([(system, question, adapter) for system in SYSTEMS])))
    failed = [s for s, a in answers.items() if not hasattr(a, "text")]
    if failed:
        raise BadInput(f"{', '.join(failed)} could not answer ({answers[failed[0]].error}); try another question")
    now = datetime.now(timezone.utc)
    round_id = f"{now:%Y%m%d-%H%M%S}-{hashlib.sha256(question.encode()).hexdigest()[:8]}"
    order = list(SYSTEMS)
    random.Random(round_id).shuffle(order)
    chosen = Round(round_id, question, dict(zip("AB", order)), {side: answers[s].text for side, s in zip("AB", order)},
                   now.isoformat(timespec="seconds"))
    _save(duet.settings, chosen)
    write_atomic(votes_dir(duet.settings) / "current", round_id)
    return chosen


def _save(settings, chosen: Round) -> None:
    write_atomic(votes_dir(settings) / chosen.id / "round.json", json.dumps(asdict(chosen), ensure_ascii=False))


def load_round(settings, round_id: str) -> Round | None:
    path = votes_dir(settings) / round_id / "round.json"
    return Round(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def current_round(settings) -> Round | None:
    """The round on screen, or None before the first."""
    path = votes_dir(settings) / "current"
    return load_round(settings, path.read_text().strip()) if path.is_file() else None


def reveal(settings, round_id: str) -> Round:
    chosen = load_round(settings, round_id)
    if chosen is None:
        raise BadInput(f"no vote {round_id!r}")
    shown = replace(chosen, revealed=True)
    _save(settings, shown)
    return shown


def cast(settings, round_id: str, viewer: str, choice: str) -> None:
    """One viewer's vote on one round (a new vote replaces the viewer's earlier one)."""
    if choice not in CHOICES:
        raise BadInput(f"a vote is one of {', '.join(CHOICES)}, not {choice!r}")
    if not _VIEWER.match(viewer) or load_round(settings, round_id) is None:
        raise BadInput("this vote is not open; reload the page")
    write_atomic(votes_dir(settings) / round_id / f"{viewer}.json",
                 json.dumps({"choice": choice, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))


def vote_of(settings, round_id: str, viewer: str) -> str | None:
    path = votes_dir(settings) / round_id / f"{viewer}.json"
    return json.loads(path.read_text())["choice"] if _VIEWER.match(viewer) and path.is_file() else None


def tally(settings, chosen: Round) -> Tally:
    votes = {choice: 0 for choice in CHOICES}
    for path in (votes_dir(settings) / chosen.id).glob("*.json"):
        if path.name != "round.json":
            choice = json.loads(path.read_text()).get("choice")
            if choice in votes:
                votes[choice] += 1
    return _summed(votes, {chosen.sides[side]: votes[side] for side in "AB"})


def all_rounds(settings) -> list[tuple[Round, Tally]]:
    """Every round with its tally, newest first."""
    found = []
    for folder in sorted(votes_dir(settings).glob("*/"), reverse=True):
        chosen = load_round(settings, folder.name)
        if chosen is not None:
            found.append((chosen, tally(settings, chosen)))
    return found


def overall(rounds: list[tuple[Round, Tally]]) -> Tally:
    """All rounds' votes together."""
    return _summed({choice: sum(t.votes[choice] for _, t in rounds) for choice in CHOICES},
                   {system: sum(t.preferred[system] for _, t in rounds) for system in SYSTEMS})


def _summed(votes: dict, preferred: dict) -> Tally:
    """The tally of these counts: the share preferring RAG among votes that preferred one answer, with its interval."""
    decided = preferred["rag"] + preferred["ft"]
    low, high = wilson(preferred["rag"], decided) if decided else (None, None)
    return Tally(votes, preferred, preferred["rag"] / decided if decided else None, low, high)
