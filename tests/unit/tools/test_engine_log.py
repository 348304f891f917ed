"""The engine's log lines read back (specdec.tools.engine_log): from a device call's log as it was written."""

import os

from specdec.tools import engine_log

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def ks4_log() -> str:
    with open(os.path.join(ROOT, "docs", "results", "issue17_ks4_this.log"), encoding="utf-8") as f:
        return f.read()


def test_a_device_calls_windows_come_back_with_their_drafting_lines():
    found = engine_log.windows(ks4_log())
    drafted = next(w for w in found if w.time == "18:59:27")
    assert drafted.who == "target-engine"
    assert drafted.values == {  # as the log line reads (docs/benchmarks.md, stop 74's table), older than some fields
        "steps": 293, "rows": 60.3, "step_ms": 11.1, "forward_ms": 9.1, "drafting_ms": 5.9, "phases": 290, "busy": 65,
        "split": 197, "into_phase_ms": 2.8, "after_read_ms": 2.2, "device_wait_ms": 0.2, "verify_ms": 9.8,
        "ahead_ms": 7.0, "ahead_steps": 3.9, "first_width": 6.7, "joined": 137, "joined_ms": 7.8}
    assert drafted.widths == {1: 3, 3: 6, 5: 284}
    plain = next(w for w in found if w.time == "18:58:03")
    assert plain.values["rows"] == 62.2 and "ahead_ms" not in plain.values  # target-only: no drafting line


def test_the_table_keeps_the_windows_at_load():
    found = engine_log.windows(ks4_log())
    text = engine_log.table(found, ("rows", "driven", "ahead_ms"), min_rows=59)
    lines = text.splitlines()
    assert lines[0] == "| time | engine | rows | driven | ahead_ms | steps wider than 1 |"
    body = lines[2:]
    assert body and len(body) == sum(w.values.get("rows", 0) >= 59 for w in found)
    assert "| 18:59:27 | target-engine | 60.3 | – | 7 | 99% |" in body  # no such field then: a dash
