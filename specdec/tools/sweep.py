"""`specdec bench --concurrency 1,4,16,64`: what the services give as more clients share them.

For each mode and each number of concurrent clients C, C clients (threads of this process, `loadtest`'s
client) each send `rounds` requests to a fresh local deployment after an unmeasured warm-up round at that
concurrency; every request generates exactly max_new_tokens (EOS ignored). Reported per point: aggregate
tokens/s over all clients, request latency p50/p99, time to first token and inter-token latency (p50 over
requests), errors. Modes:
  target-only   orchestrator + batched target, no draft
  services      orchestrator + batched target + batched draft (adaptive K, the services' default, unless fixed_k)
  services-no-overlap   the same, the draft drafting only after each verdict
  services-own-draft    orchestrator + batched target running the draft itself (`serve target --own-draft`):
                        its engine drafts for all sessions between its steps (core.own_draft)
  engine-target-only    the target service's logic over a batched engine in this process, clients calling
                        it directly: no gRPC, no orchestrator (tools/inprocess.py)
  engine-spec   the same with a batched draft engine in this process (adaptive K, drafting ahead)
  engine-own-draft      the same with the target engine drafting for its sessions itself (core.own_draft)
  hf-generate   the outside reference: HF `generate()` on the same target (on a GPU with its projections
                fused, as every model loads there: core.fused), one batch of C prompts
With `replay_alpha`, the draft replays the target's own continuations at that acceptance rate (a real
draft's cost, a chosen acceptance: random-weight benchmarks); the continuations are recorded from the
target-only deployment, which then runs first (engine-spec records its own in process).
Next to every point, its analytic bound (point_bound, docs/benchmarks.md): from batched step costs measured here,
in this process, on the target (and the draft), and the point's own cycles (C / t(C, 1) for plain decoding).
Requests are greedy unless a temperature is given: each output (a warm-up's too, as far as both go) must equal its
prompt's first plain-decoding output (tools/exactness.py; a difference is reported with the target's top-2 logit gap
there, and fails the sweep unless `report_greedy_mismatch`). Sampled, every request carries the same seed, so each
prompt's plain-decoding output must be the same at every concurrency and in both modes that decode plainly (sampling
is counter-based, core/sampling.py); a drafting mode's sampled output depends on what it drafted, and is equal to
target-only's in distribution only (the test suite's chi-square tests), so it is not compared. `--json` writes every
point with its outputs (after each mode, then complete with the bounds), `--plot` tokens/s against C.
"""

from __future__ import annotations

import gc
import json
import pathlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import torch

from specdec.core.batching import BatchedRunner, check_stream_interval
from specdec.core.compute import Compute
from specdec.core.config import EngineProcessMode, ProposerKind, SamplingParams
from specdec.core.errors import InvalidArgument
from specdec.core.models import LoadedModel, encode_prompt, load_model, load_tokenizer
from specdec.proposers import make_factory
from specdec.proposers.replay import ReplayBook, ReplayFactory, ReplayRates
from specdec.serving.server import freeze_heap
from specdec.tools import exactness, loadtest
from specdec.tools.inprocess import InProcessTarget, draft_engine
from specdec.tools.launcher import Stack, free_base_port

SERVICE_MODES = ("target-only", "services", "services-no-overlap", "services-own-draft")
ENGINE_MODES = ("engine-target-only", "engine-spec", "engine-own-draft")
SWEEP_MODES = (*SERVICE_MODES, *ENGINE_MODES, "hf-generate")
PLAIN_MODES = ("target-only", "engine-target-only", "hf-generate")  # the modes that draft nothing
WARM_UP_TOKENS = 16  # new tokens per request of a level's unmeasured warm-up round


