"""The sweep's engine-* modes: a target service's logic over a batched engine in this process, its drafts
on a second batched engine in this process too, called by load clients directly.

What the batched engine gives many clients with no gRPC, no orchestrator and no second process in the way:
next to the services' figures it shows what the network path costs under load. Each request runs what a
target service runs for one session (target_service.service.TargetService: the one loop, load-aware
adaptive K over the engine's measured step costs); its draft is a DraftSession on a thread of this process
(target_loop.LocalLink), drafting ahead where a draft service's session would. Prompts are encoded as the
orchestrator encodes a plain prompt, so outputs and replayed continuations match the services'.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Iterator

from draft_service.service import overlap_pays
from specdec.core.batching import BatchedRunner, serving_runner
from specdec.core.compute import INLINE, Compute
from specdec.core.config import GenerationRequest, ProposerKind, SamplingParams, SpeculationConfig, TargetRequest
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.drafting import DraftStart, Predraft, predraft_policy
from specdec.core.models import LoadedModel, check_same_vocabulary, context_length, encode_prompt, eos_ids_of, load_model
from specdec.core.pair import PairConfig, check_draft_head
from specdec.core.proposal import ProposerFactory
from specdec.core.runner import vocab_size_of
from specdec.core.sampling import fresh_seed
from specdec.core.stats import Cycle, SpecStats
from specdec.core.target_loop import LocalLink
from specdec.proposers import make_factory, own_drafts
from specdec.tools.loadtest import Call, Reply, with_seed
from target_service.server import TargetServerSettings
from target_service.server import own_draft_runner as build_own_draft_runner
from target_service.service import TargetService, TargetSettings

GATHER_S = TargetServerSettings.gather_s  # a target service's default


def engine_runner(compute: Compute, loaded: LoadedModel, max_len: int, max_sessions: int,
                  compile: bool = True, stream_interval: int | None = None, cpu_kernels: str = ONEDNN) -> BatchedRunner:
    """A batched engine over `loaded`, built and run on `compute` as a service builds its own."""
    runner, _ = serving_runner(compute, loaded.model, batching=True, gather_s=GATHER_S, compile=compile,
                               stream_interval=stream_interval, cpu_kernels=cpu_kernels,
                               max_len=context_length(loaded.model, max_len), max_sessions=max_sessions,
                               queue_size=4 * max_sessions, queue_wait_s=600.0)
    return runner


def own_draft_runner(compute: Compute, loaded: LoadedModel, max_len: int, max_sessions: int,
                     compile: bool = True, cpu_kernels: str = ONEDNN) -> BatchedRunner:
    """A target engine's own draft (core.own_draft) as a target service builds it, on `compute`, the target
    engine's thread-to-be."""
    return compute.run(build_own_draft_runner, loaded, max_len, max_sessions, compile=compile, cpu_kernels=cpu_kernels)


def draft_engine(compute: Compute, target: LoadedModel, spec: str, *, device: str, dtype: str, max_len: int,
                 max_sessions: int, own: bool, compile: bool = True, cpu_kernels: str = ONEDNN) -> BatchedRunner:
    """The draft model `spec` loaded and run as a deployment runs it: the target's own draft (`own`: on the target's
    device, built on `compute`, the target engine's thread-to-be), else a draft engine on a compute of its own
    device. Its vocabulary must be the target's."""
    draft_compute = compute if own else Compute.for_device(device)
    draft = draft_compute.run(load_model, spec, "draft", device=device, dtype=dtype)
    check_same_vocabulary(target, draft)
    return (own_draft_runner if own else engine_runner)(draft_compute, draft, max_len, max_sessions, compile,
                                                        cpu_kernels=cpu_kernels)


class _DraftLink(LocalLink):
    """A link that owns its proposer, as a draft service's session does: closing it frees the draft's slot."""

    def close(self, cancel: bool = False) -> None:
        super().close(cancel)
        self.session.proposer.close()


class LocalDrafts:
    """A target service's links, to drafts in this process: each session's DraftSession drafts on its own
    thread through the factory's runner (a batched engine: every session's draft step in one forward)."""

    def __init__(self, factory: ProposerFactory, runner: BatchedRunner | None) -> None:
        self.factory = factory
        self.predraft = predraft_policy(Predraft.AUTO, runner.device if runner is not None else None)
        self.placement = runner.placement if runner is not None else None

    def open(self, address: str, start: DraftStart, deadline_s: float | None) -> LocalLink:
        """A session's draft, drafting ahead only where a draft service would (not on its target's GPU or CPUs)."""
        proposer = self.factory.open(start.sampling, start.seed)
        return _DraftLink(proposer, start.prompt_ids, start.k, greedy=start.sampling.greedy, predraft=self.predraft,
                          paused=start.paused,
                          overlap=overlap_pays(start.overlap, self.placement, start.target_placement))


class _Unobserved:
    """The service's observer: the load client reads each request's cycles itself."""

    def queued(self, seconds: float) -> None:
        pass

    def cycle(self, cycle: Cycle) -> None:
        pass

    def draft_failed(self, reason: str) -> None:
        pass


