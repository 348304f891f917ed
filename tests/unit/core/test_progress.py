"""LogProgress: a GPU server's start-up compiles and captures for minutes; its log says how far it is."""

import logging

from specdec.core.progress import LogProgress


def test_long_work_logs_how_far_it_is_at_most_once_per_interval(caplog):
    now = [100.0]
    log = logging.getLogger("specdec.test_progress")
    progress = LogProgress(log, "capturing CUDA graphs", 5, every_s=15.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="specdec.test_progress"):
        for label, at in (("a", 100.0), ("b", 110.0), ("c", 116.0), ("d", 120.0), ("e", 132.0)):
            now[0] = at
            progress.item(label)
    assert [r.getMessage() for r in caplog.records] == [
        "capturing CUDA graphs: 3 of 5 (c), 16 s so far",  # the first item 15 s or more after the start
        "capturing CUDA graphs: 5 of 5 (e), 32 s so far",  # then 15 s or more after that line
    ]
    assert progress.done == 5


def test_short_work_logs_nothing(caplog):
    progress = LogProgress(logging.getLogger("specdec.test_progress"), "compiling", 3, clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="specdec.test_progress"):
        for label in "abc":
            progress.item(label)
    assert not caplog.records
