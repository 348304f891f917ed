"""Proposers draft tokens; they never verify. One small dataclass, `Proposal`, passes to the verifier.

A proposer object belongs to one session (it may hold a KV cache); a `ProposerFactory` makes them.
"""

from __future__ import annotations

import json
import pathlib
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from specdec.adaptive import AcceptanceEstimate, AdaptiveK, expected_tokens
from specdec.config import MAX_K, SamplingParams
from specdec.errors import InvalidArgument
from specdec.runner import KVSession, ModelRunner, common_prefix_len
from specdec.sampling import Stream, process_logits, sample_from, uniform
from specdec.verify import DenseDraftProbs, DraftProbs


@dataclass
class Proposal:
    """A claim: "from position `start` the sequence continues with `token_ids`"."""

    start: int  # absolute position of token_ids[0] in prompt + output
    token_ids: list[int]  # [k] draft tokens
    probs: DraftProbs | None  # the draft's processed q per position; None = one-hot (greedy, n-gram)
    source: str  # which proposer made it ("draft-model", "ngram"), for statistics
    token_sources: list[str] | None = None  # per token, when a claim mixes proposers (hybrid, remote)
    draft_s: float = 0.0  # the proposer's own time drafting these tokens, catching up on cycles it did
    #                       not draft excluded: what a per-token draft cost (adaptive K) must be fed
    runner_ups: list[int] | None = None  # per token, the draft's likeliest other token (greedy drafts with a
    #                                      model): what the target most likely picks where it rejects

    @property
    def k(self) -> int:
        return len(self.token_ids)

    def sources(self) -> list[str]:
        return self.token_sources if self.token_sources is not None else [self.source] * len(self.token_ids)


@dataclass
class Feedback:
    """How the target verified one cycle's block: what a proposer that weighs its options learns from."""

    source: str  # proposer of the verified drafts; "" when the target decoded alone (k == 0)
    k: int  # draft tokens verified
    accepted: int  # of which accepted
    verify_s: float  # the target's time for the cycle


Pick = tuple[int, "int | None", "torch.Tensor | None"]  # a drafted token, its runner-up (greedy), its q row (sampling)


def proposal_of(start: int, picks: Sequence[Pick], source: str, draft_s: float) -> Proposal:
    """The Proposal for tokens a model drafted one pick at a time from position `start`."""
    tokens = [token for token, _, _ in picks]
    rows = [q for _, _, q in picks if q is not None]
    runner_ups = [u for _, u, _ in picks if u is not None]
    return Proposal(start=start, token_ids=tokens, probs=DenseDraftProbs(torch.stack(rows), tokens) if rows else None,
                    source=source, draft_s=draft_s, runner_ups=runner_ups or None)


class ModelDrafting:
    """Drafting with a model runner, shared by the draft-model and replay proposers: a subclass only
    says how a token is picked from a row of logits (`_draw`); one pick per forward along a chain, or
    one per branch with all branches in one forward."""

    runner: ModelRunner
    session: KVSession
    source: str

    def _draw(self, logits: torch.Tensor, positions: Sequence[int]) -> list[Pick]:
        """One pick per row of logits [B, V]; `positions` are the picked tokens' absolute positions."""
        raise NotImplementedError

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        """Up to k tokens after `committed`; fewer near the end of the draft's context, where the last
        token it can draft is the one at position max_len (drafted from max_len cached tokens)."""
        t0 = time.perf_counter()
        start = len(committed)
        sequence = list(committed)
        picks: list[Pick] = []
        for i in range(min(k, self.runner.max_len + 1 - start)):
            picks += self._draw(self.runner.extend(self.session, sequence, keep=1), [start + i])
            sequence.append(picks[-1][0])
        return proposal_of(start, picks, self.source, time.perf_counter() - t0)

    def propose_branches(self, chain: Sequence[int], roots: Sequence[tuple[int, int]],
                         k: int) -> list[Proposal] | None:
        """k tokens after each root (j, token), i.e. after chain[:j] + [token], all roots in one forward
        per step (`ModelRunner.forward_branches`): on a GPU, drafting the likeliest outcomes of a block
        costs about what drafting one of them does. None if they don't fit in the cache."""
        t0 = time.perf_counter()
        if max(j for j, _ in roots) + k > self.runner.max_len:
            return None  # past the end of the context
        self.runner.hold(self.session, chain[:max(j for j, _ in roots)])
        forks = [j for j, _ in roots]
        tokens = [token for _, token in roots]
        drafted: list[list[Pick]] = [[] for _ in roots]
        for step in range(k):
            logits = self.runner.forward_branches(self.session, step, tokens, [j + step for j in forks], forks)
            if logits is None:
                return None
            picks = self._draw(logits, [j + 1 + step for j in forks])
            for branch, pick in zip(drafted, picks):
                branch.append(pick)
            tokens = [token for token, _, _ in picks]
        draft_s = time.perf_counter() - t0
        return [proposal_of(j + 1, picks, self.source, draft_s) for j, picks in zip(forks, drafted)]


