"""Exceptions that carry a message meant for the person who caused them.

`BadInput` is what the CLI turns into exit code 2 and what pages show with `st.error`.
"""


class DuetError(Exception):
    """Base class for errors Duet reports to users (never a traceback)."""


class BadInput(DuetError):
    """The user's input (file, question, dataset, option) cannot be used; the message says why and what to do."""


class StoreInUse(DuetError):
    """Another process is writing to the same store."""


class StoreUnavailable(DuetError):
    """The configured Chroma server cannot be reached."""


class ModelUnavailable(DuetError):
    """A configured model cannot be found or loaded."""


class LoadFailed(DuetError):
    """A model, the index or a library could not be loaded; the message names it and where the traceback is."""
