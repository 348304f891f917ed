"""DraftService servicer: translates the Propose stream to DraftSession calls and back."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterable, Iterator

from draft_service.session import NEVER, DraftSession, SentProposal
from specdec.compute import INLINE, Compute
from specdec.config import MAX_K, check_token_ids
from specdec.errors import InvalidArgument
from specdec.grpc_util import PROPOSER_FROM_PB, PROPOSER_TO_PB, placement_from_pb, sampling_from_pb
from specdec.placement import Placement
from specdec.proposers import Feedback, ProposerFactory
from specdec.sessions import SessionTable
from specdec.telemetry import Metrics, record_cycle
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger("specdec.draft")
_END = object()


def proposal_to_pb(p: SentProposal) -> draft_pb2.DraftProposal:
    return draft_pb2.DraftProposal(
        id=p.id, start=p.start, token_ids=p.token_ids, token_probs=p.token_probs(), draft_ms=p.draft_s * 1e3,
        ahead=p.ahead, source=PROPOSER_TO_PB.get(p.source, common_pb2.PROPOSER_KIND_UNSPECIFIED),
        token_sources=[PROPOSER_TO_PB[s] for s in p.token_sources()])


def message_to_pb(batch: list[SentProposal]) -> draft_pb2.ProposeResponse:
    """One message per batch the session drafted: a single block, or the blocks pre-drafted together."""
    if len(batch) == 1:
        return draft_pb2.ProposeResponse(proposal=proposal_to_pb(batch[0]))
    return draft_pb2.ProposeResponse(proposals=draft_pb2.DraftProposals(proposals=[proposal_to_pb(p) for p in batch]))


def row_to_pb(proposal_id: int, index: int, row: tuple[list[int], list[float]]) -> draft_pb2.ProposeResponse:
    ids, probs = row
    return draft_pb2.ProposeResponse(row=draft_pb2.DraftRow(proposal_id=proposal_id, index=index, ids=ids,
                                                            probs=probs))


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, factory: ProposerFactory, info: common_pb2.ServerInfo, free_slots, idle_timeout_s: float,
                 metrics: Metrics | None = None, predraft: str = NEVER, placement: Placement | None = None,
                 compute: Compute = INLINE, vocab_size: int | None = None):
        self.factory = factory
        self.vocab_size = vocab_size  # ids a model can embed; None (prompt lookup): any id >= 0
        self.compute = compute  # where drafting runs (specdec.compute: CPU models on one thread)
        self.predraft = predraft  # a pre-drafting policy (draft_service.session)
        self.placement = placement  # where the draft model computes; None without a model (prompt lookup)
        self.metrics = metrics or Metrics("draft")
        self.info = info
        self.free_slots = free_slots  # () -> int
        self.idle_timeout_s = idle_timeout_s
        self.sessions = SessionTable()
        self.metrics.track(lambda: len(self.sessions), free_slots)

    def DescribeDraft(self, request, context):
        info = common_pb2.ServerInfo()
        info.CopyFrom(self.info)
        info.active_sessions = len(self.sessions)
        info.free_kv_slots = self.free_slots()
        return draft_pb2.DescribeDraftResponse(info=info)

    def Propose(self, request_iterator, context) -> Iterator[draft_pb2.ProposeResponse]:
        return self.metrics.count_outcomes(self._propose(request_iterator, context))

    def _send(self, batches: Iterable[list[SentProposal]]) -> Iterator[draft_pb2.ProposeResponse]:
        for batch in batches:
            p = batch[0]  # a batch was drafted in one pass: one time, one record
            self.metrics.draft_step.labels("draft").observe(p.draft_s)
            record_cycle("propose", {"specdec.k": len(p.token_ids), "specdec.draft_ms": p.draft_s * 1e3,
                                     "specdec.ahead": p.ahead, "specdec.start": p.start, "specdec.proposer": p.source,
                                     "specdec.branches": len(batch)})
            yield message_to_pb(batch)

    def _propose(self, request_iterator, context) -> Iterator[draft_pb2.ProposeResponse]:
        inbox: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(request_iterator, inbox), daemon=True).start()
        try:
            first = inbox.get(timeout=self.idle_timeout_s)
        except queue.Empty:
            raise InvalidArgument("start", f"no start message within {self.idle_timeout_s:.0f}s") from None
        if first is _END or not first.HasField("start"):
            raise InvalidArgument("start", "the first message of a Propose stream must be `start`")
        start = first.start
        if not start.prompt_ids:
            raise InvalidArgument("start.prompt_ids", "must not be empty")
        check_token_ids("start.prompt_ids", start.prompt_ids, self.vocab_size)
        if not 1 <= start.k <= MAX_K:
            raise InvalidArgument("start.k", f"must be in [1, {MAX_K}], got {start.k}")
        sampling = sampling_from_pb(start.sampling).validate()
        overlap = overlap_pays(start.overlap, self.placement, placement_from_pb(start.target_placement))
        if overlap != start.overlap:
            log.info("session %s: the target computes on this draft's %s: drafting without overlap",
                     start.session_id, "GPU" if self.placement.gpu_uuid else "CPUs")
        entry = self.sessions.add(start.session_id)
        context.add_callback(entry.cancel_now)
        proposer = None
        try:
            proposer = self.factory.open(sampling, start.seed)
            session = DraftSession(proposer, start.prompt_ids, start.k, overlap, greedy=sampling.greedy,
                                   predraft=self.predraft, vocab_size=self.vocab_size)
            self.compute.run(session.start)
            while not entry.cancel.is_set():
                try:
                    msg = inbox.get(timeout=self.idle_timeout_s)
                except queue.Empty:
                    log.warning("session %s idle for %.0fs: closing it", start.session_id, self.idle_timeout_s)
                    return
                if msg is _END:
                    return
                kind = msg.WhichOneof("message")
                if kind == "verdict":
                    v = msg.verdict
                    drafted = session.on_verdict(v.start, list(v.token_ids), v.next_k, feedback_from_pb(v))
                    yield from self._send(self.compute.iterate(drafted))
                elif kind == "row_request":
                    r = msg.row_request
                    yield row_to_pb(r.proposal_id, r.index, self.compute.run(session.row, r.proposal_id, r.index))
                else:
                    raise InvalidArgument("message", f"unexpected {kind!r} after start")
        finally:
            if proposer is not None:
                proposer.close()
            self.sessions.remove(entry)


def overlap_pays(requested: bool, draft: Placement | None, target: Placement | None) -> bool:
    """Overlap as requested, except where the draft shares its target's compute (its GPU, or its CPU cores):
    there the draft's forwards and the target's take turns, so drafting ahead hides nothing and only adds
    draft work (docs/benchmarks.md: one H100, spec-overlap 0.82-0.94x target-only; one 2-core CPU host,
    the services with overlap 0.40-0.50x)."""
    return requested and not (draft is not None and draft.shares_compute_with(target))


def feedback_from_pb(pb: draft_pb2.ProposeVerdict) -> Feedback:
    return Feedback(source=PROPOSER_FROM_PB.get(pb.verified_source, ""), k=pb.verified_k, accepted=pb.accepted,
                    verify_s=pb.verify_ms / 1e3)


def _pump(request_iterator, inbox: queue.Queue) -> None:
    """Read the target's messages on their own thread, so drafting never blocks on the network."""
    try:
        for msg in request_iterator:
            inbox.put(msg)
    except Exception:  # noqa: BLE001 - the stream broke (cancelled, peer gone): end the session
        pass
    finally:
        inbox.put(_END)
