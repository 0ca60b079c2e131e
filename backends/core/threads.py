"""Where torch computes: heavy work outside the decoder runs in a fresh thread that then ends.

torch on a CPU parallelises with OpenMP (GNU libgomp). Every thread that runs a parallel
operation gets a pool of OpenMP worker threads that lives as long as that thread does, and
once the process holds more such workers than it has cores, libgomp stops letting idle
workers spin and puts them to sleep after every operation. A decoding step is a few hundred
small operations, so it then pays a wake-up for each: measured on 2 AVX2 cores, after the
main thread had once embedded a query, two answers side by side took 7.5 s instead of
3.9 s, and one answer decoded about 15% slower.

So one long-lived thread, the decoder's (`generation.Decoder`), keeps a pool; everything
else torch computes (loading a model, embedding texts, loading an adapter) runs through
`run_in_fresh_thread`, whose pool ends with its thread. The caller waits as before and gets
the result or the exception; progress messages are handed back to the caller's thread,
where a Streamlit page can show them.

The onnxruntime engine decodes with a thread pool of its own, beside torch's: an embedding
computed while it decodes would share the two cores with it, both at half speed or worse
(in Compare, RAG's evidence ranking took 0.1-0.65 s instead of ~0.05-0.1 s, and both answers
took longer together than one after the other). `TURNS` lets such torch work go first: it
waits only for the decoding pass in progress, and the decoder waits while it runs.

glibc gives threads their own malloc arenas and keeps what they freed, so a thread per
call grew the process by ~120 MB over 6 ingests of 300 chunks; with at most two arenas (one
per core here) it grew ~40 MB. `limit_malloc_arenas` sets that once, where glibc is the C
library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
from contextlib import contextmanager
from typing import Callable, TypeVar

T = TypeVar("T")
_DONE = object()
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """At most one malloc arena per core (glibc only; elsewhere nothing happens)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, max(2, os.cpu_count() or 2))
    except (OSError, AttributeError):
        pass


limit_malloc_arenas()


def run_in_fresh_thread(work: Callable[..., T], *args, progress: Callable[[str], None] | None = None, **kwargs) -> T:
    """`work(*args, **kwargs)` in a new thread that ends afterwards; with `progress`, work gets a relay as progress=."""
    messages: queue.Queue = queue.Queue()
    outcome: dict = {}

    def body() -> None:
        try:
            if progress is not None:
                kwargs["progress"] = messages.put
            outcome["result"] = work(*args, **kwargs)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error
        finally:
            messages.put(_DONE)

    thread = threading.Thread(target=body, name=f"duet-{getattr(work, '__name__', 'work')}", daemon=True)
    thread.start()
    while (message := messages.get()) is not _DONE:
        if progress is not None:
            progress(message)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class ComputeTurns:
    """Torch work outside the decoder goes before the onnxruntime decoder's next pass (see the module docstring)."""

    def __init__(self):
        self.changed = threading.Condition()
        self.working = 0  # torch works announced or running
        self.passing = False  # a decoding pass is running

    @contextmanager
    def torch_work(self):
        with self.changed:
            self.working += 1
            while self.passing:
                self.changed.wait()
        try:
            yield
        finally:
            with self.changed:
                self.working -= 1
                self.changed.notify_all()

    @contextmanager
    def decoding_pass(self):
        with self.changed:
            while self.working:
                self.changed.wait()
            self.passing = True
        try:
            yield
        finally:
            with self.changed:
                self.passing = False
                self.changed.notify_all()


TURNS = ComputeTurns()
