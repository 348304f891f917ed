"""The hybrid proposer: prompt lookup, the draft model or neither, whichever pays most this cycle."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from specdec.core.adaptive import AcceptanceEstimate, AdaptiveK, expected_tokens
from specdec.core.config import MAX_K, ProposerKind, SamplingParams
from specdec.core.proposal import Feedback, Proposal
from specdec.proposers.draft_model import DraftModelFactory, DraftModelProposer
from specdec.proposers.ngram import NgramFactory, NgramProposer


class LastBlock(NamedTuple):
    """What the hybrid proposed last, to credit the verdict on it."""

    source: ProposerKind | None  # None: it proposed nothing (plain decoding)
    match_length: int  # lookup's match length n
    draft_s: float  # the draft model's time


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

    source = ProposerKind.HYBRID

    def __init__(self, ngram: NgramProposer, model: DraftModelProposer, min_hit_rate: float = 0.6,
                 max_k: int = MAX_K, weigh_costs: bool = True) -> None:
        self.ngram, self.model, self.min_hit_rate, self.weigh_costs = ngram, model, min_hit_rate, weigh_costs
        self.model_k = AdaptiveK(max_k=max_k)  # the model's acceptance and step cost; verify cost per size
        self.lookup_acceptance: dict[int, AcceptanceEstimate] = {}  # match length n -> of its lookups
        self._last = LastBlock(None, 0, 0.0)

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
            alpha = estimate.hoped if estimate else index.hit_rate(n)  # chosen as the model is (AdaptiveK)
            verify = self.model_k.costs.verify_cost(len(tokens))
            use_lookup = bool(tokens) and bool(verify) and expected_tokens(alpha, len(tokens)) / verify >= model_rate
        if use_lookup:
            self._last = LastBlock(ProposerKind.NGRAM, n, 0.0)
            return Proposal(start=len(committed), token_ids=tokens, probs=None, source=ProposerKind.NGRAM)
        if model_k == 0:
            self._last = LastBlock(None, 0, 0.0)
            return Proposal(start=len(committed), token_ids=[], probs=None, source=self.source)
        proposal = self.model.propose(committed, model_k)
        self._last = LastBlock(ProposerKind.DRAFT_MODEL, 0, proposal.draft_s)
        return proposal

    def observe(self, feedback: Feedback) -> None:
        source, n, draft_s = self._last
        if feedback.k > 0 and feedback.source == ProposerKind.DRAFT_MODEL == source:
            self.model_k.observe(feedback.k, feedback.accepted, feedback.verify_s, draft_s)
            return
        self.model_k.costs.observe(feedback.k, feedback.verify_s)
        if feedback.k > 0 and feedback.source == ProposerKind.NGRAM == source:
            estimate = self.lookup_acceptance.setdefault(n, AcceptanceEstimate())
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
