"""Long work in a background thread that a web page watches: progress, cancel, the result or the error."""

from __future__ import annotations

import threading
import time

from backends.core.errors import BadInput
from backends.core.logs import log


class Eta:
    """Seconds left, from the rate measured so far: elapsed / done x what is left (None before the first)."""

    def __init__(self):
        self.started = time.perf_counter()

    def seconds_left(self, done: int, total: int) -> float | None:
        return (time.perf_counter() - self.started) / done * (total - done) if done else None

    def text(self, done: int, total: int) -> str:
        left = self.seconds_left(done, total)
        return "ETA --" if left is None else f"ETA {left:.0f}s"


class Cancelled(Exception):
    """Raised inside long work when its cancel event is set; whatever it was writing is left unwritten."""


class BackgroundJob:
    """One run of `work` in a daemon thread. State: starting | running | done | cancelled | failed."""

    what = "the job"  # for messages: "training failed: ..."

    def __init__(self, name: str):
        self.name = name
        self.progress: list = []
        self.state = "starting"
        self.error = ""
        self.result = None
        self.started_at = time.time()
        self.logged = False  # an unexpected failure's traceback is in the log
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"duet-{type(self).__name__}-{name}", daemon=True)

    def work(self, on_progress, cancel: threading.Event):
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running")

    @property
    def latest(self):
        return self.progress[-1] if self.progress else None

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _on_progress(self, progress) -> None:
        self.state = "running"
        self.progress.append(progress)

    def _run(self) -> None:
        try:
            self.result = self.work(self._on_progress, self._cancel)
            self.state = "done"
        except Cancelled as stopped:
            self.state, self.error = "cancelled", str(stopped)
        except BadInput as error:
            self.state, self.error = "failed", str(error)
        except Exception as error:  # shown on the page; saves are atomic, so nothing is half-written
            log.exception("%s failed", self.what)  # the traceback goes to the store's log, which the page names
            self.state, self.error = "failed", f"{self.what} failed: {type(error).__name__}: {error}"
            self.logged = True
