"""Claim tracing on the real embedding model and a real index of demo documents."""

import pytest

from backends.answering import claims
from backends.answering.claims import SUPPORTED, UNSUPPORTED, agreement, groundedness, split_claims
from backends.core.text import numbers_in
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
    assert numbers_in("It costs 1,290 euros, or 41.6 k, 2.50 or 3.2.1 in 2009.") == {"1290", "41.6", "2.50", "3.2.1", "2009"}
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


def test_a_decimal_does_not_support_the_number_without_its_point(duet):
    """"1.5" is not "15": a claim with a moved decimal point names a number the document does not hold."""
    claim_text = "Revenue for the financial year 2025 was 416 million euros, up from 35.2 million euros in 2024."
    [claim] = duet.tracer.trace(Answer(backend="rag", question="revenue in 2025?", text=claim_text))
    assert claim.verdict == UNSUPPORTED and "416" in claim.reason


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


def test_an_adapter_trained_on_text_rows_is_traced_to_the_sentences_it_read(duet, tiny_adapter, tmp_path):
    """Continued pretraining (`dataset build --format text`) keeps chunks, not QA pairs: each sentence is a fact learnt."""
    import json
    import shutil

    from backends.answering.claims import TRAINING_DATA, training_examples_of

    folder = shutil.copytree(tiny_adapter["path"], tmp_path / "text-adapter")
    chunk = ("Brackwater Instruments was founded in 2009 by Ilse Marrow and Tobiah Quen. "
             "The company employs 212 people.")
    (folder / TRAINING_DATA).write_text(json.dumps({"text": chunk, "source": "company_overview.md"}) + "\n")
    examples = training_examples_of(folder)
    assert [e.answer for e in examples] == ["Brackwater Instruments was founded in 2009 by Ilse Marrow and Tobiah Quen.",
                                            "The company employs 212 people."]
    [claim] = duet.tracer.trace(Answer(backend="ft", question="q", text="The company employs 212 people.",
                                       adapter="text"), training=examples)
    assert claim.origin == claims.ORIGIN_TRAINING and claim.evidence.file_name == "company_overview.md"


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


@pytest.mark.fast
def test_a_conflict_names_the_values_of_both_sides():
    from backends.answering.claims import difference

    assert difference("The deposit is 4400 euros or 55 per month.", "It is 55 per month.") == "numbers differ: 4400 vs 55"
    assert difference("It costs 60 euros.", "It costs 55 euros.") == "numbers differ: 60 vs 55"


def test_a_supported_sentence_that_does_not_answer_the_question_is_flagged(duet):
    answer = Answer("rag", "Where is the Brackwater headquarters?", "Brackwater employs 212 people (headcount on 1 January 2026).")
    [claim] = duet.tracer.trace(answer)
    assert claim.verdict == SUPPORTED and claim.answers is False and not claim.grounded
    assert claim.label == "supported · does not answer the question" and groundedness([claim]) == 0
    right = Answer("rag", "Where is the Brackwater headquarters?",
                   "The headquarters is the Lantern Building at 14 Pellow Quay, Port Aldren.")
    assert [(c.verdict, c.answers) for c in duet.tracer.trace(right)] == [(SUPPORTED, True)]


@pytest.fixture(scope="module")
def real_tracer(tmp_path_factory, settings, duet):
    """The tracer over an index of the real documents (tests/data/realdocs)."""
    from backends.answering.claims import ClaimTracer
    from backends.knowledge.index import DocumentIndex
    from tests.helpers import REAL_DOCS

    index = DocumentIndex(settings.with_store(tmp_path_factory.mktemp("realdocs") / "store"))
    assert all(r.status == "added" for r in index.ingest_paths([REAL_DOCS / "docs"]))
    yield ClaimTracer(index)
    index.close()


@pytest.fixture(scope="module")
def demo_tracer(tmp_path_factory, settings, duet):
    """The tracer over a copy of the whole demo index (24 documents)."""
    from backends.answering.claims import ClaimTracer
    from backends.knowledge.index import DocumentIndex
    from tests.helpers import copy_demo_store

    index = DocumentIndex(settings.with_store(copy_demo_store(tmp_path_factory.mktemp("demo") / "store")))
    yield ClaimTracer(index)
    index.close()


def test_an_invented_command_is_not_supported_by_the_manual(real_tracer):
    said = lambda text: real_tracer.trace(Answer("rag", "", text))[0].verdict  # noqa: E731
    assert said("The shell of user sync is /bin/sync.") == SUPPORTED
    assert said("Sync works on the shell command sslink.") != SUPPORTED


