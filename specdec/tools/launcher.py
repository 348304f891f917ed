"""`specdec up`: start draft, target and orchestrator as child processes on loopback, wait until all
three are healthy and the orchestrator can route, print the orchestrator's address, and stop them all on Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from specdec.serving.security import TLSFiles
from specdec.serving.server import wait_healthy
from specdec.v1 import orchestrator_pb2

log = logging.getLogger("specdec.up")
PARENT_PID_ENV = "SPECDEC_PARENT_PID"
# its health name: SERVING once the orchestrator has found its backends healthy (it can route)
ORCHESTRATOR_SERVICE = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name


def watch_parent(pid: int, stop: threading.Event) -> None:
    """Drain and exit when the launching process is gone (killed, even by the OOM killer): a local
    stack must not leave servers holding gigabytes of models behind."""
    while not stop.wait(1.0):
        if os.getppid() != pid:
            log.warning("parent process %d is gone: shutting down", pid)
            stop.set()


def free_base_port(count: int = 3, preferred: int | None = None) -> int:
    """A port p such that p .. p+count-1 are all free on 127.0.0.1 (`preferred` first, if given)."""
    candidates = ([preferred] if preferred else []) + [random.randint(20000, 60000) for _ in range(200)]
    for base in candidates:
        try:
            with contextlib.ExitStack() as stack:
                for i in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports on 127.0.0.1")


@dataclass
class Stack:
    """The three processes of one local deployment."""

    host: str = "127.0.0.1"
    port: int = 50051  # the orchestrator; target = port + 1, draft = port + 2
    target: str = "tiny"
    draft: str | None = "tiny"
    extra: dict[str, list[str]] = field(default_factory=dict)  # per role: extra `serve` flags
    tls: TLSFiles | None = None  # how to reach the servers' health service when they serve TLS
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the three processes
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def addresses(self) -> dict[str, str]:
        return {"orchestrator": self.address, "target": f"{self.host}:{self.port + 1}",
                "draft": f"{self.host}:{self.port + 2}"}

    def command(self, role: str) -> list[str]:
        a = self.addresses()
        host, port = a[role].rsplit(":", 1)
        cmd = [sys.executable, "-m", "specdec", "serve", role, "--host", host, "--port", port,
               "--target", self.target]
        if role == "draft":
            cmd += ["--draft", self.draft or "tiny"]
        if role == "orchestrator":
            cmd += ["--targets", a["target"]] + (["--drafts", a["draft"]] if self.draft else [])
        return cmd + self.extra.get(role, [])

    def start_role(self, role: str) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(role), env={**os.environ, **self.env, PARENT_PID_ENV: str(os.getpid())})
        self.procs[role] = proc
        return proc

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the three at once (each spends seconds loading torch), and return once the orchestrator
        can route to them."""
        roles = ["draft", "target", "orchestrator"] if self.draft else ["target", "orchestrator"]
        for role in roles:
            self.start_role(role)
        for role in roles:
            self._wait(role, timeout_s)

    def _wait(self, role: str, timeout_s: float) -> None:
        """Until the role is healthy; for the orchestrator, until its service is: it has found its backends."""
        proc = self.procs[role]
        service = ORCHESTRATOR_SERVICE if role == "orchestrator" else ""
        waiter = threading.Thread(target=wait_healthy, args=(self.addresses()[role], timeout_s, self.tls, service),
                                  daemon=True)
        waiter.start()
        while waiter.is_alive():
            waiter.join(0.2)
            if proc.poll() is not None:
                self.stop()
                raise SystemExit(f"specdec up: the {role} exited with code {proc.returncode} while starting")
        wait_healthy(self.addresses()[role], 1.0, self.tls, service)

    def stop(self, grace_s: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()

    def run_until_signal(self) -> int:
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        print(f"specdec is up: orchestrator at {self.address} (plaintext on loopback; Ctrl-C stops every server)",
              flush=True)
        while not done.wait(0.5):
            for role, proc in self.procs.items():
                if proc.poll() is not None and not getattr(proc, "_reported", False):
                    proc._reported = True
                    log.warning("the %s exited with code %s", role, proc.returncode)
        self.stop()
        return 0
