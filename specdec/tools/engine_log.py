"""The batched engine's 5 s log lines read back as numbers, and a Markdown table of them.

A device call's services log holds one `engine:` line per 5 s window (core.batching, `BatchedRunner._report`) and,
with an own draft, an `engine's drafting:` line after it: rows per step, where the missing rows are, each drafted
cycle's host path and device time. Read by eye, a sweep's windows were compared one field at a time; this reads every
field it knows from each window (each one optional: older logs lack the newer fields) and prints the windows at load
side by side.

Usage: python3 -m specdec.tools.engine_log LOG [--min-rows 48] [--fields rows,open,step_ms,...]
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
STEP_FIELDS = {  # name -> the pattern of its number in an `engine:` line
    "steps": r"engine: (\d+) steps",
    "rows": _NUMBER + r" rows per step",
    "driven": r"of " + _NUMBER + r" sessions driven",
    "open": _NUMBER + r" slots open",
    "arrivals": r"(\d+) new sessions,",
    "setup_ms": _NUMBER + r" ms from a slot's opening",
    "wait_ms": _NUMBER + r" more to its first step",
    "step_ms": _NUMBER + r" ms per step",
    "forward_ms": r"\(forward " + _NUMBER,
    "drafting_ms": r"drafting between steps " + _NUMBER,
    "phases": r" in (\d+) phases",
    "busy": r"busy (\d+)%",
    "split": r"(\d+) new prompts split",
    "into_phase_ms": r"launched " + _NUMBER + r" ms into",
    "after_read_ms": r"began " + _NUMBER + r" ms after the last read",
    "device_wait_ms": r"the device waiting " + _NUMBER + r" ms",
    "verify_ms": _NUMBER + r" ms on it\)",
}
DRAFT_FIELDS = {  # the same for its `engine's drafting:` line
    "ahead_ms": _NUMBER + r" ms on the device a launch",
    "ahead_steps": r"\(" + _NUMBER + r" steps, the first",
    "first_width": r"the first " + _NUMBER + r" tokens wide",
    "joined": r"(\d+) with a new session's catch-up",
    "joined_ms": r"catch-up, " + _NUMBER + r" ms each",
}
_COMPILED = {name: re.compile(pattern) for name, pattern in {**STEP_FIELDS, **DRAFT_FIELDS}.items()}
_LINE = re.compile(r"specdec\.batching\S* (?P<kind>engine:|engine's drafting:)")  # a service's log, or pytest's
_STAMP = re.compile(r"(\d\d:\d\d:\d\d)[,.]\d+ (\S+) ")  # a service's: the time and the process (`target-engine`)
_WIDTHS = re.compile(r"steps by tokens per row ([^;]*);")
DEFAULT_FIELDS = ("rows", "driven", "open", "wait_ms", "step_ms", "verify_ms", "ahead_ms", "first_width",
                  "after_read_ms", "into_phase_ms", "device_wait_ms")


@dataclass
class Window:
    """One 5 s window of one engine: its fields (those its lines had) and its steps by tokens per row."""

    time: str  # HH:MM:SS where the line has it
    who: str  # the logging process where the line names it, e.g. target-engine
    values: dict[str, float] = field(default_factory=dict)
    widths: dict[int, int] = field(default_factory=dict)


def windows(text: str) -> list[Window]:
    """Every `engine:` line of `text` as a Window, with its engine's `engine's drafting:` line (the next one from
    the same process) folded in."""
    found: list[Window] = []
    last: dict[str, Window] = {}  # process -> its latest window
    for line in text.splitlines():
        m = _LINE.search(line)
        if m is None:
            continue
        stamp = _STAMP.search(line[:m.start()])
        time, who = (stamp[1], stamp[2]) if stamp else ("", "")
        if m["kind"] == "engine:":
            window = Window(time, who, _read(STEP_FIELDS, line))
            widths = _WIDTHS.search(line)
            if widths:
                window.widths = {int(n): int(c) for n, c in (part.split(": ") for part in widths[1].split(", ") if part)}
            found.append(window)
            last[who] = window
        elif who in last:
            last[who].values.update(_read(DRAFT_FIELDS, line))
    return found


def _read(fields: dict[str, str], text: str) -> dict[str, float]:
    values = {}
    for name in fields:
        m = _COMPILED[name].search(text)
        if m is not None:
            values[name] = float(m[1])
    return values


def table(found: list[Window], names: tuple[str, ...] = DEFAULT_FIELDS, min_rows: float = 0.0) -> str:
    """A Markdown table of the windows with at least `min_rows` rows per step: time, process, `names` (– where a
    window's lines lack the field), and the share of its steps wider than one token."""
    rows = ["| time | engine | " + " | ".join(names) + " | steps wider than 1 |",
            "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for w in found:
        if w.values.get("rows", 0.0) < min_rows:
            continue
        cells = [f"{w.values[n]:g}" if n in w.values else "–" for n in names]
        total = sum(w.widths.values())
        wide = f"{100 * (total - w.widths.get(1, 0)) / total:.0f}%" if total else "–"
        rows.append(f"| {w.time} | {w.who} | " + " | ".join(cells) + f" | {wide} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m specdec.tools.engine_log", description=__doc__.split("\n")[0])
    parser.add_argument("log", help="a log with the engine's lines (a service's, or a bench's --log-level info)")
    parser.add_argument("--min-rows", type=float, default=0.0, help="only windows with at least this many rows a step")
    parser.add_argument("--fields", default=",".join(DEFAULT_FIELDS),
                        help=f"comma-separated, of: {', '.join((*STEP_FIELDS, *DRAFT_FIELDS))}")
    args = parser.parse_args(argv)
    names = tuple(n for n in args.fields.split(",") if n)
    unknown = [n for n in names if n not in _COMPILED]
    if unknown:
        parser.error(f"unknown fields {unknown}; known: {', '.join(_COMPILED)}")
    with open(args.log, encoding="utf-8", errors="replace") as f:
        found = windows(f.read())
    if not found:
        parser.exit(1, f"no engine lines in {args.log} (`engine: N steps in ...`, logged at INFO every 5 s)\n")
    print(table(found, names, args.min_rows))


if __name__ == "__main__":
    main()
