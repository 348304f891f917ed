"""GPU fast path: CUDA-graph forwards equal eager ones, and speculation stays lossless with graphs on.
Skipped without CUDA (CI); run on a GPU machine, results in docs/benchmarks.md."""

import pytest
import torch

from specdec.core.config import GenerationRequest, SpeculationConfig
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.pair import ModelPair, PairConfig
from specdec.core.runner import ModelRunner
from specdec.proposers import make_factory
from tests.conftest import PROMPTS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def gpu_engine():
    return ModelPair.load(PairConfig(device="cuda:0", dtype="float32", max_len=512), make_factory)


def test_graph_logits_equal_eager(gpu_engine):
    model = gpu_engine.target.model
    graphs = ModelRunner(model, max_len=512, max_sessions=1, cuda_graphs=True)
    eager = ModelRunner(model, max_len=512, max_sessions=1, cuda_graphs=False)
    ids = gpu_engine.encode(PROMPTS[0])
    a, b = graphs.open(), eager.open()
    graphs.extend(a, ids)
    eager.extend(b, ids)
    for n in (1, 5, 1, 9):  # decode and verify shapes, twice the same shape (replay), then rollback
        new = list(range(100, 100 + n))
        ga = graphs.extend(a, a.tokens + new, keep=n)
        eb = eager.extend(b, b.tokens + new, keep=n)
        assert torch.allclose(ga, eb, atol=2e-3, rtol=1e-3), (n, (ga - eb).abs().max())
        graphs.truncate(a, a.length - n + 1)
        eager.truncate(b, b.length - n + 1)
    assert len(graphs._graphs) == 3


@pytest.mark.parametrize("k", [1, 4, 8])
def test_greedy_equality_with_cuda_graphs(gpu_engine, k):
    e = gpu_engine
    for prompt in PROMPTS[:6]:
        request = GenerationRequest(prompt_ids=e.encode(prompt), max_new_tokens=48, ignore_eos=True)
        plain = SpeculativeDecoder(e.target_runner, e.tokenizer, e.eos_ids).generate(request)
        spec = SpeculativeDecoder(e.target_runner, e.tokenizer, e.eos_ids, e.decoder.proposers,
                                  SpeculationConfig(k=k)).generate(request)
        assert spec.token_ids == plain.token_ids, prompt


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_draft_on_its_own_gpu_stays_lossless_with_graphs_on_both():
    """Draft on cuda:1, target on cuda:0: each runner captures and replays its graphs on its own device."""
    e = ModelPair.load(PairConfig(device="cuda:0", draft_device="cuda:1", dtype="float32", max_len=512), make_factory)
    assert e.draft_runner.device == torch.device("cuda:1")
    for prompt in PROMPTS[:4]:
        request = GenerationRequest(prompt_ids=e.encode(prompt), max_new_tokens=48, ignore_eos=True)
        plain = SpeculativeDecoder(e.target_runner, e.tokenizer, e.eos_ids).generate(request)
        spec = SpeculativeDecoder(e.target_runner, e.tokenizer, e.eos_ids, e.decoder.proposers,
                                  SpeculationConfig(k=4)).generate(request)
        assert spec.token_ids == plain.token_ids, prompt
        assert spec.stats.accepted_tokens > 0
    assert e.draft_runner._graphs and e.target_runner._graphs


def test_branch_graphs_equal_eager_branches(gpu_engine):
    """forward_branches replayed as a CUDA graph gives each row the eager forward's logits."""
    model = gpu_engine.draft.model
    graphs = ModelRunner(model, max_len=512, max_sessions=1, cuda_graphs=True)
    eager = ModelRunner(model, max_len=512, max_sessions=1, cuda_graphs=False)
    chain = gpu_engine.encode(PROMPTS[1]) + list(range(100, 106))
    forks = [len(chain) - 6 + i for i in range(6)] + [len(chain) - 1]
    a, b = graphs.open(), eager.open()
    for round_ in range(2):  # capture, then replay
        for runner, s in ((graphs, a), (eager, b)):
            runner.hold(s, chain[:len(chain) - 1 - round_])
        for step in range(3):
            tokens = [200 + 10 * step + i for i in range(len(forks))]
            positions = [j + step for j in forks]
            cut = [min(j, a.length) for j in forks]
            ga = graphs.forward_branches(a, step, tokens, positions, cut)
            eb = eager.forward_branches(b, step, tokens, positions, cut)
            assert torch.allclose(ga, eb, atol=2e-3, rtol=1e-3), (round_, step, (ga - eb).abs().max())
    assert any(key[1] < 0 for key in graphs._graphs)


