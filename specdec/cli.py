"""The `specdec` command line. Wiring only: parse flags, build core objects, print results."""

from __future__ import annotations

import argparse
import json
import os
import sys

from specdec import __version__
from specdec.cpu_kernels import CPU_KERNELS, ONEDNN


def add_model_args(p: argparse.ArgumentParser, *, draft: bool = True) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", default="tiny",
                   help="target model: 'tiny' (built-in), an HF directory, a .gguf file, or a cached hub id "
                        "(default: tiny)")
    if draft:
        g.add_argument("--draft", default="tiny", help="draft model, same forms as --target (default: tiny)")
        g.add_argument("--draft-device", default=None, help="device of the draft (default: --device)")
        g.add_argument("--draft-dtype", default=None,
                       help="dtype of the draft (default: --dtype; `auto` is int8 on CPU, bf16 on CUDA). The draft "
                            "only proposes, so its precision changes acceptance, never the output: on CPU an int8 "
                            "draft step costs a third of an fp32 one")
    g.add_argument("--device", default="cpu", help="device of the target: cpu or cuda:N (default: cpu)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA; on CPU fp32 for a target, int8 for a draft), "
                   "float32, bfloat16, float16, or int8 (CPU, dynamic quantization of the linear layers; meant for a "
                   "draft)")
    g.add_argument("--max-len", type=int, default=2048, help="KV cache length per session, in tokens (default: 2048)")
    add_cpu_kernels_arg(g)


def add_cpu_kernels_arg(g) -> None:
    g.add_argument("--cpu-kernels", default=ONEDNN, choices=CPU_KERNELS,
                   help="CPU models only: 'onednn' packs linear weights for oneDNN once at load (~1.4x faster "
                        "decode, much flatter verify cost); 'stock' keeps torch.nn.Linear (default: onednn)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")


def add_speculation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculation")
    g.add_argument("--k", type=int, default=4, help="draft tokens per cycle (the maximum with --adaptive-k; default 4)")
    g.add_argument("--adaptive-k", action="store_true",
                   help="choose K per cycle from measured acceptance and step costs, down to 0 when it does not pay")
    g.add_argument("--no-draft", action="store_true", help="plain target-only decoding (the baseline)")
    g.add_argument("--proposer", default="draft-model", choices=["draft-model", "ngram", "hybrid"],
                   help="who drafts: the draft model, prompt lookup (n-gram; no draft model), or hybrid: per cycle "
                        "lookup, the draft model or neither, whichever should commit the most tokens per second "
                        "(default: draft-model)")


