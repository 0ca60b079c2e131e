"""The log: a job's unexpected failure leaves its traceback in the store's log file and a line on stderr (issue 36)."""

import logging
import threading

import pytest

from backends.core.jobs import BackgroundJob
from backends.core.logs import log, log_path, start_logging

pytestmark = pytest.mark.fast


class Broken(BackgroundJob):
    what = "building the report"

    def work(self, on_progress, cancel: threading.Event):
        return {}["missing"]  # a bug, not bad input


def test_an_unexpected_job_failure_is_logged_with_its_traceback_and_the_page_can_name_the_file(tmp_path, capsys):
    path = start_logging(tmp_path / "store", console=True)
    job = Broken("report")
    job.start()
    job.wait(30)
    for handler in log.handlers:
        handler.flush()
    assert job.state == "failed" and job.logged and "KeyError" in job.error
    text = path.read_text()
    assert path == log_path(tmp_path / "store") and "building the report failed" in text
    assert "Traceback (most recent call last)" in text and "KeyError: 'missing'" in text
    console = [h for h in log.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert console and "Traceback" not in console[0].format(logging.LogRecord("duet", logging.ERROR, "", 0, "boom", (),
                                                                               (KeyError, KeyError("x"), None)))