def test_predraft_overlap_is_lossless_with_graphs(gpu_engine):
    from specdec.core.drafting import PredraftPolicy
    from tests.unit.core.test_drafting import overlap_run

    for prompt in PROMPTS[:4]:
        request = GenerationRequest(prompt_ids=gpu_engine.encode(prompt), max_new_tokens=48, ignore_eos=True)
        plain = SpeculativeDecoder(gpu_engine.target_runner, gpu_engine.tokenizer, gpu_engine.eos_ids).generate(request)
        ids, hits, drafts = overlap_run(gpu_engine, prompt, predraft=PredraftPolicy.ALWAYS, max_new=48)
        assert ids == plain.token_ids and drafts > 0, prompt


def test_a_graph_step_over_a_span_of_the_cache_equals_one_over_all_of_it(gpu_engine):
    """A graph step attends over the cache's first span columns that reach past its rows (256 of 512 + pad
    columns here), or over all of them: either way its logits are an eager step's over the whole cache."""
    from specdec.core.batching import BatchedRunner

    runner = BatchedRunner(gpu_engine.target.model, max_len=512, max_sessions=4, cuda_graphs=True, compile=False,
                           launch=None)
    whole = runner.max_len + runner.pad  # the cache's columns: padded writes land past max_len
    assert runner._spans == [256, whole] and {span for *_, span in runner._graphs} == {256, whole}
    torch.manual_seed(0)
    prompt = torch.randint(0, runner.vocab_size, (4, 400))
    with torch.inference_mode():
        runner._eager(prompt, torch.arange(400).repeat(4, 1), keep=1)
        for reach in (200, 400):  # rows of lengths up to 200 (a span of 256 columns), then up to 400 (all of them)
            ids = prompt[:, reach - 3:reach]  # [4, 3]: three tokens per row, row i written 20 * i positions earlier
            positions = torch.arange(reach - 3, reach).repeat(4, 1) - torch.arange(4)[:, None] * 20
            graph = runner.forward_rows(ids, positions).clone()
            eager = runner._eager(ids, positions, keep=3)
            assert torch.allclose(graph, eager, atol=1e-3, rtol=1e-3), (reach, (graph - eager).abs().max())
            assert torch.equal(graph.argmax(-1), eager.argmax(-1))


def test_batched_graph_steps_equal_each_request_decoded_alone(gpu_engine):
    """The batched engine with CUDA graphs (rows and tokens buckets, dummy rows in the gaps): each of 12
    concurrent requests, target-only and K = 1..8, gives what it gives alone. The in-process drafts run
    eagerly: a single-sequence runner captures its graphs lazily, and a capture on one thread while the
    engine replays on another is invalidated (the services run the draft in its own process)."""
    from types import SimpleNamespace

    from specdec.core.batching import BatchedRunner
    from tests.unit.core.test_batching import concurrently, decode

    runner = BatchedRunner(gpu_engine.target.model, max_len=512, max_sessions=16, cuda_graphs=True, prefill_chunk=32)
    pair = SimpleNamespace(eos_ids=gpu_engine.eos_ids, draft_runner=ModelRunner(
        gpu_engine.draft.model, max_len=512, max_sessions=16, cuda_graphs=False))
    try:
        assert set(runner.costs.seeds) == {(b, n) for b, n, _ in runner._graphs}  # every captured shape timed at start
        assert all(0 < s < 1 for s in runner.costs.seeds.values())
        assert runner.costs.cost(16, 9) == runner.costs.forward(16, 9) == runner.costs.seeds[(16, 9)]
        cases = [(gpu_engine.encode(p), 10 + 4 * i, i % 9) for i, p in enumerate(PROMPTS[:12])]
        expected = [decode(pair, gpu_engine.target_runner, *c) for c in cases]
        got = concurrently([lambda c=c: decode(pair, runner, *c) for c in cases])
        assert got == expected
        assert max(runner.stats.rows_seen) > 1  # rows shared steps (how many: the CPU test, target-only)
    finally:
        runner.stop()


