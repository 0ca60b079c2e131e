"""The blind vote's store: rounds, one file per viewer's vote, the tally and its Wilson interval."""

import json

import pytest

from backends.apps.votes import Round, _save, all_rounds, cast, current_round, overall, reveal, tally, vote_of, votes_dir, wilson
from backends.core.atomic import write_atomic
from backends.core.config import load_settings
from backends.core.errors import BadInput


@pytest.fixture
def settings(tmp_path):
    return load_settings().with_store(tmp_path / "store")


def _round(settings, round_id="20261206-120000-abcdef12", sides=None) -> Round:
    chosen = Round(round_id, "What is the per diem?", sides or {"A": "ft", "B": "rag"},
                   {"A": "52 euros.", "B": "The per diem is 55 euros."}, "2026-12-06T12:00:00+00:00")
    _save(settings, chosen)
    write_atomic(votes_dir(settings) / "current", round_id)
    return chosen


@pytest.mark.fast
def test_the_wilson_interval_matches_the_formula_and_stays_inside_0_and_1():
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # Wilson (1927) for 8 of 10 at z = 1.96
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)
    assert wilson(80, 100)[1] - wilson(80, 100)[0] < high - low, "more votes, a narrower interval"


@pytest.mark.fast
def test_votes_are_one_file_per_viewer_and_the_tally_names_the_sides(settings):
    chosen = _round(settings)
    assert current_round(settings) == chosen
    viewers = [f"{n:032x}" for n in range(1, 6)]
    for viewer, choice in zip(viewers, ["B", "B", "A", "neither", "A"]):
        cast(settings, chosen.id, viewer, choice)
    cast(settings, chosen.id, viewers[2], "B")  # a viewer changes their vote: still one vote
    assert vote_of(settings, chosen.id, viewers[2]) == "B"
    counted = tally(settings, chosen)
    assert counted.votes == {"A": 1, "B": 3, "neither": 1} and counted.total == 5
    assert counted.preferred == {"rag": 3, "ft": 1}, "B was RAG in this round"
    assert counted.rag_share == 0.75 and (counted.low, counted.high) == wilson(3, 4)
    assert len(list((votes_dir(settings) / chosen.id).glob("*.json"))) == 1 + 5
    assert reveal(settings, chosen.id).revealed and current_round(settings).revealed
    other = _round(settings, "20261206-130000-12345678", {"A": "rag", "B": "ft"})
    cast(settings, other.id, viewers[0], "A")
    rounds = all_rounds(settings)
    assert [r.id for r, _ in rounds] == [other.id, chosen.id]
    assert overall(rounds).preferred == {"rag": 4, "ft": 1}


@pytest.mark.fast
def test_a_bad_vote_is_refused_and_changes_nothing(settings):
    chosen = _round(settings)
    with pytest.raises(BadInput, match="a vote is one of A, B, neither"):
        cast(settings, chosen.id, "a" * 32, "C")
    with pytest.raises(BadInput, match="not open"):
        cast(settings, chosen.id, "../../etc/passwd", "A")
    with pytest.raises(BadInput, match="not open"):
        cast(settings, "no-such-round", "a" * 32, "A")
    assert tally(settings, chosen).total == 0


@pytest.mark.fast
def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    path = write_atomic(tmp_path / "vote.json", json.dumps({"choice": "A"}))
    with pytest.raises(TypeError):
        write_atomic(path, None)  # fails inside the write, as a killed process would
    assert json.loads(path.read_text()) == {"choice": "A"} and [p.name for p in tmp_path.iterdir()] == ["vote.json"]
