"""What the model-based proposers share: drafting with a model runner, a token at a time along one chain,
or all branches of a block in one forward per step. A subclass only says how a token is picked from a
row of logits (`_draw`)."""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import torch

from specdec.core.config import ProposerKind
from specdec.core.proposal import Proposal
from specdec.core.runner import Chain, Grouped, KVSlot, Launched, ModelRunner, Sampled, common_prefix_len
from specdec.core.verify import DenseDraftProbs


class Pick(NamedTuple):
    """One drafted token."""

    token: int
    runner_up: int | None  # the draft's likeliest other token (greedy drafts)
    q: torch.Tensor | None  # [V] its processed distribution (sampled drafts)


def proposal_of(start: int, picks: Sequence[Pick], source: ProposerKind, draft_s: float,
                catch_up_s: float = 0.0, catch_up_tokens: int = 0) -> Proposal:
    """The Proposal for tokens a model drafted one pick at a time from position `start`."""
    tokens = [p.token for p in picks]
    rows = [p.q for p in picks if p.q is not None]
    runner_ups = [p.runner_up for p in picks if p.runner_up is not None]
    return Proposal(start=start, token_ids=tokens, probs=DenseDraftProbs(torch.stack(rows), tokens) if rows else None,
                    source=source, draft_s=draft_s, catch_up_s=catch_up_s,
                    catch_up_tokens=catch_up_tokens, runner_ups=runner_ups or None)


def propose_together(proposers: Sequence["ModelDrafting"], committed: Sequence[Sequence[int]],
                     ks: Sequence[int], launched: Launched | None = None) -> list[Proposal]:
    """`propose(committed[i], ks[i])` of each proposer, all over one runner: their catch-ups in one batch of
    forwards, then their chains in the same steps (on a batched runner: one forward per step for all).
    `launched`: `decode_chains`' (chains by proposer index)."""
    runner = proposers[0].runner
    assert all(p.runner is runner for p in proposers), "proposals are drafted together on one runner"
    t0 = time.perf_counter()
    for p, c in zip(proposers, committed):
        p.before_propose(c)
    behind = {i: n for i, (p, c) in enumerate(zip(proposers, committed)) if (n := p.behind(c))}  # -> tokens lacked
    first: dict[int, object] = {}
    chained = getattr(runner, "passive", False)  # the chains' own steps (BatchedRunner._draft_chained)
    if chained:  # new sessions' catch-ups that the draft step launched ahead did (BatchedRunner.launch_ahead's joins)
        first = {i: value for i, (p, c) in enumerate(zip(proposers, committed))
                 if p.group is not None and (value := runner.joined_ahead(p.slot, c, p.group.read)) is not None}
        behind = {i: n for i, n in behind.items() if i not in first}
    if behind and chained and all(proposers[i].group is not None for i in behind):
        # each catch-up forwards all of its sequence and reads its chain's first step, which the others then need
        # not run with it; the runner reads it to the host, as below
        values = runner.catch_up_reads([(proposers[i].slot, committed[i], proposers[i].group.read) for i in behind])
        first.update(zip(behind, values))
    elif behind:  # a host read of the result: the prefill is done, not still running, when drafting is timed
        runner.greedy_ids_together([(proposers[i].slot, committed[i][:-1], 1) for i in behind])
    t1 = time.perf_counter()
    chains = runner.decode_chains([Chain(p.slot, c, max(0, min(k, runner.max_len + 1 - len(c))), p._draw, p.group,
                                         first.get(i), p.sampled)
                                   for i, (p, c, k) in enumerate(zip(proposers, committed, ks))],
                                  launched)
    draft_s = time.perf_counter() - t1
    catch_up_s = t1 - t0 if behind else 0.0
    return [proposal_of(len(c), picks, p.source, draft_s, catch_up_s, behind.get(i, 0))
            for i, (p, c, picks) in enumerate(zip(proposers, committed, chains))]


class ModelDrafting:
    """Drafting with a model runner (the draft-model and replay proposers)."""

    runner: ModelRunner
    slot: KVSlot
    source: ProposerKind

    group: Grouped | None = None  # how its picks are read from the logits with other proposers' (batched runner)
    sampled: Sampled | None = None  # how its sampled picks are drawn with other proposers' (batched runner)

    def _draw(self, logits: torch.Tensor, positions: Sequence[int]) -> list[Pick]:
        """One pick per row of logits [B, V]; `positions` are the picked tokens' absolute positions. A grouped
        proposer reads the rows, then picks from its row's value."""
        if self.group is None:
            raise NotImplementedError
        return [self.group.pick(values, p) for values, p in zip(self.group.read(logits).tolist(), positions)]

    def before_propose(self, committed: Sequence[int]) -> None:
        """What a proposer learns from the sequence before it drafts (the replay finds its reference)."""

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        """Up to k tokens after `committed`; fewer near the end of the draft's context, where the last
        token it can draft is the one at position max_len (drafted from max_len cached tokens)."""
        return propose_together([self], [committed], [k])[0]

    def prefill(self, prompt: Sequence[int]) -> None:
        if len(prompt) <= self.runner.max_len:  # beyond the draft's context it has nothing to propose
            self._cache(prompt)

    def behind(self, committed: Sequence[int]) -> int:
        """How many committed tokens (but the last, which the chain's first step feeds) to cache first (a runner
        drafting chains itself: all of them, its chain's first step read from the same forward), in one prefill timed
        apart from drafting; 0: none. Where more than two are missing (after cycles drafted by someone else, or
        none): folded into the first draft step they would look like an expensive draft and keep adaptive K from
        drafting again."""
        missing = len(committed) - 1 - common_prefix_len(self.slot.tokens, committed)
        return missing if missing > 1 and len(committed) <= self.runner.max_len else 0

    def _cache(self, ids: Sequence[int]) -> None:
        """Forward `ids` into the cache and wait for it: on a GPU the forward would otherwise still be running
        when the first draft step is timed, and its cost would count as drafting."""
        self.runner.greedy_ids(self.slot, ids, keep=1)  # a host read of the result: done once it returns

    def propose_branches(self, chain: Sequence[int], roots: Sequence[tuple[int, int]],
                         k: int) -> list[Proposal] | None:
        """k tokens after each root (j, token), i.e. after chain[:j] + [token], all roots in one forward
        per step (`ModelRunner.forward_branches`): on a GPU, drafting the likeliest outcomes of a block
        costs about what drafting one of them does. None if they don't fit in the cache."""
        t0 = time.perf_counter()
        if max(j for j, _ in roots) + k > self.runner.max_len:
            return None  # past the end of the context
        self.runner.hold(self.slot, chain[:max(j for j, _ in roots)])
        forks = [j for j, _ in roots]
        tokens = [token for _, token in roots]
        drafted: list[list[Pick]] = [[] for _ in roots]
        for step in range(k):
            logits = self.runner.forward_branches(self.slot, step, tokens, [j + step for j in forks], forks)
            if logits is None:
                return None
            picks = self._draw(logits, [j + 1 + step for j in forks])
            for branch, pick in zip(drafted, picks):
                branch.append(pick)
            tokens = [pick.token for pick in picks]
        draft_s = time.perf_counter() - t0
        return [proposal_of(j + 1, picks, self.source, draft_s) for j, picks in zip(forks, drafted)]