def test_looking_ahead_with_graphs_equals_each_request_decoded_alone(gpu_engine):
    """Plain greedy sessions with CUDA graphs look ahead by default: each step launched on the tokens the
    device just drew, before the host reads them. Twelve concurrent requests of mixed lengths (joining and
    leaving) each give what they give alone, and most guesses were kept."""
    from specdec.core.batching import BatchedRunner
    from tests.unit.core.test_batching import concurrently, decode

    runner = BatchedRunner(gpu_engine.target.model, max_len=512, max_sessions=16, cuda_graphs=True, prefill_chunk=32)
    try:
        assert runner.lookahead
        cases = [(gpu_engine.encode(p), 8 + 5 * i) for i, p in enumerate(PROMPTS[:12])]
        expected = [decode(gpu_engine, gpu_engine.target_runner, *c) for c in cases]
        got = concurrently([lambda c=c: decode(gpu_engine, runner, *c) for c in cases])
        assert got == expected
        s = runner.stats
        assert s.guesses_kept > 0.5 * s.guesses > 0, f"{s.guesses_kept} of {s.guesses} kept"
    finally:
        runner.stop()


def test_new_prompts_run_alone_together_read_apart_with_graphs(gpu_engine, monkeypatch):
    """New prompts joining sessions that look ahead run alone: a chunk graph of their rows, launched before the step
    ahead and read apart from it (`_launch_chunks`). Every request gives what it gives alone. (That several go in one
    chunk depends on when they come in: the CPU tests assert it.)"""
    from specdec.core.batching import BatchedRunner
    from tests.unit.core.test_batching import prompts_joining_together

    runner = BatchedRunner(gpu_engine.target.model, max_len=512, max_sessions=16, cuda_graphs=True, prefill_chunk=32,
                           compile=False)  # the chunk's path is the point, not compiled layers (minutes on a cold cache)
    try:
        assert runner.lookahead and {(b, w) for b in (1, 2, 4, 8, 16) for w in (9, 17)} <= set(runner._chunk_graphs)
        # held for company: a GPU's steps are short, and the four prompts come in over several (call ca2: one at a time)
        apart = prompts_joining_together(gpu_engine, runner, gpu_engine.target_runner, monkeypatch, tokens=(200, 200),
                                         hold_steps=20)
        assert any(read for _, read in apart), apart  # read apart from the step ahead (ca2: [(1, True)])
        assert runner.stats.chunks_apart == sum(read for _, read in apart) > 0
    finally:
        runner.stop()


def test_in_process_engines_with_graphs_equal_each_request_decoded_alone(gpu_engine):
    """The sweep's engine modes on a GPU: a target engine and a draft engine in one process, each capturing its
    CUDA graphs when built (before either steps), six clients at a fixed K = 3 and then target-only: each
    output is what its request gives decoded alone."""
    from specdec.core.compute import INLINE
    from specdec.core.config import ProposerKind
    from specdec.tools.inprocess import InProcessTarget, engine_runner
    from specdec.tools.loadtest import run_clients

    prompts = PROMPTS[:6]
    expected = {p: gpu_engine.decoder.generate(GenerationRequest(prompt_ids=gpu_engine.encode(p), max_new_tokens=16,
                                                                 ignore_eos=True)).token_ids for p in prompts}
    draft_runner = engine_runner(INLINE, gpu_engine.draft, 512, 8)
    speculating = InProcessTarget(gpu_engine.target, max_len=512, max_sessions=8, k=3, adaptive_k=False,
                                  drafts=make_factory(ProposerKind.DRAFT_MODEL, draft_runner), draft_runner=draft_runner)
    try:
        assert speculating.runner.cuda_graphs and draft_runner.cuda_graphs
        result = run_clients(speculating.client, 6, 2, prompts, 16, 300)
        assert not result.errors and result.draft_tokens > 0, result.errors
        assert all(ids == expected[prompts[i]] for i, *ids in result.outputs)
    finally:
        speculating.close()
    plain = InProcessTarget(gpu_engine.target, max_len=512, max_sessions=8)
    try:
        result = run_clients(plain.client, 6, 1, prompts, 16, 300)
        assert not result.errors and all(ids == expected[prompts[i]] for i, *ids in result.outputs)
    finally:
        plain.close()


