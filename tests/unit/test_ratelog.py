"""The counting, rate-limited logger (:mod:`netstack.ratelog`) on a manual clock."""

from __future__ import annotations

import logging

import pytest

from netstack.ratelog import RateLog
from tests.kit.clock import ManualClock


def test_one_line_per_interval_per_topic_with_the_suppressed_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(now=0.0)
    log = RateLog(logging.getLogger("test.ratelog"), interval=30.0, clock=clock.time)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert log.warning("read", "read failed: %s", "EIO")
        assert not log.warning("read", "read failed: %s", "EIO")
        assert log.warning("write", "write failed")  # another topic has its own budget
        clock.advance(29.9)
        assert not log.warning("read", "read failed: %s", "EIO")
        assert log.suppressed == {"read": 2}
        clock.advance(0.1)
        assert log.warning("read", "read failed: %s", "EBADF")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "read failed: EIO",
        "write failed",
        "read failed: EBADF (2 similar suppressed)",
    ]
    assert log.counts == {"read": 4, "write": 1} and log.total() == 5
    assert log.suppressed == {} and log.count("read") == 4


def test_burst_allow_reset_and_levels(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(now=0.0)
    log = RateLog(logging.getLogger("test.ratelog"), interval=10.0, burst=3, clock=clock.time)
    assert [log.allow("x") for _ in range(5)] == [True, True, True, False, False]
    assert log.take_suppressed("x") == 2 and log.take_suppressed("x") == 0
    log.reset("x")
    assert log.allow("x")  # the window is forgotten, the count is not
    assert log.count("x") == 6
    with caplog.at_level(logging.DEBUG, logger="test.ratelog"):
        log.error("e", "bad %d", 1)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("e", "handling")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "bad 1"),
        (logging.ERROR, "handling"),
    ]
    assert caplog.records[1].exc_info is not None