DRAFT_MODEL = "draft-model"
NGRAM = "ngram"
HYBRID = "hybrid"
PROPOSER_KINDS = (DRAFT_MODEL, NGRAM, HYBRID)


class Proposer(Protocol):
    """One session's proposer."""

    source: str

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        """Draft up to k tokens that follow `committed` (the prompt plus everything committed so far)."""
        ...

    def prefill(self, prompt: Sequence[int]) -> None:
        """Warm up on the prompt before the first proposal is asked for."""
        ...

    # Optional, for overlap's pre-drafting (proposers that can draft several branches in one pass):
    # def propose_branches(self, chain, roots, k) -> list[Proposal] | None
    #     For each root (j, token): the k tokens that follow chain[:j] + [token], as propose() would
    #     draft them; None when they cannot be drafted now (no room left in the cache).

    def observe(self, feedback: Feedback) -> None:
        """The verdict on a cycle (every cycle after the first, drafted or not)."""
        ...

    def close(self) -> None: ...


class ProposerFactory(Protocol):
    def open(self, sampling: SamplingParams, seed: int) -> Proposer: ...


class DraftModelProposer(ModelDrafting):
    """Drafts with a small model: k autoregressive steps over its own KV cache.

    Rollback is implicit: `ModelRunner.extend` reuses the cached prefix that still agrees with
    `committed` and overwrites the rest, so a verdict needs no separate message to the draft.
    """

    source = DRAFT_MODEL

    def __init__(self, runner: ModelRunner, sampling: SamplingParams, seed: int, vocab_size: int) -> None:
        self.runner = runner
        self.sampling = sampling
        self.seed = seed
        self.pad = vocab_size - runner.vocab_size  # q rows are padded with zeros to the target's vocab
        assert self.pad >= 0, "the draft's vocabulary must not be larger than the target's"
        self.session = runner.open()

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        self._catch_up(committed)
        return super().propose(committed, k)

    def _draw(self, logits: torch.Tensor, positions: Sequence[int]) -> list[Pick]:
        """Per row of logits [B, V]: the drafted token, its runner-up when greedy, and q when sampling."""
        if self.sampling.greedy:  # argmax as greedy_token (ties to the lowest id); one host read for all
            best = torch.cat([logits.argmax(-1, keepdim=True), logits.topk(2, dim=-1).indices], dim=-1).tolist()
            return [(r[0], r[1] if r[1] != r[0] else r[2], None) for r in best]
        q = torch.nn.functional.pad(process_logits(logits, self.sampling), (0, self.pad))
        return [(sample_from(q[b], uniform(self.seed, p, Stream.DRAFT)), None, q[b]) for b, p in enumerate(positions)]

    def prefill(self, prompt: Sequence[int]) -> None:
        if len(prompt) <= self.runner.max_len:  # beyond the draft's context it has nothing to propose
            self.runner.extend(self.session, prompt, keep=1)

    def _catch_up(self, committed: Sequence[int]) -> None:
        """Cache all but the last committed token when more than two are missing (after cycles drafted by
        someone else, or none), in one prefill timed apart from drafting: folded into the first draft
        step it would look like an expensive draft and keep adaptive K from drafting again."""
        missing = common_prefix_len(self.session.tokens, committed) < len(committed) - 2
        if missing and len(committed) <= self.runner.max_len:
            self.runner.extend(self.session, committed[:-1], keep=1)

    def close(self) -> None:
        self.runner.close(self.session)

    def observe(self, feedback: Feedback) -> None:
        pass  # nothing to weigh: it always drafts the same way


