"""Helpers shared by the pages: cached backends, safe text rendering, session keys.

Pages stay thin: they render widgets and call `backends`; everything loaded once per
process (models, the index) is created here with `st.cache_resource`.
"""

from __future__ import annotations

import contextlib
import re

import streamlit as st

from backends.config import Settings, load_settings
from backends.errors import DuetError
from backends.service import Duet, get_duet

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")

# Our own constant CSS (no untrusted text): larger type and no sidebar for presentations.
PRESENTATION_STYLE = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] { display: none; }
.stApp { font-size: 1.25rem; }
.stApp h1 { font-size: 2.6rem; } .stApp h3 { font-size: 1.7rem; }
[data-testid="stText"] { font-size: 1.35rem; }
</style>"""
VERDICT_COLOURS = {"supported": "green", "partly supported": "orange", "unsupported": "red"}


@st.cache_resource(show_spinner=False)
def app_settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner="Preparing models (the first start converts the bundled model, about 30 s)…")
def duet() -> Duet:
    """The process-wide backends, with the base model and the index loaded."""
    instance = get_duet(app_settings())
    instance.llm  # noqa: B018 - load now, under the spinner
    instance.index  # noqa: B018
    return instance


def literal(text: str) -> str:
    """Markdown that displays `text` exactly: no HTML, links, images, emphasis or maths."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text).replace("\n", "  \n")


def presenting() -> bool:
    """Presentation mode: read-only, larger type, no sidebar (`?present=1`)."""
    return st.query_params.get("present") == "1"


def guarded(message: str = "This action is not available in presentation mode.") -> bool:
    """True when changing data is allowed on this page view; otherwise says why not."""
    if presenting():
        st.info(message)
        return False
    return True


@contextlib.contextmanager
def page_errors():
    """Errors as messages in the page, never as a traceback (bad input says what to do)."""
    try:
        yield
    except DuetError as error:
        st.error(str(error))
    except Exception as error:  # an unexpected failure: name it, keep the app usable
        st.error(f"Something went wrong ({type(error).__name__}: {literal(str(error))}). "
                 "Try again; if it persists, check the server log.")


def key(page: str, name: str) -> str:
    """Session-state keys are namespaced per page."""
    return f"{page}.{name}"


@st.cache_data(show_spinner=False)
def demo_questions() -> list[str]:
    """Questions from the demo evaluation set, for the picker."""
    from backends.config import DATA_DIR
    from backends.training import read_qa_file

    path = DATA_DIR / "qa" / "eval.jsonl"
    return [item.question for item in read_qa_file(path)] if path.is_file() else []
