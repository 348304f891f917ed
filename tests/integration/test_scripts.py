"""The measuring scripts that run on a CPU still run: they are used on a device with little time to spare, where a
script broken by a change elsewhere costs a call (engine_host_time's replayed draft did, unnoticed for days)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], capture_output=True,
                         text=True, timeout=240, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("flags, kinds", [
    (["--k", "0,a2", "--replay-alpha", "0"], ["target-only", "<=2"]),  # a replayed own draft, greedy
    (["--k", "a2", "--temperature", "0.7", "--top-p", "0.95"], ["<=2"]),  # sampled requests, the tiny draft
])
def test_engine_host_time_reports_each_configuration(flags, kinds):
    out = run("engine_host_time.py", "--clients", "2", "--tokens", "8", "--max-len", "64", "--repeats", "1",
              "--time-calls", *flags)
    lines = re.findall(r"^2 clients, K=(\S+?)[:,].* (\d+) tok/s, (\d+) target steps", out, re.MULTILINE)
    assert [k for k, _, _ in lines] == kinds, out
    assert all(int(tok_s) > 0 and int(steps) > 0 for _, tok_s, steps in lines), out


def test_engine_host_time_times_the_host_path_of_drafted_cycles():
    out = run("engine_host_time.py", "--clients", "4", "--tokens", "16", "--max-len", "64", "--repeats", "1",
              "--k", "2", "--early-verify", "on", "--replay-alpha", "0.8", "--time-path")
    path = re.search(r"host path from a verify's read, ms \(median / p90, the engine thread's CPU median in brackets; "
                     r"(\d+) cycles\): handing on ([\d.]+) .*verify launched ([\d.]+) / [\d.]+ \[([\d.]+)\]", out)
    assert path is not None, out
    cycles, handed, launched, cpu = int(path[1]), float(path[2]), float(path[3]), float(path[4])
    assert cycles > 0 and 0 < handed <= launched and 0 < cpu, out
    line = out[path.start():].splitlines()[0]
    marks = re.findall(r"(?:: |, )([a-z ]+) [\d.]+ / [\d.]+", line)
    assert marks == ["handing on", "handed on", "gathering", "phase starts", "chains handed in", "chains read",
                     "chains launched", "verify launched"], out


def test_first_sessions_reports_every_request():
    out = run("first_sessions.py", "--requests", "2", "--tokens", "8")
    assert len(re.findall(r"^request \d+ \(\d+ tokens\): \d+ cycles", out, re.MULTILINE)) >= 2, out
