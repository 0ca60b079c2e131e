"""What the model is asked: the question checked, RAG's numbered sources, the system prompt.

Retrieved text is data: each chunk sits between delimiters with its number and source, and
the instructions say to ignore instructions inside them.
"""

from __future__ import annotations

from backends.core.config import Settings
from backends.core.errors import BadInput
from backends.core.types import Source
from backends.learning.examples import rag_messages

def check_question(question: str, settings: Settings) -> str:
    question = " ".join(question.split())
    if not question:
        raise BadInput("the question is empty: type a question")
    if len(question) > settings.max_question_chars:
        raise BadInput(f"the question is longer than {settings.max_question_chars} characters: shorten it")
    return question


def build_messages(question: str, sources: list[Source]) -> list[dict]:
    """The RAG conversation, the same one RAFT rows are trained on (`learning.examples.rag_messages`)."""
    return rag_messages(question, sources)
