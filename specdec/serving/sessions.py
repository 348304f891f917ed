"""A thread-safe table of live sessions, for limits, inspection and cancellation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from specdec.core.errors import AlreadyExists


@dataclass
class SessionEntry:
    id: str
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    _hooks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the session is cancelled (at once if it already is): whatever the session is
        blocked on (waiting for a proposal, a message) must wake up, not wait out its own timeout."""
        with self._lock:
            if not self.cancel.is_set():
                self._hooks.append(hook)
                return
        hook()

    def cancel_now(self) -> None:
        with self._lock:
            self.cancel.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()


class SessionTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionEntry] = {}

    def add(self, session_id: str) -> SessionEntry:
        """A new entry; a session id that is already running is refused (ids key the table and the logs)."""
        entry = SessionEntry(session_id)
        with self._lock:
            if session_id in self._sessions:
                raise AlreadyExists(f"session {session_id!r} is already running")
            self._sessions[session_id] = entry
        return entry

    def remove(self, entry: SessionEntry) -> None:
        with self._lock:
            if self._sessions.get(entry.id) is entry:
                del self._sessions[entry.id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
