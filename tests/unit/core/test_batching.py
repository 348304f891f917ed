"""The batched runner: sessions decoded together give exactly what each gives alone, and they are batched."""

import contextlib
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from specdec.core import batching
from specdec.core.adaptive import FixedK
from specdec.core.batching import BatchedRunner, _Request, _Row, auto_stream_interval
from specdec.core.config import GenerationRequest, SamplingParams
from specdec.core.drafting import PredraftPolicy
from specdec.core.errors import InvalidArgument, Unavailable
from specdec.core.sampling import process_rows
from specdec.core.sequence import TargetSequence
from specdec.core.step_costs import StepCostTable, bucket
from specdec.core.target_loop import BROKEN, LocalLink, ProposalInbox, TargetLoop
from specdec.core.verify import verify_sampling_rows
from specdec.proposers.draft_model import DraftModelFactory
from tests.conftest import PROMPTS

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def batched(tiny_pair_fp32):
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=512, max_sessions=16, gather_s=0.005,
                           prefill_chunk=32)
    yield runner
    runner.stop()


def decode(pair, runner, prompt_ids, max_new, k=0, sampling=SamplingParams(), seed=0):
    """One request through TargetLoop on `runner`, with the pair's draft when k > 0: its generated ids."""
    request = GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=max_new, ignore_eos=True, sampling=sampling)
    sequence = TargetSequence(runner, request, pair.eos_ids, seed=seed)
    link = drafter = None
    if k:
        drafter = DraftModelFactory(pair.draft_runner, runner.vocab_size).open(sampling, seed)
        link = LocalLink(drafter, prompt_ids, k, greedy=sampling.greedy, predraft=PredraftPolicy.NEVER)
    try:
        for _ in TargetLoop(sequence, link, FixedK(k), threading.Event()).run():
            pass
        return sequence.generated
    finally:
        if link is not None:
            link.close()
            drafter.close()
        sequence.close()


def concurrently(jobs):
    """Run the callables on threads at once; their results in order (an exception is re-raised)."""
    results: list = [None] * len(jobs)

    def run(i):
        try:
            results[i] = jobs[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_buckets():
    assert [bucket(n, (1, 2, 4)) for n in (1, 2, 3, 4, 7)] == [1, 2, 4, 4, 7]


def test_concurrent_greedy_requests_equal_each_decoded_alone(tiny_pair_fp32, batched):
    """Mixed prompt lengths (one longer than a prefill chunk), mixed lengths of output, mixed K (0..8):
    sessions join and leave while others run. Each output equals target-only greedy decoding alone."""
    pair = tiny_pair_fp32
    long_prompt = pair.encode("\n".join(PROMPTS))  # > prefill_chunk tokens: fed in chunks between steps
    assert len(long_prompt) > 2 * batched.prefill_chunk
    cases = [(pair.encode(p), 6 + 3 * i, k) for i, (p, k) in enumerate(zip(PROMPTS[:9], range(9)))]
    cases.append((long_prompt, 12, 4))
    expected = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n, ignore_eos=True)).token_ids
                for ids, n, _ in cases]
    got = concurrently([lambda c=c: decode(pair, batched, *c) for c in cases])
    for (ids, _, k), want, out in zip(cases, expected, got):
        assert out == want, f"k={k}, {len(ids)} prompt tokens"
    assert batched.stats.prefill_chunks >= 3
    assert batched.free_slots == batched.max_sessions


def test_sessions_decoding_at_once_share_steps(tiny_pair_fp32, batched):
    pair = tiny_pair_fp32
    before = batched.stats.mark()
    concurrently([lambda p=p: decode(pair, batched, pair.encode(p), 24) for p in PROMPTS[:8]])
    s = batched.stats
    steps, rows = s.steps - before.steps, s.rows - before.rows
    assert rows / steps > 4, f"{rows} rows in {steps} steps: the sessions were not batched"
    # where a step's missing rows were: every session that came was timed to its first step, and a step's rows are
    # among its driven sessions, those among the open slots
    assert s.arrivals - before.arrivals == 8
    assert 0 < s.arrival_wait_s - before.arrival_wait_s < 8 * 10.0
    assert rows <= s.driven - before.driven <= s.open_slots - before.open_slots <= 8 * steps
    assert not batched._arriving  # nothing kept for sessions that have gone


def test_seeded_sampling_in_a_batch_equals_alone(tiny_pair_fp32, batched):
    pair = tiny_pair_fp32
    sampling = SamplingParams(temperature=0.8, top_p=0.95)
    cases = [(pair.encode(p), 16, k) for p, k in zip(PROMPTS[10:16], (0, 1, 2, 3, 4, 6))]
    alone = [decode(pair, pair.target_runner, ids, n, k, sampling, seed=7) for ids, n, k in cases]
    together = concurrently([lambda c=c: decode(pair, batched, *c, sampling=sampling, seed=7) for c in cases])
    assert together == alone


def test_sampled_cycles_are_verified_together_as_each_would_be_alone(tiny_pair_fp32, batched, monkeypatch):
    """Sessions that sample with different settings, some plainly, some verifying drafts: the engine verifies a
    step's sampled cycles at once (verify.verify_sampling_rows), and each output is the one its session gets decoded
    alone, one verify at a time on the unbatched runner."""
    pair = tiny_pair_fp32
    settings = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=1.2),
                SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=0.6, top_k=5)]
    cases = [(pair.encode(p), 14, k) for p, k in zip(PROMPTS[16:20], (0, 2, 3, 0))]
    alone = [decode(pair, pair.target_runner, *c, s, seed=21) for c, s in zip(cases, settings)]
    verified = []
    monkeypatch.setattr(batching, "verify_sampling_rows",
                        lambda rows, probs: verified.append(len(rows)) or verify_sampling_rows(rows, probs))
    together = concurrently([lambda c=c, s=s: decode(pair, batched, *c, s, seed=21) for c, s in zip(cases, settings)])
    assert together == alone
    assert max(verified) > 1 and sum(verified) >= 2 * 14, verified  # the plain sessions: a cycle a token


@pytest.fixture(scope="module")
def looking_ahead(tiny_pair_fp32):
    """The engine as it runs on a GPU by default: each step of plain greedy decodes launched before the last
    is read (on a CPU it gains nothing, but the guesses and their confirmation are the same code)."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=512, max_sessions=16, gather_s=0.005,
                           prefill_chunk=32, lookahead=True)
    yield runner
    runner.stop()


def test_looking_ahead_changes_no_output(tiny_pair_fp32, looking_ahead):
    """Plain sessions of mixed lengths, joining and leaving, with speculating ones among them (whose verify
    steps are not looked past) and a long prompt fed in chunks: every output equals greedy decoding alone;
    guesses were launched, most were kept, and those of sessions that ended or went on to verify were dropped."""
    pair, runner = tiny_pair_fp32, looking_ahead
    long_prompt = pair.encode("\n".join(PROMPTS))
    cases = [(pair.encode(p), 5 + 4 * i, 0) for i, p in enumerate(PROMPTS[:10])]
    cases += [(pair.encode(PROMPTS[11]), 30, 3), (long_prompt, 12, 0)]
    expected = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n, ignore_eos=True)).token_ids
                for ids, n, _ in cases]
    got = concurrently([lambda c=c: decode(pair, runner, *c) for c in cases])
    for (ids, n, k), want, out in zip(cases, expected, got):
        assert out == want, f"k={k}, {len(ids)} prompt tokens, {n} new"
    s = runner.stats
    assert s.guesses_kept > 0.5 * s.guesses > 0, f"{s.guesses_kept} of {s.guesses} guesses kept"
    assert s.guesses_kept < s.guesses  # the sessions that ended had a guess in flight
    assert runner.free_slots == runner.max_sessions


def test_plain_sampled_rows_are_drawn_on_the_device_and_looked_past(tiny_pair_fp32, looking_ahead, monkeypatch):
    """A plain sampled cycle's token is a function of its logits, its sampling and (seed, position): the engine draws
    it on the device as its step is launched and looks past the step as past a greedy one. A row whose nucleus
    reaches past the first candidates (a hot, wide top-p) is drawn again on the host once read, and the guess fed
    the device's token stands only where the two agree. Every output equals the request decoded alone."""
    pair, runner = tiny_pair_fp32, looking_ahead
    settings = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=1.2),
                SamplingParams(temperature=5.0, top_p=0.99), SamplingParams(temperature=0.6, top_k=5)]
    cases = [(pair.encode(p), 12) for p in PROMPTS[10:14]]
    alone = [decode(pair, pair.target_runner, *c, 0, s, seed=3) for c, s in zip(cases, settings)]
    redrawn = []
    monkeypatch.setattr(batching, "process_rows", lambda x, p: redrawn.append(len(x)) or process_rows(x, p))
    guesses, kept = runner.stats.guesses, runner.stats.guesses_kept
    together = concurrently([lambda c=c, s=s: decode(pair, runner, *c, 0, s, seed=3) for c, s in zip(cases, settings)])
    assert together == alone
    made, kept = runner.stats.guesses - guesses, runner.stats.guesses_kept - kept
    assert kept > 0.5 * made > 0, f"{kept} of {made} guesses kept"
    assert sum(redrawn) >= 6, redrawn  # the hot row's tokens, drawn again on the host (its nucleus: most of 2048)
    assert runner.free_slots == runner.max_sessions


