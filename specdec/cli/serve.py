"""`specdec serve ROLE`: flags (and a --config file) -> one server's typed settings -> a running server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import NoReturn

from specdec.cli.options import (
    PROPOSERS,
    add_engine_process_arg,
    add_log_level_arg,
    add_model_args,
    add_security_args,
    configure_logging,
    cpu_list,
)
from specdec.core.config import EngineProcessMode, ProposerKind
from specdec.core.drafting import Predraft
from specdec.core.errors import InvalidArgument
from specdec.serving.security import TLSFiles, read_tokens
from specdec.serving.server import Role, ServerSettings, freeze_heap

DEFAULT_PORTS = {Role.ORCHESTRATOR: 50051, Role.TARGET: 50052, Role.DRAFT: 50053}


def add_parser(sub) -> argparse.ArgumentParser:
    serve = sub.add_parser("serve", help="run one service: target, draft or orchestrator",
                           description="Run one gRPC service (health checking and reflection included).")
    serve.add_argument("role", type=Role, choices=list(Role), metavar="{target,draft,orchestrator}")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 in pods)")
    serve.add_argument("--port", type=int, default=None, help="port (default: orchestrator 50051, target 50052, "
                                                              "draft 50053)")
    add_model_args(serve, draft=False)
    serve.add_argument("--draft", default="tiny", help="draft model (role draft)")
    serve.add_argument("--draft-device", default=None, help="device of the draft (role draft; default: --device)")
    serve.add_argument("--own-draft", default=None, metavar="MODEL",
                       help="target (batched): also load this draft model, on the target's device, and draft with it "
                            "in the target's own engine: before each step it drafts for every session that wants a "
                            "block, all rows at once, then verifies them all in that step. The choice for one GPU "
                            "shared by draft and target (two engines there fall out of phase). An orchestrator with "
                            "no --drafts routes speculative requests to it")
    serve.add_argument("--proposer", default=ProposerKind.DRAFT_MODEL.value, choices=PROPOSERS,
                       help="draft: what proposes tokens (ngram loads no model and needs no GPU)")
    serve.add_argument("--predraft", default=Predraft.AUTO.value, choices=[p.value for p in Predraft],
                       help="draft, with overlap: while the target verifies a block, draft the next one for every "
                            "likely outcome (each rejection point with the draft's runner-up, and the bonus guess) "
                            "in one batched pass per step, and keep the draft's cache caught up while adaptive K "
                            "pauses drafting; auto = on a GPU (branches: greedy sessions, model drafts)")
    serve.add_argument("--replay-references", default=None, metavar="FILE",
                       help="draft (or target with --own-draft), systems benchmarks only: replayed acceptance. The "
                            "draft model runs for real but "
                            "proposes the target's greedy continuation from FILE (JSON lines of prompt_ids and "
                            "output_ids, as `specdec bench --replay-alpha` writes them) with probability "
                            "--replay-alpha; prompts not in FILE are refused")
    serve.add_argument("--replay-alpha", type=float, default=0.8, help="with --replay-references (default 0.8)")
    serve.add_argument("--replay-runner-up", type=float, default=0.49,
                       help="with --replay-references: where the replayed top token is wrong, the runner-up is "
                            "right with this probability (default 0.49, see bench --replay-runner-up)")
    serve.add_argument("--max-sessions", type=int, default=16, help="concurrent sessions (KV slots) per service")
    serve.add_argument("--queue-size", type=int, default=256,
                       help="target: sessions that may wait for a KV slot when all are taken (FIFO; beyond it, "
                            "RESOURCE_EXHAUSTED; default 256)")
    serve.add_argument("--queue-timeout", type=float, default=120.0,
                       help="target: seconds a session may wait for a KV slot before RESOURCE_EXHAUSTED (default 120)")
    serve.add_argument("--no-batching", action="store_true",
                       help="target, draft: run each session's forwards one at a time instead of all sessions' "
                            "forwards of a step in one batched forward (the engine; default). A batched draft does "
                            "not pre-draft (--predraft auto is off there; on needs this flag)")
    serve.add_argument("--batch-gather-ms", type=float, default=20.0,
                       help="target, draft: after a step, the most the engine waits for the sessions it answered "
                            "before the next step goes without them; it goes sooner once none has come back for 1 ms "
                            "(so a session waiting for its draft holds the others 1 ms; default 20)")
    serve.add_argument("--switch-interval-ms", type=float, default=None,
                       help="Python's thread switch interval (default: Python's, 5 ms). Smaller lets a batching "
                            "engine thread get the interpreter back sooner among many session threads")
    serve.add_argument("--stream-interval", type=int, default=None, metavar="N",
                       help="target (batched): stream each session's cycles N at a time, its first at once and its "
                            "last with the end: under heavy load fewer messages and fewer wake-ups of session threads "
                            "competing with the engine for the interpreter, at the cost of coarser streaming. Default "
                            "auto: every cycle while at most 8 sessions run, then one message per rows/8 cycles, so "
                            "about 8 session threads wake per engine step (docs/benchmarks.md measures it)")
    serve.add_argument("--prefill-chunk", type=int, default=512,
                       help="target: the most prompt tokens of one session forwarded per step, so a long prompt "
                            "delays the others' next token by one chunk at most (default 512)")
    serve.add_argument("--no-lookahead", action="store_true",
                       help="target on a GPU: read each step before launching the next. By default, while every "
                            "row of a step decodes plainly and greedily, the engine launches the next step on the "
                            "tokens the device just drew, before it reads them, so the GPU does not wait for the "
                            "host's verifying and planning (outputs are the same either way)")
    serve.add_argument("--no-compile", action="store_true",
                       help="target, draft (batched) on a GPU: skip torch.compile of the models' decoder layers. By "
                            "default they are compiled at start (a minute or more per model on an empty kernel "
                            "cache; fewer and fused kernels: a faster step, docs/benchmarks.md), then captured in CUDA "
                            "graphs")
    add_engine_process_arg(serve, "target: where the engine and every session's loop run. on (the flag alone): in a "
                           "child process, with gRPC (streams, metrics, traces) in this one, so that under many "
                           "clients the engine does not wait for the interpreter behind the sessions' gRPC threads; "
                           "the child loads the model, and if it dies running requests fail with UNAVAILABLE and "
                           "health reports NOT_SERVING. off: in this process. auto (default): on for a CUDA device, "
                           "off on a CPU, where the front end's threads would take the engine's cores (both "
                           "measured, docs/benchmarks.md)")
    serve.add_argument("--max-new-tokens-limit", type=int, default=4096, help="largest max_new_tokens accepted")
    serve.add_argument("--draft-timeout", type=float, default=5.0,
                       help="target: seconds to wait for a proposal before going on without the draft")
    serve.add_argument("--idle-timeout", type=float, default=60.0,
                       help="draft: seconds without a message before an abandoned session is reclaimed")
    serve.add_argument("--targets", nargs="+", default=["127.0.0.1:50052"], help="orchestrator: target addresses")
    serve.add_argument("--drafts", nargs="*", default=[], help="orchestrator: draft addresses (none = target only)")
    serve.add_argument("--k", type=int, default=4,
                       help="orchestrator: draft tokens per cycle (the maximum with adaptive K; default 4)")
    serve.add_argument("--fixed-k", action="store_true",
                       help="orchestrator: always draft --k tokens instead of adapting K to acceptance and costs")
    serve.add_argument("--no-overlap", action="store_true", help="orchestrator: don't draft ahead during verify")
    serve.add_argument("--default-max-new-tokens", type=int, default=128)
    serve.add_argument("--health-interval", type=float, default=0.5, help="orchestrator: seconds between health checks")
    serve.add_argument("--max-workers", type=int, default=64, help="orchestrator: concurrent requests")
    serve.add_argument("--cpus", type=cpu_list, default=None, metavar="LIST",
                       help="run this service on these CPUs only, e.g. 0-3,6 (Linux affinity; torch uses as many "
                            "threads). A CPU draft pinned apart from its CPU target drafts ahead while the target "
                            "verifies; sharing cores with the target, it does not (default: all CPUs allowed)")
    add_log_level_arg(serve, "info", "the lowest level of log line written to stderr (default: info)")
    serve.add_argument("--grace-period", type=float, default=30.0,
                       help="on SIGTERM: report NOT_SERVING, stop accepting, let running requests finish for up to "
                            "this many seconds, then exit 0")
    serve.add_argument("--max-requests", type=int, default=256, help="orchestrator: concurrent requests in all")
    serve.add_argument("--max-requests-per-client", type=int, default=64,
                       help="orchestrator: concurrent requests per client (bearer token, else host)")
    serve.add_argument("--config", default=None,
                       help="JSON file of settings (keys are flag names with _ for -); flags given on the command "
                            "line win. The Helm chart mounts these from a ConfigMap.")
    serve.add_argument("--paired-draft", default=None,
                       help="orchestrator: every target has its own draft at this address, as the target sees it "
                            "(paired topology, e.g. 127.0.0.1:50053)")
    add_security_args(serve, server=True)
    t = serve.add_argument_group("telemetry")
    t.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (/metrics)")
    t.add_argument("--otlp-endpoint", default=None,
                   help="OTLP/gRPC endpoint for traces, e.g. http://jaeger:4317 (default: $OTEL_EXPORTER_OTLP_ENDPOINT; "
                        "unset = tracing off)")
    t.add_argument("--service-name", default=None, help="trace service name (default: $OTEL_SERVICE_NAME or "
                                                        "specdec-<role>)")
    t.add_argument("--trace-cycles", choices=["spans", "events"], default=None,
                   help="record each verify/propose cycle as a child span (default) or as a span event "
                        "(cheaper for long generations)")
    serve.set_defaults(func=run)
    return serve


def apply_config(parser: argparse.ArgumentParser, serve: argparse.ArgumentParser, argv: list[str] | None,
                 args: argparse.Namespace) -> argparse.Namespace:
    """`--config FILE`: the file's settings become the serve command's defaults; flags given still win."""
    try:
        with open(args.config) as f:
            settings = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidArgument("config", f"cannot read {args.config}: {exc}") from exc
    unknown = sorted(k for k in settings if not hasattr(args, k))
    if unknown:
        raise InvalidArgument("config", f"unknown settings {unknown} in {args.config}")
    serve.set_defaults(**settings)
    return parser.parse_args(argv)


def server_settings(args: argparse.Namespace, tls: TLSFiles, tokens: tuple[str, ...], max_workers: int) -> ServerSettings:
    port = args.port if args.port is not None else DEFAULT_PORTS[args.role]
    return ServerSettings(host=args.host, port=port, tls=tls, tokens=tokens, max_workers=max_workers)


def security_of(args: argparse.Namespace, role: Role | None) -> tuple[TLSFiles, tuple[str, ...], str | None]:
    """(TLS files, tokens this process accepts, the internal token it presents) from the flags; role None: a
    client, whose token is the one it sends."""
    tls = TLSFiles(cert=args.tls_cert_file, key=args.tls_key_file, ca=args.tls_ca_file,
                   client_auth=getattr(args, "tls_client_auth", False))
    internal = read_tokens(getattr(args, "internal_token_file", None), "SPECDEC_INTERNAL_TOKEN")
    if role == Role.ORCHESTRATOR:
        accepted = read_tokens(args.api_token_file, "SPECDEC_API_TOKENS")
    elif role is not None:
        accepted = internal
    else:
        accepted = read_tokens(args.api_token_file, "SPECDEC_API_TOKEN")
    return tls, tuple(accepted), internal[0] if internal else None


def build_server(args: argparse.Namespace):
    """The role's server (and, for an orchestrator, its backend pool) from the flags."""
    tls, tokens, internal = security_of(args, args.role)
    backend_tls = tls if tls.enabled else None
    if args.role == Role.TARGET:
        from specdec.proposers.replay import ReplayRates
        from target_service.server import TargetServerSettings, build
        from target_service.service import TargetSettings

        return build(TargetServerSettings(
            server=server_settings(args, tls, tokens, 2 * args.max_sessions + args.queue_size + 8),
            target=args.target, device=args.device, dtype=args.dtype, max_len=args.max_len,
            max_sessions=args.max_sessions, queue_size=args.queue_size, queue_timeout_s=args.queue_timeout,
            cpu_kernels=args.cpu_kernels, batching=not args.no_batching, gather_s=args.batch_gather_ms / 1000,
            prefill_chunk=args.prefill_chunk, lookahead=not args.no_lookahead, stream_interval=args.stream_interval,
            compile=not args.no_compile, engine_process=EngineProcessMode(args.engine_process),
            session=TargetSettings(max_new_tokens=args.max_new_tokens_limit, draft_timeout_s=args.draft_timeout),
            own_draft=args.own_draft, replay_references=args.replay_references,
            replay=ReplayRates(args.replay_alpha, args.replay_runner_up),
            draft_tls=backend_tls, internal_token=internal)), None
    if args.role == Role.DRAFT:
        from draft_service.server import DraftServerSettings, build
        from specdec.proposers.replay import ReplayRates

        return build(DraftServerSettings(
            server=server_settings(args, tls, tokens, 2 * args.max_sessions + 8), draft=args.draft,
            target=args.target, device=args.draft_device or args.device, dtype=args.dtype, max_len=args.max_len,
            max_sessions=args.max_sessions, cpu_kernels=args.cpu_kernels, proposer=ProposerKind(args.proposer),
            predraft=Predraft(args.predraft), idle_timeout_s=args.idle_timeout,
            replay_references=args.replay_references,
            replay=ReplayRates(args.replay_alpha, args.replay_runner_up), batching=not args.no_batching,
            gather_s=args.batch_gather_ms / 1000, compile=not args.no_compile)), None
    from orchestrator.server import OrchestratorServerSettings, build
    from orchestrator.service import OrchestratorSettings

    return build(OrchestratorServerSettings(
        server=server_settings(args, tls, tokens, args.max_workers), target=args.target, targets=tuple(args.targets),
        drafts=tuple(args.drafts), paired_draft=args.paired_draft, health_interval_s=args.health_interval,
        orchestrator=OrchestratorSettings(
            default_max_new_tokens=args.default_max_new_tokens, max_new_tokens=args.max_new_tokens_limit, k=args.k,
            adaptive_k=not args.fixed_k, overlap=not args.no_overlap, max_requests=args.max_requests,
            max_requests_per_client=args.max_requests_per_client),
        backend_tls=backend_tls, internal_token=internal))


