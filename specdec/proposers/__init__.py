"""Proposers: one module each (draft model, prompt lookup, hybrid, replay) over the contract in
`specdec.core.proposal` and the shared model-drafting base in `base`."""

from __future__ import annotations

from specdec.core.config import ProposerKind
from specdec.core.own_draft import OwnDrafts
from specdec.core.proposal import ProposerFactory
from specdec.core.runner import ModelRunner
from specdec.proposers.base import propose_together
from specdec.proposers.draft_model import DraftModelFactory
from specdec.proposers.hybrid import HybridFactory
from specdec.proposers.ngram import NgramFactory
from specdec.proposers.replay import ReplayFactory


def make_factory(kind: ProposerKind, runner: ModelRunner | None, vocab_size: int | None = None, *,
                 ngram_min: int = 1, ngram_max: int = 4) -> ProposerFactory:
    """The proposer factory for `kind`; prompt lookup needs no runner, the others a draft model's."""
    if kind == ProposerKind.NGRAM:
        return NgramFactory(ngram_min, ngram_max)
    if runner is None:
        raise ValueError(f"the {kind.value} proposer needs a draft model")
    model = DraftModelFactory(runner, vocab_size or runner.vocab_size)
    if kind == ProposerKind.DRAFT_MODEL:
        return model
    return HybridFactory(NgramFactory(ngram_min, ngram_max), model)


def own_drafts(factory: DraftModelFactory | ReplayFactory) -> OwnDrafts:
    """A target's own draft (core.own_draft) over `factory`'s model proposers, which draft together."""
    return OwnDrafts(factory, propose_together, factory.runner)