def test_a_failed_forward_reaches_its_session_and_the_engine_goes_on(tiny_pair_fp32):
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=64, max_sessions=2)
    try:
        slot = runner.open()
        with torch.inference_mode():
            bad = runner.vocab_size + 10**6  # an id past the embedding table: the forward raises
            with pytest.raises(IndexError):
                runner.extend(slot, [1, 2, bad], keep=1)
            runner.truncate(slot, 0)
            assert runner.extend(slot, [1, 2, 3], keep=1).shape == (1, runner.vocab_size)
        runner.close(slot)
    finally:
        runner.stop()


class StalledLink(ProposalInbox):
    """A draft that sends nothing until released (then it fails, and its session goes on alone)."""

    def __init__(self) -> None:
        super().__init__(lambda p: p, timeout_s=60.0)

    def send_verdict(self, cycle, next_k=0) -> None: ...

    def close(self, cancel=False) -> None: ...

    def release(self) -> None:
        self.fail("released by the test")
        self.put(BROKEN)


@contextlib.contextmanager
def stalled_session(pair, runner, prompt_ids, max_new):
    """A session on `runner` whose draft sends nothing until the block ends (then it fails, and the session goes on
    alone): yields (its sequence, the cycles it has committed so far)."""
    link = StalledLink()
    sequence = TargetSequence(runner, GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=max_new, ignore_eos=True),
                              pair.eos_ids, seed=0)
    cycles: list = []
    stalled = threading.Thread(target=lambda: cycles.extend(TargetLoop(sequence, link, FixedK(4),
                                                                        threading.Event()).run()))
    stalled.start()
    try:
        yield sequence, cycles
    finally:
        link.release()
        stalled.join(timeout=60)
        sequence.close()


def test_no_session_waits_for_another_sessions_late_draft(tiny_pair_fp32, batched):
    """A session whose draft is stalled waits alone: another session decodes all its tokens meanwhile
    (the engine steps without the late row), and once released the stalled one finishes alone, exactly."""
    pair = tiny_pair_fp32
    prompt = pair.encode(PROMPTS[3])
    expected = pair.decoder.generate(GenerationRequest(prompt_ids=prompt, max_new_tokens=10, ignore_eos=True)).token_ids
    with stalled_session(pair, batched, prompt, 10) as (sequence, cycles):
        other = decode(pair, batched, pair.encode(PROMPTS[4]), 32)
        assert len(other) == 32 and len(cycles) == 1  # only the stalled session's prefill cycle so far
    assert sequence.generated == expected and cycles[-1].draft_failed
    assert batched.free_slots == batched.max_sessions


def test_a_step_launched_alone_is_timed_as_a_forward_of_its_own_rows(tiny_pair_fp32):
    """A session waiting for its draft is driven but in no step: the other's steps, one row each, are timed as
    1-row forwards, not as forwards at the engine's load (there they made a plain step of every row look as cheap
    as a few rows' and turned drafting off)."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.target.model, max_len=256, max_sessions=4, gather_s=0.005, lookahead=False)
    try:
        with stalled_session(pair, runner, pair.encode(PROMPTS[3]), 4) as (_, cycles):
            deadline = time.monotonic() + 60
            while not cycles and time.monotonic() < deadline:  # its prefill done, it waits for its draft
                time.sleep(0.005)
            runner.costs.forwards.clear()
            assert len(decode(pair, runner, pair.encode(PROMPTS[4]), 16)) == 16
            assert runner.costs.forwards and {rows for rows, _ in runner.costs.forwards} == {1}
    finally:
        runner.stop()


def test_a_session_whose_reader_goes_away_leaves_the_engine(tiny_pair_fp32, batched):
    """The servicer's generator is closed after two cycles (the client went away): the engine drops the row
    before close() returns, and the next request decodes normally."""
    pair = tiny_pair_fp32
    request = GenerationRequest(prompt_ids=pair.encode(PROMPTS[5]), max_new_tokens=200, ignore_eos=True)
    sequence = TargetSequence(batched, request, pair.eos_ids, seed=0)
    run = TargetLoop(sequence, None, FixedK(0), threading.Event()).run()
    next(run), next(run)
    run.close()
    assert not batched._rows
    sequence.close()
    ids = pair.encode(PROMPTS[6])
    assert decode(pair, batched, ids, 8) == pair.decoder.generate(
        GenerationRequest(prompt_ids=ids, max_new_tokens=8, ignore_eos=True)).token_ids
    assert batched.free_slots == batched.max_sessions


def test_a_reader_that_falls_behind_gets_the_backlog_at_once(tiny_pair_fp32, batched):
    """The engine does not wait for a session's reader: the cycles it committed meanwhile come as one batch
    (one message of the target's stream), in order, with the tokens the session decodes alone."""
    pair = tiny_pair_fp32
    request = GenerationRequest(prompt_ids=pair.encode(PROMPTS[7]), max_new_tokens=12, ignore_eos=True)
    expected = pair.decoder.generate(request).token_ids
    sequence = TargetSequence(batched, request, pair.eos_ids, seed=0)
    try:
        batches = TargetLoop(sequence, None, FixedK(0), threading.Event()).run_batches()
        first = next(batches)
        deadline = time.monotonic() + 60
        while sequence.finish_reason is None and time.monotonic() < deadline:  # the reader sleeps meanwhile
            time.sleep(0.01)
        time.sleep(0.2)  # the last cycle reaches the outbox just after the sequence finishes
        rest = list(batches)
    finally:
        sequence.close()
    assert len(first) == 1 and len(rest) == 1 and len(rest[0]) >= 10, [len(b) for b in (first, *rest)]
    cycles = first + rest[0]
    assert [t for c in cycles for t in c.new_tokens] == expected
    assert [c.start for c in cycles[1:]] == [c.start + len(c.new_tokens) for c in cycles[:-1]]


def _streamed_alone(pair, max_new_tokens: int, **engine) -> list[int]:
    """One session decoded plainly on a fresh engine: how many cycles each message to its reader held; its
    tokens must be its own."""
    runner = BatchedRunner(pair.target.model, max_len=256, max_sessions=2, gather_s=0.005, prefill_chunk=32, **engine)
    request = GenerationRequest(prompt_ids=pair.encode(PROMPTS[8]), max_new_tokens=max_new_tokens, ignore_eos=True)
    try:
        sequence = TargetSequence(runner, request, pair.eos_ids, seed=0)
        try:
            batches = list(TargetLoop(sequence, None, FixedK(0), threading.Event()).run_batches())
        finally:
            sequence.close()
    finally:
        runner.stop()
    assert [t for b in batches for c in b for t in c.new_tokens] == pair.decoder.generate(request).token_ids
    return [len(b) for b in batches]


def test_a_stream_interval_hands_cycles_over_that_many_at_a_time(tiny_pair_fp32):
    """stream_interval = 4: the first cycle at once (the time to first token), then at least four at a time,
    the rest with the end; the tokens are the session's alone."""
    sizes = _streamed_alone(tiny_pair_fp32, 11, stream_interval=4)
    assert sizes[0] == 1 and all(n >= 4 for n in sizes[1:-1]) and sum(sizes) == 11, sizes
    with pytest.raises(InvalidArgument):
        BatchedRunner(tiny_pair_fp32.target.model, max_len=64, max_sessions=1, stream_interval=0)


def test_the_auto_stream_interval_wakes_about_eight_readers_a_step(tiny_pair_fp32, monkeypatch):
    """Auto (no stream_interval given): every cycle up to 8 sessions, then rows / 8 cycles per message, asked of
    the rows running when cycles are handed on (here made 5 at any load, to see the engine follow it)."""
    assert [auto_stream_interval(r) for r in (0, 1, 8, 9, 16, 17, 64, 65)] == [1, 1, 1, 2, 2, 3, 8, 9]
    asked = []
    monkeypatch.setattr(batching, "auto_stream_interval", lambda rows: asked.append(rows) or 5)
    sizes = _streamed_alone(tiny_pair_fp32, 13)
    assert sizes[0] == 1 and all(n >= 5 for n in sizes[1:-1]) and sum(sizes) == 13, sizes
    assert asked and set(asked) <= {0, 1}, asked  # one driven session (none once it ended)


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.9, top_k=20)],
                         ids=["greedy", "sampled"])
