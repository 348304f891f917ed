"""The batched runner: sessions decoded together give exactly what each gives alone, and they are batched."""

import threading

import pytest
import torch

from specdec.core.adaptive import FixedK
from specdec.core.batching import BatchedRunner, bucket
from specdec.core.config import GenerationRequest, SamplingParams
from specdec.core.drafting import PredraftPolicy
from specdec.core.sequence import TargetSequence
from specdec.core.target_loop import LocalLink, TargetLoop
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
    steps_before, rows_before = batched.stats.steps, batched.stats.rows
    concurrently([lambda p=p: decode(pair, batched, pair.encode(p), 24) for p in PROMPTS[:8]])
    steps, rows = batched.stats.steps - steps_before, batched.stats.rows - rows_before
    assert rows / steps > 4, f"{rows} rows in {steps} steps: the sessions were not batched"


def test_seeded_sampling_in_a_batch_equals_alone(tiny_pair_fp32, batched):
    pair = tiny_pair_fp32
    sampling = SamplingParams(temperature=0.8, top_p=0.95)
    cases = [(pair.encode(p), 16, k) for p, k in zip(PROMPTS[10:16], (0, 1, 2, 3, 4, 6))]
    alone = [decode(pair, pair.target_runner, ids, n, k, sampling, seed=7) for ids, n, k in cases]
    together = concurrently([lambda c=c: decode(pair, batched, *c, sampling=sampling, seed=7) for c in cases])
    assert together == alone


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
