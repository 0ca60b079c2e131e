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
