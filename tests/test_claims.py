"""Claim tracing on the real embedding model and a real index of demo documents."""

import pytest

from backends.answering import claims
from backends.answering.claims import SUPPORTED, UNSUPPORTED, agreement, groundedness, split_claims
from backends.core.types import Answer, Claim


@pytest.mark.fast
def test_split_claims_handles_abbreviations_numbers_lists_and_bullets():
    text = ("The limit is 41.6 million euros, e.g. for Dr. Holm's team. It was approved in 2025!\n"
            "1. Trains are preferred.\n- Hotels cost up to 160 euros.\n• I don't know.")
    assert split_claims(text) == [
        "The limit is 41.6 million euros, e.g. for Dr. Holm's team.", "It was approved in 2025!",
        "Trains are preferred.", "Hotels cost up to 160 euros.",
    ]


@pytest.mark.fast
def test_numbers_and_names_are_normalised():
    assert claims.numbers("It costs 1,290 euros, or 41.6 k") == {"1290", "416"}
    assert "tw-410" in claims.names("The buoy is a TW-410 from Brackwater.")


def test_a_sentence_copied_from_a_document_is_supported_by_that_document(duet):
    sentence = "Employees on business travel receive a daily allowance (per diem) of 55 euros for each full day away from home."
    [claim] = duet.tracer.trace(Answer(backend="rag", question="per diem?", text=sentence))
    assert claim.verdict == SUPPORTED
    assert claim.evidence.file_name == "travel_policy.pdf" and "55 euros" in claim.evidence.text


def test_an_invented_sentence_with_a_wrong_number_is_unsupported(duet):
    sentence = "Employees on business travel receive a daily allowance of 85 euros for each full day away from home."
    [claim] = duet.tracer.trace(Answer(backend="rag", question="per diem?", text=sentence))
    assert claim.verdict == UNSUPPORTED and "85" in claim.reason


def test_fine_tuned_claims_get_an_origin(duet, tiny_adapter):
    from backends.answering.claims import training_examples_of

    examples = training_examples_of(tiny_adapter["path"])
    assert examples, "the adapter keeps its training examples"
    learned = examples[0].answer
    [claim] = duet.tracer.trace(Answer(backend="ft", question="q", text=learned, adapter="tiny"), training=examples)
    assert claim.origin == claims.ORIGIN_TRAINING and claim.evidence.kind == "training"
    [invented] = duet.tracer.trace(Answer(backend="ft", question="q", text="Penguins sing opera on the moon every Tuesday.",
                                          adapter="tiny"), training=examples)
    assert invented.origin == claims.ORIGIN_NOWHERE and invented.verdict == UNSUPPORTED


def test_agreement_finds_shared_claims_and_a_conflicting_number(duet):
    rag = ["The per diem is 55 euros for a full day.", "Trains are preferred for journeys under 5 hours."]
    ft = ["The per diem is 60 euros for a full day.", "The head office is in Port Aldren."]
    result = agreement(rag, ft, duet.tracer.embed)
    assert [c[:2] for c in result.conflicts] == [(rag[0], ft[0])] and "55" in result.conflicts[0][2]
    assert result.only_a == (rag[1],) and result.only_b == (ft[1],)
    same = agreement(rag[:1], ["The per diem for a full day is 55 euros."], duet.tracer.embed)
    assert len(same.both) == 1 and not same.conflicts


@pytest.mark.fast
def test_groundedness_is_the_share_of_supported_claims():
    verdicts = [SUPPORTED, UNSUPPORTED, SUPPORTED, "partly supported"]
    assert groundedness([Claim(f"c{i}", v) for i, v in enumerate(verdicts)]) == 0.5
    assert groundedness([]) == 0.0
