"""DraftService servicer: the Propose stream's protobuf messages <-> DraftService's core messages."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

from draft_service.service import END, DraftService
from specdec.core.drafting import Row
from specdec.serving.convert import draft_message_from_pb, ms, proposals_to_pb, row_to_pb
from specdec.serving.telemetry import Metrics, record_cycle
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, service: DraftService, info: common_pb2.ServerInfo, free_slots: Callable[[], int],
                 metrics: Metrics | None = None) -> None:
        self.service = service
        self.info = info
        self.free_slots = free_slots
        self.metrics = metrics or Metrics("draft")
        self.metrics.track(lambda: (len(service.sessions), free_slots(), 0))

    def DescribeDraft(self, request, context):
        info = common_pb2.ServerInfo()
        info.CopyFrom(self.info)
        info.active_sessions = len(self.service.sessions)
        info.free_kv_slots = self.free_slots()
        return draft_pb2.DescribeDraftResponse(info=info)

    def Propose(self, request_iterator, context) -> Iterator[draft_pb2.ProposeResponse]:
        return self.metrics.count_outcomes(self._propose(request_iterator, context))

    def _propose(self, request_iterator, context) -> Iterator[draft_pb2.ProposeResponse]:
        inbox: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(request_iterator, inbox), daemon=True).start()
        for out in self.service.serve(inbox, context.add_callback):
            if isinstance(out, Row):
                yield row_to_pb(out)
                continue
            p = out[0]  # a batch was drafted in one pass: one time, one record
            self.metrics.draft_step.labels("draft").observe(p.draft_s)
            record_cycle("propose", {"specdec.k": len(p.token_ids), "specdec.draft_ms": ms(p.draft_s),
                                     "specdec.ahead": p.ahead, "specdec.start": p.start,
                                     "specdec.proposer": p.source.value, "specdec.branches": len(out)})
            yield proposals_to_pb(out)


def _pump(request_iterator, inbox: queue.Queue) -> None:
    """Read the target's messages on their own thread, so drafting never blocks on the network."""
    try:
        for msg in request_iterator:
            inbox.put(draft_message_from_pb(msg))
    except Exception:  # noqa: BLE001 - the stream broke (cancelled, peer gone): end the session
        pass
    finally:
        inbox.put(END)
