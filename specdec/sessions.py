"""A thread-safe table of live sessions, for limits, inspection and cleanup."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class SessionEntry:
    id: str
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)


class SessionTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionEntry] = {}

    def add(self, session_id: str) -> SessionEntry:
        entry = SessionEntry(session_id)
        with self._lock:
            self._sessions[session_id] = entry
        return entry

    def remove(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def cancel_all(self) -> None:
        with self._lock:
            for entry in self._sessions.values():
                entry.cancel.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
