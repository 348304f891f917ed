"""`specdec generate` from the command line, as a user runs it."""

import json
import pathlib
import subprocess
import sys
import time

import pytest

from specdec.cli import main as cli_main


def specdec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specdec", *args], capture_output=True, text=True, timeout=120)


def test_generate_json(capsys):
    out = specdec("generate", "def main():", "--max-new-tokens", "24", "--k", "3", "--json")  # the installed command
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["token_ids"]) == 24 or result["finish_reason"] == "eos"
    for key in ("drafts", "draft_tokens", "accepted_tokens", "mean_acceptance_length", "tokens_per_second"):
        assert key in result["stats"]
    assert cli_main(["generate", "def main():", "--max-new-tokens", "24", "--no-draft", "--json"]) == 0  # in process
    baseline = json.loads(capsys.readouterr().out)
    assert baseline["token_ids"] == result["token_ids"] and baseline["stats"]["drafts"] == 0


def test_several_prompts_decode_together_as_each_alone(capsys):
    """Several prompts share one batched engine (the target's own draft drafting for all of them): each output is
    what the same prompt decoded alone gives, greedy and seeded sampling alike (the default int8 draft quantizes
    each row of a step on its own)."""
    prompts = ["def main():", "import os", "class Foo:"]
    for flags in (["--proposer", "hybrid"], ["--temperature", "0.8", "--seed", "5"]):
        common = ["--max-new-tokens", "20", "--k", "3", "--json", *flags]
        assert cli_main(["generate", *prompts, *common]) == 0
        together = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        alone = []
        for prompt in prompts:
            assert cli_main(["generate", prompt, *common]) == 0
            alone.append(json.loads(capsys.readouterr().out))
        assert [r["token_ids"] for r in together] == [r["token_ids"] for r in alone], flags
        assert sum(r["stats"]["drafts"] for r in together) > 0
    assert cli_main(["generate", *prompts[:2], "--max-new-tokens", "8", "--proposer", "ngram"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("--- prompt 1 ---") and "\n--- prompt 2 ---" in out.out
    assert out.err.count("mean_acceptance_length=") == 2


def test_generate_text_streams_and_reports_stats(capsys):
    assert cli_main(["generate", "import os", "--max-new-tokens", "16", "--temperature", "0.8", "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "mean_acceptance_length=" in out.err


def test_bad_flag_value_is_a_clear_error(capsys):
    out = specdec("generate", "x", "--top-p", "2")  # the installed command: status 2 and the message
    assert out.returncode == 2 and "top_p: must be in (0, 1]" in out.stderr
    for args, message in [(["generate", "", "--no-draft"], "prompt: must not be empty"),  # checked in this process
                          (["serve", "draft", "--port", "0", "--proposer", "ngram", "--replay-references", "refs.jsonl"],
                           "replay_references: replays a draft model's cost"),
                          (["serve", "draft", "--port", "0", "--predraft", "on"],
                           "predraft: pre-drafting's branch rows are not batched yet"),
                          (["serve", "target", "--port", "0", "--prefill-chunk", "8"], "prefill_chunk: must be >= 32 tokens"),
                          (["serve", "target", "--port", "0", "--stream-interval", "0"], "stream_interval: must be >= 1"),
                          (["serve", "target", "--port", "0", "--no-batching", "--stream-interval", "2"],
                           "stream_interval: holds cycles in the batched engine"),
                          (["serve", "target", "--port", "0", "--no-batching", "--own-draft", "tiny"],
                           "own_draft: drafts between the batched engine's steps"),
                          (["serve", "target", "--port", "0", "--replay-references", "x.jsonl"],
                           "replay_references: replays a draft's cost"),
                          (["up", "--own-draft", "--no-draft"], "own_draft: runs the draft model in the target"),
                          (["up", "--own-draft", "--draft-device", "cuda:1"], "own_draft: runs the draft model in the"),
                          (["up", "--own-draft", "--draft-service"], "own_draft: runs the draft model in the target"),
                          (["bench", "--no-compile"], "no-compile: only with --concurrency"),
                          (["bench", "--stream-interval", "4"], "stream-interval: only with --concurrency"),
                          (["bench", "--concurrency", "1", "--stream-interval", "0"], "stream_interval: must be >= 1")]:
        assert cli_main(args) == 2, args
        assert capsys.readouterr().err.count(message) == 1, args


def _children(pid: int) -> list[int]:
    kids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def _running(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="reads /proc")
def test_servers_of_a_killed_up_do_not_outlive_it():
    """`specdec up` SIGKILLed (as by the OOM killer) must not leave its servers, and their models, behind."""
    from specdec.serving.server import wait_healthy
    from specdec.tools.launcher import free_base_port

    port = free_base_port()
    up = subprocess.Popen([sys.executable, "-m", "specdec", "up", "--port", str(port), "--no-draft"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"127.0.0.1:{port}", 120)
        servers = _children(up.pid)
        assert len(servers) == 2, servers  # target + orchestrator
    finally:
        up.kill()
        up.wait()
    deadline = time.monotonic() + 30
    while any(map(_running, servers)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(map(_running, servers)), "servers outlived the killed `specdec up`"


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="reads /proc")
def test_up_s_defaults_speculate_with_the_target_s_own_draft(tiny_pair):
    """With the draft on the target's device (the default), `specdec up` starts no draft service: the target runs the
    draft itself, and a request speculates through it with the output target-only greedy gives; --draft-service
    asks for the service beside it. SIGTERM stops every server."""
    from specdec.serving.client import Client, build_request
    from specdec.tools.launcher import free_base_port
    from tests.conftest import greedy

    for flags, servers, drafts in (([], 2, 0), (["--draft-service"], 3, 1)):
        port = free_base_port()
        up = subprocess.Popen([sys.executable, "-m", "specdec", "up", "--port", str(port), *flags],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert up.stdout.readline().startswith("specdec is up: orchestrator at"), flags  # every server healthy
            assert len(_children(up.pid)) == servers, flags
            with Client(f"127.0.0.1:{port}", timeout_s=60) as c:
                info = c.server_info()
                result = c.generate(build_request("def fibonacci(n):", max_new_tokens=24, ignore_eos=True))
            assert len(info.drafts) == drafts, flags
            assert [t.own_draft for t in info.targets.values()] == ["" if drafts else "tiny"], flags
            assert result.token_ids == greedy(tiny_pair, "def fibonacci(n):", 24), flags
            assert result.stats.draft_tokens > 0, flags
        finally:
            up.terminate()
            err = up.communicate(timeout=60)[1]  # stderr is read only now: a short test's log fits the pipe
        assert up.returncode == 0, err[-2000:]
        assert ("a draft service" if drafts else "run by the target itself") in err, flags


def test_a_server_keeps_what_it_built_out_of_garbage_collection(tiny_pair):
    """`serve` freezes the heap before serving: a full collection over the models' and compiled programs' objects
    would stall every session; what is frozen is never scanned again (undone here: this is the test process)."""
    import gc

    from specdec.serving.server import freeze_heap

    try:
        frozen = freeze_heap()
        assert frozen == gc.get_freeze_count() > 100_000  # a loaded model's process holds hundreds of thousands
        assert gc.get_count()[2] == 0
    finally:
        gc.unfreeze()
