"""`specdec bench` end to end on the tiny pair: a table, JSON with per-prompt ids, a plot, equal outputs."""

import json
import subprocess
import sys

import pytest

from specdec.cli import main as cli_main


def test_bench_runs_modes_side_by_side(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "def main():"}\n{"turns": ["import os"]}\n')
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--prompts", str(prompts), "--num-prompts", "2",
                          "--max-new-tokens", "12", "--repeats", "2", "--warmup", "0", "--quiet",
                          "--modes", "target-only,spec,spec-overlap,hf-assisted,spec:ngram,spec:hybrid", "--json", str(out_json),
                          "--plot", str(out_png)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| spec-overlap |" in run.stdout and "speedup" in run.stdout
    result = json.loads(out_json.read_text())
    modes = {m["mode"]: m for m in result["modes"]}
    assert set(modes) == {"target-only", "spec", "spec-overlap", "hf-assisted", "spec:ngram", "spec:hybrid"}
    for m in modes.values():
        assert m["repeats"] == 2 and m["tokens_per_second"] > 0 and len(m["token_ids"]) == 2
        assert len(m["prompt_seconds"]) == 2 and len(m["per_prompt_speedup"]) == 2
        assert m["token_ids"] == modes["target-only"]["token_ids"]
    assert modes["spec"]["drafts"] > 0 and modes["target-only"]["speedup_vs_target_only"] == 1.0
    assert set(modes["spec:ngram"]["accepted_tokens_by_proposer"]) <= {"ngram"}
    assert set(modes["spec"]["accepted_tokens_by_proposer"]) == {"draft-model"}
    assert out_png.stat().st_size > 1000


def test_bench_refuses_bad_modes(capsys):
    """Checked before any model loads, in this process (`specdec` returns 2 with the message)."""
    for args, message in [(["--modes", "spec:nope"], "unknown proposer"),
                          (["--modes", "hf-assisted:ngram"], "takes no proposer"), (["--modes", "fast"], "unknown mode"),
                          (["--concurrency", "1,4", "--modes", "spec"], "cannot be swept over concurrency"),
                          (["--temperature", "0.7"], "only with --concurrency"),
                          (["--concurrency", "1", "--temperature", "0.7", "--replay-alpha", "0.5"],
                           "replays the target's greedy output"),
                          (["--concurrency", "1", "--temperature", "0.7", "--modes", "hf-generate"],
                           "hf-generate decodes greedily"),
                          (["--replay-references", "refs.jsonl"], "only with --concurrency"),
                          (["--concurrency", "1", "--replay-references", "refs.jsonl"], "give it too"),
                          (["--concurrency", "1", "--replay-alpha", "0.5", "--modes", "services-own-draft"],
                           "or give --replay-references"),
                          (["--concurrency", "1", "--replay-alpha", "0.5", "--modes", "services-own-draft",
                            "--replay-references", "no-such-refs.jsonl"], "no-such-refs.jsonl is not a file")]:
        assert cli_main(["bench", "--quiet", *args]) == 2, args
        assert message in capsys.readouterr().err, args


def test_bench_replays_acceptance_through_the_services(tmp_path):
    """--replay-alpha reaches the draft service (the references go in a file): with alpha = 0 every replayed
    token is wrong, so neither the in-process draft nor the services' accepts one (the real tiny draft
    would), while the outputs stay the target's."""
    out_json = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--num-prompts", "2", "--max-new-tokens", "24",
                          "--repeats", "1", "--warmup", "0", "--quiet", "--replay-alpha", "0", "--k", "4",
                          "--modes", "target-only,spec,services", "--json", str(out_json)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "replayed acceptance alpha=0.0" in run.stdout
    modes = {m["mode"]: m for m in json.loads(out_json.read_text())["modes"]}
    assert modes["services"]["token_ids"] == modes["target-only"]["token_ids"]
    for name in ("spec", "services"):
        assert modes[name]["drafts"] > 0 and modes[name]["accepted_tokens"] == 0, (name, modes[name])


