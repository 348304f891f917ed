"""The target's loop and its end of the proposal stream: the draft always knows the K the target wants, and
a block the target verified only in part is not lost."""

import threading

import pytest

from specdec.core.adaptive import FixedK
from specdec.core.config import GenerationRequest, ProposerKind
from specdec.core.drafting import PredraftPolicy
from specdec.core.proposal import Proposal
from specdec.core.sequence import TargetSequence
from specdec.core.target_loop import LocalLink, Picked, ProposalPicker, TargetLoop
from specdec.proposers.draft_model import DraftModelFactory

pytestmark = pytest.mark.timeout(120)  # the bug this file guards against was a wait that never ended


def local_session(tiny_pair, k: int):
    """24 greedy tokens of one prompt with an in-process draft started at K = k, and the output alone."""
    prompt = tiny_pair.encode("def fibonacci(n):")
    expected = tiny_pair.decoder.generate(GenerationRequest(prompt_ids=prompt, max_new_tokens=24,
                                                            ignore_eos=True)).token_ids
    request = GenerationRequest(prompt_ids=prompt, max_new_tokens=24, ignore_eos=True)
    sequence = TargetSequence(tiny_pair.target_runner, request, tiny_pair.eos_ids, seed=0)
    drafter = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size).open(request.sampling, 0)
    return expected, sequence, drafter, LocalLink(drafter, prompt, k, greedy=True, predraft=PredraftPolicy.NEVER)



def test_a_draft_started_with_a_larger_k_is_told_the_chosen_k_and_never_stalls(tiny_pair):
    """The services start the draft with the request's K while adaptive K may choose less at once: the
    first verdict must say so, or the draft keeps a block the target considers used and drafts nothing."""
    expected, sequence, drafter, link = local_session(tiny_pair, 4)
    try:
        ks = [cycle.k for cycle in TargetLoop(sequence, link, FixedK(1), threading.Event(), link_k=4).run()]
        drafted = [len(p.token_ids) for p in link.session.recent]  # the last few blocks the draft sent
    finally:
        link.close()
        drafter.close()
        sequence.close()
    assert sequence.generated == expected
    assert max(ks) == 1 and ks.count(1) >= 10, ks
    assert drafted and max(drafted) <= 3, drafted  # K = 1 (+ 2 for a block drafted ahead: the guess, the bonus)


def test_a_paused_draft_hears_of_the_plain_cycles_in_one_verdict_when_it_resumes(tiny_pair):
    """Under load a paused draft would otherwise cost both processes a message per token; the tokens it
    missed reach it in order, with the verdict that resumes it, and the output does not change."""
    class Script(FixedK):  # drafts, pauses for six cycles, drafts again
        def choose(self, limit=None):
            self.n = getattr(self, "n", 0) + 1
            return 0 if 3 <= self.n < 9 else 2

    expected, sequence, drafter, link = local_session(tiny_pair, 2)
    sent, send = [], link.send_verdict
    link.send_verdict = lambda cycle, next_k=0: (sent.append((cycle.start, list(cycle.new_tokens), next_k)),
                                                 send(cycle, next_k))
    try:
        cycles = list(TargetLoop(sequence, link, Script(2), threading.Event(), link_k=2).run())
    finally:
        link.close()
        drafter.close()
        sequence.close()
    assert sequence.generated == expected
    position = len(sequence.committed) - len(sequence.generated)  # the prompt
    for start, tokens, _ in sent:  # every committed token, once, in order
        assert start == position
        position += len(tokens)
    assert [k for *_, k in sent].count(-1) == 1  # paused once
    resumed = [tokens for _, tokens, k in sent if k == 2]
    assert len(resumed) == 1 and len(resumed[0]) == 6, sent  # six plain cycles' tokens in the verdict that resumes
    assert len(sent) == len(cycles) - 5, (len(sent), len(cycles))  # one verdict per cycle, but one for those six
    assert [c.k for c in cycles].count(0) >= 7  # the prefill and the six plain cycles