def test_a_batched_draft_drafts_what_it_drafts_alone(tiny_pair_fp32, sampling):
    """Draft sessions at once on a batched draft runner, each drafting k tokens in one engine request
    (decode_chain: the engine feeds each pick back): the same tokens (and q) as the single-sequence runner."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.draft.model, max_len=512, max_sessions=8, gather_s=0.005, prefill_chunk=32)
    try:
        prompts = [pair.encode(p) for p in PROMPTS[:6]]

        def drafts(draft_runner, ids, k):
            proposer = DraftModelFactory(draft_runner, pair.target_runner.vocab_size).open(sampling, 3)
            try:
                first = proposer.propose(ids, k)
                second = proposer.propose(ids + first.token_ids[:2] + [5], k)  # after a verdict with a correction
                return [(p.token_ids, None if p.probs is None else [p.probs.token_prob(i) for i in range(p.k)])
                        for p in (first, second)]
            finally:
                proposer.close()

        alone = [drafts(pair.draft_runner, ids, 2 + i) for i, ids in enumerate(prompts)]
        steps_before = runner.stats.steps
        together = concurrently([lambda i=i, ids=ids: drafts(runner, ids, 2 + i) for i, ids in enumerate(prompts)])
        for want, got in zip(alone, together):
            assert [t for t, _ in got] == [t for t, _ in want]
            for (_, q_got), (_, q_want) in zip(got, want):
                assert q_got == pytest.approx(q_want, rel=1e-4) if q_want else q_got is None
        assert runner.stats.steps - steps_before < sum(2 * (2 + i) for i in range(6))  # steps were shared
        assert runner.free_slots == runner.max_sessions
    finally:
        runner.stop()


def test_new_prompts_run_alone_where_widening_the_step_to_them_costs_more(tiny_pair_fp32, monkeypatch):
    """Rows are padded to a step's widest: on the H200 a 64-row step of 9 tokens a row cost 19.8 ms against 5.8 for
    1 token (call t1), so a 9-token prompt joining 63 decoding rows cost them 14 ms where the prompt alone costs ~6.
    By the engine's cost table, the new prompts wider than the rest run alone, together (one chunk after the step,
    charged a step more), where that is cheaper; a running session's verify, a chunk over a wide span of slots (an
    eager one computes every slot between), or costs not known yet keep them in the step. (Once held for company as
    long as they may be: `_held_joins`, below.)"""
    monkeypatch.setattr(batching, "JOIN_HOLD_STEPS", 0)
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=64)
    rows = [_Row(loop=None) for _ in range(64)]
    for row in rows[1:]:
        row.cycle_tokens = 1  # running sessions; rows[0] is new

    def pending(*widths):
        return [_Request(i, 10, [7] * n, 1, True, row=rows[i]) for i, n in enumerate(widths)]

    def split(requests, alongside=0):
        runner._pending = list(requests)
        steps, long = runner._split_pending(alongside=alongside)
        assert runner._pending == [] and sorted(map(id, steps + long)) == sorted(map(id, requests))
        return long

    joining = pending(9, *[1] * 63)
    assert split(joining) == []  # no costs known yet
    for (r, n), ms in {(64, 9): 19.8, (64, 1): 5.8, (1, 9): 6.3, (2, 9): 6.4, (8, 9): 7.5, (8, 1): 6.1}.items():
        runner.costs.seed(r, n, ms / 1e3)
    assert split(joining) == [joining[0]]  # 19.8 - 5.8 > 6.3 + 5.8
    assert split(pending(9, *[1] * 7)) == []  # 8 rows: 7.5 - 6.1 < 6.3 + 6.1, the step takes it
    rows[0].cycle_tokens = 1
    assert split(joining) == []  # a running session's verify of 8 drafts: not a prompt
    rows[0].cycle_tokens = 0
    rows[1].cycle_tokens = rows[63].cycle_tokens = 0  # new sessions too
    two = pending(9, 5, *[1] * 62)
    assert split(two) == two[:2]  # two new prompts: one chunk of both (slots 0-1) after the step
    assert split(two[::-1]) == two[1::-1]  # (whatever the steps' order)
    spread = pending(9, *[1] * 62, 5)
    assert split(spread) == []  # slots 0 and 63: an eager chunk of them computes 64 rows, as dear as the widening
    # a step launched ahead: its 63 guesses are rows of it too, though not among the pending forwards
    assert split(two[:2], alongside=62) == two[:2] and split(two[:2]) == []
    runner.stop()


def prompts_joining_together(pair, runner, alone_runner, monkeypatch, tokens=(40, 36),
                             hold_steps=None) -> list[tuple[int, bool]]:
    """Two sessions decode (`tokens` new tokens each), then four new prompts join them at once, on `runner`, whose
    cost table is made to say that new prompts are cheaper alone (`_alone`): every output is asserted equal to the
    request decoded alone on `alone_runner`. `hold_steps`: new prompts wait that many steps for company (where steps
    are short, as a GPU's, the four come in over several). Returns each chunk forward run: (its requests, whether it
    was read apart from the step ahead)."""
    monkeypatch.setattr(runner.costs, "cost", lambda rows, tokens: 1e-3 * (1 if tokens == 1 else rows * tokens))
    if hold_steps is not None:
        monkeypatch.setattr(batching, "JOIN_HOLD_STEPS", hold_steps)
        monkeypatch.setattr(batching, "JOIN_GROUP_SHARE", 100.0)  # no share of the others is company enough
    groups = []
    launch_chunks = runner._launch_chunks

    def counted(requests, read_apart=False):
        groups.append((len(requests), read_apart))
        return launch_chunks(requests, read_apart)

    monkeypatch.setattr(runner, "_launch_chunks", counted)
    cases = [(pair.encode(p), n) for p, n in zip(PROMPTS, (*tokens, 8, 9, 10, 11))]
    joined = threading.Barrier(5)  # four joiners, and a thread that lets them go once the first two decode

    def job(i, ids, n):
        if i >= 2:
            joined.wait()
        return decode(pair, runner, ids, n)

    def release():  # once both sessions decode (not by a clock: a slow host's threads start late)
        deadline = time.monotonic() + 60
        while runner.batch_rows() < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        steps = runner.stats.steps
        while runner.stats.steps < steps + 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        joined.wait()

    alone = [decode(pair, alone_runner, ids, n) for ids, n in cases]
    jobs = [lambda i=i, ids=ids, n=n: job(i, ids, n) for i, (ids, n) in enumerate(cases)]
    assert concurrently([release, *jobs])[1:] == alone
    assert runner.free_slots == runner.max_sessions
    return groups


def test_new_prompts_run_alone_together_each_as_decoded_alone(tiny_pair_fp32, monkeypatch):
    """New prompts that join decoding sessions and run alone together (one chunk after a step, `_alone`): every
    output equals the request decoded alone, joiners' and running ones'."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.target.model, max_len=512, max_sessions=16, gather_s=0.005, prefill_chunk=32)
    try:
        groups = prompts_joining_together(pair, runner, pair.target_runner, monkeypatch)
        assert any(n >= 2 for n, _ in groups), groups  # prompts ran alone together
        s = runner.stats
        assert (s.prefill_chunks, s.prefill_rows, s.chunks_apart) == (len(groups), sum(n for n, _ in groups), 0)  # a CPU: in turn
    finally:
        runner.stop()


def test_new_prompts_run_alone_together_launched_before_the_step_ahead(tiny_pair_fp32, looking_ahead, monkeypatch):
    """Looking ahead, a chunk of new prompts goes before the step launched ahead and is read apart from it (on a GPU
    behind an event of its own, `_launch_chunks`): every output equals the request decoded alone."""
    pair, runner = tiny_pair_fp32, looking_ahead
    apart = runner.stats.chunks_apart
    groups = prompts_joining_together(pair, runner, pair.target_runner, monkeypatch)
    assert any(n >= 2 for n, _ in groups), groups
    assert runner.stats.chunks_apart > apart  # launched before a step launched ahead


def test_a_chunk_launched_apart_that_fails_fails_its_own_requests_only(tiny_pair_fp32, monkeypatch):
    """A chunk of new prompts launched before the step ahead (`_launch_apart`, on a GPU) runs inside the step's
    launch: where it fails, its requests fail with the error and are not run again, and the step goes on."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=8)

    def broken(requests, read_apart=False):
        raise RuntimeError("chunk forward failed")

    monkeypatch.setattr(runner, "_launch_chunks", broken)
    requests = [_Request(i, 0, [5] * 9, 1, True) for i in range(2)]
    try:
        assert runner._launch_apart(requests) == (None, [])
        assert all(r.done.is_set() and str(r.error) == "chunk forward failed" for r in requests)
    finally:
        runner.stop()


def test_new_prompts_wait_a_bounded_number_of_steps_to_widen_a_step_together(tiny_pair_fp32, monkeypatch):
    """Rows are padded to a step's widest: prompts that trickle in one a step would make every step wide. Where the
    widening costs more than a step (by the cost table), a prompt wider than the step's other rows waits for company,
    at most JOIN_HOLD_STEPS steps; prompts that are a quarter of the other rows go at once, and so does one with no
    other rows to widen (or as narrow as they are). Where the widening is cheap, or its cost not known, none waits."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=64)
    rows = [_Row(loop=None) for _ in range(64)]
    for row in rows[8:]:
        row.cycle_tokens = 1  # running sessions; rows[:8] are new
    batch = 32
    monkeypatch.setattr(runner, "batch_rows", lambda: batch)

    def split(requests, alongside=0):
        runner._pending = list(requests)
        steps, long = runner._split_pending(alongside=alongside)
        return steps + long

    decoding = [_Request(i, 10, [7], 1, True, row=rows[i]) for i in range(8, 40)]  # 32 rows
    first = _Request(0, 0, [5] * 9, 1, True, row=rows[0])
    assert first in split([first, *decoding])  # costs not known yet: no wait
    first.held_from = -1
    for (r, n), ms in {(32, 9): 14.0, (32, 1): 6.4, (16, 9): 7.5, (16, 1): 5.2}.items():
        runner.costs.seed(r, n, ms / 1e3)
    step = runner.stats.steps
    assert first not in split([first, *decoding]) and runner._pending == [first]  # held, still pending
    assert first.held_from == step
    second = _Request(1, 0, [5] * 9, 1, True, row=rows[1])
    runner.stats.steps = step + 1
    taken = split([first, second, *decoding])
    assert first not in taken and second not in taken and len(taken) == 32  # both wait: one wide step for both
    runner.stats.steps = step + batching.JOIN_HOLD_STEPS
    taken = split([first, second, *decoding])
    assert first in taken and second in taken and runner._pending == []  # the first waited its most: both go
    # eight prompts are a quarter of 32 rows: they go at once
    joins = [_Request(i, 0, [5] * 9, 1, True, row=rows[i]) for i in range(8)]
    assert set(map(id, split([*joins, *decoding]))) == set(map(id, joins + decoding))
    # no other rows in the step: a prompt costs no one a wide step; with the step's guesses it waits
    alone = _Request(2, 0, [5] * 9, 1, True, row=rows[2])
    assert split([alone]) == [alone]
    assert split([alone], alongside=32) == [] and runner._pending == [alone]
    # a prompt no wider than the step's verifies widens nothing
    verifies = [_Request(i, 10, [7] * 9, 9, True, row=rows[i]) for i in range(8, 40)]
    narrow = _Request(3, 0, [5] * 9, 1, True, row=rows[3])
    assert narrow in split([narrow, *verifies])
    batch = 16  # 16 rows: a 9-token step costs less than two plain ones, a wait would only delay the first token
    cheap = _Request(4, 0, [5] * 9, 1, True, row=rows[4])
    assert cheap in split([cheap, *decoding[:16]])
    runner.stop()