def test_bench_sweeps_concurrency(tmp_path):
    """--concurrency: every point of every mode, all requests answered, the target-only bound next to it.
    --replay-alpha: the target-only deployment records its output for the load client's prompts and the draft
    service (or the target's own draft) replays it (the engines record their own); at alpha 1 every draft must be
    accepted. Every greedy output equals its prompt's first plain-decoding output."""
    out_json, out_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    modes = ("services-no-overlap", "services-own-draft", "target-only", "engine-target-only", "engine-spec",
             "engine-own-draft", "hf-generate")
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--concurrency", "1,3", "--max-new-tokens", "12",
                          "--rounds", "1", "--replay-alpha", "1.0", "--modes", ",".join(modes), "--json", str(out_json),
                          "--plot", str(out_png)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| target-only | 3 |" in run.stdout and "| hf-generate | 1 |" in run.stdout
    result = json.loads(out_json.read_text())
    assert result["complete"]  # written after each mode too, incomplete (a sweep cut short keeps its points)
    points = {(p["mode"], p["concurrency"]): p for p in result["points"]}
    assert set(points) == {(m, c) for m in modes for c in (1, 3)} and list(points)[0][0] == "target-only"
    for (mode, c), p in points.items():
        assert p["ok"] == p["requests"] >= (4 if mode != "hf-generate" else c) and p["tokens_per_s"] > 0, p
    assert points[("target-only", 3)]["itl_p50_ms"] > 0 and set(result["bounds"]) == {"1", "3"}
    assert "| engine-target-only | 3 |" in run.stdout and "%" in run.stdout.split("| engine-target-only | 3 |")[1]
    for mode in ("services-no-overlap", "services-own-draft", "engine-spec", "engine-own-draft"):
        drafted = [points[(mode, c)] for c in (1, 3)]
        assert all(p["cycles"] > 0 and p["accepted_tokens"] == p["draft_tokens"] for p in drafted), drafted
        assert all(p["bound_tokens_per_s"] > 0 for p in drafted), drafted  # the bound of its own cycles
    assert points[("target-only", 3)]["bound_tokens_per_s"] == pytest.approx(result["bounds"]["3"])
    assert points[("hf-generate", 3)]["bound_tokens_per_s"] is None
    for mode in ("services-no-overlap", "services-own-draft"):
        assert sum(points[(mode, c)]["draft_tokens"] for c in (1, 3)) > 0, mode
    assert result["greedy_mismatches"] == [] and len(points[("engine-spec", 3)]["outputs"]) >= 4  # all compared
    assert result["replay_realised"] == 1.0 and "replayed acceptance 1.0 realises 1.000" in run.stderr
    seeds = points[("services-own-draft", 3)]["seeds"]  # replayed: each request its own seed
    assert len(set(seeds)) == len(seeds) == len(points[("services-own-draft", 3)]["outputs"]), seeds
    assert len(points[("services-own-draft", 3)]["warm_up_outputs"]) == 3  # the warm-up round's too
    assert out_png.stat().st_size > 1000

    # --bounds-only: a sweep cut before its bounds (as a device call's time limit does) gets them in a second run
    # of the same command, which runs no mode
    cut = {**result, "complete": False, "bounds": {}, "greedy_mismatches": None,
           "points": [{k: v for k, v in p.items() if k != "bound_tokens_per_s"} for p in result["points"]]}
    out_json.write_text(json.dumps(cut))
    command = [sys.executable, "-m", "specdec", "bench", "--concurrency", "1,3", "--max-new-tokens", "12", "--rounds",
               "1", "--replay-alpha", "1.0", "--modes", ",".join(modes), "--json", str(out_json), "--bounds-only"]
    other = subprocess.run([*command[:7], "16", *command[8:]], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "measured with max_new_tokens=12, not 16" in other.stderr, other.stderr[-2000:]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sweep: " not in again.stderr  # no mode ran: no progress line
    done = json.loads(out_json.read_text())
    assert done["complete"] and set(done["bounds"]) == {"1", "3"} and done["greedy_mismatches"] == []
    assert [p["tokens_per_s"] for p in done["points"]] == [p["tokens_per_s"] for p in result["points"]]
    assert all((p.get("bound_tokens_per_s") is None) == (p["mode"] == "hf-generate") for p in done["points"])


def test_a_sweep_of_drafting_services_alone_replays_what_an_earlier_target_only_sweep_recorded(tmp_path):
    """--replay-references: a target-only sweep writes the target's continuations there, and a later sweep of the
    own-draft services alone (as two device calls, each too short for both) replays them: at alpha 1 every draft is
    accepted, and each output is the target-only sweep's. K is fixed: on a busy two-core host, load-aware K may find
    that the tiny draft costs as much as the tiny target and draft nothing, which would leave nothing replayed."""
    refs, plain_json, own_json = tmp_path / "refs.jsonl", tmp_path / "plain.json", tmp_path / "own.json"
    common = [sys.executable, "-m", "specdec", "bench", "--concurrency", "2", "--max-new-tokens", "10", "--rounds", "1",
              "--replay-alpha", "1.0", "--replay-references", str(refs)]
    plain = subprocess.run([*common, "--modes", "target-only", "--json", str(plain_json)], capture_output=True,
                           text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert refs.is_file() and all({"prompt_ids", "output_ids"} <= set(json.loads(line))
                                  for line in refs.read_text().splitlines())
    own = subprocess.run([*common, "--fixed-k", "--modes", "services-own-draft", "--json", str(own_json)],
                         capture_output=True, text=True, timeout=300)
    assert own.returncode == 0, own.stderr[-2000:]
    [target_only] = json.loads(plain_json.read_text())["points"]
    [drafted] = json.loads(own_json.read_text())["points"]
    assert drafted["mode"] == "services-own-draft" and drafted["ok"] == drafted["requests"]
    assert drafted["draft_tokens"] > 0 and drafted["accepted_tokens"] == drafted["draft_tokens"], drafted
    assert sorted(drafted["outputs"]) == sorted(target_only["outputs"])


def test_bench_sweeps_sampled_requests(tmp_path):
    """--temperature: every request samples with the same seed, through the services and in process alike, so plain
    decoding's output of a prompt is the same at every concurrency and in both plain modes (checked by the sweep:
    none differ; the in-process engine's sampled output is not its greedy one: test_inprocess); the own draft's
    sampled requests draft and verify by speculative sampling."""
    out_json = tmp_path / "sweep.json"
    modes = ("target-only", "engine-target-only", "engine-own-draft")
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--concurrency", "1,2", "--max-new-tokens", "12",
                          "--rounds", "1", "--temperature", "1.5", "--seed", "11", "--modes", ",".join(modes),
                          "--json", str(out_json)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out_json.read_text())
    assert result["settings"]["temperature"] == 1.5 and result["greedy_mismatches"] == []
    points = {(p["mode"], p["concurrency"]): p for p in result["points"]}
    assert all(p["ok"] == p["requests"] >= 4 for p in points.values()), points
    plain = [(i, ids) for m in modes[:2] for c in (1, 2) for i, *ids in points[(m, c)]["outputs"]]
    assert len({i for i, _ in plain}) > 1 and all(ids == dict(plain)[i] for i, ids in plain)
    assert sum(points[("engine-own-draft", c)]["draft_tokens"] for c in (1, 2)) > 0
    assert " bench INFO " not in run.stderr  # the default --log-level: this process logs warnings and errors only


def test_bench_logs_its_in_process_engines_at_info():
    """--log-level info: the in-process engines' lines (load-aware K's choices here) reach stderr, named as the
    bench's, as a service's reach its log."""
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--concurrency", "2", "--max-new-tokens", "12",
                          "--rounds", "1", "--modes", "engine-own-draft", "--quiet", "--log-level", "info"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert " bench INFO specdec.adaptive: " in run.stderr, run.stderr[-2000:]