class InProcessTarget:
    """A target engine (and, with `drafts`, their draft engine) serving load clients in this process.
    `drafts`: proposers over `draft_runner` (None: target only); with `own_draft`, the target's own draft
    (core.own_draft: `draft_runner` has no engine loop, the target's engine drafts between its steps). `k`: the
    most draft tokens per cycle, chosen per cycle by adaptive K as the services do by default (`adaptive_k`), or
    exactly k."""

    def __init__(self, target: LoadedModel, *, max_len: int, max_sessions: int, k: int = 4, adaptive_k: bool = True,
                 drafts: ProposerFactory | None = None, draft_runner: BatchedRunner | None = None,
                 own_draft: bool = False, compute: Compute = INLINE, compile: bool = True,
                 stream_interval: int | None = None, cpu_kernels: str = ONEDNN,
                 settings: TargetSettings = TargetSettings()) -> None:
        """`compute`: where the target's engine runs, as in a target service (a CPU model: the thread that loaded
        it, core/compute.py); a draft runner is built by `engine_runner` on its own (`own_draft_runner` for an
        own draft, before this engine takes over a CPU's compute thread). `compile`, `stream_interval`,
        `cpu_kernels`: BatchedRunner's; `settings`: the target service's (the largest max_new_tokens)."""
        self.tokenizer = target.tokenizer
        self.runner = engine_runner(compute, target, max_len, max_sessions, compile, stream_interval, cpu_kernels)
        self.draft_runner = draft_runner
        own = links = None
        if drafts is not None and own_draft:
            own = self.runner.drafter = own_drafts(drafts)
        elif drafts is not None:
            links = LocalDrafts(drafts, draft_runner)
        self.service = TargetService(self.runner, eos_ids_of(target.tokenizer, target.model), links, settings,
                                     own_drafts=own)
        self.own_draft = own is not None
        self.k = k if drafts is not None else 0
        self.adaptive_k = adaptive_k
        self._ids = itertools.count()

    @classmethod
    def load(cls, config: PairConfig, *, compile: bool = True, max_new_tokens: int = 1 << 20) -> "InProcessTarget":
        """`specdec generate`'s engine: `config`'s target (up to `config.max_sessions` requests at once) with its
        draft placed as the services place it: a draft model on the target's device is the target's own draft,
        drafted between the engine's steps (one device, one schedule); one on another device, or a proposer
        with prompt lookup, drafts on threads of this process over a draft engine of its own."""
        compute = Compute.for_device(config.device)  # a CPU model loads and computes on one thread (core/compute.py)
        target = compute.run(load_model, config.target, "target", device=config.device, dtype=config.dtype)
        speculation = config.speculation.validate()
        draft_runner = drafts = None
        own = False
        if speculation.k > 0 and config.draft is not None and config.proposer != ProposerKind.NGRAM:
            device = config.draft_device or config.device
            own = device == config.device and config.proposer == ProposerKind.DRAFT_MODEL
            draft_runner = draft_engine(compute, target, config.draft, device=device,
                                        dtype=config.draft_dtype or config.dtype, max_len=config.max_len,
                                        max_sessions=config.max_sessions, own=own, compile=compile,
                                        cpu_kernels=config.cpu_kernels)
        if speculation.k > 0 and (draft_runner is not None or config.proposer == ProposerKind.NGRAM):
            vocab = vocab_size_of(target.model)
            if draft_runner is not None:
                check_draft_head(vocab, draft_runner.vocab_size)
            drafts = make_factory(config.proposer, draft_runner, vocab)
        return cls(target, max_len=config.max_len, max_sessions=config.max_sessions, k=speculation.k,
                   adaptive_k=speculation.adaptive, drafts=drafts, draft_runner=draft_runner, own_draft=own,
                   compute=compute, compile=compile, cpu_kernels=config.cpu_kernels,
                   settings=TargetSettings(max_new_tokens=max_new_tokens))

    @property
    def context_length(self) -> int:
        return self.runner.max_len

    def stream(self, generation: GenerationRequest, seed: int | None = None) -> Iterator[Cycle]:
        """One request's cycles as the engine commits them, as a target service's session runs it (closing the
        generator ends the session and frees its slot). `seed`: None draws one, as the orchestrator does."""
        seed = generation.sampling.seed if seed is None else seed
        request = TargetRequest(
            session_id=f"in-process-{next(self._ids)}", seed=fresh_seed() if seed is None else seed,
            own_draft=self.own_draft and self.k > 0,
            draft_address="in-process" if self.k and not self.own_draft else "", generation=generation,
            speculation=SpeculationConfig(k=self.k, max_k=max(1, self.k), adaptive=self.adaptive_k))
        for cycles in self.service.run(request, on_cancel=lambda fn: None, observer=_Unobserved()):
            yield from cycles

    def generate(self, prompt: str, max_new_tokens: int, sampling: SamplingParams = SamplingParams()) -> Reply:
        """One request, EOS ignored: what a load client's Generate does, minus the network (seed 0 where `sampling`
        gives none)."""
        stats, tokens, ttft = SpecStats(), [], None
        t0 = time.perf_counter()
        generation = GenerationRequest(prompt_ids=encode_prompt(self.tokenizer, prompt), max_new_tokens=max_new_tokens,
                                       sampling=sampling, ignore_eos=True)
        for cycle in self.stream(generation, seed=0 if sampling.seed is None else sampling.seed):
            if ttft is None and cycle.new_tokens:
                ttft = time.perf_counter() - t0
            stats.observe(cycle)
            tokens += cycle.new_tokens
        return Reply(tokens, ttft or 0.0, stats.cycles, stats.drafts, stats.draft_tokens, stats.accepted_tokens)

    @contextlib.contextmanager
    def client(self, sampling: SamplingParams = SamplingParams()) -> Iterator[Call]:
        """A load client (loadtest.run_clients): calls `generate` on its own thread, sampling as `sampling` says."""
        yield lambda prompt, max_new_tokens, seed=None: self.generate(prompt, max_new_tokens, with_seed(sampling, seed))

    def close(self) -> None:
        """Stop the engines (waiting a little: the process may exit soon, and must not while they are in torch)."""
        self.runner.stop(wait_s=10.0)
        if self.draft_runner is not None:
            self.draft_runner.stop(wait_s=10.0)
