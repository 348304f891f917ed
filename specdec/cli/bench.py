"""`specdec bench`: the same prompts through every decoding mode, side by side, in one run."""

from __future__ import annotations

import argparse

from specdec.cli.options import (
    add_engine_process_arg,
    add_log_level_arg,
    add_model_args,
    add_proposer_arg,
    add_sampling_flags,
    configure_logging,
    env_pair,
    sampling_of,
)
from specdec.core.config import EngineProcessMode, ProposerKind, SamplingParams
from specdec.core.drafting import Predraft
from specdec.core.errors import InvalidArgument
from specdec.tools.bench import MODES, BenchSettings, main


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmark every decoding mode side by side on the same prompts",
                           description="Run the same prompts through target-only, speculative (overlap off/on), "
                                       "the gRPC services and HF assisted generation, in one run; print a "
                                       "Markdown table. Greedy outputs must match in every mode.")
    add_model_args(bench)
    add_proposer_arg(bench, "who drafts in modes that name no proposer (default: draft-model)")
    bench.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, each optionally MODE:PROPOSER "
                                                               f"(default: {','.join(MODES)})")
    bench.add_argument("--prompts", default=None, help="JSONL with `prompt` or `turns` per line (default: HumanEval)")
    bench.add_argument("--num-prompts", type=int, default=20)
    bench.add_argument("--chat", action="store_true", help="apply the chat template to each prompt")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--k", type=int, default=4, help="draft tokens per cycle (the maximum with --adaptive-k)")
    bench.add_argument("--adaptive-k", action="store_true",
                       help="one-request modes: choose K per cycle (at most --k); sweeps always do unless --fixed-k")
    bench.add_argument("--fixed-k", action="store_true",
                       help="with --concurrency: every drafting mode drafts exactly --k tokens each cycle (the "
                            "services' orchestrator with --fixed-k, engine-* without adaptive K), to measure what "
                            "speculation gives where adaptive K would not draft")
    bench.add_argument("--no-overlap", action="store_true",
                       help="services mode: the draft does not draft ahead during verify, so services minus spec "
                            "is the services' own per-cycle cost (gRPC, session bookkeeping)")
    bench.add_argument("--repeats", type=int, default=3, help="measured repeats (median and min-max reported; default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    bench.add_argument("--replay-alpha", type=float, default=None,
                       help="replayed acceptance: the draft runs for real but proposes the target's greedy token "
                            "with this probability (random-weight systems benchmarks; in process and, through "
                            "serve draft --replay-references, in the services)")
    bench.add_argument("--replay-references", default=None, metavar="FILE",
                       help="with --concurrency and --replay-alpha: keep the target's continuations in FILE (JSON "
                            "lines, as serve draft --replay-references reads them): target-only mode writes it, the "
                            "services' drafts replay it, so a later sweep of drafting services alone (no target-only "
                            "mode: a device call too short for both) replays what this one recorded")
    bench.add_argument("--replay-runner-up", type=float, default=0.49,
                       help="replayed acceptance: where the draft's top token is wrong, its runner-up is right with "
                            "this probability (default 0.49: Qwen2.5-Coder 0.5B vs 1.5B on HumanEval, measured with "
                            "scripts/runner_up_rate.py)")
    bench.add_argument("--services-env", type=env_pair, action="append", default=[], metavar="NAME=VALUE",
                       help="services mode: set this in the environment of the three service processes only "
                            "(repeatable), e.g. OMP_WAIT_POLICY=PASSIVE for CPU services sharing cores")
    bench.add_argument("--predraft", default=Predraft.AUTO.value, choices=[p.value for p in Predraft],
                       help="spec-overlap and services: pre-draft every likely outcome of the block being verified "
                            "(see `specdec serve --help`); auto = when the draft runs on a GPU")
    bench.add_argument("--concurrency", default=None, metavar="C1,C2,...",
                       help="sweep concurrent clients instead (e.g. 1,4,16,64): per mode (target-only, services, "
                            "services-no-overlap, services-own-draft (the target drafts itself: serve target "
                            "--own-draft) through fresh local services; engine-target-only, engine-spec, "
                            "engine-own-draft: the target service's logic over batched engines in this process, no "
                            "gRPC; hf-generate; "
                            "default target-only,services) aggregate tokens/s, latency p50/p99, TTFT, inter-token "
                            "latency and what adaptive K drafted, the target-only bound from batched step costs "
                            "measured in this process; with --replay-alpha the draft replays the target's own output; "
                            "--json and --plot take the sweep")
    bench.add_argument("--no-compile", action="store_true",
                       help="with --concurrency on a GPU: batched engines (in process and services) skip torch.compile "
                            "of the models' layers (see `specdec serve --help`)")
    bench.add_argument("--stream-interval", type=int, default=None, metavar="N",
                       help="with --concurrency: batched targets (services and in process) hand each session its "
                            "cycles N at a time (see `specdec serve --help`; default: auto, by the load)")
    add_engine_process_arg(bench, "with --concurrency: where the services' targets run their engines, on (the flag "
                                  "alone), off or auto (default: a child process for a CUDA device; see `specdec "
                                  "serve --help`)")
    bench.add_argument("--rounds", type=int, default=2, help="with --concurrency: measured requests per client")
    add_sampling_flags(bench.add_argument_group("sampling (with --concurrency; default: greedy)"),
                       temperature_help="every request samples at this temperature (0: greedy). Plain decoding's "
                                        "outputs are then checked to be the same at every concurrency; a drafting "
                                        "mode's are equal to target-only's in distribution, not token for token, and "
                                        "are not compared",
                       seed=0, seed_help="every request's seed (default 0); with --replay-alpha, request n of a load "
                                         "carries this plus n")
    bench.add_argument("--bounds-only", action="store_true",
                       help="with --concurrency and --json FILE: run no mode; take FILE's points (a sweep cut short "
                            "after its modes, e.g. by a time limit), check their greedy outputs and add their bounds, "
                            "and write FILE complete. The other flags must be the ones FILE was measured with")
    bench.add_argument("--json", default=None, help="write full results (per mode, per prompt token ids) here")
    bench.add_argument("--plot", default=None, help="write a PNG: tokens/s per mode, acceptance per position")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    add_log_level_arg(bench, "warning", "the lowest level of this process's log lines on stderr (default: warning); "
                                        "info: the in-process engines' (engine-* modes) step costs and batch sizes "
                                        "every 5 s, and load-aware K's switches, as a service logs them (the services "
                                        "modes' own processes log at info)")
    bench.add_argument("--report-greedy-mismatch", action="store_true",
                       help="report (loudly) instead of failing when greedy outputs differ (with --concurrency: "
                            "across every point, each with the target's top-2 logit gap where it differs). Only for "
                            "random-weight bf16 runs: near-ties in random logits make a (k+1)-token verify or a "
                            "batched forward round differently from a 1-token decode; trained models in fp32 must "
                            "match exactly.")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, "bench")
    if args.concurrency is not None:
        return sweep(args)
    if args.no_compile:
        raise InvalidArgument("no-compile", "only with --concurrency (one-request modes run no batched engine)")
    if args.stream_interval is not None:
        raise InvalidArgument("stream-interval", "only with --concurrency (one-request modes stream every cycle)")
    if args.engine_process != EngineProcessMode.AUTO.value:
        raise InvalidArgument("engine-process", "only with --concurrency (the one-request services mode starts "
                                                "its target as `specdec up` does)")
    if args.fixed_k:
        raise InvalidArgument("fixed-k", "only with --concurrency (one-request modes draft exactly --k unless "
                                         "--adaptive-k)")
    if args.bounds_only:
        raise InvalidArgument("bounds-only", "only with --concurrency (a sweep's points have bounds)")
    if args.replay_references is not None:
        raise InvalidArgument("replay-references", "only with --concurrency (one-request modes record the target's "
                                                   "continuations in each run)")
    if sampling_of(args) != SamplingParams(seed=0):  # add_sampling_flags' defaults, with the bench's seed
        raise InvalidArgument("temperature", "sampling flags only with --concurrency (one-request modes decode "
                                             "greedily, each output checked against target-only's)")
    return main(BenchSettings(
        target=args.target, draft=args.draft, device=args.device, draft_device=args.draft_device, dtype=args.dtype,
        draft_dtype=args.draft_dtype, max_len=args.max_len, cpu_kernels=args.cpu_kernels,
        proposer=ProposerKind(args.proposer), modes=args.modes, prompts=args.prompts, num_prompts=args.num_prompts,
        chat=args.chat, max_new_tokens=args.max_new_tokens, k=args.k, adaptive_k=args.adaptive_k,
        no_overlap=args.no_overlap, repeats=args.repeats, warmup=args.warmup, replay_alpha=args.replay_alpha,
        replay_runner_up=args.replay_runner_up, services_env=tuple(args.services_env), predraft=Predraft(args.predraft),
        json=args.json, plot=args.plot, quiet=args.quiet, report_greedy_mismatch=args.report_greedy_mismatch))


def sweep(args: argparse.Namespace) -> int:
    from specdec.tools.sweep import SweepSettings
    from specdec.tools.sweep import main as sweep_main

    modes = ("target-only", "services") if args.modes == ",".join(MODES) else tuple(args.modes.split(","))
    try:
        levels = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        raise InvalidArgument("concurrency", f"{args.concurrency!r}: give numbers of clients, e.g. 1,4,16") from None
    return sweep_main(SweepSettings(
        target=args.target, draft=args.draft, device=args.device, draft_device=args.draft_device, dtype=args.dtype,
        draft_dtype=args.draft_dtype, max_len=args.max_len, modes=modes, levels=levels,
        max_new_tokens=args.max_new_tokens, k=args.k, fixed_k=args.fixed_k, rounds=args.rounds,
        replay_alpha=args.replay_alpha, replay_references=args.replay_references,
        report_greedy_mismatch=args.report_greedy_mismatch, json=args.json, plot=args.plot, compile=not args.no_compile,
        stream_interval=args.stream_interval, engine_process=EngineProcessMode(args.engine_process),
        bounds_only=args.bounds_only, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed))
