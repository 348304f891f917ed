"""`specdec bench` end to end on the tiny pair: a table, JSON with per-prompt ids, a plot, equal outputs."""

import json
import subprocess
import sys


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


def test_bench_refuses_bad_modes():
    for modes, message in [("spec:nope", "unknown proposer"), ("hf-assisted:ngram", "takes no proposer"),
                           ("fast", "unknown mode")]:
        run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--modes", modes, "--quiet"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and message in run.stderr, (modes, run.stderr[-500:])


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
    """--concurrency: every point of every mode, all requests answered, the target-only bound next to it."""
    out_json, out_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--concurrency", "1,3", "--max-new-tokens", "8",
                          "--rounds", "1", "--modes", "target-only,services,hf-generate", "--json", str(out_json),
                          "--plot", str(out_png)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| target-only | 3 |" in run.stdout and "| hf-generate | 1 |" in run.stdout
    result = json.loads(out_json.read_text())
    points = {(p["mode"], p["concurrency"]): p for p in result["points"]}
    assert set(points) == {(m, c) for m in ("target-only", "services", "hf-generate") for c in (1, 3)}
    for (mode, c), p in points.items():
        assert p["ok"] == p["requests"] >= (4 if mode != "hf-generate" else c) and p["tokens_per_s"] > 0, p
    assert points[("target-only", 3)]["itl_p50_ms"] > 0 and set(result["bounds"]) == {"1", "3"}
    assert out_png.stat().st_size > 1000


def test_bench_sweep_replays_the_targets_own_output_through_the_services(tmp_path):
    """--replay-alpha: the target-only deployment records its output for the load client's prompts, and the
    draft service replays it; at alpha 1 the services' prompts must find it, so every draft is accepted."""
    out_json = tmp_path / "sweep.json"
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--concurrency", "1,2", "--max-new-tokens", "12",
                          "--rounds", "1", "--replay-alpha", "1.0", "--modes", "services-no-overlap,target-only",
                          "--json", str(out_json)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    points = {(p["mode"], p["concurrency"]): p for p in json.loads(out_json.read_text())["points"]}
    assert list(points)[0][0] == "target-only"  # recorded first
    for c in (1, 2):
        p = points[("services-no-overlap", c)]
        assert p["ok"] == p["requests"] and p["cycles"] > 0, p
    drafted = [points[("services-no-overlap", c)] for c in (1, 2)]
    assert sum(p["draft_tokens"] for p in drafted) > 0
    assert all(p["accepted_tokens"] == p["draft_tokens"] for p in drafted), drafted


def test_bench_sweep_refuses_in_process_modes():
    run = subprocess.run([sys.executable, "-m", "specdec", "bench", "--concurrency", "1,4", "--modes", "spec"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "cannot be swept over concurrency" in run.stderr, run.stderr[-500:]
