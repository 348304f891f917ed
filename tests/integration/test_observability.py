"""One trace per request across all three services, received by a real OTLP/gRPC receiver; and
Prometheus metrics consistent with the responses."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from specdec.serving.client import Client, build_request
from tests.conftest import PROMPTS
from tests.integration.servers import free_base_port, running_stack, scrape

pytestmark = pytest.mark.timeout(300)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP trace collector: keeps every span with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = {"string_value": v.string_value, "int_value": v.int_value, "double_value": v.double_value,
                      "bool_value": v.bool_value}.get(v.WhichOneof("value"))
    return out


@pytest.mark.parametrize("engine_process", [False, True], ids=["one-process", "engine-process"])
def test_one_trace_per_request_across_the_services_and_metrics_that_match_the_responses(engine_process):
    """One stack (three services exporting spans to a real OTLP/gRPC receiver, each serving Prometheus
    metrics) answers four requests; their counters must add up to the responses', and the first request's
    trace must cross every hop (with the target's engine in a process of its own too: the draft's spans are
    children of the target's session span, whose context crossed into the engine process)."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ports = dict(zip(["orchestrator", "target", "draft"], (free_base_port(3) + i for i in range(3))))
    flags = {role: ["--metrics-port", str(port)] for role, port in ports.items()}
    flags["target"] += ["--engine-process"] if engine_process else []
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with running_stack(env=env, **flags) as stack, Client(stack.address, timeout_s=60) as client:
            results = [client.generate(build_request(p, max_new_tokens=30, ignore_eos=True)) for p in PROMPTS[:4]]
            check_metrics(ports, results)
            check_trace(collector, results[0])
    finally:
        server.stop(None)


def check_trace(collector: Receiver, result) -> None:
    """The request's spans, exported while the stack serves (100 ms batches), form one trace."""
    spec = result.summary.speculation

    def trace():
        with collector.lock:
            mine = [s for svc, s in collector.spans if s.name == "Generate" and svc == "specdec-orchestrator"
                    and attrs(s).get("specdec.session_id") == result.summary.session_id]
            return mine, [(svc, s) for svc, s in collector.spans if mine and s.trace_id == mine[0].trace_id]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        generate, spans = trace()
        verify = [attrs(s) for _, s in spans if s.name == "verify"]
        if {svc for svc, _ in spans} == {"specdec-orchestrator", "specdec-target", "specdec-draft"} and \
                sum(a["specdec.accepted"] for a in verify) == spec.accepted_tokens and \
                sum(1 for a in verify if a["specdec.k"] > 0) == spec.drafts and \
                any(s.name == "propose" for _, s in spans):
            break
        time.sleep(0.1)
    assert len(generate) == 1
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    services = defaultdict(set)
    for svc, s in spans:
        services[svc].add(s.name)
    assert {"Generate", "tokenize", "route", "/specdec.v1.Orchestrator/Generate"} <= services["specdec-orchestrator"]
    assert {"/specdec.v1.TargetService/Generate", "session", "verify"} <= services["specdec-target"]
    assert {"/specdec.v1.DraftService/Propose", "propose"} <= services["specdec-draft"]

    def parent(name: str, svc: str):
        span = next(s for v, s in spans if s.name == name and v == svc)
        return by_id[span.parent_span_id][1].name

    assert parent("/specdec.v1.TargetService/Generate", "specdec-target") == "Generate"  # crosses the hop
    assert parent("session", "specdec-target") == "/specdec.v1.TargetService/Generate"
    assert parent("verify", "specdec-target") == "session"
    assert parent("/specdec.v1.DraftService/Propose", "specdec-draft") == "session"
    assert parent("propose", "specdec-draft") == "/specdec.v1.DraftService/Propose"

    g = attrs(generate[0])
    assert g["gen_ai.usage.output_tokens"] == 30 and g["gen_ai.usage.input_tokens"] > 0
    assert g["gen_ai.request.model"] == "tiny"
    verify = [attrs(s) for v, s in spans if s.name == "verify"]
    for a in verify:
        assert {"specdec.k", "specdec.accepted", "specdec.verify_ms", "specdec.wait_for_draft_ms",
                "specdec.overlap_hit"} <= a.keys()
    assert sum(a["specdec.accepted"] for a in verify) == spec.accepted_tokens
    assert sum(1 for a in verify if a["specdec.k"] > 0) == spec.drafts
    propose = [attrs(s) for v, s in spans if s.name == "propose"]
    assert propose and all("specdec.draft_ms" in a and "specdec.k" in a for a in propose)


def check_metrics(ports: dict[str, int], results: list) -> None:
    """Every service's counters add up to what the responses say."""
    totals = defaultdict(int)
    per_pos = defaultdict(int)
    for r in results:
        spec = r.summary.speculation
        totals["drafts"] += spec.drafts
        totals["draft_tokens"] += spec.draft_tokens
        totals["accepted"] += spec.accepted_tokens
        for i, n in enumerate(spec.accepted_per_position):
            per_pos[str(i)] += n
    for role in ("orchestrator", "target"):
        m = scrape(ports[role])
        assert m[("specdec_num_drafts_total", ())] == totals["drafts"], role
        assert m[("specdec_num_draft_tokens_total", ())] == totals["draft_tokens"], role
        assert m[("specdec_num_accepted_tokens_total", ())] == totals["accepted"], role
        for pos, n in per_pos.items():
            if n:
                assert m[("specdec_num_accepted_tokens_per_pos_total", (("position", pos),))] == n, (role, pos)
        assert m[("specdec_active_sessions", ())] == 0
    orch = scrape(ports["orchestrator"])
    assert orch[("specdec_requests_total", (("code", "OK"),))] == 4
    assert orch[("specdec_time_to_first_token_seconds_count", ())] == 4
    assert orch[("specdec_request_duration_seconds_count", ())] == 4
    target = scrape(ports["target"])
    assert target[("specdec_free_kv_slots", ())] == 16
    draft = scrape(ports["draft"])
    assert draft[("specdec_draft_step_seconds_count", ())] >= totals["drafts"]
    # A session's end reaches the draft after the answer: the target half-closes the Propose stream
    # without waiting, and the draft may still be drafting ahead. It must be released soon, not never.
    deadline = time.monotonic() + 10
    while scrape(ports["draft"])[("specdec_active_sessions", ())] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape(ports["draft"])[("specdec_active_sessions", ())] == 0


@pytest.mark.parametrize("engine_process", [False, True], ids=["one-process", "engine-process"])
def test_the_target_s_own_draft_reports_its_drafting_phases(engine_process):
    """A target with its own draft (no draft service; the orchestrator routes speculative requests to it):
    the responses' drafts are on the target's counters, and its drafting phases, the engine's steps and its
    rows per step on its histograms; the rows it and its draft launched ahead of the host's reads, on counters.
    An engine in a process of its own reports its steps and phases every half second: they are waited for."""
    ports = dict(zip(["orchestrator", "target"], (free_base_port(2) + i for i in range(2))))
    target = ["--own-draft", "tiny", "--metrics-port", str(ports["target"]), *(["--engine-process"] * engine_process)]
    with running_stack(draft_model=None, target=target,
                       orchestrator=["--k", "3", "--fixed-k"]) as stack, Client(stack.address, timeout_s=60) as client:
        results = [client.generate(build_request(p, max_new_tokens=24, ignore_eos=True)) for p in PROMPTS[:2]]
        m, deadline = {}, time.monotonic() + 10
        while time.monotonic() < deadline:  # until two scrapes a report apart agree
            m, was = scrape(ports["target"]), m
            if m == was:
                break
            time.sleep(0.6)
    drafts = sum(r.summary.speculation.drafts for r in results)
    assert drafts > 0 and m[("specdec_num_drafts_total", ())] == drafts
    # sessions one at a time: a phase per block drafted, each verified at least once (a block outlasting a short
    # last cycle serves the next one too) but the one a session may ask for as it ends
    assert 0 < m[("specdec_draft_phase_seconds_count", ())] <= drafts + len(results)
    assert m[("specdec_draft_phase_seconds_sum", ())] > 0
    # each session's draft caught up on its prompt before its first block, in a phase of its own (one at a time)
    assert len(results) <= m[("specdec_draft_catch_ups_total", ())] <= m[("specdec_draft_phase_seconds_count", ())]
    assert 0 < m[("specdec_draft_catch_up_seconds_total", ())] < m[("specdec_draft_phase_seconds_sum", ())]
    # a draft catches up first where it lacks more than two tokens: at least two in each such phase
    assert m[("specdec_draft_catch_up_tokens_total", ())] >= 2 * m[("specdec_draft_catch_ups_total", ())]
    assert m[("specdec_batch_step_seconds_count", ())] > 0 and m[("specdec_batch_rows_count", ())] > 0
    # the engine's and its draft's launched-ahead rows (a CPU launches none)
    for kind in ("guess", "verify", "draft", "catch-up"):
        launched = m[("specdec_rows_launched_ahead_total", (("kind", kind),))]
        assert 0 <= m[("specdec_rows_launched_ahead_kept_total", (("kind", kind),))] <= launched
