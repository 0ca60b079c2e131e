"""A test hook that widens the window in which a crash can hit: the SIGKILL tests use it.

With DUET_TEST_PAUSE=<point>:<seconds> in the environment, the process announces on stderr
that it reached <point> and sleeps there, so a test can kill it at exactly that moment
(in the middle of an index commit, or of an adapter save). Unset, it does nothing.
"""

from __future__ import annotations

import os
import sys
import time


def pause_point(name: str) -> None:
    point, _, seconds = os.environ.get("DUET_TEST_PAUSE", "").partition(":")
    if point == name:
        print(f"duet: paused at {name}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 60))