def cpu_list(text: str) -> frozenset[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers and ranges like 0-3,6, got {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"expected CPU numbers and ranges like 0-3,6, got {text!r}")
    return frozenset(cpus)


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdec", description="Lossless speculative decoding: a small draft model proposes, "
        "a large target model verifies; the output is exactly the target's.")
    parser.add_argument("--version", action="version", version=f"specdec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate text in one process (no services)",
                         description="Generate from PROMPT with speculative decoding in this process.")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--chat", action="store_true", help="apply the target's chat template to the prompt")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    add_model_args(gen)
    add_sampling_args(gen)
    add_speculation_args(gen)
    gen.set_defaults(func=cmd_generate)

    serve = sub.add_parser("serve", help="run one service: target, draft or orchestrator",
                           description="Run one gRPC service (health checking and reflection included).")
    serve.add_argument("role", choices=["target", "draft", "orchestrator"])
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 in pods)")
    serve.add_argument("--port", type=int, default=None, help="port (default: orchestrator 50051, target 50052, "
                                                              "draft 50053)")
    add_model_args(serve, draft=False)
    serve.add_argument("--draft", default="tiny", help="draft model (role draft)")
    serve.add_argument("--draft-device", default=None, help="device of the draft (role draft; default: --device)")
    serve.add_argument("--proposer", default="draft-model", choices=["draft-model", "ngram", "hybrid"],
                       help="draft: what proposes tokens (ngram loads no model and needs no GPU)")
    serve.add_argument("--predraft", default="auto", choices=["auto", "on", "off"],
                       help="draft, with overlap: while the target verifies a block, draft the next one for every "
                            "likely outcome (each rejection point with the draft's runner-up, and the bonus guess) "
                            "in one batched pass per step, and keep the draft's cache caught up while adaptive K "
                            "pauses drafting; auto = on a GPU (branches: greedy sessions, model drafts)")
    serve.add_argument("--replay-references", default=None, metavar="FILE",
                       help="draft, systems benchmarks only: replayed acceptance. The draft model runs for real but "
                            "proposes the target's greedy continuation from FILE (JSON lines of prompt_ids and "
                            "output_ids, as `specdec bench --replay-alpha` writes them) with probability "
                            "--replay-alpha; prompts not in FILE are refused")
    serve.add_argument("--replay-alpha", type=float, default=0.8, help="draft, with --replay-references (default 0.8)")
    serve.add_argument("--replay-runner-up", type=float, default=0.49,
                       help="draft, with --replay-references: where the replayed top token is wrong, the runner-up is "
                            "right with this probability (default 0.49, see bench --replay-runner-up)")
    serve.add_argument("--max-sessions", type=int, default=16, help="concurrent sessions (KV slots) per service")
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
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="start draft, target and orchestrator on loopback",
                        description="Start all three services on loopback, wait until healthy, print the "
                                    "orchestrator address; Ctrl-C stops all three.")
    up.add_argument("--port", type=int, default=50051, help="orchestrator port; target +1, draft +2")
    up.add_argument("--target", default="tiny")
    up.add_argument("--draft", default="tiny")
    up.add_argument("--no-draft", action="store_true", help="target only")
    up.add_argument("--device", default="cpu")
    up.add_argument("--draft-device", default=None)
    up.add_argument("--dtype", default="auto")
    up.add_argument("--draft-dtype", default=None, help="dtype of the draft (default: --dtype; auto = int8 on CPU)")
    add_cpu_kernels_arg(up)
    up.add_argument("--k", type=int, default=4)
    up.add_argument("--proposer", default="draft-model", choices=["draft-model", "ngram", "hybrid"])
    up.set_defaults(func=cmd_up)

    client = sub.add_parser("client", help="send a prompt to an orchestrator and stream the answer")
    client.add_argument("prompt", help="the prompt text")
    client.add_argument("--address", default="127.0.0.1:50051", help="orchestrator host:port")
    client.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    client.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    client.add_argument("--k", type=int, default=None, help="override draft tokens per cycle")
    client.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    client.add_argument("--proposer", default=None, choices=["draft-model", "ngram", "hybrid"],
                        help="route to a draft running this proposer (default: any)")
    add_sampling_args(client)
    add_security_args(client, server=False)
    client.set_defaults(func=cmd_client)

    bench = sub.add_parser("bench", help="benchmark every decoding mode side by side on the same prompts",
                           description="Run the same prompts through target-only, speculative (overlap off/on), "
                                       "the gRPC services and HF assisted generation, in one run; print a "
                                       "Markdown table. Greedy outputs must match in every mode.")
    add_model_args(bench)
    bench.add_argument("--proposer", default="draft-model", choices=["draft-model", "ngram", "hybrid"])
    bench.add_argument("--modes", default=",".join(MODES_DEFAULT), help=f"comma-separated (default: "
                                                                         f"{','.join(MODES_DEFAULT)})")
    bench.add_argument("--prompts", default=None, help="JSONL with `prompt` or `turns` per line (default: HumanEval)")
    bench.add_argument("--num-prompts", type=int, default=20)
    bench.add_argument("--chat", action="store_true", help="apply the chat template to each prompt")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--k", type=int, default=4, help="draft tokens per cycle (the maximum with --adaptive-k)")
    bench.add_argument("--adaptive-k", action="store_true")
    bench.add_argument("--no-overlap", action="store_true",
                       help="services mode: the draft does not draft ahead during verify, so services minus spec "
                            "is the services' own per-cycle cost (gRPC, session bookkeeping)")
    bench.add_argument("--repeats", type=int, default=3, help="measured repeats (median and min-max reported; default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    bench.add_argument("--replay-alpha", type=float, default=None,
                       help="replayed acceptance: the draft runs for real but proposes the target's greedy token "
                            "with this probability (random-weight systems benchmarks; in process and, through "
                            "serve draft --replay-references, in the services)")
    bench.add_argument("--replay-runner-up", type=float, default=0.49,
                       help="replayed acceptance: where the draft's top token is wrong, its runner-up is right with "
                            "this probability (default 0.49: Qwen2.5-Coder 0.5B vs 1.5B on HumanEval, measured with "
                            "scripts/runner_up_rate.py)")
    bench.add_argument("--services-env", type=env_pair, action="append", default=[], metavar="NAME=VALUE",
                       help="services mode: set this in the environment of the three service processes only "
                            "(repeatable), e.g. OMP_WAIT_POLICY=PASSIVE for CPU services sharing cores")
    bench.add_argument("--predraft", default="auto", choices=["auto", "on", "off"],
                       help="spec-overlap and services: pre-draft every likely outcome of the block being verified "
                            "(see `specdec serve --help`); auto = when the draft runs on a GPU")
    bench.add_argument("--json", default=None, help="write full results (per mode, per prompt token ids) here")
    bench.add_argument("--plot", default=None, help="write a PNG: tokens/s per mode, acceptance per position")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.add_argument("--report-greedy-mismatch", action="store_true",
                       help="report (loudly) instead of failing when greedy outputs differ. Only for random-weight "
                            "bf16 runs: near-ties in random logits make a (k+1)-token verify forward round "
                            "differently from a 1-token decode; trained models in fp32 must match exactly.")
    bench.set_defaults(func=cmd_bench)

    load = sub.add_parser("loadtest", help="concurrent clients against a local orchestrator: throughput, "
                                           "latency percentiles, errors (loopback only)")
    load.add_argument("--address", default="127.0.0.1:50051")
    load.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    load.add_argument("--requests", type=int, default=10, help="requests per client")
    load.add_argument("--max-new-tokens", type=int, default=32)
    load.add_argument("--prompt", action="append", default=[], help="prompt (repeatable; default: a few built in)")
    load.add_argument("--time-limit", type=float, default=300.0, help="stop starting requests after this many s")
    load.add_argument("--json", action="store_true")
    load.set_defaults(func=cmd_loadtest)
    return parser