@dataclass(frozen=True)
class SweepSettings:
    target: str = "tiny"
    draft: str = "tiny"
    device: str = "cpu"
    draft_device: str | None = None
    dtype: str = "auto"
    draft_dtype: str | None = None
    max_len: int = 1024
    modes: tuple[str, ...] = ("target-only", "services")
    levels: tuple[int, ...] = (1, 4, 16)
    max_new_tokens: int = 128
    k: int = 4  # draft tokens per cycle: the most, with adaptive K
    fixed_k: bool = False  # draft exactly k every cycle (services and engine-spec) instead of adaptive K
    rounds: int = 2  # measured requests per client (at least 4 in all per point)
    replay_alpha: float | None = None  # the draft replays the target's output at this acceptance (None: real draft)
    replay_references: str | None = None  # where the target's continuations are kept: target-only mode (re)writes
    # them, the services' drafts replay them; given, a sweep of drafting services alone replays a file an earlier
    # sweep's target-only mode wrote (None: a scratch file, so target-only must run first)
    stream_interval: int | None = None  # batched targets hand a session's reader its cycles this many at a time
    # (None: the targets' default, auto)
    engine_process: EngineProcessMode = EngineProcessMode.AUTO  # where the services' targets run their engines
    # (serve --engine-process)
    compile: bool = True  # batched engines on a GPU compile their models' layers (core.compiled), as services do
    report_greedy_mismatch: bool = False  # report outputs that differ across points instead of failing
    temperature: float = 0.0  # 0: greedy; else every request samples (top_k, top_p) with seed `seed`
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0  # sampled: every request's seed, so a prompt's sampled output is the same in each plain point;
    # replayed (greedy): request n of a load carries seed + n (`request_seeds`)
    json: str | None = None
    plot: str | None = None
    bounds_only: bool = False  # run no mode: `json`'s points get their exactness check and bounds (measured_points)

    def validate(self) -> "SweepSettings":
        unknown = [m for m in self.modes if m not in SWEEP_MODES]
        if unknown:
            raise InvalidArgument("modes", f"{unknown} cannot be swept over concurrency; choose from "
                                           f"{', '.join(SWEEP_MODES)} (engine-* are the in-process modes)")
        if not self.levels or min(self.levels) < 1:
            raise InvalidArgument("concurrency", f"{list(self.levels)}: give positive numbers of clients, e.g. 1,4,16")
        if self.rounds < 1:
            raise InvalidArgument("rounds", "must be >= 1")
        check_stream_interval(self.stream_interval)
        if not self.sampling.validate().greedy:
            if self.replay_alpha is not None:
                raise InvalidArgument("replay-alpha", "replays the target's greedy output: sweep sampled requests "
                                                      "with a real draft, or without --temperature")
            if "hf-generate" in self.modes:
                raise InvalidArgument("modes", "hf-generate decodes greedily: leave it out of a sampled sweep")
        if self.bounds_only and not (self.json and pathlib.Path(self.json).is_file()):
            raise InvalidArgument("bounds-only", f"needs --json naming a sweep's results file ({self.json!r} is not one)")
        if self.replay_references is not None and self.replay_alpha is None:
            raise InvalidArgument("replay-references", "keeps the target's continuations for --replay-alpha: give it too")
        if self.replay_alpha is not None:
            ReplayRates(self.replay_alpha).validate()
            replaying = any(m.startswith("services") for m in self.modes) and "target-only" not in self.modes
            if replaying and self.replay_references is None:
                raise InvalidArgument("modes", "replayed acceptance records the target's output in target-only "
                                               "mode first: add target-only, or give --replay-references FILE that "
                                               "an earlier sweep's target-only mode wrote")
            if replaying and not pathlib.Path(self.replay_references).is_file():
                raise InvalidArgument("replay-references", f"{self.replay_references} is not a file: a sweep with "
                                                           "target-only among its modes writes it")
        return self

    @property
    def request_seeds(self) -> int | None:
        """Where each request of a load carries its own seed (loadtest.run_clients' `seed`): a replayed draft is right at
        a position by seed and position alone, so with one seed for every request the same positions of a prompt
        come out right each time, and over four prompts that rate sits off `replay_alpha` (0.752 of 0.8 at seed 0).
        Greedy outputs do not depend on the seed; a sampled sweep keeps its one seed (None)."""
        return self.seed if self.replay_alpha is not None else None

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