def test_a_partly_verified_proposal_is_offered_again():
    committed = list(range(10))

    def usable(p: Proposal) -> int:  # as TargetSequence.usable_drafts counts
        offset = len(committed) - p.start
        if offset < 0 or p.token_ids[:offset] != committed[p.start:] or offset >= len(p.token_ids):
            return -1
        return len(p.token_ids) - offset

    block = Proposal(start=10, token_ids=[20, 21, 22, 23], probs=None, source=ProposerKind.DRAFT_MODEL)
    picker = ProposalPicker(lambda item: item)
    picker.begin(usable)
    picker.consider(block, usable)
    assert picker.best is block
    committed += [20, 21]  # verified with K = 1: the token and the target's own next token, which agreed
    picker.begin(usable)
    assert picker.best is block  # its last two tokens are still the draft's claim: not waited for again
    committed += [22, 99]
    picker.begin(usable)
    assert picker.best is None


def test_the_chooser_is_charged_the_wait_for_drafting_not_for_catching_up(tiny_pair):
    """A paused draft catches up on the tokens it missed before it drafts again; charged to the per-token
    draft cost, that one-off prefill would keep adaptive K at 0 (issue 16, item 8). Of the rest of the wait,
    the draft's own drafting time is per token and what is beyond it a round trip paid once per cycle."""
    request = GenerationRequest(prompt_ids=tiny_pair.encode("def fibonacci(n):"), max_new_tokens=4, ignore_eos=True)
    sequence = TargetSequence(tiny_pair.target_runner, request, tiny_pair.eos_ids, seed=0)

    class CatchingUp:  # answers every cycle after a 0.9 s catch-up and 0.05 s of drafting, 1.0 s waited in all
        failure = None
        failed = False

        def wake(self) -> None: ...

        def next_proposal(self, usable) -> Picked:
            p = Proposal(start=len(sequence.committed), token_ids=[7], probs=None, source=ProposerKind.DRAFT_MODEL)
            return Picked(p, wait_s=1.0, draft_s=0.05, catch_up_s=0.9, ahead=False)

        def send_verdict(self, cycle, next_k=0) -> None: ...

        def close(self, cancel=False) -> None: ...

    class Recording(FixedK):
        def observe(self, k, accepted, verify_s, draft_s, round_trip_s=None, catch_up_s=0.0) -> None:
            if k:
                charged.append((draft_s, round_trip_s, catch_up_s))

    charged: list[tuple] = []
    try:
        cycles = list(TargetLoop(sequence, CatchingUp(), Recording(1), threading.Event()).run())
    finally:
        sequence.close()
    drafted = [c for c in cycles if c.k]  # not the first (prefill) nor the last (nothing worth drafting)
    assert len(drafted) == 2 and all(c.catch_up_s == 0.9 and c.wait_s == 1.0 for c in drafted)
    assert len(charged) == 2, charged
    assert all(abs(d - 0.05) < 1e-9 and abs(r - 0.05) < 1e-9 for d, r, _ in charged), charged  # was (1.0, none)
    assert all(c == 0.9 for _, _, c in charged)  # told apart: a probe's cost counts it (ProbeSchedule.result)


def test_an_in_process_draft_that_raises_leaves_the_target_alone_with_the_same_output(tiny_pair):
    prompt = tiny_pair.encode("def fibonacci(n):")
    request = GenerationRequest(prompt_ids=prompt, max_new_tokens=12, ignore_eos=True)
    expected = tiny_pair.decoder.generate(request).token_ids
    drafter = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size).open(request.sampling, 0)

    def broken(committed, k):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    drafter.propose = broken
    sequence = TargetSequence(tiny_pair.target_runner, request, tiny_pair.eos_ids, seed=0)
    link = LocalLink(drafter, prompt, 4, greedy=True, predraft=PredraftPolicy.NEVER)
    try:
        cycles = list(TargetLoop(sequence, link, FixedK(4), threading.Event()).run())
    finally:
        link.close()
        drafter.close()
        sequence.close()
    assert sequence.generated == expected
    assert link.failed and "stream is capturing" in link.failure and cycles[-1].draft_failed