def cmd_loadtest(args: argparse.Namespace) -> int:
    from specdec.loadtest import main as load_main

    return load_main(args)


MODES_DEFAULT = ("target-only", "spec", "spec-overlap", "services", "hf-assisted")


def cmd_bench(args: argparse.Namespace) -> int:
    from specdec.bench import main as bench_main

    return bench_main(args)


def add_security_args(p: argparse.ArgumentParser, *, server: bool) -> None:
    g = p.add_argument_group("security (plaintext without these)")
    g.add_argument("--tls-ca-file", default=None, help="PEM CA bundle to verify peers with (enables TLS as a client)")
    g.add_argument("--tls-cert-file", default=None, help="PEM certificate (server: enables TLS; client: for mTLS)")
    g.add_argument("--tls-key-file", default=None, help="PEM private key of --tls-cert-file")
    g.add_argument("--api-token-file", default=None,
                   help="orchestrator: accepted API tokens, one per line (or $SPECDEC_API_TOKENS, comma-separated); "
                        "client: the token to send (first line, or $SPECDEC_API_TOKEN)")
    if server:
        g.add_argument("--tls-client-auth", action="store_true",
                       help="require client certificates signed by --tls-ca-file (mutual TLS)")
        g.add_argument("--internal-token-file", default=None,
                       help="token for internal hops (or $SPECDEC_INTERNAL_TOKEN): target/draft accept only calls "
                            "that carry it; orchestrator/target present it")


def security_of(args: argparse.Namespace) -> tuple:
    """(TLSFiles, tokens this server accepts, token it presents to backends) from the flags."""
    from specdec.security import TLSFiles, read_tokens

    tls = TLSFiles(cert=args.tls_cert_file, key=args.tls_key_file, ca=args.tls_ca_file,
                   client_auth=getattr(args, "tls_client_auth", False))
    internal = read_tokens(getattr(args, "internal_token_file", None), "SPECDEC_INTERNAL_TOKEN")
    role = getattr(args, "role", "client")
    if role == "orchestrator":
        accepted = read_tokens(args.api_token_file, "SPECDEC_API_TOKENS")
    elif role in ("target", "draft"):
        accepted = internal
    else:
        accepted = read_tokens(args.api_token_file, "SPECDEC_API_TOKEN")
    return tls, tuple(accepted), internal[0] if internal else None