def batched_step_s(runner: BatchedRunner, rows: int, tokens: int, ctx: int, reps: int = 10) -> float:
    """Median seconds of one batched step of rows x tokens, every row at position `ctx` (inputs copied in,
    the step run, logits ready); with CUDA graphs, of the bucketed shape the engine runs for it."""
    rows, tokens = runner.step_shape(rows, tokens)
    ids = torch.randint(0, runner.vocab_size, (rows, tokens))
    positions = torch.arange(ctx, ctx + tokens).repeat(rows, 1)
    cuda = runner.device.type == "cuda"
    times = []
    for _ in range(reps + 3):
        if cuda:
            torch.cuda.synchronize(runner.device)
        t0 = time.perf_counter()
        runner.forward_rows(ids, positions)
        if cuda:
            torch.cuda.synchronize(runner.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def point(mode: str, concurrency: int, result: loadtest.LoadResult, warm: loadtest.LoadResult) -> dict:
    s = result.summary()
    itl = [(lat - ttft) / (len(out) - 2) for lat, ttft, out in zip(result.latencies_s, result.ttft_s, result.outputs)
           if len(out) > 2]  # outputs: [prompt index, *token ids]
    return {"mode": mode, "concurrency": concurrency, "requests": s["requests"], "ok": s["ok"], "errors": s["errors"],
            "tokens_per_s": s["throughput_tokens_per_s"], "latency_p50_ms": s["latency_ms"]["p50"],
            "latency_p99_ms": s["latency_ms"]["p99"], "ttft_p50_ms": s["ttft_ms"]["p50"],
            "itl_p50_ms": 1e3 * statistics.median(itl) if itl else None, "cycles": s["cycles"],
            "drafted_cycles": s["drafted_cycles"], "draft_tokens": s["draft_tokens"], "accepted_tokens": s["accepted_tokens"],
            "outputs": result.outputs,  # [prompt index, *token ids] per request: exactness is checked across points
            "seeds": result.seeds,  # the seed each output's request carried (null: the sweep's `seed`)
            "warm_up_outputs": warm.outputs}  # the same, of the level's warm-up round


def sweep_services(s: SweepSettings, mode: str, replay: str | None = None) -> list[dict]:
    """One deployment per mode; `replay`: a file of the target's continuations (written here in target-only
    mode, replayed by the draft in services mode)."""
    compiling = [] if s.compile else ["--no-compile"]
    common = ["--device", s.device, "--dtype", s.dtype, "--max-len", str(s.max_len),
              "--max-sessions", str(max(s.levels)), *compiling]
    if s.stream_interval is not None:
        common += ["--stream-interval", str(s.stream_interval)]
    common += ["--engine-process", s.engine_process.value]
    draft = ["--draft-device", s.draft_device or s.device, "--max-len", str(s.max_len),
             "--max-sessions", str(max(s.levels)), "--dtype", s.draft_dtype or s.dtype, *compiling]
    replaying = ["--replay-references", replay, "--replay-alpha", str(s.replay_alpha)] if (
        replay is not None and s.replay_alpha is not None) else []
    if mode == "services-own-draft":  # the target runs the draft: no draft service
        common += ["--own-draft", s.draft, *replaying]
    else:
        draft += replaying
    orchestrator = ["--k", str(s.k), "--max-workers", str(2 * max(s.levels) + 8), *(["--fixed-k"] if s.fixed_k else [])]
    separate = mode in ("services", "services-no-overlap")
    stack = Stack(port=free_base_port(), target=s.target, draft=s.draft if separate else None,
                  extra={"target": common, "draft": draft,
                         "orchestrator": orchestrator + (["--no-overlap"] if mode == "services-no-overlap" else [])})
    stack.start(timeout_s=600)
    try:
        if mode == "target-only" and replay is not None:
            record_continuations(partial(loadtest.grpc_client, stack.address), load_tokenizer(s.target),
                                 s.max_new_tokens).save(replay)
        return list(measure_levels(mode, partial(loadtest.grpc_client, stack.address, sampling=s.sampling), s))
    finally:
        stack.stop()


def sweep_engine(s: SweepSettings, mode: str, target: LoadedModel, compute: Compute) -> list[dict]:
    """An engine-* mode: load clients calling the target service's logic in this process (tools/inprocess.py),
    with a batched draft engine for engine-spec (replaying the target's own output with `replay_alpha`).
    `compute`: the thread the target was loaded on, where its engine runs; the draft gets its own, so on a CPU
    this process has two OpenMP teams where the services have one per process (core/compute.py)."""
    sessions = max(s.levels)
    book = None
    drafting = mode in ("engine-spec", "engine-own-draft")
    own = mode == "engine-own-draft"  # the draft on the target's thread; else a draft engine on its own
    if drafting and s.replay_alpha is not None:
        plain = InProcessTarget(target, max_len=s.max_len, max_sessions=1, compute=compute, compile=s.compile,
                                stream_interval=s.stream_interval)
        try:
            book = record_continuations(plain.client, target.tokenizer, s.max_new_tokens)
        finally:
            plain.close()
            del plain
            gc.collect()  # freed now, not by a collection during the next engine's CUDA graph capture
    draft_runner = drafts = None
    if drafting:
        draft_runner = draft_engine(compute, target, s.draft, device=s.device if own else s.draft_device or s.device,
                                    dtype=s.draft_dtype or s.dtype, max_len=s.max_len, max_sessions=sessions, own=own,
                                    compile=s.compile)
        drafts = (ReplayFactory(draft_runner, book, ReplayRates(s.replay_alpha)) if book is not None
                  else make_factory(ProposerKind.DRAFT_MODEL, draft_runner))
    engine = InProcessTarget(target, max_len=s.max_len, max_sessions=sessions, k=s.k, adaptive_k=not s.fixed_k,
                             drafts=drafts, draft_runner=draft_runner, own_draft=own,
                             compute=compute, compile=s.compile, stream_interval=s.stream_interval)
    freeze_heap()  # as a server does before serving
    try:
        return list(measure_levels(mode, partial(engine.client, s.sampling), s))
    finally:
        gc.unfreeze()  # this engine's objects must go with it, before the next mode builds its own
        engine.close()
        del engine, drafts, draft_runner
        gc.collect()  # the engines' caches (and CUDA graphs) go before the next mode makes its own


def measure_levels(mode: str, connect, s: SweepSettings) -> Iterator[dict]:
    """Each level's point (`connect`: a load client, loadtest.run_clients)."""
    for c, result, warm in load_levels(connect, s.levels, s.rounds, s.max_new_tokens, s.request_seeds):
        p = point(mode, c, result, warm)
        print(f"sweep: {mode} at {c} clients: {p['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
        yield p


def record_continuations(connect, tokenizer, max_new_tokens: int) -> ReplayBook:
    """The target's greedy output for each of the load client's prompts, as a replayed draft reads it
    (`connect`: a load client of a target-only deployment or engine)."""
    prompts = loadtest.DEFAULT_PROMPTS
    result = loadtest.run_clients(connect, 1, len(prompts), prompts, max_new_tokens, 600)
    if result.errors:
        raise RuntimeError(f"recording the target's continuations failed: {dict(result.errors)}")
    return ReplayBook([(encode_prompt(tokenizer, prompts[index]), ids) for index, *ids in result.outputs])


def load_levels(connect, levels: Sequence[int], rounds: int, max_new_tokens: int,
                seed: int | None = None) -> Iterator[tuple[int, loadtest.LoadResult, loadtest.LoadResult]]:
    """Per number of clients C: an unmeasured warm-up round at C (on a GPU it replays C's graph buckets
    first), then C clients x `rounds` requests (at least 4 in all), measured: (C, the measured round, the warm-up,
    whose outputs are checked too: the first requests a deployment serves take paths no later one does).
    `connect`: a load client (loadtest.grpc_client of a deployment, or an in-process engine's); `seed`: request n of
    each load carries seed + n (None: the client's own)."""
    prompts = loadtest.DEFAULT_PROMPTS
    for c in levels:
        warm = loadtest.run_clients(connect, c, 1, prompts, WARM_UP_TOKENS, 600, seed)
        yield c, loadtest.run_clients(connect, c, max(rounds, -(-4 // c)), prompts, max_new_tokens, 1200, seed), warm


def sweep_hf_generate(s: SweepSettings, model: torch.nn.Module) -> list[dict]:
    """HF `generate()` (greedy, its own cache) at batch C, C prompts of 6 tokens, each generating max_new_tokens."""
    device = next(model.parameters()).device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    points = []
    for c in s.levels:
        ids = torch.randint(0, model.config.vocab_size, (c, 6), device=device)
        kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
        sync()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=s.max_new_tokens, min_new_tokens=s.max_new_tokens, **kwargs)
        sync()
        wall = time.perf_counter() - t0
        points.append({"mode": "hf-generate", "concurrency": c, "requests": c, "ok": c, "errors": {},
                       "tokens_per_s": c * (out.shape[1] - ids.shape[1]) / wall, "latency_p50_ms": 1e3 * wall,
                       "latency_p99_ms": 1e3 * wall, "ttft_p50_ms": None, "itl_p50_ms": None})
    return points


def step_costs(s: SweepSettings, model: torch.nn.Module, tokens: Sequence[int], reach: int) -> dict[tuple[int, int], float]:
    """t(C, n): one batched step of C rows x n tokens on `model`, for each level C and each n in `tokens`, every row
    at `reach` cached tokens (a step attends over the span of the cache its rows reach: the sweep's longest)."""
    runner = BatchedRunner(model, max_len=s.max_len, max_sessions=max(s.levels), compile=s.compile,
                           captured=(s.levels, tokens))  # the graphs it times, not every bucket a server captures
    try:
        ctx = min(reach, s.max_len - max(tokens))
        return {(c, n): batched_step_s(runner, c, n, ctx) for c in s.levels for n in tokens}
    finally:
        runner.stop(wait_s=10.0)  # the process exits soon: the engine thread must be out of torch by then


def point_bound(p: dict, target: dict[tuple[int, int], float], draft: dict[tuple[int, int], float] | None) -> float | None:
    """The most tokens/s a point's cycles could give at its concurrency C (docs/benchmarks.md): every step carries
    all C sessions, a plain cycle costs t(C, 1), a drafted one K draft steps d(C, 1) and a verify t(C, K + 1), at the
    point's measured share of drafted cycles, mean K and tokens per cycle:
        C * tau / ((1 - f) * t(C, 1) + f * (K * d(C, 1) + t(C, K + 1))).
    None without cycles (hf-generate), or for drafted cycles without the draft's costs (a draft on its own device
    overlaps with verifying: not a sum)."""
    c, cycles = p["concurrency"], p.get("cycles") or 0
    if not cycles or (c, 1) not in target:
        return None
    tokens = sum(len(out) - 1 for out in p["outputs"])
    drafted, cost = p["drafted_cycles"], (1 - p["drafted_cycles"] / cycles) * target[(c, 1)]
    if drafted:
        if draft is None:
            return None
        k = p["draft_tokens"] / drafted
        lo = int(k)
        hi = min(lo + 1, max(n for (level, n) in target if level == c) - 1)
        verify = target[(c, lo + 1)] + (k - lo) * (target[(c, hi + 1)] - target[(c, lo + 1)])  # t(C, K + 1), K between
        cost += drafted / cycles * (k * draft[(c, 1)] + verify)
    return c * tokens / cycles / cost


def table(points: list[dict]) -> str:
    lines = ["| mode | clients | tokens/s | bound | % of bound | latency p50 / p99 (ms) | TTFT p50 (ms) | ITL p50 (ms) "
             "| drafted cycles (mean K, accepted per draft) | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v: "–" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.2f}"  # noqa: E731
    for p in points:
        bound = p.get("bound_tokens_per_s")
        share = f"{100 * p['tokens_per_s'] / bound:.0f}%" if bound else "–"
        itl = "–" if p["itl_p50_ms"] is None else f"{p['itl_p50_ms']:.1f}"
        drafted = "–" if not p.get("cycles") else f"{p['drafted_cycles']} / {p['cycles']}" + (
            f" ({p['draft_tokens'] / p['drafted_cycles']:.1f}, {p['accepted_tokens'] / p['draft_tokens']:.2f})"
            if p["drafted_cycles"] else "")
        lines.append(f"| {p['mode']} | {p['concurrency']} | {fmt(p['tokens_per_s'])} | {fmt(bound)} | {share} | "
                     f"{fmt(p['latency_p50_ms'])} / {fmt(p['latency_p99_ms'])} | {fmt(p['ttft_p50_ms'])} | {itl} | "
                     f"{drafted} | {sum(p['errors'].values()) if p['errors'] else 0} |")
    return "\n".join(lines)


def plot(points: list[dict], bounds: dict[int, float], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in dict.fromkeys(p["mode"] for p in points):
        mine = [p for p in points if p["mode"] == mode]
        ax.plot([p["concurrency"] for p in mine], [p["tokens_per_s"] for p in mine], marker="o", label=mode)
    if bounds:
        ax.plot(list(bounds), list(bounds.values()), linestyle="--", color="grey", label="bound (target-only)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("tokens/s, all clients")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_bounds(s: SweepSettings, points: list[dict], target: LoadedModel, compute: Compute,
               prompt_ids: list[list[int]]) -> dict[int, float]:
    """Each point's analytic bound (`bound_tokens_per_s`, point_bound) from batched step costs measured here, the
    draft's too where a point drafted on the target's device, at the farthest position the sweep's prompts
    (`prompt_ids`) reach; returns target-only's, C / t(C, 1) per level."""
    drafted = any(p.get("drafted_cycles") for p in points) and (s.draft_device or s.device) == s.device
    reach = max(map(len, prompt_ids)) + s.max_new_tokens
    costs = compute.run(step_costs, s, target.model, range(1, s.k + 2) if drafted else [1], reach)
    draft_costs = None
    if drafted:
        draft = compute.run(load_model, s.draft, "draft", device=s.device, dtype=s.draft_dtype or s.dtype)
        draft_costs = compute.run(step_costs, s, draft.model, [1], reach)
        del draft
    for p in points:
        p["bound_tokens_per_s"] = point_bound(p, costs, draft_costs)
    return {c: c / costs[(c, 1)] for c in s.levels}


def save(s: SweepSettings, points: list[dict], bounds: dict[int, float] | None = None,
         differ: list | None = None, realised: float | None = None) -> None:
    """Write `--json`: after each mode and after the exactness check (`complete` false: the bounds come last), so a
    sweep cut short keeps the points it measured (`greedy_mismatches` null: not checked yet); then once more,
    complete. `realised`: the rate a replayed draft realised over the drafting requests (`replay_realised`)."""
    if s.json:
        with open(s.json, "w") as f:
            json.dump({"settings": s.__dict__, "complete": bounds is not None, "points": points,
                       "bounds": bounds or {}, "replay_realised": realised,
                       "greedy_mismatches": None if differ is None else [m.to_dict() for m in differ]},
                      f, indent=1, default=list)


def replay_realised(s: SweepSettings, prompt_ids: Sequence[Sequence[int]], reference: dict[int, list[int]],
                    points: Sequence[dict]) -> float | None:
    """The share of draft positions a replayed draft got right over the drafting points' measured requests, from
    each one's prompt and seed and its prompt's reference output (ReplayBook.realised; None: no replay). Points
    saved before requests had seeds of their own carried the sweep's `seed`."""
    if s.replay_alpha is None or not reference:
        return None
    book = ReplayBook([(prompt_ids[i], ids) for i, ids in reference.items()])
    requests = [(prompt_ids[out[0]], s.seed if seed is None else seed) for p in points if p["mode"] not in PLAIN_MODES
                for out, seed in zip(p["outputs"], p.get("seeds") or [None] * len(p["outputs"]))
                if out[0] in reference]
    realised = book.realised(s.replay_alpha, requests)
    if realised is not None:  # outputs of one token have no draft position
        print(f"replayed acceptance {s.replay_alpha} realises {realised:.3f} at the draft positions of the "
              f"{len(requests)} drafting requests", file=sys.stderr)
    return realised


MEASURED_WITH = ("target", "draft", "device", "draft_device", "dtype", "draft_dtype", "max_len", "levels",
                 "max_new_tokens", "k", "temperature", "top_k", "top_p", "seed")  # the settings a sweep's points
# must share with the flags that give them their bounds and exactness check (a file from before a setting existed
# was measured with its default)


def measured_points(s: SweepSettings) -> list[dict]:
    """The points of `s.json` (`bounds_only`): a sweep's, measured with the same models, device, levels, lengths
    and K as `s` says, since the bounds are measured here with those."""
    with open(s.json) as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or not isinstance(saved.get("points"), list) or "settings" not in saved:
        raise InvalidArgument("bounds-only", f"{s.json} is not a sweep's results file (no settings and points)")
    for key in MEASURED_WITH:
        was, now = saved["settings"].get(key, getattr(SweepSettings, key, None)), getattr(s, key)
        if (list(was) if isinstance(was, (list, tuple)) else was) != (list(now) if isinstance(now, tuple) else now):
            raise InvalidArgument("bounds-only", f"{s.json} was measured with {key}={was!r}, not {now!r}: give the "
                                                 "sweep's own flags")
    if not saved["points"]:
        raise InvalidArgument("bounds-only", f"{s.json} has no points")
    return saved["points"]


def main(s: SweepSettings) -> int:
    s.validate()
    points: list[dict] = measured_points(s) if s.bounds_only else []
    modes = () if s.bounds_only else s.modes
    with tempfile.TemporaryDirectory(prefix="specdec-sweep-") as scratch:
        replay = (s.replay_references or str(pathlib.Path(scratch) / "replay.jsonl")) if s.replay_alpha is not None \
            else None
        for mode in sorted((m for m in modes if m in SERVICE_MODES), key=lambda m: m != "target-only"):
            points += sweep_services(s, mode, replay)
            save(s, points)
    # the target in this process, once the services are gone (hf-generate, the engines, the bounds)
    compute = Compute.for_device(s.device)  # a CPU model loads and computes on one thread (core/compute.py)
    target = compute.run(load_model, s.target, "target", device=s.device, dtype=s.dtype)
    if "hf-generate" in modes:  # first: the engines repack a CPU model's linears (core/cpu_kernels.py)
        points += compute.run(sweep_hf_generate, s, target.model)
        save(s, points)
    for mode in (m for m in ENGINE_MODES if m in modes):
        points += sweep_engine(s, mode, target, compute)
        save(s, points)
    prompt_ids = [encode_prompt(target.tokenizer, p) for p in loadtest.DEFAULT_PROMPTS]
    sampled = not s.sampling.greedy
    checked = [p for p in points if p["mode"] in exactness.REFERENCE_MODES] if sampled else points
    reference = exactness.references(checked)
    differ = exactness.mismatches(checked, reference)
    if differ and not sampled:  # how near a tie each was: the target's top-2 logit gap there
        exactness.measure_gaps(differ, reference, prompt_ids, target.model, compute.run)
    realised = replay_realised(s, prompt_ids, reference, points)
    save(s, points, None, differ, realised)  # before the bounds' start-up: a sweep cut there keeps its exactness check
    bounds = add_bounds(s, points, target, compute, prompt_ids)
    del target
    failed = sum(p["ok"] < p["requests"] for p in points)
    print(table(points))
    save(s, points, bounds, differ, realised)
    if s.plot:
        plot(points, bounds, s.plot)
    if failed:
        print(f"sweep: {failed} points had failed requests (see errors)", file=sys.stderr)
    what = "sampled plain-decoding outputs differ from their prompt's first" if sampled else "greedy outputs differ " \
        "from their prompt's reference"
    if exactness.report(differ, "sweep", f"{len(differ)} {what}", s.report_greedy_mismatch):
        return 1
    return 1 if failed else 0
