"""Parsing untrusted documents in a child process with a time limit and a memory cap.

A parser that hangs (a PDF with a reference loop) or explodes (a decompression bomb)
takes the child with it, never the app: the child is killed after `parse_timeout_s`,
and its address space is capped at `parse_memory_mb`. Either way the caller gets a
`BadInput` naming what happened, and nothing reached the index.

Protocol: `python -m backends.knowledge.sandbox NAME CSV_ROWS MEMORY_MB` reads the file's bytes on stdin and
prints one JSON object: {"segments": [[text, location, splittable], ...]} or {"error": reason}.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import traceback

from backends.core.config import REPO_ROOT, Settings
from backends.core.errors import BadInput
from backends.core.logs import log
from backends.knowledge.loaders import Segment, load_document


def _cap_memory(limit_bytes: int):
    def apply() -> None:  # runs in the child before it starts Python
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def parse_isolated(name: str, data: bytes, settings: Settings) -> list[Segment]:
    """load_document in a child process; BadInput for unreadable, hanging or exploding files."""
    command = [sys.executable, "-m", "backends.knowledge.sandbox", name, str(settings.csv_rows_per_chunk), str(settings.parse_memory_mb)]
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=settings.parse_timeout_s, cwd=REPO_ROOT,
                              preexec_fn=_cap_memory(settings.parse_memory_mb * 1024 * 1024))
    except subprocess.TimeoutExpired:
        raise BadInput(f"reading the file took longer than {settings.parse_timeout_s} s and was stopped; "
                       "the file may be damaged or built to hang parsers") from None
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        reply = {"error": _crash_reason(done, settings)}
    if "traceback" in reply:  # a parser bug: the user gets the reason, the log the detail
        log.warning("parsing %s failed:\n%s", name, reply["traceback"])
    if "error" in reply:
        raise BadInput(reply["error"])
    return [Segment(text, location, splittable) for text, location, splittable in reply["segments"]]


def _crash_reason(done: subprocess.CompletedProcess, settings: Settings) -> str:
    if b"MemoryError" in done.stderr or done.returncode < 0:
        return (f"reading the file needed more than {settings.parse_memory_mb} MB and was stopped; "
                "the file may be damaged or a decompression bomb")
    return f"the file could not be read (the parser failed with exit code {done.returncode})"


def main(argv: list[str]) -> int:
    name, csv_rows, memory_mb = argv[0], int(argv[1]), argv[2]
    data = sys.stdin.buffer.read()
    try:
        segments = load_document(name, data, csv_rows)
        reply = {"segments": [[s.text, s.location, s.splittable] for s in segments]}
    except BadInput as error:
        reply = {"error": str(error)}
    except MemoryError:
        reply = {"error": f"reading the file needed more than {memory_mb} MB and was stopped; "
                          "the file may be damaged or a decompression bomb"}
    except Exception as error:  # any parser bug becomes a per-file rejection, not a crash of the batch
        reply = {"error": f"the file could not be read ({type(error).__name__}); check that it opens on your computer",
                 "traceback": traceback.format_exc()}
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
