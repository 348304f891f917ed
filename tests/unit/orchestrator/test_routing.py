"""Routing and admission without a network: BackendPool.pick and Admission."""

import threading

import pytest

from orchestrator.backends import Backend, BackendPool
from orchestrator.service import Admission
from specdec.core.config import ProposerKind
from specdec.core.errors import FailedPrecondition, ResourceExhausted, Unavailable
from specdec.serving.convert import proposer_to_pb
from specdec.serving.server import Role
from specdec.v1 import common_pb2


def backend(role: Role, address: str, *, healthy=True, vocab="v1", active=0, sessions=0,
            proposer: ProposerKind = ProposerKind.DRAFT_MODEL) -> Backend:
    info = common_pb2.ServerInfo(vocab_fingerprint=vocab, active_sessions=sessions, model=address,
                                 proposer=proposer_to_pb(proposer))
    return Backend(address, role, channel=None, healthy=healthy, info=info, active=active)


def pool(targets, drafts) -> BackendPool:
    p = BackendPool([], [])
    p.targets, p.drafts = targets, drafts
    return p


def test_least_loaded_healthy_target_and_draft():
    t1, t2, t3 = (backend(Role.TARGET, a, active=n) for a, n in (("t1", 3), ("t2", 1), ("t3", 0)))
    t3.healthy = False
    d1, d2 = backend(Role.DRAFT, "d1", active=2), backend(Role.DRAFT, "d2", sessions=5)
    target, draft = pool([t1, t2, t3], [d1, d2]).pick()
    assert (target.address, draft.address) == ("t2", "d2")  # by orchestrator-side load, then the backend's own


def test_no_healthy_target_is_unavailable_and_no_draft_means_target_only():
    with pytest.raises(Unavailable, match="no healthy target"):
        pool([backend(Role.TARGET, "t", healthy=False)], []).pick()
    target, draft = pool([backend(Role.TARGET, "t")], [backend(Role.DRAFT, "d", healthy=False)]).pick()
    assert target.address == "t" and draft is None


def test_a_draft_with_another_vocabulary_is_refused_naming_both():
    p = pool([backend(Role.TARGET, "t")], [backend(Role.DRAFT, "d", vocab="other")])
    with pytest.raises(FailedPrecondition, match="different tokenizers") as err:
        p.pick()
    assert "'d'" in str(err.value) and "'t'" in str(err.value)


def test_routing_by_proposer():
    drafts = [backend(Role.DRAFT, "model"), backend(Role.DRAFT, "lookup", proposer=ProposerKind.NGRAM)]
    p = pool([backend(Role.TARGET, "t")], drafts)
    assert p.pick(ProposerKind.NGRAM)[1].address == "lookup"
    assert p.pick(ProposerKind.DRAFT_MODEL)[1].address == "model"
    with pytest.raises(FailedPrecondition, match="no healthy draft runs the 'hybrid'"):
        p.pick(ProposerKind.HYBRID)


def test_paired_topology_gives_every_target_its_own_draft():
    p = pool([backend(Role.TARGET, "t")], [])
    p.paired_draft = "127.0.0.1:50053"
    target, draft = p.pick()
    assert draft.address == "127.0.0.1:50053" and draft.info is target.info


def test_a_target_with_its_own_draft_drafts_itself_where_no_draft_service_is_configured():
    target = backend(Role.TARGET, "t")
    target.info.own_draft = "tiny"
    p = pool([target], [])
    assert p.pick()[1].own and p.pick(ProposerKind.DRAFT_MODEL)[1].own
    with pytest.raises(FailedPrecondition, match="no healthy draft runs the 'ngram'"):
        p.pick(ProposerKind.NGRAM)  # its own draft is a draft model
    p = pool([target], [backend(Role.DRAFT, "d")])
    p.entries[Role.DRAFT] = ["d"]  # configured draft services win
    assert p.pick()[1].address == "d" and not p.pick()[1].own
    assert pool([backend(Role.TARGET, "plain")], []).pick()[1] is None


def test_admission_limits_all_clients_and_each_one():
    admission = Admission(max_requests=3, max_per_client=2)
    with admission.admit("a"), admission.admit("a"):
        with pytest.raises(ResourceExhausted, match="per-client"):
            with admission.admit("a"):
                pass
        with admission.admit("b"):
            assert admission.running == 3
            with pytest.raises(ResourceExhausted, match="limit of 3"):
                with admission.admit("c"):
                    pass
    assert admission.running == 0


def test_admission_is_released_when_the_request_fails_and_under_contention():
    admission = Admission(max_requests=4, max_per_client=4)
    with pytest.raises(ZeroDivisionError):
        with admission.admit("a"):
            raise ZeroDivisionError
    assert admission.running == 0
    admitted, refused = [], []

    def worker():
        try:
            with admission.admit("x"):
                admitted.append(1)
                barrier.wait(5)
        except ResourceExhausted:
            refused.append(1)
            barrier.wait(5)

    barrier = threading.Barrier(8)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(admitted), len(refused), admission.running) == (4, 4, 0)


def test_ready_once_a_target_and_a_configured_draft_are_healthy():
    t, d = backend(Role.TARGET, "t", healthy=False), backend(Role.DRAFT, "d", healthy=False)
    p = BackendPool(["t"], ["d"])
    p.targets, p.drafts = [t], [d]
    changes = []
    p.on_change = lambda: changes.append(p.ready())
    assert not p.ready()
    t.healthy = True
    assert not p.ready()  # drafts are configured: speculative requests would go target-only
    d.healthy = True
    assert p.ready()
    p.mark_unhealthy(d, "failed during a request")
    assert changes == [False] and not p.ready()
    only_targets = BackendPool(["t"], [])
    only_targets.targets = [backend(Role.TARGET, "t")]
    assert only_targets.ready()
