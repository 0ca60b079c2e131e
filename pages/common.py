"""Helpers shared by the pages: cached backends, safe text rendering, session keys.

Pages stay thin: they render widgets and call `backends`; everything loaded once per
process (models, the index) is created here with `st.cache_resource`.
"""

from __future__ import annotations

import contextlib
import hmac
import re

import streamlit as st

from backends.core.config import Settings, load_settings
from backends.core.errors import DuetError
from backends.apps.serve import LOOPBACK
from backends.core.logs import log, log_path, start_logging
from backends.service import Duet, get_duet

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")

# Our own constant CSS (no untrusted text): larger type and no sidebar for presentations.
PRESENTATION_STYLE = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] { display: none; }
.stApp { font-size: 1.25rem; }
.stApp h1 { font-size: 2.6rem; } .stApp h3 { font-size: 1.7rem; }
[data-testid="stText"] { font-size: 1.35rem; }
</style>"""


@st.cache_resource(show_spinner=False)
def app_settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner="Preparing models (the first start converts the bundled model, about 30 s)…")
def duet() -> Duet:
    """The process-wide backends, warm (libraries imported, every part built) before any page can start Compare
    or a job: their threads must not import or build them at once."""
    settings = app_settings()
    start_logging(settings.store_dir, console=True)  # the server's console gets a line per warning
    warm = get_duet(settings).warm()
    if settings.prepare_story:
        from backends.apps.story import prepared_story

        prepared_story(warm)  # in the background: the story opens at once for the room
    return warm


def literal(text: str) -> str:
    """Markdown that displays `text` exactly: no HTML, links, images, emphasis or maths."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text).replace("\n", "  \n")


def presenting() -> bool:
    """Presentation mode: read-only, larger type, no sidebar (`?present=1`)."""
    return st.query_params.get("present") == "1"


class SecretsUnreadable(DuetError):
    """.streamlit/secrets.toml exists and cannot be read: never taken as "nothing configured"."""


def _secrets() -> dict:
    try:
        return {name: st.secrets[name] for name in st.secrets}
    except Exception as error:
        if getattr(error, "error_id", "") == "no-secrets-found":
            return {}  # no secrets.toml: nothing configured
        raise SecretsUnreadable(f"the secrets file cannot be read ({error}): fix .streamlit/secrets.toml or remove "
                                "it, then restart Duet") from error


def refuse_an_unsafe_start() -> None:
    """Stop before any page when the secrets are broken, or when Duet is reachable from other computers and nothing
    guards uploading, deleting and training (`make run ADDRESS=0.0.0.0` needs a password, a login or read_only)."""
    try:
        mode = access_mode()
    except SecretsUnreadable as error:
        st.error(f"Duet did not start: {error}.")
        st.stop()
    address = st.get_option("server.address") or "every interface"
    if address not in LOOPBACK and mode == "open":
        st.error(f"Duet did not start: it is served on {address}, so other computers can reach it, and nothing guards "
                 "uploading, deleting and training. Set admin_password (or [auth] with admins) in "
                 ".streamlit/secrets.toml, or start it read-only (DUET_READ_ONLY=1), or serve on 127.0.0.1 only.")
        st.stop()


def access_mode() -> str:
    """How changing data is guarded: "login" ([auth] in secrets, OIDC via st.login), "password"
    (admin_password in secrets), "read-only" (setting read_only), or "open"."""
    secrets = _secrets()
    if "auth" in secrets:
        return "login"
    if secrets.get("admin_password"):
        return "password"
    return "read-only" if app_settings().read_only else "open"


def may_change_data(action: str = "Uploading, deleting and training") -> bool:
    """True when this viewer may change data (upload, delete, train); otherwise says why not and how.

    Compare stays open to every viewer; only pages that change data ask this.
    """
    if presenting():
        st.info(f"{action} are not available in presentation mode.")
        return False
    mode = access_mode()
    if mode == "open":
        return True
    if mode == "read-only":
        st.info(f"{action} are switched off: this is a read-only demo (setting read_only).")
        return False
    if mode == "login":
        return _signed_in_admin(action)
    return _admin_password(action)