def test_verifies_launched_from_drafted_tokens_on_the_gpu_equal_target_only(gpu_engine):
    """The own draft on a GPU, uncompiled (quick): each drafting row's verify is launched from the drafted tokens
    on the device before the host reads them (the draft's values read behind an event, the tokens written into
    the step graph's inputs); four clients at K = 3 get exactly what the same engine gives target-only, and
    every verify launched early was kept; chains took first steps launched from the verifies' argmax on the device
    (before the host read it), and sessions whose prompt steps were verified beside drafting rows caught up in those draft steps
    (the second round's requests come while other clients' still draft)."""
    from specdec.core.compute import INLINE
    from specdec.core.config import ProposerKind
    from specdec.tools.inprocess import InProcessTarget, own_draft_runner
    from specdec.tools.loadtest import run_clients

    draft_runner = own_draft_runner(INLINE, gpu_engine.draft, 256, 4, compile=False)
    engine = InProcessTarget(gpu_engine.target, max_len=256, max_sessions=4, k=3, adaptive_k=False, own_draft=True,
                             drafts=make_factory(ProposerKind.DRAFT_MODEL, draft_runner), draft_runner=draft_runner,
                             compile=False)
    try:
        engine.k = 0
        plain = run_clients(engine.client, 4, 2, PROMPTS[:4], 24, 120)
        engine.k = 3
        spec = run_clients(engine.client, 4, 2, PROMPTS[:4], 24, 120)
        assert not plain.errors and not spec.errors and spec.draft_tokens > 0, (plain.errors, spec.errors)
        assert sorted(spec.outputs) == sorted(plain.outputs)
        stats = engine.runner.stats
        assert engine.runner.early_verify and stats.early > 0 and stats.early_kept == stats.early, stats
        # each such step timed on the device for the engine's log: it waited for its launch within its phase, and ran
        assert stats.early_steps > 0 and 0 <= stats.early_waited_s < stats.drafting_s and stats.early_device_s > 0, stats
        assert draft_runner.stats.ahead_kept > 0, draft_runner.stats  # next chains' first steps launched ahead
        assert draft_runner.stats.joins_kept > 0, draft_runner.stats  # new sessions' catch-ups with them
    finally:
        engine.close()


def test_own_draft_with_graphs_equals_each_request_decoded_alone(gpu_engine):
    """The target's own draft on a GPU (core.own_draft): the draft runner, with no engine loop, captures its graphs
    when built and drafts on the target engine's thread between its steps; six clients at a fixed K = 3 get what
    each request gives decoded alone, and the draft steps held several rows; each verify was launched from the
    drafted tokens on the device before the host read them (the default on a GPU). Both models' layers are compiled
    (the default on a GPU), every shape class before the first request: serving compiles nothing."""
    from specdec.core.compute import INLINE
    from specdec.core.config import ProposerKind
    from specdec.tools.inprocess import InProcessTarget, own_draft_runner
    from specdec.tools.loadtest import run_clients

    prompts = PROMPTS[:6]
    expected = {p: gpu_engine.decoder.generate(GenerationRequest(prompt_ids=gpu_engine.encode(p), max_new_tokens=16,
                                                                 ignore_eos=True)).token_ids for p in prompts}
    draft_runner = own_draft_runner(INLINE, gpu_engine.draft, 512, 8)
    engine = InProcessTarget(gpu_engine.target, max_len=512, max_sessions=8, k=3, adaptive_k=False, own_draft=True,
                             drafts=make_factory(ProposerKind.DRAFT_MODEL, draft_runner), draft_runner=draft_runner)
    from torch._dynamo.utils import counters

    compiled = counters["stats"]["unique_graphs"]
    try:
        assert engine.runner.cuda_graphs and draft_runner.cuda_graphs and draft_runner.passive
        assert engine.runner.compiled and draft_runner.compiled  # by default on a GPU (core.compiled)
        result = run_clients(engine.client, 6, 2, prompts, 16, 300)
        assert not result.errors and result.draft_tokens > 0, result.errors
        assert all(ids == expected[prompts[i]] for i, *ids in result.outputs)
        assert max(draft_runner.stats.rows_seen) > 1, draft_runner.stats.rows_seen
        stats = engine.runner.stats  # each verify launched from the drafted tokens on the device, and kept
        assert engine.runner.early_verify and stats.early > 0 and stats.early_kept == stats.early, stats
        assert draft_runner.stats.ahead_kept > 0, draft_runner.stats
        assert counters["stats"]["unique_graphs"] == compiled  # every shape class compiled before serving
    finally:
        engine.close()