def test_supported_is_precise_on_labelled_claims_of_real_and_demo_documents(real_tracer, demo_tracer, capsys):
    from backends.core.config import DATA_DIR
    from tests.helpers import REAL_DOCS, supported_precision_recall

    real = supported_precision_recall(real_tracer, REAL_DOCS / "claims.jsonl")
    demo = supported_precision_recall(demo_tracer, DATA_DIR / "qa" / "claims.jsonl")
    with capsys.disabled():
        for name, (precision, recall, n) in (("real-document", real), ("demo", demo)):
            print(f"\n{name} claims: precision of 'supported' {precision:.3f}, recall {recall:.3f} ({n} claims)")
    assert real[0] >= 0.9 and real[1] >= 0.9  # measured 0.951, 0.967
    assert demo[0] >= 0.95 and demo[1] >= 0.7  # measured 0.969, 0.775


def test_a_synopsis_line_or_a_code_fragment_does_not_answer_a_question_that_asks_for_a_value(real_tracer):
    from backends.answering.claims import claim_answers
    from backends.core.types import Evidence

    lexicon = real_tracer.index.lexicon()
    question = "What is the default CHUNK size in zpipe.c?"
    for text in ("zpipe [-d] < source > dest", "} Function: inflateEnd int inflateEnd(z_streamp strm);"):
        claim = Claim(text, SUPPORTED, Evidence(text, "retrieved", "zlib_how.html", "", "d", 1.0, 1.0, 1.0))
        assert not claim_answers(question, claim, lexicon), text
    value = Claim("#define CHUNK 16384", SUPPORTED, Evidence("#define CHUNK 16384", "retrieved", "zlib_how.html", "", "d",
                                                            1.0, 1.0, 1.0))
    assert claim_answers("What is CHUNK defined as?", value, lexicon)


def test_a_name_answers_a_who_question_and_a_true_sentence_without_one_does_not(real_tracer):
    from backends.answering.claims import claim_answers
    from backends.core.types import Evidence

    lexicon = real_tracer.index.lexicon()
    evidence = Evidence("zpipe.c: example of proper use of zlib's inflate() and deflate() Not copyrighted -- provided to "
                        "the public domain Version 1.4 11 December 2005 Mark Adler", "retrieved", "zlib_how.html", "", "d",
                        1.0, 1.0, 1.0)
    assert claim_answers("Who wrote zpipe.c?", Claim("Mark Adler wrote zpipe.c.", SUPPORTED, evidence), lexicon)
    assert not claim_answers("Who wrote zpipe.c?", Claim("zpipe.c is not copyrighted.", SUPPORTED, evidence), lexicon)


def test_a_wrong_abstention_is_flagged_with_the_source_that_held_the_answer(duet):
    from backends.answering.claims import WRONG_ABSTENTION, one_line_verdict
    from backends.core.types import Source

    source = Source("c1", "d1", "travel_policy.pdf", "page 1", "Hotels. The nightly hotel limit is 160 euros in most "
                    "cities. Trains are preferred.", 0.5)
    wrong = Answer("rag", "What is the nightly hotel limit?", "The documents do not say.", sources=(source,), abstained=True)
    [claim] = duet.tracer.trace(wrong)
    assert claim.reason == WRONG_ABSTENTION and claim.label == "wrong abstention" and "160 euros" in claim.evidence.text
    assert one_line_verdict(wrong, (claim,)) == "abstained, but travel_policy.pdf page 1 holds an answer"
    right = Answer("rag", "Who won the 2018 World Cup?", "The documents do not say.", sources=(source,), abstained=True)
    assert duet.tracer.trace(right) == [] and one_line_verdict(right, ()) == "not in the documents"


def test_presentation_says_backed_only_for_a_claim_that_answers(duet):
    from backends.answering.claims import one_line_verdict

    beside = Answer("rag", "Where is the Brackwater headquarters?",
                    "Brackwater employs 212 people (headcount on 1 January 2026).")
    assert one_line_verdict(beside, tuple(duet.tracer.trace(beside))) == "true, but does not answer the question"
    right = Answer("rag", "Where is the Brackwater headquarters?",
                   "The headquarters is the Lantern Building at 14 Pellow Quay, Port Aldren.")
    assert one_line_verdict(right, tuple(duet.tracer.trace(right))).startswith("backed by ")