def test_new_prompts_wider_than_a_step_of_verifies_are_fed_over_steps_at_its_width(tiny_pair_fp32, monkeypatch):
    """Rows are padded to a step's widest: an 8-token prompt joining 63 verifies of 4 drafts (5 tokens a row) made the
    whole step 9 wide (on an H100 t(64, 9) = 17.8 ms against t(64, 5) = 11.3, call km). Where the cost table says
    that widening costs the other rows more, in all, than the steps added before the prompt's first token, the step
    takes the prompt's first 5 tokens (a head whose results no one reads) and the rest goes pending once the head is
    in the cache. Not where costs are unknown, where the widening is cheap (few rows), in a plain decode step, or
    where the prompt would take more than JOIN_SPLIT_STEPS steps more."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=64)
    monkeypatch.setattr(batching, "JOIN_HOLD_STEPS", 0)
    rows = [_Row(loop=None) for _ in range(64)]
    for row in rows[1:]:
        row.cycle_tokens = 1  # running sessions; rows[0] is new
    batch = 64
    monkeypatch.setattr(runner, "batch_rows", lambda: batch)

    def split(requests, alongside=0, beside=1):
        runner._pending = list(requests)
        steps, long = runner._split_pending(chunks=0, alongside=alongside, beside=beside)
        assert runner._pending == [] and long == []
        return steps

    def verifies(n=63):
        return [_Request(i, 10, [7] * 5, 5, True, row=rows[i]) for i in range(1, n + 1)]

    prompt = list(range(3, 11))  # 8 tokens
    join = _Request(0, 2, list(prompt), 1, True, row=rows[0])
    assert join in split([join, *verifies()])  # no costs known yet: the step takes it whole
    for (r, n), ms in {(64, 9): 17.8, (64, 5): 11.3, (64, 1): 7.0, (4, 9): 7.3, (4, 5): 7.1, (4, 1): 7.0}.items():
        runner.costs.seed(r, n, ms / 1e3)
    steps = split([join, *verifies()])
    head = steps[0]
    assert join not in steps and head.rest is join and head.row is None
    assert (head.index, head.start, head.ids, head.keep) == (0, 2, prompt[:5], 1)  # as wide as the verifies
    assert (join.start, join.ids) == (7, prompt[5:]) and runner.stats.joins_split == 1
    # the head in the cache: the rest goes pending, for the next step, where it widens nothing
    slot = SimpleNamespace(tokens=[1, 2])
    rows[0].loop = SimpleNamespace(slot=slot)
    runner._deliver(head, 5)
    assert slot.tokens == [1, 2, *prompt[:5]] and runner._pending == [join]
    assert join in split([join, *verifies()])
    # an early verify's rows carried besides (`_launch_early`): the same, by their width
    late = _Request(0, 2, list(prompt), 1, True, row=rows[0])
    assert split([late], alongside=63, beside=5)[0].rest is late
    # nor held for company meanwhile: beside verifies 5 wide, widening to 9 (17.8 - 11.3 ms) costs less than their
    # step, though more than a plain one (7.0)
    monkeypatch.setattr(batching, "JOIN_HOLD_STEPS", 2)
    later = _Request(0, 2, list(prompt), 1, True, row=rows[0])
    assert split([later], alongside=63, beside=5)[0].rest is later
    monkeypatch.setattr(batching, "JOIN_HOLD_STEPS", 0)
    # a plain decode step: one token a step would take 7 steps more
    decoding = [_Request(i, 10, [7], 1, True, row=rows[i]) for i in range(1, 64)]
    plain = _Request(0, 2, list(prompt), 1, True, row=rows[0])
    assert plain in split([plain, *decoding])
    # 17 tokens over steps of 5: 3 steps more
    long = _Request(0, 2, list(range(3, 20)), 1, True, row=rows[0])
    assert long in split([long, *verifies()])
    batch = 4  # 4 rows: the widening costs 0.2 ms, the step added to the prompt's first token 7.1
    few = _Request(0, 2, list(prompt), 1, True, row=rows[0])
    assert few in split([few, *verifies(3)])
    runner.stop()


def test_a_split_prompt_whose_head_fails_fails_its_session(tiny_pair_fp32):
    """The head of a prompt fed over steps (`_split_joins`) is no caller's: where its step fails, the session the
    rest of the prompt is for fails with the error, instead of going on from a cache without the head."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=8)
    row = _Row(loop=None)
    rest = _Request(0, 7, [5, 6, 7], 1, True, row=row)
    head = _Request(0, 2, [1, 2, 3, 4, 5], 1, True, rest=rest)
    ended = []
    runner._end = lambda row, item: ended.append((row, item))
    error = RuntimeError("step failed")
    runner._fail(head, error)
    assert ended == [(row, error)] and runner._pending == []
    runner.stop()


def test_step_cost_table_scales_an_unmeasured_size_from_another_load():
    table = StepCostTable(smoothing=1.0)
    table.observe(1, 1, 0.010)
    table.observe(1, 5, 0.015)
    table.observe(16, 5, 0.030)
    assert table.cost(16, 5) == 0.030 and table.cost(12, 4) == 0.030  # same buckets
    assert table.cost(16, 1) == pytest.approx(0.030 * 0.010 / 0.015)  # scaled by the 1-row ratio
    assert table.cost(64, 1) is None


def test_a_seeded_cell_answers_until_measured_and_before_any_scaling():
    """A step's device time timed at start (CUDA graphs) stands for a cell never measured, where scaling the
    1-row ratio would double a 64-row plain step; a measurement replaces it."""
    table = StepCostTable(smoothing=0.5)
    table.observe(1, 1, 0.010)
    table.observe(1, 5, 0.015)
    table.observe(64, 5, 0.030)
    table.observe_forward(64, 5, 0.028)
    assert table.cost(64, 1) == pytest.approx(0.020)  # scaled
    table.seed(64, 1, 0.011)
    table.seed(16, 3, 0.009)
    assert table.cost(64, 1) == table.forward(64, 1) == table.forward(60, 1) == 0.011
    assert table.cost(16, 3) == 0.009 and table.forward(16, 2) is None  # another bucket: no seed, nothing to scale
    table.observe(64, 1, 0.013)
    table.observe_forward(64, 1, 0.012)
    assert table.cost(64, 1) == 0.013 and table.forward(64, 1) == 0.012  # measured: the first taken as is
    assert table.report() == "1x1: 10.0, 1x5: 15.0, 64x1: 13.0, 64x5: 30.0"  # seeds are not measurements


def test_a_seed_is_scaled_by_what_its_rows_cost_served_against_their_seed():
    """Seeds attend over the whole cache, served steps over the span they reach: at 64 rows on the H200 the verifies
    never measured kept seeds ~1.4x their served cost, and drafting was priced out (call lr1). A seed is scaled by the
    served/seed ratio of the nearest step size measured at its rows; with none measured there it stands as timed."""
    table = StepCostTable(smoothing=1.0)
    for n, ms in ((1, 7.3), (2, 7.9), (3, 9.2), (5, 11.2)):
        table.seed(64, n, ms / 1e3)
    table.seed(16, 3, 0.0063)
    table.observe(16, 1, 0.005)  # no seed of its own: no ratio from it
    assert table.cost(64, 3) == pytest.approx(0.0092) and table.cost(16, 3) == pytest.approx(0.0063)
    table.observe(64, 1, 0.0053)
    assert table.cost(64, 3) == pytest.approx(0.0092 * 5.3 / 7.3) and table.cost(64, 5) == pytest.approx(0.0112 * 5.3 / 7.3)
    table.observe(64, 2, 0.0066)  # nearer to 3 tokens than 1 is
    assert table.cost(64, 3) == pytest.approx(0.0092 * 6.6 / 7.9) and table.cost(64, 1) == 0.0053
    assert table.cost(16, 3) == pytest.approx(0.0063)  # another load's ratio is not its own
    table.observe_forward(64, 1, 0.0058)
    assert table.forward(64, 5) == pytest.approx(0.0112 * 5.8 / 7.3)  # forwards by forwards


