"""The target's end of one session's Propose stream to its draft.

A reader thread files incoming proposals and rows; the verification loop picks the best usable
proposal when it is ready for one. Any failure of the draft (dead, stalled, protocol error) only marks
the link failed: the target then goes on alone and the client loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading

import grpc
import torch

from specdec.core.drafting import DraftStart
from specdec.core.errors import Unavailable
from specdec.core.proposal import Proposal
from specdec.core.stats import Cycle
from specdec.core.target_loop import BROKEN, ProposalInbox, feedback_of
from specdec.serving.convert import draft_start_to_pb, proposal_from_pb, verdict_to_pb
from specdec.serving.security import TLSFiles, bearer
from specdec.serving.server import make_channel
from specdec.serving.telemetry import outgoing_metadata
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger("specdec.target.link")
_CLOSE = object()


class RemoteDraftProbs:
    """q for a remote proposal: q(x_i) came with it; a whole row is fetched only after a rejection."""

    def __init__(self, pb: draft_pb2.DraftProposal, link: "DraftLink") -> None:
        self.pb, self.link = pb, link

    def token_prob(self, i: int) -> float:
        return self.pb.token_probs[i]

    def row(self, i: int) -> torch.Tensor:
        if self.pb.token_sources and self.pb.token_sources[i] == common_pb2.PROPOSER_KIND_NGRAM:
            row = torch.zeros(self.link.vocab_size, device=self.link.device)  # one-hot: no round trip needed
            row[self.pb.token_ids[i]] = 1.0
            return row
        return self.link.fetch_row(self.pb.id, i)

    def token_probs_held(self) -> None:
        return None  # they came with the proposal


class DraftLink(ProposalInbox):
    """The target's end of one Propose stream (a `DraftSource`)."""

    def __init__(self, stub: draft_pb2_grpc.DraftServiceStub, start: draft_pb2.ProposeStart, *,
                 vocab_size: int, device: torch.device, timeout_s: float, greedy: bool,
                 metadata: tuple = (), deadline_s: float | None = None) -> None:
        super().__init__(self._to_proposal, timeout_s)
        self.vocab_size, self.device, self.greedy = vocab_size, device, greedy
        self._closing = False
        self._answered = False  # the draft has sent something: it is there to end the stream cleanly
        self._outbox: queue.Queue = queue.Queue()
        self._rows: queue.Queue = queue.Queue()
        self._outbox.put(draft_pb2.ProposeRequest(start=start))
        self._call = stub.Propose(iter(self._outbox.get, _CLOSE), metadata=metadata, wait_for_ready=True,
                                  timeout=deadline_s)  # the client's deadline reaches the draft too
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"draft-link-{start.session_id}")
        self._reader.start()

    def fail(self, reason: str) -> None:
        if self.failure is None:
            super().fail(reason)
            log.warning("draft link failed, going on without the draft: %s", reason)
            self.close(cancel=True)

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None:
        if not self.failed:
            self._outbox.put(draft_pb2.ProposeRequest(verdict=verdict_to_pb(cycle, feedback_of(cycle), next_k)))

    def fetch_row(self, proposal_id: int, index: int) -> torch.Tensor:
        if self.failed:
            raise Unavailable(f"draft link failed: {self.failure}")
        self._outbox.put(draft_pb2.ProposeRequest(
            row_request=draft_pb2.ProposeRowRequest(proposal_id=proposal_id, index=index)))
        try:
            pb = self._rows.get(timeout=self.timeout_s)
        except queue.Empty:
            self.fail("no row from the draft within the timeout")
            raise Unavailable(f"draft link failed: {self.failure}") from None
        problem = "the draft's stream ended" if pb is BROKEN else row_problem(pb, proposal_id, index, self.vocab_size)
        if problem:
            self.fail(f"malformed row: {problem}")
            raise Unavailable(f"draft link failed: {self.failure}")
        row = torch.zeros(self.vocab_size, dtype=torch.float32)
        row[torch.tensor(list(pb.ids), dtype=torch.long)] = torch.tensor(list(pb.probs), dtype=torch.float32)
        return row.to(self.device)

    def close(self, cancel: bool = False) -> None:
        """End the session on the draft: half-close the stream so the draft finishes it cleanly (its
        session span ends, its KV slot is freed at once). Cancel instead a draft that misbehaves, a
        session that was cancelled, and a draft that never answered (a dead address: the call would
        otherwise hold its threads until the channel gives up)."""
        if not self._closing:
            self._closing = True
            self._outbox.put(_CLOSE)
        if cancel or not self._answered:
            self._call.cancel()

    def _to_proposal(self, pb: draft_pb2.DraftProposal) -> Proposal:
        return proposal_from_pb(pb, None if (self.greedy or not pb.token_probs) else RemoteDraftProbs(pb, self))

    def _read(self) -> None:
        try:
            for response in self._call:
                self._answered = True
                kind = response.WhichOneof("message")
                if kind == "row":
                    self._rows.put(response.row)
                    continue
                batch = [response.proposal] if kind == "proposal" else list(response.proposals.proposals)
                problem = next((p for p in (proposal_problem(pb, self.vocab_size, self.greedy) for pb in batch) if p),
                               None)
                if problem:  # the target goes on alone rather than verify what it cannot trust
                    self.fail(f"malformed proposal: {problem}")
                    break
                for proposal in batch:
                    self.put(proposal)
            if not self._closing:
                self.fail("the draft ended the stream")
        except grpc.RpcError as exc:
            if not self._closing:
                self.fail(f"draft stream broke: {exc.code().name}: {exc.details()}")
        finally:
            self._rows.put(BROKEN)
            self.put(BROKEN)


