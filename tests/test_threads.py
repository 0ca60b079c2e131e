"""run_in_fresh_thread: the work runs elsewhere, the caller gets its result, errors and progress."""

from __future__ import annotations

import threading

import pytest

from backends.core.threads import run_in_fresh_thread

pytestmark = pytest.mark.fast


def test_the_result_comes_back_from_another_thread_that_has_ended():
    ran_on = []

    def work(a, b=0):
        ran_on.append(threading.current_thread())
        return a + b

    assert run_in_fresh_thread(work, 2, b=3) == 5
    assert ran_on[0] is not threading.current_thread()
    ran_on[0].join(timeout=5)
    assert not ran_on[0].is_alive()


def test_an_error_reaches_the_caller_unchanged():
    def work():
        raise ValueError("bad document")

    with pytest.raises(ValueError, match="bad document"):
        run_in_fresh_thread(work)


def test_progress_is_reported_in_the_callers_thread_in_order():
    received = []

    def work(progress):
        for step in ("converting", "loading"):
            progress(step)
        return "ready"

    report = lambda message: received.append((message, threading.current_thread()))
    assert run_in_fresh_thread(work, progress=report) == "ready"
    assert [m for m, _ in received] == ["converting", "loading"]
    assert all(thread is threading.current_thread() for _, thread in received)


def test_embedding_work_goes_before_the_next_decoding_pass():
    """A pass in progress finishes; the next waits until the torch work that asked meanwhile is done."""
    from backends.core.threads import ComputeTurns

    turns, order = ComputeTurns(), []
    in_pass, release, announced = threading.Event(), threading.Event(), threading.Event()

    def decoder():
        with turns.decoding_pass():
            in_pass.set()
            release.wait(30)
            order.append("pass 1")
        announced.wait(30)  # the embedding asked while pass 1 ran
        with turns.decoding_pass():
            order.append("pass 2")

    def embedding():
        with turns.torch_work():
            order.append("embedding")

    worker = threading.Thread(target=decoder)
    worker.start()
    assert in_pass.wait(30)
    other = threading.Thread(target=embedding)
    other.start()
    while True:  # until the embedding has announced itself (it then waits for the pass in progress)
        with turns.changed:
            if turns.working:
                break
        other.join(0.001)
    assert order == []
    announced.set()
    release.set()
    worker.join(30)
    other.join(30)
    assert order == ["pass 1", "embedding", "pass 2"]