DEFAULT_PORTS = {"orchestrator": 50051, "target": 50052, "draft": 50053}


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s {args.role} %(levelname)s %(name)s: %(message)s")
    if args.cpus is not None:  # before any model or thread pool exists
        import torch

        from specdec.errors import InvalidArgument

        try:
            os.sched_setaffinity(0, args.cpus)
        except OSError as exc:
            raise InvalidArgument("cpus", f"cannot run on CPUs {sorted(args.cpus)}: {exc}") from exc
        torch.set_num_threads(len(args.cpus))
    if args.port is None:
        args.port = DEFAULT_PORTS[args.role]
    args.tls, args.accepted_tokens, args.internal_token = security_of(args)
    from specdec import telemetry

    if args.trace_cycles:
        os.environ[telemetry.SPAN_EVENTS_ENV] = args.trace_cycles
    traced = telemetry.setup_tracing(telemetry.TelemetrySettings(
        service_name=args.service_name or f"specdec-{args.role}", otlp_endpoint=args.otlp_endpoint))
    pool = None
    if args.role == "target":
        from target_service.server import build
        server = build(args)
    elif args.role == "draft":
        from draft_service.server import build
        args.device = args.draft_device or args.device
        server = build(args)
    else:
        from orchestrator.server import build
        server, pool = build(args)
        pool.start()
    stop = threading.Event()  # armed before the server is reachable: a SIGTERM right after start must drain
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log = logging.getLogger("specdec")
    log.info("%s serving on %s (%s%s); tracing %s", args.role, server.address,
             "TLS" + (" with client certificates" if args.tls.client_auth else "") if args.tls.cert else "plaintext",
             ", bearer tokens required" if args.accepted_tokens else "", "on" if traced else "off")
    if args.metrics_port is not None:
        port = server.metrics.serve(args.metrics_port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    from specdec.launcher import PARENT_PID_ENV, watch_parent

    if parent := os.environ.get(PARENT_PID_ENV):  # started by `specdec up`/bench: don't outlive it
        threading.Thread(target=watch_parent, args=(int(parent), stop), daemon=True).start()
    # Wake up now and then: a process-directed SIGTERM can land on a gRPC thread, and its Python handler
    # only runs once the main thread is back in the interpreter; a bare wait() would never return.
    while not stop.wait(0.5):
        pass
    log.info("draining: NOT_SERVING now, up to %.0fs for running requests", args.grace_period)
    server.stop(grace=args.grace_period)
    if pool is not None:
        pool.stop()
    telemetry.shutdown_tracing()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    from specdec.launcher import Stack

    logging.basicConfig(level=logging.INFO)
    common = ["--device", args.device, "--dtype", args.dtype, "--cpu-kernels", args.cpu_kernels]
    stack = Stack(port=args.port, target=args.target, draft=None if args.no_draft else args.draft,
                  extra={"target": common, "draft": ["--draft-device", args.draft_device or args.device,
                                                     "--dtype", args.draft_dtype or args.dtype,
                                                     "--cpu-kernels", args.cpu_kernels,
                                                     "--proposer", args.proposer],
                         "orchestrator": ["--k", str(args.k)]})
    stack.start()
    return stack.run_until_signal()


def cmd_client(args: argparse.Namespace) -> int:
    from specdec.client import Client, build_request
    from specdec.config import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    messages = [{"role": "user", "content": args.prompt}] if args.chat else None
    request = build_request(None if args.chat else args.prompt, messages=messages, sampling=sampling,
                            max_new_tokens=args.max_new_tokens, stop=tuple(args.stop), k=args.k,
                            ignore_eos=args.ignore_eos, proposer=args.proposer)
    tls, tokens, _ = security_of(args)
    with Client(args.address, timeout_s=args.timeout, tls=tls if tls.enabled else None,
                token=tokens[0] if tokens else None) as client:
        on_text = None if args.json else (lambda t: print(t, end="", flush=True))
        result = client.generate(request, on_text)
    out = result.to_dict()
    if args.json:
        print(json.dumps(out))
    else:
        s = out["stats"]
        print(f"\n\n[{len(result.token_ids)} tokens, {s['tokens_per_second']:.1f} tok/s, {out['finish_reason']}; "
              f"drafts={s['drafts']} accepted={s['accepted_tokens']} "
              f"mean_acceptance_length={s['mean_acceptance_length']:.2f}]", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from specdec.engine import Engine, EngineConfig, request_from_args

    engine = Engine.load(EngineConfig.from_args(args, with_draft=not args.no_draft))
    request = request_from_args(engine, args)
    on_text = None if args.json else (lambda t: print(t, end="", flush=True))
    result = engine.decoder.generate(request, on_text=on_text)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        s = result.stats
        print(f"\n\n[{s.new_tokens} tokens, {s.tokens_per_second:.1f} tok/s, finish={result.finish_reason.value}; "
              f"drafts={s.drafts} draft_tokens={s.draft_tokens} accepted={s.accepted_tokens} "
              f"mean_acceptance_length={s.mean_acceptance_length:.2f}]", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; for `serve --config FILE`, the file's settings become defaults that flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from specdec.errors import InvalidArgument

        try:
            with open(args.config) as f:
                settings = json.load(f)
        except (OSError, ValueError) as exc:
            raise InvalidArgument("config", f"cannot read {args.config}: {exc}") from exc
        unknown = sorted(k for k in settings if not hasattr(args, k))
        if unknown:
            raise InvalidArgument("config", f"unknown settings {unknown} in {args.config}")
        serve_parser = parser._subparsers._group_actions[0].choices["serve"]
        serve_parser.set_defaults(**settings)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    import grpc

    from specdec.errors import SpecdecError

    try:
        args = parse_args(argv)
    except SpecdecError as exc:
        print(f"specdec: error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except SpecdecError as exc:
        print(f"specdec: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"specdec: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