def proposal_problem(pb: draft_pb2.DraftProposal, vocab_size: int, greedy: bool) -> str | None:
    """What makes a received proposal unusable, or None: every id in the vocabulary and, for sampling,
    one q(x) per token that is a probability the token could have been drawn with (0 < q <= 1)."""
    if pb.start < 0:
        return f"start {pb.start} < 0"
    if any(not 0 <= t < vocab_size for t in pb.token_ids):
        return f"token ids {list(pb.token_ids)} outside the vocabulary [0, {vocab_size})"
    if pb.token_sources and len(pb.token_sources) != len(pb.token_ids):
        return f"{len(pb.token_sources)} token sources for {len(pb.token_ids)} tokens"
    if not greedy:
        if len(pb.token_probs) != len(pb.token_ids):
            return f"{len(pb.token_probs)} token probabilities for {len(pb.token_ids)} tokens"
        if not all(0.0 < q <= 1.0 + 1e-6 for q in pb.token_probs):  # NaN fails every comparison
            return f"token probabilities {list(pb.token_probs)} outside (0, 1]"
    return None


def row_problem(pb: draft_pb2.DraftRow, proposal_id: int, index: int, vocab_size: int) -> str | None:
    """What makes a received row of q unusable, or None."""
    if pb.proposal_id != proposal_id or pb.index != index:
        return f"answers ({pb.proposal_id}, {pb.index}), not the request ({proposal_id}, {index})"
    if len(pb.ids) != len(pb.probs) or not pb.ids:
        return f"{len(pb.ids)} ids and {len(pb.probs)} probabilities"
    if any(not 0 <= t < vocab_size for t in pb.ids) or len(set(pb.ids)) != len(pb.ids):
        return "ids outside the vocabulary or repeated"
    if not all(0.0 <= q <= 1.0 + 1e-6 for q in pb.probs) or not sum(pb.probs) > 0:
        return "probabilities outside [0, 1] or all zero"
    return None


class DraftLinks:
    """Opens DraftLinks to draft services, one channel per address (TLS and the internal token as set)."""

    def __init__(self, *, vocab_size: int, device: torch.device, timeout_s: float, tls: TLSFiles | None = None,
                 token: str | None = None) -> None:
        self.vocab_size, self.device, self.timeout_s, self.tls, self.token = vocab_size, device, timeout_s, tls, token
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def open(self, address: str, start: DraftStart, deadline_s: float | None) -> DraftLink:
        return DraftLink(draft_pb2_grpc.DraftServiceStub(self._channel(address)), draft_start_to_pb(start),
                         vocab_size=self.vocab_size, device=self.device, timeout_s=self.timeout_s,
                         greedy=start.sampling.greedy, metadata=outgoing_metadata(bearer(self.token)),
                         deadline_s=deadline_s)

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = make_channel(address, self.tls)
            return self._channels[address]