class DraftModelFactory:
    """Makes DraftModelProposers that share one draft runner."""

    def __init__(self, runner: ModelRunner, vocab_size: int) -> None:
        self.runner = runner
        self.vocab_size = vocab_size  # the target's: q must be comparable with p

    def open(self, sampling: SamplingParams, seed: int) -> DraftModelProposer:
        return DraftModelProposer(self.runner, sampling, seed, self.vocab_size)


class NgramIndex:
    """Where each n-gram (n in [min_n, max_n]) of a token sequence last ended, kept incrementally.

    Appending a token costs O(max_n); rolling back costs O(max_n) per removed token (an undo log), so a
    lookup never rescans the sequence: per-step cost is flat in the sequence length.

    The index also scores itself: before each token is appended it checks what lookup would have
    predicted there, and keeps a decayed hit rate per match length n. That says how far lookup can be
    trusted on *this* text (code that repeats, a document being copied) without any feedback from the
    verifier, so it works the same with overlap, where the sequence holds an unverified tail.
    """

    TAIL = 64  # speculative decoding only ever rewrites the unverified tail (<= 2 * (MAX_K + 1) tokens)
    DECAY = 0.95  # hit-rate memory: about the last 20 predictions per match length

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        assert 1 <= min_n <= max_n, "need 1 <= min_n <= max_n"
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._last_end: dict[tuple[int, ...], int] = {}  # n-gram -> position just after its latest occurrence
        self._undo: list[tuple[list[tuple[tuple[int, ...], int | None]], tuple[int, float, float] | None]] = []
        self._hits = [0.0] * (max_n + 1)  # per match length: decayed count of correct predictions
        self._trials = [0.0] * (max_n + 1)  # per match length: decayed count of predictions
        self.operations = 0  # dictionary operations, for cost tests

    def sync(self, sequence: Sequence[int]) -> None:
        """Make the index describe `sequence`: roll back what differs, append what is new.

        Only the last TAIL tokens are compared (O(1) per step): callers pass committed tokens plus at
        most a short unverified tail, so anything earlier is known to agree.
        """
        limit = min(len(self.tokens), len(sequence))
        keep = max(0, limit - self.TAIL)
        while keep < limit and self.tokens[keep] == sequence[keep]:
            keep += 1
        while len(self.tokens) > keep:
            self._pop()
        for token in sequence[keep:]:
            self._push(token)

    def lookup(self, k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the most recent earlier occurrence of the longest matching
        suffix, and that suffix's length n (0 and [] when nothing matches)."""
        end = len(self.tokens)
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            self.operations += 1
            start = self._last_end.get(tuple(self.tokens[end - n:]))
            if start is not None:
                return self.tokens[start:start + k], n
        return [], 0

    def continuation(self, k: int) -> list[int]:
        return self.lookup(k)[0]

    def hit_rate(self, n: int) -> float:
        """How often a length-n match predicted the next token on this sequence lately (Beta(1,1) prior)."""
        return (self._hits[n] + 1.0) / (self._trials[n] + 2.0)

    def _push(self, token: int) -> None:
        predicted, n = self.lookup(1)
        scored = None
        if n:
            scored = (n, self._hits[n], self._trials[n])
            self._hits[n] = self._hits[n] * self.DECAY + (predicted[0] == token)
            self._trials[n] = self._trials[n] * self.DECAY + 1.0
        # Index the n-grams ending at the *previous* token, so the suffix never matches itself.
        end = len(self.tokens)
        undo = []
        for n in range(self.min_n, min(self.max_n, end) + 1):
            key = tuple(self.tokens[end - n:end])
            undo.append((key, self._last_end.get(key)))
            self._last_end[key] = end
            self.operations += 1
        self._undo.append((undo, scored))
        self.tokens.append(token)

    def _pop(self) -> None:
        self.tokens.pop()
        undo, scored = self._undo.pop()
        for key, previous in reversed(undo):
            if previous is None:
                del self._last_end[key]
            else:
                self._last_end[key] = previous
            self.operations += 1
        if scored is not None:
            n, self._hits[n], self._trials[n] = scored


class NgramProposer:
    """Prompt lookup: propose the tokens that followed the latest earlier occurrence of the current
    suffix (longest n first), in the prompt and the output. No model, no GPU; nothing when no match.
    Verified as a one-hot q, so sampling stays exact."""

    source = NGRAM

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        self.index = NgramIndex(min_n, max_n)

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        self.index.sync(committed)  # catching up on the committed tokens is not drafting
        t0 = time.perf_counter()
        tokens = self.index.continuation(k)
        return Proposal(start=len(committed), token_ids=tokens, probs=None, source=self.source,
                        draft_s=time.perf_counter() - t0)

    def prefill(self, prompt: Sequence[int]) -> None:
        self.index.sync(prompt)

    def close(self) -> None:
        pass

    def observe(self, feedback: Feedback) -> None:
        pass  # nothing to weigh: it always drafts the same way


class NgramFactory:
    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        self.min_n, self.max_n = min_n, max_n

    def open(self, sampling: SamplingParams, seed: int) -> NgramProposer:
        return NgramProposer(self.min_n, self.max_n)


class HybridProposer:
    """Prompt lookup, the draft model or neither: each cycle, whichever should commit the most tokens
    per second.

    Lookup is free but often wrong on a short match; the draft model is usually right but costs a
    forward per token (plus catching up on what lookup committed meanwhile). Each cycle weighs, with
    the standard formula E(a, k) = (1 - a^(k+1)) / (1 - a) over measured costs (adaptive.AdaptiveK):
      lookup:      E(a_n, len) / verify(len)    a_n: measured acceptance of lookups matching n tokens
                                                (before any: the index's own hit rate for n)
      draft model: E(a, k') / (verify(k') + k' * draft_step), k' <= k chosen by AdaptiveK
      neither:     1 / verify(0)                (AdaptiveK's k' = 0: the model does not pay here)
    Costs come from `observe` (the target's verdicts). Until the draft model has been measured, and
    always when sampling, lookup is taken when its hit rate is >= `min_hit_rate` and the model drafts
    otherwise: that rule depends on the tokens only, whereas measured times differ from run to run, and
    which proposer drafted decides which tokens a seeded sampled request gets (greedy output never
    depends on it), so seeded requests stay reproducible.
    """

    source = HYBRID

    def __init__(self, ngram: NgramProposer, model: DraftModelProposer, min_hit_rate: float = 0.6,
                 max_k: int = MAX_K, weigh_costs: bool = True) -> None:
        self.ngram, self.model, self.min_hit_rate, self.weigh_costs = ngram, model, min_hit_rate, weigh_costs
        self.model_k = AdaptiveK(max_k=max_k)  # the model's acceptance and step cost; verify cost per size
        self.lookup_acceptance: dict[int, AcceptanceEstimate] = {}  # match length n -> of its lookups
        self._last: tuple[str, int, float] = ("", 0, 0.0)  # (source, match length n, draft time) of the last block

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        index = self.ngram.index
        index.sync(committed)
        tokens, n = index.lookup(k)
        model_k = self.model_k.choose(k) if self.weigh_costs else k
        model_rate = self.model_k.rate(model_k) if self.weigh_costs else None
        if model_rate is None:  # sampling, or the model not measured yet
            use_lookup, model_k = bool(tokens) and index.hit_rate(n) >= self.min_hit_rate, k
        else:
            estimate = self.lookup_acceptance.get(n)  # once made, it has seen a block: its value is set
            alpha = estimate.value if estimate else index.hit_rate(n)
            verify = self.model_k.costs.verify_cost(len(tokens))
            use_lookup = bool(tokens) and bool(verify) and expected_tokens(alpha, len(tokens)) / verify >= model_rate
        if use_lookup:
            self._last = (NGRAM, n, 0.0)
            return Proposal(start=len(committed), token_ids=tokens, probs=None, source=NGRAM)
        if model_k == 0:
            self._last = ("", 0, 0.0)
            return Proposal(start=len(committed), token_ids=[], probs=None, source=self.source)
        proposal = self.model.propose(committed, model_k)
        self._last = (DRAFT_MODEL, 0, proposal.draft_s)
        return proposal

    def observe(self, feedback: Feedback) -> None:
        source, n, draft_s = self._last
        if feedback.k > 0 and feedback.source == DRAFT_MODEL == source:
            self.model_k.observe(feedback.k, feedback.accepted, feedback.verify_s, draft_s)
            return
        self.model_k.costs.observe(feedback.k, feedback.verify_s)
        if feedback.k > 0 and feedback.source == NGRAM == source:
            estimate = self.lookup_acceptance.setdefault(n, AcceptanceEstimate(decay=self.model_k.acceptance.decay))
            estimate.observe(feedback.k, feedback.accepted)

    def prefill(self, prompt: Sequence[int]) -> None:
        self.ngram.prefill(prompt)
        self.model.prefill(prompt)

    def close(self) -> None:
        self.model.close()


class HybridFactory:
    def __init__(self, ngram: NgramFactory, model: DraftModelFactory, min_hit_rate: float = 0.6) -> None:
        self.ngram, self.model, self.min_hit_rate = ngram, model, min_hit_rate

    def open(self, sampling: SamplingParams, seed: int) -> HybridProposer:
        return HybridProposer(self.ngram.open(sampling, seed), self.model.open(sampling, seed), self.min_hit_rate,
                              weigh_costs=sampling.greedy)


class ReplayProposer(ModelDrafting):
    """A draft with real cost and replayed acceptance, for systems benchmarks without real weights.

    The draft model's forward runs for every proposed token (its real cost on the real shapes), but
    the token it proposes is the target's known greedy continuation with probability `alpha` and a
    wrong token otherwise (decided per position from the seed, so runs are reproducible). Its runner-up
    (what overlap pre-drafts from where the target rejects) is the right token with probability
    `runner_up` where the top token is wrong: a rate measured on a real pair (scripts/runner_up_rate.py).
    The continuation comes from a ReplayBook, found by the prompt the session starts from. Greedy only.
    Results must be labelled "replayed acceptance".
    """

    source = DRAFT_MODEL

    def __init__(self, runner: ModelRunner, book: "ReplayBook", alpha: float, seed: int,
                 runner_up: float = 0.0) -> None:
        self.runner, self.book, self.alpha, self.seed = runner, book, alpha, seed
        self.runner_up = runner_up
        self.reference: list[int] | None = None  # prompt + the target's greedy output, once the prompt is seen
        self.session = runner.open()

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        self._find(committed)
        return super().propose(committed, k)

    def propose_branches(self, chain: Sequence[int], roots: Sequence[tuple[int, int]],
                         k: int) -> list[Proposal] | None:
        self._find(chain)
        return super().propose_branches(chain, roots, k)

    def _find(self, tokens: Sequence[int]) -> None:
        if self.reference is None:
            self.reference = self.book.find(tokens)

    def _draw(self, logits: torch.Tensor, positions: Sequence[int]) -> list[Pick]:
        # Read the real forward's tokens as a real draft must (a host sync): without that read a draft on
        # its own GPU would run unwaited, in parallel with the target, for free. Then replay.
        logits.argmax(-1).tolist()
        return [(*self._replayed(p), None) for p in positions]

    def _replayed(self, position: int) -> tuple[int, int]:
        """(proposed token, runner-up) at `position`."""
        right = self.reference[position] if position < len(self.reference) else 0
        wrong = [(right + i) % self.runner.vocab_size for i in (1, 2)]
        if uniform(self.seed, position, Stream.DRAFT) < self.alpha:
            return right, wrong[0]
        return wrong[0], right if uniform(self.seed, position, Stream.RUNNER_UP) < self.runner_up else wrong[1]

    def prefill(self, prompt: Sequence[int]) -> None:
        self._find(prompt)  # an unknown prompt is refused here, when its session starts
        if len(prompt) <= self.runner.max_len:
            self.runner.extend(self.session, prompt, keep=1)

    def close(self) -> None:
        self.runner.close(self.session)

    def observe(self, feedback: Feedback) -> None:
        pass  # nothing to weigh: it always drafts the same way


class ReplayBook:
    """The target's greedy continuations of known prompts (each: prompt + output), for replayed drafts.

    The bench makes one by decoding every prompt target-only; `--replay-references FILE` gives a draft
    service one (JSON lines of `prompt_ids` and `output_ids`, as `specdec bench` writes them).
    """

    def __init__(self, references: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
        self._by_prompt = {tuple(prompt): [*prompt, *output] for prompt, output in references}
        self._lengths = sorted({len(prompt) for prompt, _ in references}, reverse=True)

    @classmethod
    def load(cls, path: str) -> "ReplayBook":
        try:
            rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
            return cls([(row["prompt_ids"], row["output_ids"]) for row in rows])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument("replay_references", f"cannot read {path}: {exc!r}") from exc

    def save(self, path: str) -> None:
        pathlib.Path(path).write_text("".join(json.dumps({"prompt_ids": list(p), "output_ids": ids[len(p):]}) + "\n"
                                              for p, ids in self._by_prompt.items()))

    def find(self, tokens: Sequence[int]) -> list[int]:
        """Prompt + continuation of the longest known prompt that `tokens` start with."""
        for n in self._lengths:
            if n <= len(tokens) and (reference := self._by_prompt.get(tuple(tokens[:n]))) is not None:
                return reference
        raise InvalidArgument("prompt_ids", f"no replay reference for this prompt of {len(tokens)} tokens "
                                            f"({len(self._by_prompt)} known)")


class ReplayFactory:
    """ReplayProposers drafting the continuations of a ReplayBook."""

    def __init__(self, runner: ModelRunner, book: ReplayBook, alpha: float, runner_up: float = 0.0) -> None:
        for name, rate in (("replay_alpha", alpha), ("replay_runner_up", runner_up)):
            if not 0.0 <= rate <= 1.0:
                raise InvalidArgument(name, f"must be in [0, 1], got {rate}")
        self.runner, self.book, self.alpha, self.runner_up = runner, book, alpha, runner_up

    def open(self, sampling: SamplingParams, seed: int) -> ReplayProposer:
        if not sampling.greedy:
            raise InvalidArgument("sampling", "replayed acceptance is defined for greedy decoding only")
        return ReplayProposer(self.runner, self.book, self.alpha, seed, self.runner_up)


def make_factory(kind: str, runner: ModelRunner | None, vocab_size: int | None = None, *,
                 ngram_min: int = 1, ngram_max: int = 4) -> ProposerFactory:
    """The proposer factory for `kind` (draft-model, ngram, hybrid); ngram needs no runner."""
    if kind == NGRAM:
        return NgramFactory(ngram_min, ngram_max)
    if runner is None:
        raise ValueError(f"the {kind} proposer needs a draft model")
    model = DraftModelFactory(runner, vocab_size or runner.vocab_size)
    if kind == DRAFT_MODEL:
        return model
    if kind == HYBRID:
        return HybridFactory(NgramFactory(ngram_min, ngram_max), model)
    raise ValueError(f"unknown proposer {kind!r}; choose one of {PROPOSER_KINDS}")
