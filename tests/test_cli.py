"""`specdec generate` from the command line, as a user runs it."""

import json
import subprocess
import sys


def specdec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specdec.cli", *args], capture_output=True, text=True, timeout=120)


def test_generate_json():
    out = specdec("generate", "def main():", "--max-new-tokens", "24", "--k", "3", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["token_ids"]) == 24 or result["finish_reason"] == "eos"
    for key in ("drafts", "draft_tokens", "accepted_tokens", "mean_acceptance_length", "tokens_per_second"):
        assert key in result["stats"]
    baseline = json.loads(specdec("generate", "def main():", "--max-new-tokens", "24", "--no-draft", "--json").stdout)
    assert baseline["token_ids"] == result["token_ids"] and baseline["stats"]["drafts"] == 0


def test_generate_text_streams_and_reports_stats():
    out = specdec("generate", "import os", "--max-new-tokens", "16", "--temperature", "0.8", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "mean_acceptance_length=" in out.stderr


def test_bad_flag_value_is_a_clear_error():
    out = specdec("generate", "x", "--top-p", "2")
    assert out.returncode == 2 and "top_p: must be in (0, 1]" in out.stderr
    assert specdec("generate", "", "--no-draft").stderr.count("prompt: must not be empty") == 1