def test_no_cost_or_cycle_of_fewer_rows_exceeds_one_measured_with_more():
    """A 48-row plain step timed beside a drafting phase's catch-ups at twice a 64-row one's cost made drafting
    win at 48 rows: fewer rows never cost more than a measured cell of more rows and as many tokens."""
    table = StepCostTable(smoothing=1.0)
    table.observe(48, 1, 0.0117)
    table.observe(64, 1, 0.0062)
    table.observe(64, 3, 0.0093)
    table.observe(48, 9, 0.0173)
    assert table.cost(48, 1) == 0.0062 and table.cost(40, 1) == 0.0062 and table.cost(64, 1) == 0.0062
    assert table.cost(48, 9) == 0.0173  # no cell of more rows at 9 tokens
    assert table.cost(16, 3) is None  # nothing to scale from: a cap is not an estimate
    table.observe_cycle(48, 1, 0.0095)
    table.observe_cycle(64, 1, 0.0058)
    table.observe_cycle(32, 3, 0.0120)
    assert table.cycle(48, 1) == 0.0058 and table.cycle(32, 3) == 0.0120 and table.cycle(48, 3) is None
    table.observe_forward(48, 1, 0.0110)
    table.observe_forward(64, 1, 0.0065)
    assert table.forward(48, 1) == 0.0065
    table.observe(64, 1, 0.0200)  # a later measurement moves the cap with it
    assert table.cost(48, 1) == 0.0117
    table.seed(16, 5, 0.008)
    table.seed(64, 5, 0.007)
    assert table.cost(16, 5) == 0.008  # seeds are not measurements: they cap nothing


def test_the_engine_times_cycles_and_forwards_and_hopes_a_plain_cycle_costs_its_forward(tiny_pair_fp32):
    """A run of drafting steps is timed as whole cycles, and each step launched alone as a forward; with lookahead a
    plain cycle is taken to cost at most a plain forward at this load (never measured: the forward), and never less
    than a plain step measured at this load (a plain cycle timed below it as drafting stopped turned a batch's
    drafting off by itself: docs/benchmarks.md, call kp)."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.target.model, max_len=256, max_sessions=4, gather_s=0.005, lookahead=True)
    try:
        assert runner.batch_cycle_cost(0) is None and runner.batch_cycle_cost(2) is None
        decode(pair, runner, pair.encode(PROMPTS[1]), 12, k=2)
        assert runner.batch_cycle_cost(2) > 0 and runner.costs.forward(1, 3) > 0
        runner.costs.forwards.pop((1, 1), None)
        runner.costs.cycles.pop((1, 1), None)
        assert runner.batch_cycle_cost(0) is None
        runner.costs.observe_forward(1, 1, 0.004)
        assert runner.batch_cycle_cost(0) == 0.004  # hoped for
        runner.lookahead = False
        assert runner.batch_cycle_cost(0) is None  # without lookahead a plain step is no faster in a run
        runner.lookahead = True
        decode(pair, runner, pair.encode(PROMPTS[0]), 12)
        cycle, forward, step = runner.costs.cycle(1, 1), runner.costs.forward(1, 1), runner.costs.measured(1, 1)
        assert cycle > 0 and step > 0 and runner.batch_cycle_cost(0) == min(max(cycle, step), forward)  # measured
        runner.costs.cycles[(1, 1)] = forward + 0.010  # timed in a ramp, or plain steps not launched ahead
        assert runner.batch_cycle_cost(0) == forward
        runner.costs.cells[(1, 1)] = forward / 3  # steps launched ahead, each timed from the last one's read
        runner.costs.cycles[(1, 1)] = forward / 2  # a run of plain steps costs less than one launched alone
        assert runner.batch_cycle_cost(0) == forward / 2
        runner.costs.cycles[(1, 1)] = forward / 4  # but no less than the steps it is made of
        assert runner.batch_cycle_cost(0) == forward / 3
        runner.costs.cells.pop((1, 1))  # where none was measured, no seed or estimate stands for one
        runner.costs.seed(1, 1, forward)
        assert runner.batch_cycle_cost(0) == forward / 4
        runner.costs.cycles[(1, 1)] = forward + 0.010
        runner.lookahead = False
        assert runner.batch_cycle_cost(0) == forward + 0.010  # without lookahead the host's work adds to each step
        runner.costs.cells[(1, 1)] = forward + 0.020
        assert runner.batch_cycle_cost(0) == forward + 0.020
    finally:
        runner.stop()


def test_load_aware_k_prices_the_most_rows_of_the_last_steps_not_a_dip(tiny_pair_fp32):
    """Requests that end in one step leave a dip their clients' next requests fill a step or two later: priced at the
    dip, a shared phase decoding plainly turned drafting on for it and paid every row's catch-up (calls hb1, hb3). The
    prices follow the most driven sessions of the last LOAD_STEPS steps, and a load that stays lower once they pass."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.target.model, max_len=256, max_sessions=4, gather_s=0.005)
    try:
        prompt = pair.encode(PROMPTS[0])
        concurrently([lambda: decode(pair, runner, prompt, 12) for _ in range(3)])
        assert runner.batch_rows() == 1 and runner.load_rows() == 3  # none driven now: the last steps carried 3
        for (rows, n), ms in {(3, 3): 9.0, (1, 3): 4.0, (3, 1): 7.0, (1, 1): 3.0}.items():
            runner.costs.seed(rows, n, ms / 1e3)
            runner.costs.cycles[(rows, n)] = 2 * ms / 1e3
        assert runner.batch_verify_cost(2) == runner.costs.cost(3, 3) != runner.costs.cost(1, 3)
        assert runner.batch_cycle_cost(2) == runner.costs.cycle(3, 3)
        decode(pair, runner, prompt, batching.LOAD_STEPS + 4)  # one session, for longer than the window
        assert runner.load_rows() == 1
        assert runner.batch_verify_cost(2) == runner.costs.cost(1, 3)
    finally:
        runner.stop()


def test_a_session_s_cycle_is_timed_between_its_forwards_of_one_size(tiny_pair_fp32, monkeypatch):
    """From the end of one forward to the end of the next of as many tokens, less what the engine did for no
    running session meanwhile (prompt chunks, a resumed draft's catching up); a change of K is a transition;
    a plain cycle with a drafting phase in it, a cycle in a step wider than its own forward (others verified
    more tokens), and one with steps of another width in it, are not what the cycle costs when every row does
    the same; nor is one with a chunk read apart in it (its device time may have begun before the cycle), nor one
    over whose steps a new prompt was split (a join that would otherwise have widened one of them)."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=64, max_sessions=2)
    try:
        clock = iter([1.0, 1.030, 1.050, 1.060, 1.070, 1.095, 1.100, 1.130, 1.140, 1.145, 1.155, 1.170, 1.190,
                      1.215, 1.235])
        monkeypatch.setattr(batching.time, "perf_counter", lambda: next(clock))
        row = batching._Row(loop=None)

        def ended(tokens: int, width: int) -> None:  # the only cycle that ended in its step
            runner._time_cycle(row, tokens, width)
            runner._fold_cycles()

        ended(3, 3)  # 1.000: its first forward
        runner._uncharged_s += 0.010  # a prompt chunk of another session
        ended(3, 3)  # 1.030: 20 ms charged
        ended(1, 1)  # 1.050: K 2 -> 0, a transition
        runner.stats.drafting_phases += 1  # another session's probe drafted meanwhile
        ended(1, 1)  # 1.060: not a plain cycle of an all-plain batch
        ended(1, 1)  # 1.070: 10 ms
        ended(1, 5)  # 1.095: in another session's verify step: not a plain step's cycle
        ended(1, 1)  # 1.100: 5 ms
        runner.stats.count(2, 3)  # another session's verify, a step this row was not in
        ended(1, 1)  # 1.130: not a plain cycle of an all-plain batch
        runner.stats.count(2, 1)  # the step of that cycle
        ended(1, 1)  # 1.140: 10 ms
        runner.stats.chunks_apart += 1  # new prompts' chunk, read apart from the step ahead
        ended(1, 1)  # 1.145: not timed
        ended(1, 1)  # 1.155: 10 ms
        ended(3, 3)  # 1.170: K 0 -> 2
        ended(3, 3)  # 1.190: 20 ms
        runner.stats.joins_split += 1  # a new prompt fed over this cycle's steps at their width
        ended(3, 3)  # 1.215: not timed
        ended(3, 3)  # 1.235: 20 ms
        monkeypatch.undo()
        plain = ((0.010 * 0.8 + 0.005 * 0.2) * 0.8 + 0.010 * 0.2) * 0.8 + 0.010 * 0.2
        assert runner.costs.cycles == {(1, 3): pytest.approx(0.020), (1, 1): pytest.approx(plain)}
    finally:
        runner.stop()


def test_the_cycles_that_end_in_one_step_are_one_measurement(tiny_pair_fp32, monkeypatch):
    """Rows that ended a cycle in the same step lived the same steps: their mean goes into the table once (each
    counted), so one slow step moves the price by the table's smoothing, not to its own figure as 16 rows folded in
    one by one did (call va1: one step's cycles turned a 16-row batch's drafting off for the rest of the run)."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=64, max_sessions=16)
    try:
        rows = [batching._Row(loop=None) for _ in range(16)]
        monkeypatch.setattr(runner, "batch_rows", lambda: 16)  # as many driven sessions
        clock = iter([1.0] * 16 + [1.016] * 16 + [1.056] * 8 + [1.057] * 8)
        monkeypatch.setattr(batching.time, "perf_counter", lambda: next(clock))
        for _ in range(3):  # three steps of 16 rows
            for row in rows:
                runner._time_cycle(row, 5, 5)
            runner._fold_cycles()
        monkeypatch.undo()
        slow = (0.040 + 0.041) / 2  # the third step's 16 cycles: 40 ms for half of them, 41 for the others
        assert runner.costs.cycles[(16, 5)] == pytest.approx(0.8 * 0.016 + 0.2 * slow)
        assert runner.costs.cycle_samples(16, 5) == 32
    finally:
        runner.stop()


