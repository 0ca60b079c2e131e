"""The naturalness floor of generated questions, on its own and on a real build (issue 34)."""

import pytest

from backends.learning.naturalness import floor_problems, passes_floor


@pytest.mark.fast
@pytest.mark.parametrize("question", [
    "Who should Packages be written so that they?", "What does the the closure api say about this?",
    "} while (ret != what)?", "What does the libxslttutorial say about None?",
    "Brackwater Instruments was founded in which year?", "Who founded Brackwater Instruments",
    "How many?", "What does `xsltproc` do?", "Does it depend on?",
    "Once the default Python 3 version is changed, binNMUs are done for packages that only support one Python how many version?",
])
def test_questions_a_person_would_not_ask_fail_the_floor(question):
    assert floor_problems(question)


@pytest.mark.fast
@pytest.mark.parametrize("question", [
    "In which year was Brackwater Instruments founded?", "How many people does Brackwater employ?",
    "Does dpkg run triggers at the end of each run?", "According to the zlib how-to, what does inflate() return?",
    "What is the default value of --maxdepth?", "What does the cif in ffi_cif stand for?",
    "Which file holds /etc/dpkg/dpkg.cfg settings?",
])
def test_questions_a_person_would_ask_pass_the_floor(question):
    assert passes_floor(question), floor_problems(question)


@pytest.mark.fast
def test_a_question_that_holds_its_own_answer_fails():
    assert "the answer is inside the question" in floor_problems("When was Brackwater founded in 2009?", "2009")
    assert "the answer is inside the question" in floor_problems("Who are Ilse Marrow and Tobiah Quen?", "Ilse Marrow")
    assert passes_floor("When was Brackwater founded?", "2009")


def test_every_question_of_a_build_from_real_documents_passes_the_floor(tmp_path, settings):
    """Debian documentation the generator was not written for: training and held-out questions alike."""
    from backends.learning.datasets import DatasetOptions, build_dataset
    from backends.service import Duet
    from tests.helpers import REAL_DOCS

    duet = Duet(settings.with_store(tmp_path / "store"))
    try:
        duet.index.ingest_paths([REAL_DOCS / "docs"])
        dataset = build_dataset(duet.index, DatasetOptions())
    finally:
        duet.index.close()
    asked = [(r["question"], r["evidence"]["text"]) for r in dataset.train] + [(r["question"], r["answer"]) for r in dataset.eval]
    assert len(dataset.train) >= 20 and dataset.eval, "the floor leaves a dataset to train on"
    failing = [(q, floor_problems(q, a)) for q, a in asked if floor_problems(q, a)]
    assert len(failing) <= 0.15 * len(asked), failing[:5]