def may_read(what: str) -> bool:
    """Whether this viewer may see document text, reports and adapters: anyone on 127.0.0.1 or with the setting
    public_reading; otherwise whoever may change data (checked without drawing the sign-in again)."""
    if app_settings().public_reading or (st.get_option("server.address") or "") in LOOPBACK:
        return True
    allowed = is_admin()
    if not allowed:
        st.caption(f"{what} need the same access as changing data here (or the setting public_reading).")
    return allowed


def is_admin() -> bool:
    """Whether this viewer may change data, checked without drawing a sign-in: the app is open (127.0.0.1, nothing
    configured), or the viewer gave the admin password or signed in as an admin."""
    mode = access_mode()
    return mode == "open" or (mode == "password" and bool(st.session_state.get("access.admin"))) or (
        mode == "login" and st.user.get("is_logged_in", False)
        and str(st.user.get("email", "")) in _secrets()["auth"].get("admins", []))


def _signed_in_admin(action: str) -> bool:
    if not st.user.get("is_logged_in", False):
        st.info(f"{action} need you to sign in.")
        st.button("Log in", on_click=st.login, key="access.login")
        return False
    admins = _secrets()["auth"].get("admins", [])
    email = str(st.user.get("email", ""))
    if not admins:  # anyone the login provider accepts is not an admin by default
        st.warning(f"{action} are not allowed: no admins are listed ([auth] admins in .streamlit/secrets.toml).")
        return False
    if email not in admins:
        st.warning(f"Signed in as {literal(email)}, who is not among the admins: {action.lower()} are not allowed.")
        return False
    st.caption(f"Signed in as {literal(email)}")
    st.button("Log out", on_click=st.logout, key="access.logout")
    return True


def _admin_password(action: str) -> bool:
    if st.session_state.get("access.admin"):
        return True
    entered = st.text_input("Admin password", type="password", key="access.password",
                            help=f"{action} need the admin password (admin_password in .streamlit/secrets.toml).")
    if entered and hmac.compare_digest(entered.encode(), str(_secrets()["admin_password"]).encode()):
        st.session_state["access.admin"] = True
        return True
    if entered:
        st.error("That is not the admin password.")
    st.info(f"{action} need the admin password.")
    return False


@contextlib.contextmanager
def page_errors():
    """Errors as messages in the page, never as a traceback (bad input says what to do)."""
    try:
        yield
    except DuetError as error:
        st.error(literal(str(error)))
    except Exception as error:  # an unexpected failure: name it, log its traceback, keep the app usable
        log.exception("a page failed")
        st.error(f"Something went wrong ({type(error).__name__}: {literal(str(error))}). Try again; the details "
                 f"are in {literal(str(log_path(app_settings().store_dir)))}.")


def key(page: str, name: str) -> str:
    """Session-state keys are namespaced per page."""
    return f"{page}.{name}"


@st.cache_data(show_spinner=False)
def demo_questions() -> list[str]:
    """Questions from the demo evaluation set, for the picker."""
    from backends.core.config import DATA_DIR
    from backends.learning.examples import read_qa_file

    path = DATA_DIR / "qa" / "eval.jsonl"
    return [item.question for item in read_qa_file(path)] if path.is_file() else []


def watch_job(job, name: str, progress, finished=None, every: float = 1.0) -> None:
    """A live panel for a BackgroundJob: its progress bar and a cancel button while it runs, its error when it
    fails, `finished()` when it is done; the whole page reruns once when it ends (its results appear)."""

    @st.fragment(run_every=every if job.running else None)
    def live() -> None:
        if job.running:
            fraction, text = progress(job.latest)
            st.progress(fraction, text=text)
            if st.button("Cancel", key=key(name, "cancel")):
                job.cancel()
        elif job.state != "done":
            where = f" The details are in {log_path(duet().settings.store_dir)}." if job.logged else ""
            st.warning(literal(job.error + where))
        if finished is not None:
            finished()
        if not job.running and st.session_state.get(key(name, "seen")) != id(job):
            st.session_state[key(name, "seen")] = id(job)
            st.rerun(scope="app")

    live()
