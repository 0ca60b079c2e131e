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


def start_logging(store_dir: Path) -> Path:
    """Send the `duet` logger to the store's log file (once per file and process); returns the file's path."""
    path = log_path(store_dir)
    with _lock:
        if path not in _started:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
            except OSError:  # a read-only store: errors still reach stderr through logging's last resort
                return path
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
            log.addHandler(handler)
            if not _started:  # and once per process to stderr, where the server's console shows it
                console = logging.StreamHandler(sys.stderr)
                console.setLevel(logging.WARNING)
                console.setFormatter(logging.Formatter("duet %(levelname)s: %(message)s"))
                log.addHandler(console)
            log.setLevel(logging.INFO)
            _started.add(path)
    return path
