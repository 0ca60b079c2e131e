"""Where Duet's errors go: the `duet` logger, written to `<store>/logs/duet.log` (tracebacks included), so that a
person is shown one line and the log keeps the detail."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from pathlib import Path

log = logging.getLogger("duet")
_started: set[Path] = set()
_lock = threading.Lock()


def log_path(store_dir: Path) -> Path:
    return Path(store_dir) / "logs" / "duet.log"


class _OneLine(logging.Formatter):
    """The console gets the message only; its traceback stays in the file."""

    def format(self, record: logging.LogRecord) -> str:
        return f"duet {record.levelname.lower()}: {record.getMessage()}"


_console: list[logging.Handler] = []


def start_logging(store_dir: Path, console: bool = False) -> Path:
    """Send the `duet` logger to the store's log file (once per file and process); returns the file's path.

    `console`: warnings also go to stderr, one line each (the app's server console; the CLI prints its own line)."""
    path = log_path(store_dir)
    with _lock:
        if console and not _console:
            handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.WARNING)
            handler.setFormatter(_OneLine())
            log.addHandler(handler)
            _console.append(handler)
        if path not in _started:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
            except OSError:  # a read-only store: errors still reach stderr through logging's last resort
                return path
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            _started.add(path)
    return path