def test_a_step_a_chunk_read_apart_ran_before_is_not_timed(tiny_pair_fp32, monkeypatch):
    """A chunk of new prompts read apart runs on the device between two steps; where the host read the first late, part
    of it ran before that read, so no figure subtracted from the second step's time is right: that step is not timed
    (its rows did wait for the chunk: it is the prompts' cost, which `_alone` weighs)."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=64, max_sessions=2)
    clock = iter([1.0, 1.007, 1.020, 1.027])  # steps launched ahead, read 7, 13 and 7 ms after the one before

    def step():
        launched = batching._Launched([_Request(0, 0, [5], 1, False)], 1, torch.zeros(1, 1, 8), None, None, None, 1.0,
                                      1.0, ahead=True)
        runner._read(launched)
        runner._hand_on(launched)
        return launched

    try:
        monkeypatch.setattr(batching.time, "perf_counter", lambda: next(clock))
        assert not step().chunk_in  # read at 1.000
        assert not step().chunk_in  # 7 ms
        timed = runner.costs.cost(1, 1)
        runner.stats.chunks_apart += 1
        assert step().chunk_in and runner.costs.cost(1, 1) == timed  # 13 ms with the chunk: not timed
        assert not step().chunk_in and runner.costs.cost(1, 1) > timed  # 7 ms
        monkeypatch.undo()
        assert runner.stats.steps == 4
    finally:
        runner.stop()


def test_step_cost_table_keeps_cycles_apart_from_steps():
    table = StepCostTable(smoothing=0.5)
    table.observe(64, 1, 0.019)
    table.observe_cycle(64, 1, 0.010)
    table.observe_cycle(60, 1, 0.008)  # the same buckets
    assert table.cost(64, 1) == 0.019 and table.cycle(64, 1) == pytest.approx(0.009)
    assert table.cycle(64, 3) is None and table.cycle(16, 1) is None  # never scaled from another cell
    assert table.report() == "64x1: 19.0; cycles 64x1: 9.0" and table.report() == ""  # each cell once
    assert table.cycle_elsewhere(64, 3) is None  # no load measured both: nothing to scale by
    table.observe_cycle(16, 1, 0.006)
    table.observe_cycle(16, 3, 0.012)
    assert table.cycle_elsewhere(64, 3) == pytest.approx(0.009 * 0.012 / 0.006)  # 64 rows' plain cycle, 16 rows' ratio
    assert table.cycle(64, 3) is None  # what was measured at a load stays apart
    table.report()
    table.observe_forward(1, 1, 0.006)
    table.observe_forward(1, 5, 0.0072)
    table.observe_forward(64, 5, 0.015)
    assert table.forward(64, 1) == pytest.approx(0.015 * 0.006 / 0.0072)  # never launched alone at 64 rows: scaled
    assert table.forward(8, 1) is None


def test_a_graph_step_attends_over_the_smallest_span_past_its_rows(tiny_pair_fp32):
    """A GPU graph step attends over the first span of the cache's columns (SPAN_BUCKETS, then the whole cache)
    that reaches past its real rows: the forward a graph of that span captures gives the whole cache's logits."""
    from specdec.core.batching import _StepInputs

    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=1024, max_sessions=4)
    assert runner._spans == [256, 1024 + runner.pad]
    prompt = tiny_pair_fp32.encode(PROMPTS[0])
    slots = [runner.open() for _ in range(2)]
    for slot in slots:
        runner.greedy_ids(slot, prompt, keep=1)
    n = len(prompt)
    dummy = [1024, 1025, 1026]
    assert runner._graph_span(runner._reach(torch.tensor([dummy]))) == 256  # no real row
    assert runner._graph_span(runner._reach(torch.tensor([[253, 254, 255], dummy]))) == 256
    assert runner._graph_span(runner._reach(torch.tensor([[254, 255, 256], dummy]))) == 1024 + runner.pad
    ids = torch.tensor([[5, 6, 0], [7, 0, 0], [0, 0, 0]])  # rows 0 and 1 real (3 and 1 tokens), row 2 a dummy
    positions = torch.tensor([[n, n + 1, n + 2], [n, n + 1, n + 2], dummy])
    span = runner._graph_span(runner._reach(positions))
    assert span == 256 > n + 3
    with torch.inference_mode():
        spanned = runner._run(_StepInputs(ids, positions, span=span), keep=3)
        whole = runner._run(_StepInputs(ids, positions, span=None), keep=3)
    torch.testing.assert_close(spanned[:2], whole[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("graphs", [False, True])
def test_a_steps_reach_from_its_requests_is_its_positions_reach(tiny_pair_fp32, graphs):
    """The engine takes a step's reach from its requests' starts, not from a tensor filter over its positions:
    the same figure, with dummy rows, padding (rounded up to a token bucket with graphs), a guess's empty row,
    and a row whose padding runs past max_len."""
    from specdec.core.batching import _Request

    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=256, max_sessions=8, cuda_graphs=False)
    runner.cuda_graphs = graphs  # only the step's shape: nothing is captured or run here
    cases = [[(1, 10, [5, 6, 7])], [(0, 3, [1]), (4, 200, [2, 3])], [(2, 254, [9]), (5, 40, [1, 2, 3, 4, 5, 6])],
             [(3, 100, [])], [(0, 250, [1, 2, 3, 4, 5, 6])]]
    for case in cases:
        requests = [_Request(i, start, ids, 1, True, done=None) for i, start, ids in case]
        ids, positions, reach = runner._inputs(requests)
        assert reach == runner._reach(positions), (case, positions)


def test_an_eager_step_attends_only_as_far_as_its_rows_reach(tiny_pair_fp32):
    """On a CPU a step's attention reads the cache's columns up to the furthest real row's last position, not the
    whole context (dummy rows and padding past max_len do not count): the same logits as over the whole cache."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=256, max_sessions=4)
    prompt = tiny_pair_fp32.encode(PROMPTS[0])
    slots = [runner.open() for _ in range(2)]
    for slot in slots:
        runner.greedy_ids(slot, prompt, keep=1)
    n = len(prompt)
    ids = torch.tensor([[5, 6, 0], [7, 0, 0], [0, 0, 0]])  # rows 0 and 1 real (3 and 1 tokens), row 2 a dummy
    positions = torch.tensor([[n, n + 1, n + 2], [n, n + 1, n + 2], [256, 257, 258]])
    assert runner._span(runner._reach(positions)) == n + 3
    narrow = runner.forward_rows(ids, positions)
    assert runner.step.span == n + 3
    runner._span = lambda reach: None  # the whole cache
    whole = runner.forward_rows(ids, positions)
    assert runner.step.span == runner.max_len + runner.pad  # every column a step writes
    torch.testing.assert_close(narrow[:2], whole[:2], rtol=1e-5, atol=1e-5)


def test_rows_at_any_slots_compute_what_a_span_of_slots_does(tiny_pair_fp32):
    """A prompt-chunk graph's rows are any slots (`_StepInputs.slots`: new entries written in place, attention over
    a copy of those rows): the same logits and the same cache entries as the forward over a span of slots."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=256, max_sessions=4)
    prompt = tiny_pair_fp32.encode(PROMPTS[0])
    for slot in [runner.open() for _ in range(3)]:
        runner.greedy_ids(slot, prompt[:len(prompt) - slot.index], keep=1)  # slot i holds len(prompt) - i tokens
    n = len(prompt)
    chunk = torch.tensor([[11, 12, 13, 14], [0, 21, 22, 23]])  # slot 2's chunk, then slot 0's (left-padded)
    at = torch.tensor([[n - 2, n - 1, n, n + 1], [256, n, n + 1, n + 2]])  # its padding: column max_len
    before = [(layer.keys.clone(), layer.values.clone()) for layer in runner.cache.layers]

    def cache():
        return [(layer.keys[:3, :, :256].clone(), layer.values[:3, :, :256].clone()) for layer in runner.cache.layers]

    with torch.inference_mode():
        slots_logits = runner._run(batching._StepInputs(torch.cat([chunk, torch.zeros(1, 4, dtype=torch.long)]),
                                                        torch.cat([at, torch.full((1, 4), 256)]),
                                                        slots=torch.tensor([2, 0, 2])), keep=1)  # a dummy row
        slots_cache = cache()
        for layer, (keys, values) in zip(runner.cache.layers, before):
            layer.keys.copy_(keys)
            layer.values.copy_(values)
        ids = torch.stack([chunk[1], torch.zeros(4, dtype=torch.long), chunk[0]])  # slots 0, 1 (dummy), 2
        positions = torch.stack([at[1], torch.full((4,), 256), at[0]])
        span_logits = runner._eager(ids, positions, keep=1)
        span_cache = cache()
    torch.testing.assert_close(slots_logits[[0, 1]], span_logits[[2, 0]], rtol=1e-5, atol=1e-5)
    for (a_keys, a_values), (b_keys, b_values) in zip(slots_cache, span_cache):
        torch.testing.assert_close(a_keys, b_keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a_values, b_values, rtol=1e-5, atol=1e-5)
    assert not torch.equal(slots_cache[0][0], before[0][0][:3, :, :256])  # something was written