def test_the_engine_launches_steps_without_waiting_for_the_device(gpu_engine):
    """Every host value a launch copies to the device goes through pinned memory (`BatchedRunner._on_device`): with
    about a second of work queued on the stream, launching a step of prompts and then the next chains' first three
    draft steps from its argmax (the later ones fed a replayed draft's known tokens; a new session's catch-up with
    them) returns while that work still runs. A copy from pageable memory may make the host wait for it, and then the
    device idles while the host builds the next launch."""
    from specdec.core.batching import BatchedRunner, _Request
    from specdec.core.runner import DraftJoin

    runner = BatchedRunner(gpu_engine.target.model, max_len=256, max_sessions=4, compile=False, launch=None)
    slots = [runner.open() for _ in range(3)]
    drafted = torch.ones((4, 1), dtype=torch.long, device=runner.device)  # [slots, steps]
    join = DraftJoin(runner, slots[2].index, [4, 5, 6], lambda logits: logits.argmax(-1, keepdim=True))

    def launch_both() -> None:
        step = runner._launch([_Request(s.index, 0, [1, 2, 3], 1, True) for s in slots[:2]])
        runner._chain_ends = {slots[0].index: 2}  # a chain of K = 1 drafted from position 2 ended at 2
        runner.launch_ahead([(slots[0].index, 2, 1, slots[0].index, 2)], drafted, step.top, join.read,
                            [(join, slots[1].index, 2)], steps=[3], known=[lambda position: 9])

    try:
        launch_both()  # first: pinned buffers allocated (cudaHostAlloc), kept by the caching allocator for reuse
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000)  # ~1 s on an H200's clocks
        queued = torch.cuda.Event()
        queued.record()
        launch_both()
        assert not queued.query(), "a launch waited for the work queued before it"
        torch.cuda.synchronize()
        assert runner.stats.ahead == 2 * 3 and runner.stats.joins == 2
    finally:
        for s in slots:
            runner.close(s)


def test_plain_sampled_rows_are_drawn_at_launch_without_a_host_sync(gpu_engine):
    """A plain sampled row's token drawn on the device at its step's launch (`_draw_ahead`: rows of three settings
    processed apart, top-k and top-p, each row's uniform number copied in) makes no call that waits for the stream:
    under CUDA's sync debug mode set to error any such call raises. One would hold the next step's launch until the
    step in flight is done, and looking past sampled steps would gain nothing."""
    from specdec.core.batching import BatchedRunner, _Request
    from specdec.core.config import SamplingParams

    runner = BatchedRunner(gpu_engine.target.model, max_len=256, max_sessions=4, compile=False, launch=None)
    slots = [runner.open() for _ in range(3)]
    settings = [SamplingParams(temperature=0.7, top_p=0.95), SamplingParams(temperature=1.0, top_k=8),
                SamplingParams(temperature=0.7, top_p=0.95)]
    try:
        step = runner._launch([_Request(s.index, 0, [1, 2, 3], 1, True) for s in slots])
        drawn = [_Request(s.index, 0, [1, 2, 3], 1, False, drawn_ahead=(p, 7 + i))
                 for i, (s, p) in enumerate(zip(slots, settings))]
        runner._draw_ahead(step.logits, step.top, drawn)  # first: pinned buffers allocated
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, kept = runner._draw_ahead(step.logits, step.top, drawn)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.shape == (step.top.shape[0], 4) and kept.shape[0] == 3
    finally:
        for s in slots:
            runner.close(s)


