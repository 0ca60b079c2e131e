"""Where torch computes: heavy work outside the decoder runs in a fresh thread that then ends.

Each thread that runs a torch operation keeps an OpenMP pool while it lives, and more pools than cores make
libgomp sleep its workers after every operation: decoding then slows down by half (docs/performance.md). So the
decoder's thread alone keeps a pool; loading, embedding and adapter work go through `run_in_fresh_thread`, whose
pool ends with its thread (progress messages come back to the caller's thread, where a page can show them).
`TURNS` lets such torch work go before the onnxruntime decoder's next pass, instead of both sharing the cores.
`limit_malloc_arenas` keeps glibc from growing an arena per passing thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, TypeVar

from backends.core.jobs import Cancelled

T = TypeVar("T")
_DONE = object()
M_ARENA_MAX = -8  # glibc's mallopt parameter
IN_FLIGHT = 8  # questions evaluations and experiments ask at once: rows of the decoder's shared passes


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


class built_once:
    """`functools.cached_property` that builds its value at most once per instance, even when threads ask at the
    same moment: from Python 3.12 on cached_property takes no lock, and 8 threads asking a fresh Duet for its index
    built 8 Chroma clients at once."""

    def __init__(self, build: Callable):
        self.build, self.name, self.__doc__ = build, build.__name__, build.__doc__
        self._guard = threading.Lock()  # makes each instance's lock once

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        values = instance.__dict__
        if self.name in values:  # built: the instance's own attribute answers from now on, without this call
            return values[self.name]
        with self._guard:
            lock = values.setdefault(f"_built_once_{self.name}", threading.Lock())
        with lock:
            if self.name not in values:
                values[self.name] = self.build(instance)
            return values[self.name]


def run_concurrently(calls: list[Callable[[], T]], in_flight: int, on_done: Callable[[int, T], None] = lambda n, r: None,
                     cancel: threading.Event | None = None) -> list[T]:
    """Every call's result in order, `in_flight` running at once; `on_done(number, result)` in this thread as each ends.

    A set `cancel` starts nothing new and raises Cancelled once the running calls are back; the first
    error is raised as soon as it comes (the calls already running finish first).
    """
    cancel = cancel or threading.Event()
    results: list = [None] * len(calls)

    queued = iter(enumerate(calls))
    with ThreadPoolExecutor(max(1, in_flight), thread_name_prefix="duet-many") as pool:
        running: dict = {}
        while True:
            while len(running) < in_flight and not cancel.is_set() and (item := next(queued, None)):
                running[pool.submit(item[1])] = item[0]
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                number = running.pop(future)
                results[number] = future.result()
                on_done(number, results[number])
    if cancel.is_set():
        raise Cancelled("cancelled; the results so far are not kept")
    return results