def pin(cpus: frozenset[int]) -> None:
    """Run on these CPUs only, before any model or thread pool exists (threads inherit it)."""
    import torch

    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise InvalidArgument("cpus", f"cannot run on CPUs {sorted(cpus)}: {exc}") from exc
    torch.set_num_threads(len(cpus))


def run(args: argparse.Namespace) -> NoReturn:
    """Serve until SIGINT or SIGTERM, drain, and end the process."""
    configure_logging(args.log_level, args.role.value)
    if args.cpus is not None:
        pin(args.cpus)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    from specdec.serving import telemetry
    from specdec.tools.launcher import PARENT_PID_ENV, watch_parent

    if args.trace_cycles:
        os.environ[telemetry.SPAN_EVENTS_ENV] = args.trace_cycles
    traced = telemetry.setup_tracing(telemetry.TelemetrySettings(
        service_name=args.service_name or f"specdec-{args.role.value}", otlp_endpoint=args.otlp_endpoint))
    server, pool = build_server(args)
    frozen = freeze_heap()
    if pool is not None:
        pool.start()
    stop = threading.Event()  # armed before the server is reachable: a SIGTERM right after start must drain
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log = logging.getLogger("specdec")
    tls = server.settings.tls
    log.info("%s serving on %s (%s%s); tracing %s; %d objects kept out of garbage collection", args.role.value,
             server.address, "TLS" + (" with client certificates" if tls.client_auth else "") if tls.cert else
             "plaintext", ", bearer tokens required" if server.settings.tokens else "", "on" if traced else "off",
             frozen)
    if args.metrics_port is not None:
        port = server.metrics.serve(args.metrics_port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    if parent := os.environ.get(PARENT_PID_ENV):  # started by `specdec up`/bench: don't outlive it
        threading.Thread(target=watch_parent, args=(int(parent), stop), daemon=True).start()
    # Wake up now and then: a process-directed SIGTERM can land on a gRPC thread, and its Python handler
    # only runs once the main thread is back in the interpreter; a bare wait() would never return.
    while not stop.wait(0.1):
        pass
    log.info("draining: NOT_SERVING now, up to %.0fs for running requests", args.grace_period)
    server.stop(grace=args.grace_period)
    if pool is not None:
        pool.stop()
    telemetry.shutdown_tracing()
    # Drained and flushed: leave without the interpreter's teardown of torch and gRPC (about a second of a
    # pod's termination, and of every test stack's), which has nothing left to save.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