def test_sampled_draft_chains_draw_their_steps_without_a_host_sync(gpu_engine):
    """Sampled draft chains on a runner without an engine loop draw every step's token on the device and feed it to
    the next step (`_draft_chained`): under CUDA's sync debug mode set to error, nothing before the one read at the
    end (`_read_chains`) waits for the stream, nor does making their proposals (their q(x) read only with the
    target's p(x), `DenseDraftProbs`). Each chain gets its K picks."""
    from specdec.core.batching import BatchedRunner
    from specdec.core.config import ProposerKind, SamplingParams
    from specdec.core.runner import Chain, Sampled
    from specdec.proposers.base import proposal_of
    from specdec.proposers.draft_model import _sampled_pick

    runner = BatchedRunner(gpu_engine.draft.model, max_len=256, max_sessions=4, compile=False, launch=None)
    settings = [SamplingParams(temperature=0.7, top_p=0.95), SamplingParams(temperature=1.0, top_k=8),
                SamplingParams(temperature=0.5, top_p=0.9)]
    read = runner._read_chains

    def read_allowed(*args):
        torch.cuda.set_sync_debug_mode("default")
        return read(*args)

    def draft() -> list[list]:
        slots = [runner.open() for _ in settings]
        try:
            return runner.decode_chains([Chain(s, [1, 2, 3], 4, None, sampled=Sampled(p, 5 + i, 0, _sampled_pick))
                                         for i, (s, p) in enumerate(zip(slots, settings))])
        finally:
            for s in slots:
                runner.close(s)

    draft()  # first: pinned buffers allocated, kernels loaded
    torch.cuda.synchronize()
    runner._read_chains = read_allowed
    torch.cuda.set_sync_debug_mode("error")
    try:
        picks = draft()
        torch.cuda.set_sync_debug_mode("error")  # making their proposals reads nothing either (q(x) is read with p(x))
        proposals = [proposal_of(3, chain, ProposerKind.DRAFT_MODEL, 0.0) for chain in picks]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [len(p) for p in picks] == [4] * len(settings)
    assert [p.probs.token_prob(0) for p in proposals] == [chain[0].q[chain[0].token].item() for chain in picks]


def test_a_sampled_verifys_outcome_and_the_draft_step_after_it_launch_without_a_host_sync(gpu_engine):
    """What follows a sampled verify before the host reads it: each row's outcome worked out on the device
    (`verify.outcomes_on_device`, q held there) and the draft step launched from it with each row's first pick drawn
    (`launch_ahead` with `SampledAhead`), under CUDA's sync debug mode set to error: nothing waits for the stream.
    The device's guesses then reach the host behind their event, and a wrong one makes the slot forward again."""
    from specdec.core.batching import BatchedRunner
    from specdec.core.config import SamplingParams
    from specdec.core.runner import Sampled, SampledAhead
    from specdec.core.transfer import OnTheWay
    from specdec.core.verify import DenseDraftProbs, SampledVerify, outcomes_on_device

    runner = BatchedRunner(gpu_engine.draft.model, max_len=256, max_sessions=4, compile=False, launch=None)
    vocab = runner.vocab_size
    g = torch.Generator(device="cuda").manual_seed(3)
    qs = [torch.softmax(torch.randn(2, vocab, device="cuda", generator=g), -1) for _ in range(3)]  # [k, V] each
    rows = [SampledVerify([5 + i, 9 + i], DenseDraftProbs(q, [5 + i, 9 + i]), 40 + i, 20) for i, q in enumerate(qs)]
    probs = torch.softmax(torch.randn(9, vocab, device="cuda", generator=g), -1)  # [3 x (k + 1), V]
    slots = [runner.open() for _ in range(3)]
    for s in slots:
        runner.extend(s, list(range(1, 21)) + [5], keep=1)
        runner._chain_ends[s.index] = 21
    tokens = torch.tensor([[5, 9]] * 4, device="cuda")  # [slots, steps]
    chain = Sampled(SamplingParams(temperature=0.8, top_p=0.95), 7, 0, lambda token, q: token)

    def launch() -> torch.Tensor:
        accepted, token = outcomes_on_device(rows, probs)
        outcomes = OnTheWay(torch.stack([accepted, token], dim=1))  # copied to the host behind an event
        runner.launch_ahead([], tokens, None, None, (), SampledAhead([(s.index, 20, 2) for s in slots], accepted,
                                                                    token, [chain] * 3, outcomes))
        return accepted

    try:
        launch()  # first: pinned buffers, kernels loaded
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            accepted = launch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert runner._ahead.guesses.get() == [[a, t] for a, t in zip(accepted.tolist(), outcomes_on_device(
            rows, probs)[1].tolist())]
    finally:
        for s in slots:
            runner.close(s)