def test_catch_ups_share_a_chunk_graph_by_length_whatever_their_slots(tiny_pair_fp32):
    """Without chunk graphs (a CPU), catch-ups share an eager forward only where their slots lie close (it computes
    every slot between them); with them, catch-ups at any slots are one graph's rows, one replay per length their
    chunks run as (every row of a forward is padded to its longest chunk)."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=1024, max_sessions=64)

    def groups(lengths: dict[int, int]) -> list[list[int]]:
        return [[r.index for r in g] for g in runner._catch_up_groups([batching._Request(i, 0, [1] * n, 1, True)
                                                                          for i, n in lengths.items()])]

    assert groups({3: 40, 60: 40}) == [[3], [60]]
    runner.bucket_chunks = True  # chunk shapes rounded up, as on a GPU
    runner._chunk_graphs = {(1, 64): None}  # as on a GPU (only whether there are any counts here)
    assert groups({3: 40, 60: 40}) == [[3, 60]]
    assert groups({i: 40 for i in range(0, 64, 2)}) == [list(range(0, 64, 2))]  # 32 rows: one replay
    assert groups({3: 40, 4: 600, 7: 50, 60: 200}) == [[3, 7], [4], [60]]  # chunks of 64, 512 and 256 tokens


def test_every_catch_up_finds_its_chunk_graph(tiny_pair_fp32):
    """The chunk graphs a runner captures cover every shape `_run_chunks` looks up: a runner without an engine loop
    (a target's own draft, handed every session's catch-up at once) any number of rows up to its slots, an engine
    loop (one chunk a step) one row at any length, and up to JOIN_CHUNK_ROWS rows of new short prompts run alone
    together (`_alone`: at most a step's widest, graph_max_tokens); any length up to the context. A shape not captured
    would run eagerly, several times slower on a GPU; one listed twice would be captured twice (a prompt chunk no
    longer than a step's widest is both a long request's chunk and new short prompts')."""
    for passive, most, chunk in ((True, 48, 512), (False, 1, 512), (False, 1, 17)):
        engine = {"launch": None} if passive else {}
        runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=1000, max_sessions=48, prefill_chunk=chunk, **engine)
        runner.bucket_chunks = True  # as on a GPU
        shapes = set(runner._chunk_shapes())
        assert len(shapes) == len(runner._chunk_shapes())
        for rows in range(1, most + 1):
            for left in range(1, 1001):
                assert (runner._span_rows(rows), runner._chunk_tokens(left)) in shapes, (passive, rows, left)
        widths = runner._short_chunk_widths()
        prompts = set() if passive else {(runner._span_rows(rows), min(w for w in widths if w >= n))
                                         for rows in range(1, batching.JOIN_CHUNK_ROWS + 1)
                                         for n in range(1, runner.graph_max_tokens + 1)}
        assert prompts <= shapes and all(b <= most or (b, n) in prompts for b, n in shapes)
        runner.stop()


def test_new_short_prompts_run_as_a_chunk_graph_of_a_step_s_width(tiny_pair_fp32):
    """New prompts no wider than a step run alone together in the narrowest chunk graph of a step's width that holds
    them (JOIN_CHUNK_TOKENS), not at the shortest long chunk (32 tokens: 16 rows of prompts of 5-9 tokens computed
    three times what they need); longer ones, and a chunk that keeps more than one logit, as before."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, max_len=1000, max_sessions=48, prefill_chunk=512)
    try:
        runner.bucket_chunks = True  # as on a GPU, with every chunk graph "captured"
        runner._chunk_graphs = {shape: object() for shape in runner._chunk_shapes()}
        requests = [_Request(i, 0, [5] * 9, 1, True) for i in range(3)]  # three new prompts at slots 0-2
        assert runner._short_chunk_widths() == [9, 17] and runner.graph_max_tokens == 17
        for longest, width in ((1, 9), (5, 9), (9, 9), (10, 17), (17, 17)):
            assert runner._chunk_form(requests, longest, 1) == (width, runner._chunk_graphs[(4, width)])
            assert runner._chunk_computes(requests, longest) == (3, width)
        assert runner._chunk_form(requests, 9, 2) == (32, None)  # more than one logit kept: eager
        assert runner._chunk_form(requests, 20, 1) == (32, None)  # a long prompt's chunk: one a step, eager for three
        assert runner._chunk_form(requests[:1], 20, 1) == (32, runner._chunk_graphs[(1, 32)])
        assert runner._chunk_computes(requests, 20) == (4, 32)  # eager: every slot of their span (bucketed)
    finally:
        runner.stop()


def test_catch_ups_through_chunk_graphs_equal_eager_ones(tiny_pair_fp32):
    """The chunk-graph branch of `_run_chunks`, on a CPU: the graph's replay stood in for by the same forward over
    the graph's static inputs (rows named by slot, dummy rows, left padding, chunk buckets as on a GPU). Two
    catch-ups at slots far apart, in several chunks, then plain steps over what they cached: the same tokens as
    the eager forwards over spans of slots give."""
    model = tiny_pair_fp32.target.model
    replays = []

    def build(graphs: bool) -> BatchedRunner:
        runner = BatchedRunner(model, launch=None, max_len=256, max_sessions=8, prefill_chunk=32)
        runner.bucket_chunks = True  # chunk shapes rounded up, as on a GPU
        if graphs:
            runner._chunk_graphs = {(b, 32): batching._Graph(None, batching._StepInputs(
                torch.zeros((b, 32), dtype=torch.long), torch.full((b, 32), 256), slots=torch.zeros(b, dtype=torch.long)),
                None) for b in (1, 2, 4)}

            def replay(g, ids, positions, slots):
                replays.append(slots.tolist())
                g.inputs.ids.copy_(ids)
                g.inputs.positions.copy_(positions)
                g.inputs.slots.copy_(slots)
                return runner._run(g.inputs, keep=1)

            runner._replay = replay
        return runner

    prompts = [tiny_pair_fp32.encode(PROMPTS[0] * 12), tiny_pair_fp32.encode(PROMPTS[5] * 7)]
    assert all(len(p) > 40 for p in prompts) and len(prompts[0]) != len(prompts[1])  # two chunks or more each
    outputs = []
    for graphs in (False, True):
        runner = build(graphs)
        slots = [runner.open() for _ in range(6)]
        far = [slots[1], slots[5]]
        first = runner.greedy_ids_together([(slot, p, 1) for slot, p in zip(far, prompts)])
        sequences = [p + ids for p, ids in zip(prompts, first)]
        for _ in range(3):  # plain steps: they read what the chunks cached
            for slot, sequence in zip(far, sequences):
                sequence += runner.greedy_ids(slot, sequence, keep=1)
        outputs.append(sequences)
    assert outputs[0] == outputs[1]
    assert replays and sorted(replays[0]) == [1, 5], replays  # both catch-ups in one two-row graph


def test_a_runner_that_times_a_few_steps_captures_only_their_graphs(tiny_pair_fp32):
    """The sweep's bounds time a few step shapes on a runner of their own: it captures graphs for the buckets those
    run as (with every span), not the rows x tokens buckets a server captures (half the sweep's start-up on the
    H200, and what cut call l2 short)."""
    every = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=256, max_sessions=64, cuda_graphs=False)
    few = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=256, max_sessions=64, cuda_graphs=False,
                        captured=([1, 16, 64], [1, 3, 4]))
    every.cuda_graphs = few.cuda_graphs = True  # only the shapes: nothing is captured here
    assert few._step_shapes() == [(1, 1), (1, 3), (1, 5), (16, 1), (16, 3), (16, 5), (64, 1), (64, 3), (64, 5)]
    assert len(every._step_shapes()) == len(every._graph_rows()) * 6 and set(few._step_shapes()) < set(every._step_shapes())


def test_a_sampled_rows_step_launched_ahead_on_a_wrong_guess_is_forwarded_again(tiny_pair_fp32):
    """A draft step launched ahead of a sampled verify begins from the outcome the device guessed (its accepted drafts
    and the token drawn after them). Where the host's verify then draws otherwise, that step stands for no chain, and
    what it wrote at the guessed position, a token the committed sequence does not hold there, is forwarded again by
    the slot's next forward: its logits are a fresh slot's."""
    from specdec.core.config import SamplingParams
    from specdec.core.runner import Sampled, SampledAhead
    from specdec.core.transfer import OnTheWay

    runner = BatchedRunner(tiny_pair_fp32.draft.model, launch=None, max_len=64, max_sessions=4)
    fresh = BatchedRunner(tiny_pair_fp32.draft.model, launch=None, max_len=64, max_sessions=4)
    prompt, (d0, d1, guessed, drawn) = tiny_pair_fp32.encode(PROMPTS[2]), (11, 12, 13, 14)
    slot, other = runner.open(), fresh.open()
    at = len(prompt)  # L: where the two drafts begin; the chain drafted d1 last, not yet in the cache
    runner.extend(slot, prompt + [d0], keep=1)
    runner._chain_ends[slot.index] = at + 1
    tokens = torch.zeros((4, 2), dtype=torch.long)
    tokens[slot.index] = torch.tensor([d0, d1])
    chain = Sampled(SamplingParams(temperature=0.8), 5, 0, lambda token, q: token)
    outcome = torch.tensor([[0, guessed, 1]])  # [rows, 3]: accepted, token, exact
    runner.launch_ahead([], tokens, None, None, (), SampledAhead([(slot.index, at, 2)], outcome[:, 0], outcome[:, 1],
                                                                [chain], OnTheWay(outcome)))
    assert runner.stats.ahead == 1  # it wrote `guessed` at L, over d0
    runner.expect_ahead(slot.index, at, [d0, d1], 1, drawn)  # the host accepted d0 and drew `drawn` after it
    assert slot.index not in runner._ahead.expected  # the step stands for no chain
    sequence = prompt + [d0, drawn]
    torch.testing.assert_close(runner.extend(slot, sequence, keep=1), fresh.extend(other, sequence, keep=1))


def test_a_draft_step_launched_ahead_stands_only_for_chains_that_begin_as_expected_in_an_untouched_slot(tiny_pair_fp32):
    """A drafting phase takes the step launched ahead as a chain's first only where that chain begins as the host
    expected, in a slot no other forward wrote to and no session closed since, drawn by the same read: otherwise the
    step's values stand for another sequence than the chain's, and that chain runs its first step itself (the others
    still take theirs). The later steps launched ahead stand for the chains that took the first and reach them."""
    from specdec.core.batching import _Ahead, _Chain, _Request
    from specdec.proposers.draft_model import GREEDY

    runner = BatchedRunner(tiny_pair_fp32.draft.model, launch=None, max_len=64, max_sessions=4)
    values = torch.arange(6).view(2, 3)  # [rows, m]: slot 2's row, then slot 0's

    def take(requests, touched=(), read=GREEDY.read, closes=None, later=()):
        runner._ahead = _Ahead(read, {2: 0, 0: 1}, closes or {2: runner._closes[2], 0: runner._closes[0]}, values,
                               {2: (10, [7]), 0: (20, [8, 9])}, set(touched), later=list(later))
        first, *steps = runner._taken_ahead(requests)
        return taken(first) if not later else [taken(step) for step in steps]

    def taken(groups):  # -> {slot: its first step's values}
        return {r.index: v for chains, got, *_ in groups for r, v in zip(chains, got.tolist())}

    def chains(*rows, steps=2):
        return [_Request(slot, start, ids, 1, False, chain=_Chain(steps, None, GREEDY)) for slot, start, ids in rows]

    assert take(chains((0, 20, [8, 9]), (2, 10, [7]))) == {0: [3, 4, 5], 2: [0, 1, 2]}
    assert take(chains((2, 10, [7]))) == {2: [0, 1, 2]}  # a row with no chain this phase is left out
    assert take(chains((0, 20, [8, 9]), (2, 11, [7]))) == {0: [3, 4, 5]}  # one chain begins elsewhere: not for it
    assert take(chains((0, 20, [8]), (2, 10, [7]))) == {2: [0, 1, 2]}  # or with other tokens
    assert take(chains((0, 20, [8, 9]), (1, 5, [3]))) == {0: [3, 4, 5]}  # or in a slot it was not launched for
    assert take(chains((0, 20, [8, 9])), touched=[0]) == {}  # another forward wrote to the slot since
    assert take(chains((0, 20, [8, 9])), closes={2: 0, 0: runner._closes[0] - 1}) == {}  # closed since
    assert take(chains((0, 20, [8, 9])), read=lambda logits: logits) == {}  # drawn by another read
    assert runner._ahead is None  # taken or not, it is gone: it stands for one phase at most
    # a new session's chain whose catch-up computed its first step (Chain.first) joins the others' step launched ahead
    joining = chains((0, 20, [8, 9]), (1, 5, [3]))
    joining[1].chain.first = torch.tensor([[10, 11, 12]])
    assert take(joining) == {0: [3, 4, 5], 1: [10, 11, 12]}
    assert take(joining, touched=[0]) == {1: [10, 11, 12]}  # the other's chain runs its first step itself
    runner._ahead = None
    assert taken(runner._taken_ahead(joining[1:])[0]) == {1: [10, 11, 12]}  # nothing launched ahead: its own alone
    # the chains' later steps launched ahead: taken by those that took the first from ahead and reach them
    later = [({0: 0, 2: 1}, torch.arange(6, 12).view(2, 3)), ({0: 0}, torch.arange(12, 15).view(1, 3))]
    assert take(chains((0, 20, [8, 9]), (2, 10, [7]), steps=3), later=later) == [{0: [6, 7, 8], 2: [9, 10, 11]},
                                                                                 {0: [12, 13, 14]}]
    assert take(chains((0, 20, [8, 9]), (2, 10, [7])), later=later) == [{0: [6, 7, 8], 2: [9, 10, 11]}]  # 2 steps
    assert take(chains((0, 20, [8, 9]), (2, 11, [7]), steps=3), later=later) == [{0: [6, 7, 8]}, {0: [12, 13, 14]}]
    assert take(chains((0, 20, [8, 9]), steps=1), later=later) == []  # a chain of one step
    assert take(joining, later=later) == [{0: [6, 7, 8]}]  # a catch-up's first step is not the one launched ahead


def test_callers_of_a_runner_without_an_engine_loop_each_get_their_own_results_at_once(tiny_pair_fp32):
    """A runner with no engine loop runs its callers' forwards on their own threads, with no event per request: a
    caller must not return before its requests are done, even where another caller's run took them, and each gets
    what it gets alone."""
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=128, max_sessions=6)
    prompts = [tiny_pair_fp32.encode(p)[:12 + i] for i, p in enumerate(PROMPTS * 2)][:6]
    alone = []
    for prompt in prompts:
        slot = runner.open()
        alone.append(runner.greedy_ids(slot, prompt, keep=len(prompt)))
        runner.close(slot)
    for _ in range(5):
        slots = [runner.open() for _ in prompts]
        got = concurrently([lambda s=s, p=p: runner.greedy_ids(s, p, keep=len(p)) for s, p in zip(slots, prompts)])
        assert got == alone
        for slot in slots:
            runner.close(slot)


def test_an_engine_loop_stopped_by_an_error_fails_its_sessions_and_callers_and_refuses_new_work(tiny_pair_fp32,
                                                                                                 monkeypatch):
    """A bug that stops the engine loop leaves no one waiting for good: the session it drives ends with UNAVAILABLE
    naming the error, and so does a caller whose forward the loop had taken (in flight, no longer pending); new work
    is refused so; the server's hook runs (it reports NOT_SERVING), at once for one given later. A failing log line
    alone stops nothing."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.target.model, max_len=256, max_sessions=4, gather_s=0.005)
    failed = threading.Event()
    runner.on_failure(failed.set)
    prompt = pair.encode(PROMPTS[0])
    monkeypatch.setattr(batching, "LOG_EVERY_S", 0.0)

    def broken_report(since, t0):
        raise RuntimeError("a broken log line")
    monkeypatch.setattr(runner, "_report", broken_report)
    assert len(decode(pair, runner, prompt, 8)) == 8 and not failed.is_set()

    ended: dict[str, BaseException] = {}

    def session():
        try:
            decode(pair, runner, prompt, 200)
        except BaseException as e:  # noqa: BLE001 - what the test asserts on
            ended["session"] = e
    driven = threading.Thread(target=session)
    driven.start()
    deadline = time.monotonic() + 60
    while runner.stats.steps < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    split = runner._split_pending

    def crash_with_a_caller_s_forward_taken(*args, **kwargs):
        steps, long = split(*args, **kwargs)
        if any(r.row is None for r in [*steps, *long]):
            raise RuntimeError("boom")
        return steps, long
    monkeypatch.setattr(runner, "_split_pending", crash_with_a_caller_s_forward_taken)
    slot = runner.open()
    with pytest.raises(Unavailable, match="unexpected error: RuntimeError: boom"):
        runner.greedy_ids_together([(slot, prompt, 1)])
    driven.join(timeout=30)
    assert not driven.is_alive() and isinstance(ended.get("session"), Unavailable), ended
    assert "boom" in str(ended["session"]) and failed.is_set() and isinstance(runner.failure, RuntimeError)
    with pytest.raises(Unavailable, match="boom"):
        decode(pair, runner, prompt, 4)
    late = threading.Event()
    runner.on_failure(late.set)
    assert late.is_set()
