"""ModelRunner: the only place that calls a model's forward.

Each sequence owns one slot of a static KV cache (HF `StaticCache`, preallocated to `max_len`) and a
length pointer. Rolling back is O(1): move the pointer. Stale entries past it are overwritten by the
next write and never attended to, because attention is causal over explicit positions.

`forward_branches` drafts several continuations of one sequence at once (overlap's pre-drafting): the
branches' tokens go into the cache past the pointer, one row per branch per step, and an explicit
mask lets each row see only its own prefix and its own branch, so B branches cost one forward per
step instead of B (launch-bound on a GPU, that is nearly the price of one).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

import torch
from transformers import StaticCache

from specdec.core.config import SamplingParams
from specdec.core.cpu_kernels import ONEDNN, pack_linear_layers
from specdec.core.errors import InvalidArgument
from specdec.core.placement import Placement, placement_of
from specdec.core.sampling import Stream, draw_on_device, process_rows, process_rows_first, uniform
from specdec.core.slots import SlotQueue
from specdec.core.transfer import OnTheWay, pinned, to_device

log = logging.getLogger("specdec.runner")

# How long a draft service's new session waits for a KV slot that another session is giving back: its
# target's session frees the slot within a step, and a draft stream that arrives before the last one's
# end must get that slot, not RESOURCE_EXHAUSTED (the target, which queues, must never wait this long).
SLOT_WAIT_S = 1.0


@contextlib.contextmanager
def graph_capture(graph: "torch.cuda.CUDAGraph", pool, stream: "torch.cuda.Stream"):
    """torch.cuda.graph (thread-local capture: another runner's thread may launch work meanwhile) with Python's
    garbage collector held off: a collection during the capture would free whatever dead reference cycles hold (a
    runner's graphs, cache and pinned buffers), and freeing CUDA or pinned host memory there invalidates the
    capture. SGLang holds the collector off around its captures for the same reason."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class KVSlot:
    """One sequence's slot in a runner's KV cache."""

    id: int
    index: int  # which of the runner's caches
    tokens: list[int] = field(default_factory=list)  # ids whose keys/values the cache holds, in order
    queued_s: float = 0.0  # how long its opener waited for it (admission queue)
    opened: float = 0.0  # when it was given (perf_counter; a batched runner's, for the time to a session's first step)

    @property
    def length(self) -> int:
        return len(self.tokens)


class Forward(NamedTuple):
    """The forward a sequence asks of a runner: hold `ids` in the cache, return the last `keep` positions'
    logits, or only their argmax (`greedy`)."""

    ids: list[int]
    keep: int
    greedy: bool


class EarlyVerify(NamedTuple):
    """The verify a sequence's next plan forwards if its draft's fresh block is what it verifies: its committed
    tokens, then `drafts` of the block's tokens, greedy or sampled."""

    committed: list[int]
    drafts: int
    greedy: bool


WAITING = Forward([], 0, False)  # a sequence that wants no forward yet (its draft's proposal has not come)
Draw = Callable[[torch.Tensor, list[int]], list]  # (logits [B, V], positions [B]) -> a pick (with a `token`) per row


class Grouped(NamedTuple):
    """How a chain's picks are drawn together with other chains' in a batched step: `read` (one function shared
    by the group) turns the rows' logits [B, V] into values [B, m] on the device, read to the host for all rows
    at once; `pick(values, position)`, the chain's own, makes its pick from its row's values (a list). `draw`
    must equal reading then picking. The drafted token is the row's first value, unless `known(position)` gives
    it before its logits exist (a replayed draft): either way the next step's input needs no host read."""

    read: Callable[[torch.Tensor], torch.Tensor]
    pick: Callable[[list, int], object]
    known: Callable[[int], int] | None = None


class Sampled(NamedTuple):
    """How a sampled chain's picks are drawn together with other sampled chains' in a batched step (`draw_sampled`:
    one processing pass per setting, one draw and one host read for all rows, where one row at a time each cost a
    dozen small launches and a read): its sampling, its seed (each position's number from Stream.DRAFT), the zeros
    its q is padded with to the target's vocabulary, and `pick(token, q)`, its pick from the drawn token and q [V]."""

    sampling: SamplingParams
    seed: int
    pad: int
    pick: Callable[[int, torch.Tensor], object]


def draw_sampled(logits: torch.Tensor, chains: Sequence[Sampled], positions: Sequence[int]) -> list:
    """Row b of logits [B, V] drawn as chains[b] draws, at absolute position positions[b]: its processed (and padded)
    distribution q, its token sampled from q with uniform(seed, position, DRAFT); -> each chain's pick."""
    q, tokens, _ = sampled_on_device(logits, chains, draft_uniforms(chains, positions))
    return [c.pick(token, q[b]) for b, (c, token) in enumerate(zip(chains, tokens.tolist()))]


def draft_uniforms(chains: Sequence[Sampled], positions: Sequence[int]) -> list[float]:
    """The uniform number each chain's pick at its absolute position is drawn with."""
    return [uniform(c.seed, p, Stream.DRAFT) for c, p in zip(chains, positions)]


def sampled_on_device(logits: torch.Tensor, chains: Sequence[Sampled], u: Sequence[float] | torch.Tensor,
                      first: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`draw_sampled`'s q [B, V'] and tokens [B], left on the device, row b drawn with u[b] (`draft_uniforms`; or
    float64 [B] on the device). `first`: with no host read (top-p's nucleus looked for among the first candidates
    only, `sampling.process_rows_first`), and whether each row's was found there [B]: a row is what `draw_sampled`
    gives it only where it was."""
    pads = {c.pad for c in chains}
    assert len(pads) == 1, "chains drawn together pad q to one target vocabulary"
    settings = [c.sampling for c in chains]
    probs, found = process_rows_first(logits, settings) if first else (process_rows(logits, settings), None)
    q = torch.nn.functional.pad(probs, (0, pads.pop()))  # [B, V']
    return q, draw_on_device(q, u), found


class Chain(NamedTuple):
    """One decode_chain call, for `decode_chains`."""

    slot: "KVSlot"
    ids: Sequence[int]
    steps: int
    draw: Draw
    group: Grouped | None = None
    first: object = None  # its first step's values [1, m] on the device, where its catch-up forwarded all of `ids`
    #                       and read their last logits with the group's read (BatchedRunner.catch_up_reads)
    sampled: Sampled | None = None  # a sampled chain: how its picks are drawn with other such chains' (draw_sampled)


class SampledAhead(NamedTuple):
    """Sampled rows of a verify for `DraftsAhead.launch_ahead`: each (slot, L, K) as a greedy row's, the outcome the
    device worked out for it (accepted drafts [m] and the token drawn after them [m], `verify.outcomes_on_device`),
    its chain's `Sampled`, whose next chain's first pick the step draws, and those outcomes on their way to the host
    (rows of [accepted, token, ...]), copied before the step is launched: the host checks its own against them."""

    rows: list[tuple[int, int, int]]
    accepted: torch.Tensor
    token: torch.Tensor
    chains: list[Sampled]
    outcomes: OnTheWay


class DraftsAhead(Protocol):
    """A draft runner that can launch its rows' next chains' first steps from a verify's outcome on the device (a
    greedy verify's argmax, a sampled one's `SampledAhead`), before the host has read it (core.batching.BatchedRunner)."""

    def launch_ahead(self, rows: list[tuple[int, int, int, int, int]], tokens: torch.Tensor, top: torch.Tensor | None,
                     read: Callable[[torch.Tensor], torch.Tensor] | None,
                     joins: Sequence[tuple["DraftJoin", int, int]] = (), sampled: SampledAhead | None = None,
                     steps: Sequence[int] = (), known: Sequence[Callable[[int], int] | None] = (),
                     since: object = None) -> None: ...

    def expect_ahead(self, slot: int, start: int, drafts: list[int], accepted: int, token: int) -> None: ...


class Drafted(NamedTuple):
    """A chain's drafted tokens on the device, launched and not yet read to the host (`decode_chains`' `launched`):
    row `row` of `tokens` [rows, steps], its first `steps` columns; `picks` (the chain's, a list) holds its picks
    once the host has read them, and `fed` (a list) those tokens as the device drew them, up to the first the host
    drew otherwise (a sampled step whose nucleus the device did not find). `ahead`: its runner, where it can launch
    the row's next chain's first steps from the verify's outcome on the device (`read`: its group's, `known` too where
    a replayed draft knows its tokens; a sampled chain's: `sampled`)."""

    tokens: torch.Tensor
    row: int
    steps: int
    picks: list
    fed: list
    ahead: DraftsAhead | None = None
    read: Callable[[torch.Tensor], torch.Tensor] | None = None
    sampled: Sampled | None = None  # a sampled chain's (`read` None): its next chain's first pick is drawn so
    known: Callable[[int], int] | None = None  # its group's `Grouped.known`


class DraftJoin(NamedTuple):
    """A new session's draft, not yet caught up on its prompt: slot `slot` of the draft runner `ahead`, to hold `ids`
    (the prompt) and then the token the target's prompt step draws. Launched with the other rows' first draft steps
    from that step's argmax (`DraftsAhead.launch_ahead`), its catch-up costs no forward of its own on every row's path;
    its first draft step's values are read with `read` (its group's). Its first chain's steps, `steps` in all (the K
    it drafts with now), are launched with the other rows' later steps (`known`: as Grouped.known) rather than run as
    forwards of the joining rows alone after them."""

    ahead: DraftsAhead
    slot: int
    ids: list[int]
    read: Callable[[torch.Tensor], torch.Tensor]
    steps: int = 1
    known: Callable[[int], int] | None = None


Launched = Callable[[dict[int, Drafted]], None]  # each drafting chain's Drafted, by its index in `decode_chains`


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix; O(1) list compares in the usual append-only case (the shorter one whole
    against a slice of the other: a slice is a copy, and every row of every step asks)."""
    n = min(len(a), len(b))
    if (a == b[:n]) if len(a) == n else (a[:n] == b):
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class BranchRows:
    """The inputs of one step of B branch rows: one [5, B] long tensor (a single host-to-device copy), read
    by name."""

    def __init__(self, data: torch.Tensor) -> None:
        assert data.dim() == 2 and data.shape[0] == 5, f"expected [5, B], got {tuple(data.shape)}"
        self.data = data

    @classmethod
    def of(cls, ids, positions, limits, slots, tree_start, device=None) -> "BranchRows":
        return cls(torch.tensor([list(ids), list(positions), list(limits), list(slots), list(tree_start)],
                                dtype=torch.long, device=device))

    @property
    def ids(self) -> torch.Tensor:  # [B] the token each row feeds
        return self.data[0]

    @property
    def positions(self) -> torch.Tensor:  # [B] its position
        return self.data[1]

    @property
    def limits(self) -> torch.Tensor:  # [B] it sees the cached tokens before this index...
        return self.data[2]

    @property
    def slots(self) -> torch.Tensor:  # [B] ...and its own branch, up to this cache index, where it is written
        return self.data[3]

    @property
    def tree_start(self) -> torch.Tensor:  # [B] the cache index where the branches begin
        return self.data[4]


@dataclass
class _Graph:
    """One captured forward of n tokens over one cache slot, with its static inputs and output."""

    graph: "torch.cuda.CUDAGraph"
    ids: torch.Tensor  # [1, n] long, written before replay
    positions: torch.Tensor  # [n] long, written before replay
    logits: torch.Tensor  # [1, keep, V], read after replay
    rows: BranchRows | None = None  # branch graphs' inputs, written before replay


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name a model's forward takes its KV cache by: `cache` in newer transformers, `past_key_values`
    (deprecated there) before. Asked of the model's own signature, once per runner."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def vocab_size_of(model: torch.nn.Module) -> int:
    """The rows of the model's output head: the vocabulary its logits cover."""
    head = model.get_output_embeddings()  # nn.Linear, or a quantized one whose .weight is a method
    return int(head.out_features if hasattr(head, "out_features") else head.weight.shape[0])


class ModelRunner:
    """Holds a model and the KV caches of up to `max_sessions` sequences of up to `max_len` tokens.

    On CUDA, forwards of up to `graph_max_tokens` new tokens (decode steps and K+1-token verify steps)
    are captured once per (slot, n, keep) as CUDA graphs and replayed: an eager HF forward is
    launch-bound, a replayed graph costs the GPU time only (docs/benchmarks.md). Longer forwards
    (prefill) run eagerly.
    """

    def __init__(self, model: torch.nn.Module, *, max_len: int = 2048, max_sessions: int = 8,
                 cuda_graphs: bool | None = None, graph_max_tokens: int = 17, cpu_kernels: str = ONEDNN,
                 queue_size: int = 0, queue_wait_s: float = 0.0) -> None:
        """`queue_size`, `queue_wait_s`: how many sessions may wait for a slot, and how long (SlotQueue);
        0 refuses a session at once when every slot is taken."""
        self.model = model.eval()
        self._cache_kw = cache_kwarg(model)
        self.config = model.config
        self.device = next(model.parameters()).device
        self.vocab_size = vocab_size_of(model)
        if self.device.type == "cpu" and cpu_kernels == ONEDNN:  # see cpu_kernels.py: faster decode, flatter verify
            if n := pack_linear_layers(model):  # fp32 only: bf16 nn.Linear already runs oneDNN on CPU
                log.info("packed %d fp32 linear layers for oneDNN (--cpu-kernels stock keeps nn.Linear)", n)
        self.max_len = max_len
        self.max_sessions = max_sessions
        self._caches: dict[int, StaticCache] = {}
        self.slots = SlotQueue(max_sessions, queue_size, queue_wait_s)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # one forward at a time: the model and caches are shared state
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        self.graph_max_tokens = graph_max_tokens
        self._graphs: dict[tuple[int, int, int], _Graph] = {}
        self._graph_pool = None
        self._key_positions = torch.arange(max_len, device=self.device)  # [max_len], for graph masks
        self._pin = self.device.type == "cuda"  # host values copied to the device are staged pinned (_pinned)

    def _pinned(self, values: Sequence | torch.Tensor) -> torch.Tensor:
        """Host values (nested lists of token ids or indices, or a CPU tensor) as a CPU tensor whose copy to the device
        the host need not wait for (`transfer.pinned`)."""
        return pinned(values, self._pin)

    def _on_device(self, values: Sequence | torch.Tensor, device: torch.device | None = None,
                   dtype: torch.dtype = torch.long) -> torch.Tensor:
        """Host values on the device (this runner's, or `device`), copied behind the work queued there (`transfer`)."""
        return to_device(values, device or self.device, dtype)

    @functools.cached_property
    def placement(self) -> Placement:
        """Where this runner computes: services compare it to find a draft sharing its target's compute."""
        return placement_of(self.device)

    @property
    def free_slots(self) -> int:
        return self.slots.free

    def open(self, cancelled: threading.Event | None = None) -> KVSlot:
        """Take a cache slot for a new sequence, in turn behind those already waiting (SlotQueue);
        `cancelled` ends the wait of a caller that went away."""
        index, queued_s = self.slots.acquire(cancelled)
        with self._lock:
            if index not in self._caches:
                self._caches[index] = StaticCache(config=self.config, max_cache_len=self.max_len)
            return KVSlot(id=next(self._ids), index=index, queued_s=queued_s)

    def close(self, slot: KVSlot) -> None:
        """Give the slot back; safe to call twice."""
        with self._lock:
            index, slot.index, slot.tokens = slot.index, -1, []
            if index < 0:
                return
            self._set_length(index, 0)
        self.slots.release(index)

    def truncate(self, slot: KVSlot, length: int) -> None:
        """Roll the cache back to its first `length` tokens in O(1): only the pointer moves."""
        assert 0 <= length <= slot.length, f"cannot truncate {slot.length} tokens to {length}"
        del slot.tokens[length:]
        self._set_length(slot.index, length)

    def extend(self, slot: KVSlot, ids: Sequence[int], keep: int = 1) -> torch.Tensor:
        """Make the cache hold exactly `ids` and return the logits of its last `keep` positions.

        The longest prefix of `ids` already cached is reused (always forwarding at least the last
        `keep` tokens, whose logits are wanted), so a caller can pass its whole sequence every time
        and pays only for the new tokens: one forward pass.
        Returns float32 logits [keep, V]; row j predicts the token after ids[len(ids) - keep + j].
        """
        return self._forward(slot, self._new_tokens(slot, ids, keep), keep)

    def greedy_ids(self, slot: KVSlot, ids: Sequence[int], keep: int = 1) -> list[int]:
        """`extend`, reduced to the argmax (ties to the lowest id) of each of the last `keep` positions: all
        greedy verification needs, and a batched runner finds it for every row of a step at once."""
        return self._forward_greedy(slot, self._new_tokens(slot, ids, keep), keep)

    def _new_tokens(self, slot: KVSlot, ids: Sequence[int], keep: int) -> Sequence[int]:
        """Roll the cache back to the longest prefix of `ids` it holds (leaving the last `keep` to forward)
        and return what must be forwarded."""
        assert 1 <= keep <= len(ids), f"keep={keep} must be in [1, {len(ids)}]"
        if len(ids) > self.max_len:
            raise InvalidArgument("prompt", f"sequence of {len(ids)} tokens exceeds the context of {self.max_len}")
        reuse = min(common_prefix_len(slot.tokens, ids), len(ids) - keep)
        self.truncate(slot, reuse)
        return ids[reuse:]

    def _forward_greedy(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> list[int]:
        return self._forward(slot, new_ids, keep).argmax(-1).tolist()  # one host sync for the block

    def decode_chain(self, slot: KVSlot, ids: Sequence[int], steps: int, draw: Draw,
                     group: Grouped | None = None) -> list:
        """Make the cache hold `ids`, then `steps` times: pick a token from the last position's logits with
        `draw(logits [1, V], [position of the pick])` and append it (drafting k tokens). Returns the picks (each
        has a `token`); the last pick is not forwarded. A batched runner runs the steps without a round trip
        to the caller, and draws the rows of chains whose `group`s share a `read` together (Grouped)."""
        sequence, picks = list(ids), []
        for _ in range(steps):
            picks += draw(self.extend(slot, sequence, keep=1), [len(sequence)])
            sequence.append(picks[-1].token)
        return picks

    def decode_chains(self, chains: Sequence[Chain], launched: Launched | None = None) -> list[list]:
        """`decode_chain` for each; a batched runner runs them all in the same steps. `launched`: a runner that
        launches every step before it reads any (a batched runner's grouped chains) calls it once they are all
        launched, before the host reads them, so the caller can launch what follows from the drafted tokens on
        the device; it may not be called at all (this runner never does)."""
        return [self.decode_chain(c.slot, c.ids, c.steps, c.draw, c.group) for c in chains]  # `first`: batched only

    def greedy_ids_together(self, calls: Sequence[tuple[KVSlot, Sequence[int], int]]) -> list[list[int]]:
        """`greedy_ids(slot, ids, keep)` for each; a batched runner runs them all in the same steps."""
        return [self.greedy_ids(*call) for call in calls]

    def hold(self, slot: KVSlot, ids: Sequence[int]) -> None:
        """Make the cache hold exactly `ids`, forwarding only what is missing (possibly nothing)."""
        reuse = common_prefix_len(slot.tokens, ids)
        self.truncate(slot, reuse)
        if reuse < len(ids):
            self._forward(slot, ids[reuse:], 1)

    def forward_branches(self, slot: KVSlot, step: int, tokens: Sequence[int], positions: Sequence[int],
                         limits: Sequence[int]) -> torch.Tensor | None:
        """Step `step` of drafting B branches that fork off the cached sequence; None if they don't fit.

        Row b feeds `tokens[b]` at position `positions[b]` and sees the cached tokens before `limits[b]`
        plus its own branch's tokens of earlier steps. Steps must run 0, 1, ... with the cache untouched
        in between; the branch tokens are never part of `slot.tokens`, so the next `extend` or `hold`
        overwrites them. Returns float32 logits [B, V].
        """
        b, base = len(tokens), slot.length
        first = base + step * b  # this step's rows go to cache slots [first, first + b)
        if first + b > self.max_len or max(limits) > base:
            return None
        rows = BranchRows.of(tokens, positions, limits, range(first, first + b), [base] * b)
        with self._lock, torch.inference_mode():
            self._set_length(slot.index, first)
            if self.cuda_graphs and self._caches[slot.index].is_initialized:
                with torch.cuda.device(self.device):
                    key = (slot.index, -b, b)  # negative size: branch graphs never clash with chain graphs
                    if key not in self._graphs:
                        self._graphs[key] = self._capture(slot.index, b, b, first, branches=True)
                    g = self._graphs[key]
                    g.rows.data.copy_(rows.data, non_blocking=True)
                    g.graph.replay()
                    return g.logits[0].float()
            rows = BranchRows(self._on_device(rows.data))
            out = self.model(input_ids=rows.ids[None], position_ids=rows.positions[None],
                             attention_mask=self._branch_mask(rows), use_cache=True, logits_to_keep=b,
                             **{self._cache_kw: self._caches[slot.index]})
            return out.logits[0].float()

    def _branch_mask(self, rows: BranchRows) -> torch.Tensor:
        """[1, 1, B, max_len] bool: row b sees keys before its limit, and the keys of its own branch (cache
        slots tree_start + b, tree_start + B + b, ... up to its own slot)."""
        keys, limits, slots = self._key_positions[None, :], rows.limits[:, None], rows.slots[:, None]
        tree_start, b = rows.tree_start[:, None], rows.data.shape[1]
        own = (keys >= tree_start) & (keys <= slots) & ((slots - keys) % b == 0)
        return ((keys < limits) | own)[None, None]

    def _forward(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> torch.Tensor:
        if self.cuda_graphs and len(new_ids) <= self.graph_max_tokens and self._caches[slot.index].is_initialized:
            return self._forward_graph(slot, new_ids, keep)
        start = slot.length
        input_ids = self._on_device([list(new_ids)])  # [1, n]
        position_ids = torch.arange(start, start + len(new_ids), device=self.device).unsqueeze(0)  # [1, n]
        with self._lock, torch.inference_mode():
            cache = self._caches[slot.index]
            out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=True, logits_to_keep=keep,
                             **{self._cache_kw: cache})
        slot.tokens.extend(new_ids)
        return out.logits[0].float()  # [keep, V]

    def _forward_graph(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> torch.Tensor:
        start, n = slot.length, len(new_ids)
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):  # replay on our device
            key = (slot.index, n, keep)
            if key not in self._graphs:
                self._graphs[key] = self._capture(slot.index, n, keep, start)
            g = self._graphs[key]
            g.ids.copy_(self._pinned([list(new_ids)]), non_blocking=True)
            g.positions.copy_(self._key_positions[start:start + n])
            self._set_length(slot.index, start)
            g.graph.replay()
            logits = g.logits[0].float()  # [keep, V]
        slot.tokens.extend(new_ids)
        return logits

    def _capture(self, index: int, n: int, keep: int, start: int, branches: bool = False) -> _Graph:
        """Capture a forward of n tokens on cache `index` (a chain, or one step of n branches). Warm-up and
        capture write garbage at [start, start+n), past the valid length, which the real replay overwrites."""
        cache = self._caches[index]
        rows = BranchRows(torch.zeros((5, n), dtype=torch.long, device=self.device)) if branches else None
        ids = rows.ids[None] if branches else torch.zeros((1, n), dtype=torch.long, device=self.device)
        positions = rows.positions if branches else torch.zeros(n, dtype=torch.long, device=self.device)
        if branches:
            rows.limits.fill_(start)  # a valid mask for warm-up: every row sees the cached sequence
            rows.slots.copy_(torch.arange(start, start + n))
            rows.tree_start.fill_(start)

        def run() -> torch.Tensor:
            # Our own 4-D boolean mask (query position >= key position) makes HF skip its mask
            # construction, which would synchronise with the host during capture.
            mask = (self._branch_mask(rows) if branches
                    else (self._key_positions[None, :] <= positions[:, None])[None, None])  # [1, 1, n, max_len]
            return self.model(input_ids=ids, position_ids=positions[None], attention_mask=mask, use_cache=True,
                              logits_to_keep=keep, **{self._cache_kw: cache}).logits

        # Warm up and capture on a stream of this runner's device: torch.cuda.graph's default capture
        # stream lives on whichever device was current first (a draft on cuda:1 must not use cuda:0's).
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._set_length(index, start)
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._set_length(index, start)
        with graph_capture(graph, self._graph_pool, stream):
            logits = run()
        self._graph_pool = graph.pool()
        return _Graph(graph, ids, positions, logits, rows)

    @torch.inference_mode()  # the pointers were created under inference mode (lazily, on first write)
    def _set_length(self, index: int, length: int) -> None:
        for layer in self._caches[index].layers:
            if isinstance(layer.cumulative_length, torch.Tensor):
                layer.cumulative_length.fill_(length)
            else:
                layer.cumulative_length = length
