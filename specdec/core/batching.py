"""BatchedRunner: every session's forward of a step runs in one batched forward on one engine thread.

Two kinds of work meet in a step. A target's sessions are driven by the engine itself (`drive`): each step
it asks every session's loop for its next forward (a prefill chunk, a plain decode, or the verify of the
proposal its draft has sent), and after the forward it has the loop verify and commit on the engine
thread and hands the session the finished cycle; the session's thread only streams cycles out, so no
step waits for a session's thread. Anything else (a draft's proposer) calls `extend` from its own thread,
which hands the engine the new tokens and blocks until the logits come back. The engine pads the step's
rows to a common length n (right padding) and runs one forward over the first B slots of one cache
[slots, heads, max_len + pad, dim]:
each row's keys and values are written at that row's own positions, and an explicit mask lets position
p see only the cache entries at positions <= p. Rolling back stays O(1) (a row's length is its token
list; entries past it are stale and overwritten before they are ever attended to).

Rows are addressed without copying the cache: a step covers slots [0, B), the open slots are the lowest
free ones first (SlotQueue), and slots in that range with nothing to do this step are dummy rows whose
writes land in the cache's padding columns, past every position a real row attends to. On CUDA the
step is a CUDA graph captured per (rows bucket, tokens bucket, span): a step attends over the first span
columns of the cache that reach past its real rows' positions (SPAN_BUCKETS, then the whole cache), so its
attention costs what the rows' lengths ask, not what `max_len` allows.

Prompts longer than `prefill_chunk` are fed a chunk per step, between batched steps, so a long prompt delays the
others' next token by at most one chunk's forward. Short prompts go in the step, whose rows are all padded to
the widest, unless the cost table says one chunk of the new ones alone is cheaper (`_alone`: at many rows on a
GPU), or that feeding them over the next steps at the other rows' width costs less than widening those
(`_split_joins`: verifies of drafts at many rows, at most JOIN_SPLIT_STEPS steps more to a prompt's first token).
On CUDA a chunk (new prompts, drafts catching up) is a CUDA graph too, captured per (rows, chunk bucket),
whose rows are any slots: it writes their new entries in place and attends over a copy of their rows of the cache.
An engine loop runs one chunk a step: one row of each chunk bucket, and up to JOIN_CHUNK_ROWS rows at a step's widths
(JOIN_CHUNK_TOKENS: new short prompts together; launched before a step launched ahead and read apart from it,
`_launch_chunks`); a
runner without one (a target's own draft) is handed every session's catch-up at once and captures every row bucket,
one replay per chunk length. An eager chunk's forward
is bound by the host's work (per layer, the compiled code's guards and launches), which a busy process's other
threads stretch several times over (docs/benchmarks.md, calls h1-h3).

Looking ahead (on by default with CUDA graphs): when every row of a step is a plain greedy decode, the engine
launches the next step before it reads this one, each row fed the token the device just drew for it (a
guess that the session goes on decoding plainly). While the device computes, the host verifies, plans and
waits for the interpreter; then each session's plan decides: a guess is kept only where the plan asks for
exactly that forward, and dropped otherwise (the session ended, or it verifies a draft next), its row's
writes landing past the row's length, where the next forward overwrites them. The output never depends on a guess.

Verifying early (on a GPU, with a drafter, `early_verify`): the same for a drafted cycle, greedy or sampled. Once a drafting phase
has launched its blocks' steps, before the host reads them, the engine launches the step that verifies them, each
drafting row's ids its last committed token then its block's tokens written on the device, with every other
forward ready to run; the host then reads the drafts behind an event, picks and plans while the device verifies,
and keeps each row's verify only where its plan asks for exactly that forward. Before it reads the verify, the
draft runner launches each row's next chain's first step from the verify's outcome (its accepted drafts and bonus
token worked out on the device from the argmax, or for a sampled row as the host verifies, `launch_ahead`), so the
draft computes while the host completes the cycle; the next drafting phase takes that step where its chains begin as
the host, once it has verified, expects (a sampled row's only where the device's guess was the host's outcome;
otherwise the slot forwards again what the step wrote). A session whose
prompt step is in that verify joins the same draft step: its draft's row forwards the prompt and the token the target
drew after it, so its catch-up is no forward of its own that every row waits for (`joined_ahead`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from specdec.core.adaptive import CatchUp
from specdec.core.attention import step_mask, use_grouped_attention
from specdec.core.compiled import compile_layers, keep_static
from specdec.core.compute import INLINE, Compute
from specdec.core.config import CHUNK_BUCKETS, ROW_BUCKETS, SPAN_BUCKETS, TOKEN_BUCKETS, SamplingParams
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.errors import InvalidArgument, Unavailable
from specdec.core.placement import compute_turns
from specdec.core.progress import LogProgress
from specdec.core.runner import (
    WAITING,
    Chain,
    Drafted,
    DraftJoin,
    Draw,
    EarlyVerify,
    Forward,
    Grouped,
    KVSlot,
    Launched,
    ModelRunner,
    Sampled,
    SampledAhead,
    common_prefix_len,
    draft_uniforms,
    draw_sampled,
    graph_capture,
    sampled_on_device,
)
from specdec.core.sampling import draw_on_device, process_rows, process_rows_first
from specdec.core.step_costs import StepCostTable, StepStats, bucket
from specdec.core.transfer import OnTheWay, PinnedBuffers
from specdec.core.verify import (
    SampledVerify,
    VerifyResult,
    drawn_uniform,
    outcomes_on_device,
    verify_greedy,
    verify_sampling_rows,
)

log = logging.getLogger("specdec.batching")

LOG_EVERY_S = 5.0  # a working engine logs its batch sizes and step times this often
WAKES_PER_STEP = 8  # with the stream interval on auto: about this many session readers woken per step, at any load
LULL_S = 0.001  # a step waiting for its sessions goes once none has come back for this long
IDLE_POLL_S = 0.05  # with only sessions that wait for their drafts, how often the engine checks their timeouts
CATCH_UP_ROWS = 4  # eager catch-ups whose slots lie within this many rows always share a forward (_catch_up_groups)
JOIN_HOLD_STEPS = 2  # a new prompt that would widen a step of other rows waits at most this many steps for company
JOIN_GROUP_SHARE = 0.25  # held prompts go in at once when they are this share of the step's other rows
LOAD_STEPS = 32  # load-aware K prices the most driven sessions of this many steps (`load_rows`): a dip shorter is not a load
JOIN_SPLIT_STEPS = 2  # a new prompt fed over steps at the other rows' width (`_split_joins`) takes at most this many more
JOIN_CHUNK_ROWS = 16  # new short prompts run alone together in a chunk graph of up to this many rows (`_alone`)
JOIN_CHUNK_TOKENS = (9, 17)  # and of a step's width, the narrowest that holds them (the shortest long chunk, 32,
#                              computed 16 rows x 32 tokens for prompts of 5-9)
ENDED_POLL_S = 1.0  # a caller waiting for its forwards checks this often whether the engine loop has ended
AHEAD_TIMED = 8  # draft launches ahead waiting to be timed on the device, at most (older ones go untimed)
_END = object()  # a driven session's last item: its sequence is done
Fill = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (rows, columns, tokens) [m] each, on the device


def check_stream_interval(cycles: int | None) -> int | None:
    """A stream interval (BatchedRunner's `stream_interval`) as given, or InvalidArgument."""
    if cycles is not None and cycles < 1:
        raise InvalidArgument("stream_interval", f"must be >= 1 cycle, got {cycles}")
    return cycles


def auto_stream_interval(rows: int) -> int:
    """Cycles per message with the stream interval on auto: every cycle up to WAKES_PER_STEP driven sessions, then
    rows / WAKES_PER_STEP (rounded up), so about WAKES_PER_STEP session readers are woken per step."""
    return max(1, -(-rows // WAKES_PER_STEP))


class RowsLayer(StaticLayer):
    """One layer of the batched cache: keys/values [slots, kv heads, max_len + pad + 1, head dim], views of
    RowsCache's tensors, which writes and reads them (its `update`)."""

    def __init__(self, cache: "RowsCache", index: int) -> None:
        super().__init__(max_cache_len=cache.keys.shape[3])
        self.cache, self.index = cache, index
        self.keys, self.values = cache.keys[index], cache.values[index]
        self.device = self.keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self.cache.update(key_states, value_states, self.index)


class RowsCache(StaticCache):
    """The batched engine's cache: every layer's keys and values in one tensor each, [layers, slots, kv heads,
    max_len + pad + 1, head dim], preallocated. A forward over B rows writes row r's n new entries at `positions[r]`
    of its slot (`_StepInputs`: slot first_slot + r, or slots[r]) and attends to those B slots' first `span` columns.

    Its update is plain tensor code that finds a layer by indexing these tensors, not a list, and writes with one
    index_put into the whole tensor: a compiled decoder layer (core.compiled) traces it into its own program,
    where the write fuses with the rotary embedding and happens in place, instead of splitting the layer in two
    around an eager write. The last column is never written or read: with it, what a step attends over is a
    strided view whether it spans every written column or fewer. A view of all of them would be contiguous, which
    the compiler specialises on: each (rows, tokens) class would compile again, at capture, for the span graphs."""

    def __init__(self, config, keys: torch.Tensor, values: torch.Tensor, step: "_StepInputs") -> None:
        super().__init__(config=config, max_cache_len=keys.shape[3])
        self.keys, self.values, self.step = keys, values, step
        self.layer_ids = torch.arange(keys.shape[0], device=keys.device)  # [layers]: a layer's index as a tensor index
        self.layers = [RowsLayer(self, i) for i in range(keys.shape[0])]
        keep_static(self.keys, self.values, self.layer_ids)  # compiled: this runner's shape, not another runner's

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key_states, value_states [B, kv heads, n, D] -> what the step attends over, [B, kv heads, span, D]."""
        step = self.step
        at = (self.layer_ids[layer_idx:layer_idx + 1], step.rows[:, None], slice(None), step.positions)  # -> [B, n, H, D]
        self.keys[at] = key_states.transpose(1, 2)
        self.values[at] = value_states.transpose(1, 2)
        keys, values = self.keys[layer_idx], self.values[layer_idx]  # [slots, H, L + 1, D]
        if step.slots is not None:  # rows at any slots: attended over a copy of them
            keys, values = keys.index_select(0, step.slots), values.index_select(0, step.slots)  # [B, H, L + 1, D]
        else:
            rows = slice(step.first_slot, step.first_slot + key_states.shape[0])
            keys, values = keys[rows], values[rows]  # views: [B, H, L + 1, D]
        return keys[:, :, :step.span], values[:, :, :step.span]  # [B, H, span, D]


@dataclass
class _StepInputs:
    """What one batched forward reads: token ids and positions [B, n] (static buffers for a CUDA graph),
    for slots [first_slot, first_slot + B), or for the slots [B] `slots` names (on the device), attending over
    the cache's first `span` columns (None: all that steps write, max_len + pad)."""

    ids: torch.Tensor
    positions: torch.Tensor
    first_slot: int = 0
    span: int | None = None
    slots: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # [B] on the device: the slots written (`slots`, or first_slot on; set by _run)


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    inputs: _StepInputs
    logits: torch.Tensor  # [B, n, V]


@dataclass(eq=False)  # compared by identity: the engine sorts requests into steps every step
class _Request:
    """One session's forward: feed `ids` from position `start` of slot `index`; wants the last `keep`
    positions' logits, or only their argmax (`greedy`)."""

    index: int
    start: int
    ids: list[int]
    keep: int
    greedy: bool
    row: "_Row | None" = None  # the driven session it is for (None: a caller waits on `done`)
    chain: "_Chain | None" = None  # a caller's draft: the engine feeds each pick back itself
    pick: object = None  # its step's pick, when drawn with its chain's group
    fed: int = 0  # tokens already forwarded (chunked prefill)
    started: float = 0.0  # when its first forward began
    done: threading.Event | None = field(default_factory=threading.Event)  # None: a driven session's, or a caller's
    #                                                                         that runs it itself (`_waiter`)
    logits: torch.Tensor | None = None  # [keep, V] float32, the session's own copy
    argmax: list[int] | None = None  # [keep]
    verified: VerifyResult | None = None  # a sampled cycle verified with its step's others (_verify_sampled)
    drawn_ahead: tuple[SamplingParams, int] | None = None  # a plain sampled cycle drawn on the device at its launch
    #                                                        (_draw_ahead): its sampling and seed
    drew: int = -1  # that draw's token, as the device drew it (and fed to a guess after it)
    held_from: int = -1  # a new prompt held back for company (_held_joins): the engine step it was first held at
    error: BaseException | None = None
    guess: bool = False  # launched before its token was read: the token its row's last step drew on the device
    void: bool = False  # a guess its session's plan did not confirm (or whose row ended): its results are dropped
    next: "_Request | None" = None  # the guess launched after this forward for the same row
    drafted: Drafted | None = None  # an early verify: its last keep - 1 tokens are this block's, filled on the device
    join: DraftJoin | None = None  # a prompt step whose session's draft catches up in the draft step launched from it
    rest: "_Request | None" = None  # a new prompt's head (_split_joins): the request with the rest of the prompt, which
    #                                  goes pending once this head is in the cache
    outcome: tuple[OnTheWay, int, Sequence[int]] | None = None  # a sampled verify's outcome worked out on the device,
    #                                                               its row there, and the drafts it verifies


def _wake(r: _Request) -> None:
    """A caller's request is done (or failed): wake the caller that waits on it, if one does."""
    if r.done is not None:
        r.done.set()


@dataclass(eq=False)
class _Launched:
    """A step on the device whose results the host has not read yet."""

    requests: list[_Request]
    n: int  # tokens per row
    logits: torch.Tensor  # [rows, n, V]: a graph's output, overwritten by the next replay
    top: torch.Tensor | None  # [rows, n] argmax on the device (None: no greedy request); a guess's token
    host_top: torch.Tensor | None  # its copy on the host, complete once `ready` has passed
    ready: "torch.cuda.Event | None"  # recorded after that copy (None: computed on the host)
    began: float  # when the engine began building it
    launched: float  # when its forward was launched
    ahead: bool = False  # the next step was launched before this one was read: only `top` is still valid
    pipelined: bool = False  # launched while the step before it was on the device (`after` it)
    cost_from: float = 0.0  # where its cost starts: its building, or (launched ahead) the last step's reading
    drafted_before: float = 0.0  # the engine's drafting time (StepStats.drafting_s) when it was launched
    chunk_in: bool = False  # a chunk read apart ran on the device since the step before was read: not a step's cost
    drawn: list["_Request"] = field(default_factory=list)  # its plain sampled rows drawn on the device (_draw_ahead)
    drawn_logits: torch.Tensor | None = None  # [drawn, V]: their logits, kept past the next replay
    timeline: tuple | None = None  # launched in a drafting phase: marks (_mark) as it began, before and after the launch


@dataclass(eq=False)
class _Chunks:
    """A chunk forward on the device (`_launch_chunks`) whose results the host has not read yet."""

    requests: list[_Request]
    chunks: list[list[int]]  # each request's tokens in it
    last: list[bool]  # whether it is each request's last chunk
    n: int  # tokens per row
    began: float  # when the engine began building it
    row_of: dict[int, int]  # id(request) -> its row of the forward
    read: "tuple[torch.Tensor, torch.cuda.Event | None] | None"  # its rows' argmax [rows, 1] on the way to the host
    #                                                 behind an event (on a CPU, the values), where read apart, else None


@dataclass(eq=False)
class _Chain:
    """`steps` tokens drafted one per step, each picked by `draw` on the engine thread (decode_chain)."""

    steps: int
    draw: Draw
    group: Grouped | None = None  # chains whose groups share a `read` are drawn together (runner.decode_chain)
    sampled: Sampled | None = None  # sampled chains are drawn together (runner.draw_sampled)
    stepwise: bool = False  # chained: drawn on the host a step at a time, once the device could not draw a token
    picks: list = field(default_factory=list)
    fed: list[int] = field(default_factory=list)  # its tokens as the device drew them (Drafted.fed)
    index: int = 0  # its position in its decode_chains call
    launched: Launched | None = None  # that call's: told of the chain's tokens once launched (_draft_chained)
    first: torch.Tensor | None = None  # [1, m]: its first step's values, computed by its catch-up (Chain.first)


@dataclass(eq=False)
class _Ahead:
    """The first steps of drafting rows' next chains, launched from a verify's outcome on the device before the host
    read it (`launch_ahead`): a chain takes their values as its first steps' where it begins exactly as the host, once
    it read the verify, expects (`expect_ahead`), in a slot nothing else wrote to or closed since (`_taken_ahead`)."""

    read: Callable[[torch.Tensor], torch.Tensor] | None  # the group read its greedy rows' values are
    rows: dict[int, int]  # draft slot -> its row in `values`
    closes: dict[int, int]  # draft slot -> its close count at launch (closed since: another session's)
    values: torch.Tensor | None  # [rows, m] on the device: each greedy row's read of its step's logits
    expected: dict[int, tuple[int, list[int]]] = field(default_factory=dict)  # slot -> (start, ids), once read
    touched: set[int] = field(default_factory=set)  # slots another forward wrote to since
    joins: dict[int, list[int]] = field(default_factory=dict)  # a new session's draft slot -> the prompt it forwarded
    joined: set[int] = field(default_factory=set)  # those slots whose chain took that as its catch-up (joined_ahead)
    drawn: dict[int, tuple[int, Sampled, int]] = field(default_factory=dict)  # a sampled row's slot -> its row in
    #                                                   `picks`, the chain it was drawn for, its row in `guesses`
    picks: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None  # the sampled rows' values [s, 2]
    #                                              (token, found), their q [s, V'] and logits [s, V] (`_draw_chained`)
    guesses: OnTheWay | None = None  # the outcomes the device guessed for the sampled rows (`SampledAhead.outcomes`)
    later: list[tuple[dict[int, int], torch.Tensor]] = field(default_factory=list)  # the chains' next steps, in
    #              order: (draft slot -> its row in the values, the greedy rows' values [rows', m] of that step)


@dataclass(eq=False)
class _AheadTimed:
    """The draft steps one `launch_ahead` put on the device, to be timed once a later host read has passed them."""

    before: "float | torch.cuda.Event"  # a mark (_mark) before its first step
    after: "float | torch.cuda.Event"  # and after its last
    steps: int
    width: int  # the first step's tokens per row
    joined: bool  # with a new session's catch-up
    since: "float | torch.cuda.Event | None"  # a mark after the verify they follow (None: not timed)


class StepDrafter(Protocol):
    """Drafts, on the engine's thread between its steps, for every driven session that asked for a block since
    the last call, all together (core.own_draft): draft and verify take turns in one schedule."""

    def draft(self, early: Callable[[list[tuple[object, Drafted]]], None] | None = None) -> bool:
        """Draft for the sessions that asked; False when none had. `early`, where given, is called with each asking
        session's link and block once the blocks are launched, before the host reads them (it may not be)."""
        ...

    def report(self) -> str:
        """What its phases did since the last report, for the engine's log line."""
        ...

    def joining_s(self) -> float:
        """Seconds its phases spent catching new sessions' drafts up on their prompts, in all: a new session's prompt
        work, which the engine charges to no running session's cycle, as it does their prompt steps."""
        ...

    def step_cost(self, rows: int) -> float | None:
        """One draft step's time over `rows` sessions, as its runner timed its chains' steps (None: not known)."""
        ...

    def catch_up_cost(self, tokens: int) -> float | None:
        """Seconds its drafts would take to catch up on `tokens` committed tokens, by the catch-ups it timed (None:
        none yet)."""
        ...


class Driven(Protocol):
    """A session's loop that the engine drives (TargetLoop)."""

    @property
    def slot(self) -> KVSlot: ...

    @property
    def done(self) -> bool: ...

    @property
    def drafting(self) -> bool:
        """Its next forward verifies a draft (unless the draft has nothing usable): not worth a guess."""
        ...

    link: object  # its draft's link (None: none): what a drafter's early blocks are matched to

    @property
    def tokens_left(self) -> int:
        """The tokens it may still commit."""
        ...

    def draft_behind(self) -> int:
        """The committed tokens its draft would catch up on before drafting again (0: none, or not the drafter's)."""
        ...

    def early_verify(self, drafted: int) -> EarlyVerify | None:
        """What its next plan forwards if its draft's fresh block of `drafted` tokens is what it verifies; None where
        it would not verify one."""
        ...

    def draft_join(self) -> DraftJoin | None:
        """Where its forward in flight is its prompt step and its draft is to draft on the argmax alone: its draft's
        catch-up on the prompt, which the engine launches with the other rows' next draft steps (`_draft_ahead`)."""
        ...

    def attach(self, wake: Callable[[], None]) -> None:
        """`wake()` is to be called when the loop may have become ready (its draft sent a proposal)."""
        ...

    def plan(self, wait: bool) -> Forward | None:
        """The next forward; WAITING: not ready yet; None: done."""
        ...

    def sampled_verify(self) -> tuple[SamplingParams, SampledVerify] | None:
        """Where its planned forward is a sampled cycle: its sampling and its verification but for the target's
        distributions (the engine verifies every such row of a step at once and passes each its result); else None."""
        ...

    def complete(self, top: list[int] | None, logits: torch.Tensor | None, started: float,
                 verified: VerifyResult | None = None) -> object:
        """The cycle made from the forward's argmax (greedy) or logits, or with its verification done (`verified`)."""
        ...


@dataclass(eq=False)
class _Row:
    """A driven session: its loop, and the queue its thread reads finished cycles from."""

    loop: Driven
    outbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    held: list = field(default_factory=list)  # cycles finished but not handed over yet (a stream interval > 1)
    handed: bool = False  # its first cycle went out (always at once: the time to first token)
    busy: bool = False  # the engine is planning it or has its forward in flight (guarded by the engine's lock)
    early: "_Request | None" = None  # its verify, launched from its draft's tokens on the device, not confirmed yet
    closed: bool = False  # its reader has gone: drop it once the engine is done with it
    released: threading.Event = field(default_factory=threading.Event)  # the engine no longer touches it
    cycle_end: float = 0.0  # when its last cycle's forward was done (BatchedRunner._time_cycle)
    cycle_tokens: int = 0  # that forward's tokens (0: none yet)
    cycle_phases: int = 0  # the engine's drafting phases then (StepStats.drafting_phases)
    cycle_others: int = 0  # and its steps of another width than that forward's (StepStats.others)
    cycle_uncharged: float = 0.0  # and its uncharged time then
    cycle_apart: int = 0  # and the chunks read apart by then (StepStats.chunks_apart)
    cycle_split: int = 0  # and the new prompts split over steps by then (StepStats.joins_split)


class BatchedRunner(ModelRunner):
    """A ModelRunner whose forwards all go through one engine thread, batched across sessions.

    `gather_s`: after a step, the most the engine waits for the sessions it just answered to come back
    before it starts the next step without them; it goes sooner once none has come back for LULL_S (a
    session waiting for its draft holds the others that long, not `gather_s`). `prefill_chunk`: the most
    prompt tokens of one session forwarded in one step. `lookahead`: launch a step of plain greedy decodes
    before reading the one in flight (module docstring; default: with CUDA graphs, where the device would
    otherwise idle while the host works; on a CPU the host is the device). `early_verify`: with a drafter, launch
    the step that verifies its blocks from their tokens on the device before the host reads them, and, before
    reading that step, the next chains' first draft step from its argmax (`draft_ahead`; default: on a GPU; on a
    CPU the forward would run inside the drafting phase, with nothing to overlap). (Launching the next verify too
    before the last one's read was built and measured slower each time, at fixed K too: docs/benchmarks.md, stops
    63-65; removed.)
    """

    def __init__(self, model: torch.nn.Module, *, max_len: int = 2048, max_sessions: int = 8,
                 cuda_graphs: bool | None = None, graph_max_tokens: int = 17, cpu_kernels: str = ONEDNN,
                 queue_size: int = 0, queue_wait_s: float = 0.0, gather_s: float = 0.02,
                 prefill_chunk: int = 512, lookahead: bool | None = None, stream_interval: int | None = None,
                 compile: bool = True, early_verify: bool | None = None,
                 captured: tuple[Sequence[int], Sequence[int]] | None = None,
                 launch: Callable[[Callable[[], None]], object] | None = INLINE.hand_over) -> None:
        """`launch(fn)`: runs the engine loop where forwards belong (default: a new thread; a CPU service
        passes its compute thread's `Compute.hand_over`); None: no engine loop, each caller's forwards run on
        its own thread when it hands them over, one caller at a time (the draft of a target engine that
        drafts for its sessions between its steps, core.own_draft). `stream_interval`: a driven session's
        reader is handed its cycles this many at a time (its first at once, its last with its end): fewer
        wake-ups of session threads competing with the engine for the interpreter, coarser streaming. None:
        auto, by the load (auto_stream_interval).
        `compile`: where there are CUDA graphs, torch.compile the model's decoder layers in place (core.compiled)
        before capturing them (on a CPU compiled steps were slower). `captured`: (rows, tokens per row) whose steps
        are the only ones captured as graphs, for a runner that only times those (the sweep's bounds); None: every
        bucket, as serving needs."""
        super().__init__(model, max_len=max_len, max_sessions=max_sessions, cuda_graphs=cuda_graphs,
                         graph_max_tokens=graph_max_tokens, cpu_kernels=cpu_kernels, queue_size=queue_size,
                         queue_wait_s=queue_wait_s)
        assert prefill_chunk >= graph_max_tokens, "a prefill chunk must hold a verify step's logits"
        self.stream_interval = check_stream_interval(stream_interval)
        use_grouped_attention(self.model)  # B rows over the whole cache: repeating keys per head would dominate
        self.gather_s = gather_s
        self.prefill_chunk = prefill_chunk
        self.bucket_chunks = self.device.type == "cuda"  # round prompt chunks' shapes up (_run_chunks)
        self.lookahead = self.cuda_graphs if lookahead is None else lookahead
        self.early_verify = self.device.type == "cuda" if early_verify is None else early_verify
        self.draft_ahead = True  # with the early verify: the next chains' first draft step from its argmax (_draft_ahead)
        self.pad = bucket(graph_max_tokens, TOKEN_BUCKETS)  # columns past max_len that padded writes land in
        self.step = _StepInputs(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, 1), dtype=torch.long))
        self.cache = self._allocate()
        self._groups = self._text_config().num_attention_heads // self.cache.keys.shape[2]  # query heads per kv head
        self._key_positions = torch.arange(max_len + self.pad, device=self.device)  # [L]
        self._columns = torch.arange(self.pad)  # [pad]: a step's positions are each row's start plus these
        self._device_columns = self._columns.to(self.device)  # [pad]
        self._spans = [c for c in SPAN_BUCKETS if c < max_len] + [max_len + self.pad]  # a graph step's columns
        self._graphs: dict[tuple[int, int, int], _Graph] = {}  # (rows, tokens, span) -> graph
        self._chunk_graphs: dict[tuple[int, int], _Graph] = {}  # prompt chunks: (rows, chunk tokens) -> graph
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._expected: set[int] = set()  # slots answered last step that are still open: worth waiting for
        self._open: set[int] = set()
        self._arriving: dict[int, tuple[float, float]] = {}  # slot -> (opened, driven) of a session not in a step yet
        self._rows: dict[int, _Row] = {}  # driven sessions by slot
        self._joined_at = 0  # the step count when a session last joined (what a paused phase's charge asks)
        self._lately: collections.deque[int] = collections.deque(maxlen=LOAD_STEPS)  # driven sessions, a step each
        self._lately_most = 1  # their most (read from other threads: an int, never the deque)
        self._outputs: list[tuple[_Row, object]] = []  # finished cycles (and ends) not yet handed to sessions
        self._last_arrival = 0.0  # when the newest pending request came
        self._read_at = 0.0  # when the host last read a step's results
        self._read_cpu = 0.0  # and the reading thread's CPU time then (time.thread_time)
        self._apart_at_read = 0  # and the chunks read apart by then (StepStats.chunks_apart)
        self._early: _Launched | None = None  # a step launched during a drafting phase (_launch_early): the next to read
        self._early_rows: list[_Row] = []  # the rows it verifies, until their plans confirm them
        self._phase_began = 0.0  # when the drafting phase now running began (perf_counter)
        self._phase_mark: float | torch.cuda.Event = 0.0  # and where the device's queue stood then (_mark)
        self._phase_cpu = 0.0  # and the engine thread's CPU time then (time.thread_time)
        self._chain_reads = PinnedBuffers()  # where a chain's values are read to
        self._ahead: _Ahead | None = None  # a draft runner's next chains' first step, launched ahead (launch_ahead)
        self._chain_ends: dict[int, int] = {}  # slot -> where its last chain's next input goes (launch_ahead checks)
        self._rewrite: dict[int, int] = {}  # slot -> the first position a step launched ahead of a sampled verify may
        #                                     have written a token the committed sequence lacks (`_new_tokens`)
        self._closes = [0] * max_sessions  # per slot, how many times it was closed: a slot's sessions apart
        self._readbacks: dict[tuple, list] = {}  # (ring, *argmax shape) -> two (pinned host buffer, event), used in turn
        self._stopping = False
        self._ended = threading.Event()  # the engine loop has returned
        self._stop_reason = "the engine has stopped"  # what refused and failed work is told (UNAVAILABLE)
        self._failure_hooks: list[Callable[[], None]] = []  # called once the loop has failed (on_failure)
        self.failure: BaseException | None = None  # what ended the loop, where an error did
        self.stats = StepStats()
        self.costs = StepCostTable()
        self._uncharged_s = 0.0  # engine time that is no running session's cycle: new sessions' prompt chunks and their
        #                          drafts' catch-ups
        self._cycles: dict[int, list[float]] = {}  # tokens -> the seconds of the cycles that ended in this step
        self._turns = compute_turns(self.placement)  # on CPUs shared with another service: one forward at a time
        self._turn = self._turns.turn if self._turns is not None else contextlib.nullcontext
        self.compiled = compile and self.cuda_graphs
        self._captured = captured
        self.passive = launch is None  # no engine loop: callers run their forwards (_run_here)
        self._here = threading.Lock()  # held by the caller running them
        t0 = time.perf_counter()
        if self.compiled:
            log.info("compiling %d decoder layers", compile_layers(self.model))
        self._warm_up_shapes()
        if self.compiled:
            log.info("compiled and warmed up in %.1f s", time.perf_counter() - t0)
        if self.cuda_graphs:
            self._capture_all()
        self.on_step: Callable[[int, float], None] = lambda rows, seconds: None  # metrics: rows, step time
        self.on_drafting: Callable[[float], None] = lambda seconds: None  # metrics: a drafter's phase
        self.drafter: StepDrafter | None = None
        self._ahead_runner: BatchedRunner | None = None  # the draft runner its verifies launch draft steps on (report)
        self._ahead_mark = StepStats()  # that runner's stats at the last report
        self._ahead_timed: list[_AheadTimed] = []  # draft steps launched ahead, not timed yet (a draft runner's)
        if self.passive:
            self._ended.set()
        else:
            launch(self._loop)

    def _text_config(self):
        """The model's (decoder's) configuration."""
        return self.config.get_text_config(decoder=True) if hasattr(self.config, "get_text_config") else self.config

    def _allocate(self) -> "RowsCache":
        """One cache for all slots and layers (RowsCache)."""
        cfg = self._text_config()
        layer_types = getattr(cfg, "layer_types", None) or []
        if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise InvalidArgument("batching", f"{cfg.model_type} has sliding-window layers; batched decoding supports "
                                              "full attention only (--no-batching serves it)")
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        dtype = next(self.model.parameters()).dtype
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):  # quantized weights: compute dtype
            dtype = torch.float32
        shape = (cfg.num_hidden_layers, self.max_sessions, heads, self.max_len + self.pad + 1, dim)  # RowsCache
        return RowsCache(self.config, torch.zeros(shape, dtype=dtype, device=self.device),
                         torch.zeros(shape, dtype=dtype, device=self.device), self.step)

    # The single-sequence runner's per-slot caches and length pointers do not exist here: positions are
    # explicit per row, so opening, closing and rolling back touch only the slot's token list.
    def open(self, cancelled: threading.Event | None = None) -> KVSlot:
        index, queued_s = self.slots.acquire(cancelled)
        with self._cv:
            self._open.add(index)
        return KVSlot(id=next(self._ids), index=index, queued_s=queued_s, opened=time.perf_counter())

    def close(self, slot: KVSlot) -> None:
        index, slot.index, slot.tokens = slot.index, -1, []
        if index < 0:
            return
        self._closes[index] += 1
        self._rewrite.pop(index, None)
        with self._cv:
            self._open.discard(index)
            self._arriving.pop(index, None)
            self._expected.discard(index)
            self._cv.notify_all()
        self.slots.release(index)

    def _set_length(self, index: int, length: int) -> None:
        pass  # a row's length is len(slot.tokens)

    def _new_tokens(self, slot: KVSlot, ids: Sequence[int], keep: int) -> Sequence[int]:
        """As a runner's, from no later than where a step launched ahead may have written what the committed sequence
        does not hold (`expect_ahead`): those entries are forwarded again."""
        rewrite = self._rewrite.pop(slot.index, None)
        if rewrite is not None and rewrite < slot.length:
            self.truncate(slot, rewrite)
        return super()._new_tokens(slot, ids, keep)

    def forward_branches(self, slot, step, tokens, positions, limits):
        return None  # pre-drafting's branch rows are not batched: the caller drafts one chain instead

    def drive(self, loop: Driven) -> Iterator[list]:
        """Run a session's loop in the engine; yields its cycles committed since the caller last asked (at
        least one: a caller slower than the engine takes them together, not one by one behind a growing
        backlog). Closing the generator (the caller went away) takes the session out of the engine before
        it returns."""
        row = _Row(loop)
        loop.attach(self._wake)
        with self._cv:
            if self._stopping:
                raise Unavailable(self._stop_reason)
            self._rows[loop.slot.index] = row
            self._joined_at = self.stats.steps
            self._arriving[loop.slot.index] = (loop.slot.opened, time.perf_counter())
            self._cv.notify_all()
        try:
            while True:  # the outbox holds lists of cycles, then _END or an exception
                cycles, last = [], row.outbox.get()
                while isinstance(last, list):
                    cycles.extend(last)
                    try:
                        last = row.outbox.get_nowait()
                    except queue.Empty:
                        last = None
                if cycles:
                    yield cycles
                if isinstance(last, BaseException):
                    raise last
                if last is _END:
                    return
        finally:
            with self._cv:
                row.closed = True
                if not row.busy:
                    self._drop(row)
            row.released.wait()  # at most one step: then the caller may close the sequence

    def batch_verify_cost(self, k: int) -> float | None:
        """What a step costs at this load if every driven session verifies k drafts (k + 1 tokens per row): the
        verify cost load-aware K weighs, since in a padded batch one row's K sets every row's step."""
        return self.costs.cost(self.load_rows(), k + 1)

    def batch_cycle_cost(self, k: int) -> float | None:
        """A session's measured cycle verifying k drafts at this load, drafting included (None: not measured): what
        sessions that draft in one phase between steps (core.own_draft) pay per cycle at that K. With lookahead a
        plain cycle is taken to cost at most a plain step's forward at this load (launched alone): a run of plain
        steps launched ahead costs about that where the host keeps up, and a dearer figure was timed where they
        were not launched ahead (a plain step amid drafting, or after a verify) or in a ramp of joining sessions,
        and kept a batch drafting where plain decoding was faster (docs/benchmarks.md, call g5). A plain cycle is
        taken to cost no less than a plain step measured at this load, since every row is in each one: a lower
        figure, timed as drafting stopped, turned a batch's drafting off by itself (call kp)."""
        rows = self.load_rows()
        cycle = self.costs.cycle(rows, k + 1)
        if k > 0:
            return cycle
        step = self.costs.measured(rows, 1)
        if cycle is not None and step is not None:
            cycle = max(cycle, step)
        if not self.lookahead:
            return cycle
        forward = self.costs.forward(rows, 1)
        return forward if cycle is None else cycle if forward is None else min(cycle, forward)

    def batch_cycle_elsewhere(self, k: int) -> float | None:
        return self.costs.cycle_elsewhere(self.load_rows(), k + 1)

    def batch_cycle_samples(self, k: int) -> int:
        return self.costs.cycle_samples(self.load_rows(), k + 1)

    def batch_draft_step_cost(self) -> float | None:
        """One step of its drafter's chains over this load's rows (None: no drafter, or not timed)."""
        return self.drafter.step_cost(self.load_rows()) if self.drafter is not None else None

    def batch_catch_up(self) -> CatchUp | None:
        """What turning drafting on for every driven session would cost first: their drafts catching up on what
        they lack, priced by the drafter's catch-ups so far (None: no drafter, or none timed yet)."""
        if self.drafter is None:
            return None
        with self._cv:
            loops = [row.loop for row in self._rows.values()]
        behind = sum(loop.draft_behind() for loop in loops)
        seconds = self.drafter.catch_up_cost(behind) if loops else None
        return None if seconds is None else CatchUp(sum(loop.tokens_left for loop in loops) / len(loops), behind,
                                                    seconds, self.stats.steps - self._joined_at)

    def batch_steps(self) -> int:
        return self.stats.steps

    def batch_rows(self) -> int:
        """The driven sessions now: the rows of a step (at least 1)."""
        return max(1, len(self._rows))

    def load_rows(self) -> int:
        """The rows load-aware K prices its choice at: the most driven sessions of the last LOAD_STEPS steps, or
        now. Where several requests end in one step, their clients' next ones join a step or two later; priced at
        that dip, a shared phase decoding plainly turned drafting on for it, paid every row's catch-up, and turned
        it off again as the rows came back (docs/benchmarks.md, "Stop 64")."""
        return max(self.batch_rows(), self._lately_most)

    def _wake(self) -> None:
        with self._cv:
            self._last_arrival = time.monotonic()
            self._cv.notify_all()

    def _idle(self, row: _Row) -> None:
        """The engine is done with a row for now: it may be planned again, or it goes if its reader has gone."""
        with self._cv:
            row.busy = False
            if row.closed:
                self._drop(row)

    def _drop(self, row: _Row) -> None:
        """Take a driven session out (the caller holds the lock)."""
        if self._rows.get(row.loop.slot.index) is row:
            del self._rows[row.loop.slot.index]
        row.released.set()

    def stop(self, wait_s: float = 0.0) -> None:
        """End the engine loop; forwards still waiting fail with UNAVAILABLE. `wait_s`: wait up to this long
        for the loop to have ended (a process about to exit should not leave it inside a torch call)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._ended.wait(wait_s)

    def _forward(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> torch.Tensor:
        return self._submit([(slot, new_ids, keep)], greedy=False)[0].logits

    def _forward_greedy(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> list[int]:
        return self._submit([(slot, new_ids, keep)], greedy=True)[0].argmax

    def decode_chain(self, slot: KVSlot, ids: Sequence[int], steps: int, draw: Draw,
                     group: Grouped | None = None) -> list:
        return self.decode_chains([Chain(slot, ids, steps, draw, group)])[0]

    def decode_chains(self, chains: Sequence[Chain], launched: Launched | None = None) -> list[list]:
        drafting = [(i, c, list(self._new_tokens(c.slot, c.ids, 1))) for i, c in enumerate(chains) if c.steps > 0]
        requests = []
        for i, c, new_ids in drafting:
            assert c.slot.length + len(new_ids) + c.steps - 1 <= self.max_len, "drafts stay inside the context"
            requests.append(_Request(c.slot.index, c.slot.length, new_ids, 1, False, done=self._waiter(),
                                     chain=_Chain(c.steps, c.draw, c.group, index=i, launched=launched,
                                                  first=c.first if new_ids == list(c.ids[-1:]) else None,
                                                  sampled=c.sampled)))
        self._hand_over(*requests)
        for (_, c, new_ids), r in zip(drafting, requests):
            c.slot.tokens.extend([*new_ids, *(p.token for p in r.chain.picks[:-1])])
        picks = iter(r.chain.picks for r in requests)
        return [next(picks) if c.steps > 0 else [] for c in chains]

    def catch_up_reads(self, calls: Sequence[tuple[KVSlot, Sequence[int], Callable[[torch.Tensor], torch.Tensor]]]
                       ) -> list[torch.Tensor]:
        """Make each slot's cache hold all of its `ids` (forwarding what it lacks, together) and read the last one's
        logits with `read`: each chain's first step's values [1, m] on the device (`Chain.first`), so that its chain
        need not run that step, nor every other chain with it where theirs was launched ahead (`_taken_ahead`). Returns
        once they are done on the device (a host read), so that drafting is timed apart from them."""
        requests = self._submit([(slot, self._new_tokens(slot, ids, 1), 1) for slot, ids, _ in calls], greedy=False)
        values = [read(r.logits[-1:]) for r, (_, _, read) in zip(requests, calls)]
        values[-1][0, 0].item()  # the host read
        return values

    def greedy_ids_together(self, calls: Sequence[tuple[KVSlot, Sequence[int], int]]) -> list[list[int]]:
        forwards = [(slot, self._new_tokens(slot, ids, keep), keep) for slot, ids, keep in calls]
        return [r.argmax for r in self._submit(forwards, greedy=True)]

    def _submit(self, forwards: Sequence[tuple[KVSlot, Sequence[int], int]], greedy: bool) -> list[_Request]:
        """Hand the engine forwards of new tokens (slot, new_ids, keep), in the same steps, and wait for them."""
        requests = []
        for slot, new_ids, keep in forwards:
            assert slot.length + len(new_ids) <= self.max_len, "extend() checks the context first"
            requests.append(_Request(slot.index, slot.length, list(new_ids), keep, greedy, done=self._waiter()))
        self._hand_over(*requests)
        for slot, new_ids, _ in forwards:
            slot.tokens.extend(new_ids)
        return requests

    def _hand_over(self, *requests: _Request) -> None:
        """Hand the engine forwards (all in the same steps) and wait for them; the first error is raised."""
        if not requests:
            return
        if self._ahead is not None:  # another forward's writes: the step launched ahead no longer stands for them
            self._ahead.touched.update(r.index for r in requests if r.chain is None)
        with self._cv:
            if self._stopping:
                raise Unavailable(self._stop_reason)
            self._pending.extend(requests)
            self._last_arrival = time.monotonic()
            self._expected -= {r.index for r in requests}
            self._cv.notify_all()
        if self.passive:
            with self._here:  # once this thread's run finds nothing pending, its requests are done
                self._run_here()
        else:
            for r in requests:
                while not r.done.wait(ENDED_POLL_S):  # a loop that ended on an error woke only what was pending
                    if self._ended.is_set() and not r.done.is_set():
                        raise Unavailable(self._stop_reason)
        for r in requests:
            if r.error is not None:
                raise r.error

    def _waiter(self) -> threading.Event | None:
        """What a caller's request wakes it with: nothing on a runner without an engine loop, whose callers run
        their forwards themselves, one at a time (`_hand_over`); an event costs its own ~2 us a row per phase."""
        return None if self.passive else threading.Event()

    def _run_here(self) -> None:
        """A runner without an engine loop: run the pending forwards on this thread until none is left (the long
        ones' next chunks in as few forwards as their slots allow: sessions catching up together cost one
        forward, not one each)."""
        while True:
            with self._cv:
                steps, long = self._split_pending(chunks=None)
            if not steps and not long:
                return
            if not long and all(r.chain is not None and (r.chain.group or r.chain.sampled) is not None for r in steps):
                self._draft_chained(steps)
                continue
            with self._turn():
                step = self._launch_or_fail(steps)
                if step is not None:
                    try:
                        self._read(step)
                        self._hand_on(step)
                    except BaseException as e:  # noqa: BLE001 - handed to its callers
                        for r in step.requests:
                            self._fail(r, e)
            for group in self._catch_up_groups(long):
                try:
                    self._run_chunks(group)
                except BaseException as e:  # noqa: BLE001 - handed to their callers
                    for r in group:
                        self._fail(r, e)

    def _catch_up_groups(self, requests: list[_Request]) -> list[list[_Request]]:
        """Long requests grouped into forwards (`_run_chunks`). With chunk graphs (rows at any slots): by the
        length their next chunk runs as, whatever their slots, since every row of a forward is padded to its
        longest chunk. Eagerly by slot: a forward computes every row of its span of slots, so two catch-ups at
        slots 3 and 60 in one forward would compute 64 rows for two; a group's span is at most CATCH_UP_ROWS
        rows or twice its members."""
        if self._chunk_graphs:
            by_length: dict[int, list[_Request]] = {}
            for r in requests:
                by_length.setdefault(self._chunk_tokens(len(r.ids) - r.fed), []).append(r)
            return list(by_length.values())
        groups: list[list[_Request]] = []
        for r in sorted(requests, key=lambda r: r.index):
            if groups and self._span_rows(r.index + 1 - groups[-1][0].index) <= max(CATCH_UP_ROWS, 2 * (len(groups[-1]) + 1)):
                groups[-1].append(r)
            else:
                groups.append([r])
        return groups

    def _span_rows(self, rows: int) -> int:
        """The rows a prompt-chunk forward of `rows` (a span of slots, or a graph's rows at any slots) computes:
        on a GPU rounded up to a bucket."""
        return min(bucket(rows, ROW_BUCKETS), self.max_sessions) if self.bucket_chunks else rows

    # ---- the engine thread ----

    def _report(self, since: StepStats, t0: float) -> StepStats:
        """Log what the engine did since `since` (every LOG_EVERY_S while it works); a copy of the stats now."""
        s, wall = self.stats, time.monotonic() - t0
        if s.steps > since.steps:
            steps = s.steps - since.steps
            guesses = s.guesses - since.guesses
            arrivals, driven = s.arrivals - since.arrivals, s.driven - since.driven
            sessions = (f" (of {driven / steps:.1f} sessions driven, {(s.open_slots - since.open_slots) / steps:.1f} "
                        f"slots open; {arrivals} new sessions, "
                        f"{1e3 * (s.arrival_setup_s - since.arrival_setup_s) / max(1, arrivals):.1f} ms from a slot's "
                        f"opening to its session being driven, "
                        f"{1e3 * (s.arrival_wait_s - since.arrival_wait_s) / max(1, arrivals):.1f} more to its first "
                        f"step)") if driven else ""  # a draft service's engine drives none: its callers' forwards
            log.info("engine: %d steps in %.1f s, %.1f rows per step%s, %.1f ms per step (forward %.1f, drafting between "
                     "steps %.1f in %d phases, longest %.1f), busy %.0f%%, %d prefill chunks (%d rows, %d read apart), "
                     "%d new prompts split over steps, %d rows launched ahead (%.0f%% kept), %d verifies launched from "
                     "drafts on the device (%.0f%% kept, launched %.1f ms into their drafting phase, which began %.1f ms "
                     "after the last read (%.1f ms of the engine thread's CPU), the device waiting %.1f ms for them, "
                     "%.1f ms on it); "
                     "steps by tokens per row %s; t(rows x tokens) ms %s",
                     steps, wall,
                     (s.rows - since.rows) / steps, sessions, 1e3 * (s.busy_s - since.busy_s) / steps,
                     1e3 * (s.forward_s - since.forward_s) / steps, 1e3 * (s.drafting_s - since.drafting_s) / steps,
                     s.drafting_phases - since.drafting_phases, 1e3 * s.drafting_longest_s,
                     100 * (s.busy_s - since.busy_s) / wall, s.prefill_chunks - since.prefill_chunks,
                     s.prefill_rows - since.prefill_rows, s.chunks_apart - since.chunks_apart,
                     s.joins_split - since.joins_split, guesses,
                     100 * (s.guesses_kept - since.guesses_kept) / max(1, guesses), s.early - since.early,
                     100 * (s.early_kept - since.early_kept) / max(1, s.early - since.early),
                     *(1e3 * (now - then) / max(1, s.early_steps - since.early_steps) for now, then in (
                         (s.early_after_s, since.early_after_s), (s.early_before_s, since.early_before_s),
                         (s.early_before_cpu_s, since.early_before_cpu_s),
                         (s.early_waited_s, since.early_waited_s),
                         (s.early_device_s, since.early_device_s))),
                     ", ".join(f"{n}: {count - since.widths.get(n, 0)}" for n, count in sorted(s.widths.items())
                               if count > since.widths.get(n, 0)),
                     self.costs.report())
            if self.drafter is not None:
                log.info("engine's drafting: %s%s", self.drafter.report(), self._ahead_report())
        s.drafting_longest_s = 0.0
        return s.mark()

    def _ahead_report(self) -> str:
        """How many rows of draft steps were launched from a verify's outcome since the last report (each chain's first
        step and its later ones), and taken by their chains (a chain that does not take one runs that step again)."""
        if self._ahead_runner is None:
            return ""
        d, m = self._ahead_runner.stats, self._ahead_mark
        self._ahead_mark = d.mark()
        calls, joined = d.ahead_launches - m.ahead_launches, d.ahead_joined - m.ahead_joined
        return (f"; draft steps launched ahead for {d.ahead - m.ahead} rows, taken by {d.ahead_kept - m.ahead_kept}, "
                f"{1e3 * (d.ahead_device_s - m.ahead_device_s) / max(1, calls):.1f} ms on the device a launch "
                f"({(d.ahead_steps - m.ahead_steps) / max(1, calls):.1f} steps, the first "
                f"{(d.ahead_width - m.ahead_width) / max(1, calls):.1f} tokens wide, {calls} launches timed; "
                f"{joined} with a new session's catch-up, {1e3 * (d.ahead_joined_s - m.ahead_joined_s) / max(1, joined):.1f} "
                f"ms each; {1e3 * (d.ahead_idle_s - m.ahead_idle_s) / max(1, d.ahead_idled - m.ahead_idled):.1f} ms from "
                f"the verify's end to them); new sessions' catch-ups launched with them {d.joins - m.joins}, taken "
                f"{d.joins_kept - m.joins_kept}")

    def _loop(self) -> None:
        try:
            self._steps()
        except BaseException as e:  # noqa: BLE001 - a bug: every session learns of it, none waits for good
            log.exception("the engine stopped on an unexpected error: its sessions fail with UNAVAILABLE")
            with self._cv:
                self.failure, self._stopping = e, True
                self._stop_reason = f"the engine stopped on an unexpected error: {type(e).__name__}: {e}"
                self._stop_all()
                hooks = list(self._failure_hooks)
            for hook in hooks:
                hook()
        finally:
            if self._turns is not None:
                self._turns.close()  # no forward after the loop: the lock file goes back
            self._ended.set()

    def on_failure(self, hook: Callable[[], None]) -> None:
        """Call `hook` once the engine loop has stopped on an error (at once if it has): a server then reports
        NOT_SERVING, so that its probes restart it, instead of taking sessions it can no longer run."""
        with self._cv:
            failed = self.failure is not None
            if not failed:
                self._failure_hooks.append(hook)
        if failed:
            hook()

    def _steps(self) -> None:
        mark, mark_t = StepStats(), time.monotonic()
        inflight: _Launched | None = None  # launched ahead, on guesses: the next step to read
        verifying: _Launched | None = None  # a step launched while drafting (_launch_early): drafts follow it
        while True:
            if time.monotonic() - mark_t > LOG_EVERY_S:
                try:
                    mark = self._report(mark, mark_t)
                except Exception:  # noqa: BLE001 - the log line is not worth the sessions
                    log.exception("the engine's log line failed; the engine goes on")
                    mark = self.stats.mark()
                mark_t = time.monotonic()
            prefill: list[_Request] = []  # a prompt chunk, at most one a step
            chunk: _Chunks | None = None  # that chunk, launched before the step ahead (read apart)
            if inflight is None:
                work = self._gather()
                if work is None:
                    return
                steps, prefill = work
                if self._early is not None:  # launched while drafting: forwards planned since wait for the next step
                    inflight = verifying = self._early
                    self._early = None
                    if steps:
                        with self._cv:
                            self._pending[:0] = steps
                        steps = []
            ahead = None
            # a verify of drafted blocks: its rows' next draft steps go on the device first (outside this runner's turn:
            # the draft runner takes its own)
            following = (self._draft_ahead(inflight) if inflight is not None and inflight is verifying and self.draft_ahead
                         else [])
            try:
                with self._turn():
                    if inflight is None and steps:
                        inflight = self._launch_or_fail(steps)
                    if inflight is not None and self._looks_ahead(inflight):
                        steps, more = self._take(alongside=len(inflight.requests))
                        if more and prefill:
                            with self._cv:
                                self._pending.extend(more)  # one chunk a step
                        prefill = prefill or more
                        if prefill and self._reads_apart(prefill):  # before the step ahead: its read waits not for it
                            chunk, prefill = self._launch_apart(prefill)
                        ahead = self._launch_or_fail(self._guesses(inflight) + steps, after=inflight)
                        inflight.ahead = ahead is not None or chunk is not None  # a replay since: only `top` stands
                    if inflight is not None:
                        self._read(inflight)
                        self._expect_ahead(following)
                if inflight is not None:
                    self._hand_on(inflight)
                if ahead is not None:
                    self._publish()  # the device is busy with the next step: stream now
            except BaseException as e:  # noqa: BLE001 - handed to every waiting session, the loop goes on
                log.exception("batched forward failed")
                for r in inflight.requests if inflight is not None else []:
                    self._fail(r, e)
            if inflight is not None:
                with self._cv:
                    self._expected = {r.index for r in inflight.requests if r.row is None and r.done.is_set()} & self._open
            if prefill:
                try:
                    if chunk is not None:
                        self._finish_chunks(chunk)
                    else:
                        self._run_chunks(prefill)
                except BaseException as e:  # noqa: BLE001
                    log.exception("batched forward failed")
                    for r in prefill:
                        self._fail(r, e)
            inflight = ahead

    def _gather(self) -> tuple[list[_Request], list[_Request]] | None:
        """The next step's work: every driven session that is ready, and the forwards callers handed in.
        Waits for the sessions answered last step (and those waiting for their drafts) until none has come
        back for LULL_S, at most `gather_s`; None when the engine stops."""
        began = None
        while True:
            self._plan_rows(early=True)
            with self._cv:
                if self._stopping:
                    self._stop_all()
                    return None
                if self._early is not None:  # a step is on the device already
                    return self._split_pending()
                now = time.monotonic()
                waiting = {i for i, row in self._rows.items() if not row.busy}
                if not self._pending:
                    self._publish()
                    self._cv.wait(IDLE_POLL_S if waiting else None)
                    continue
                began = now if began is None else began
                expected = (self._expected - {r.index for r in self._pending}) | waiting
                left = min(began + self.gather_s, max(began, self._last_arrival) + LULL_S) - now
                if expected and left > 0:
                    self._publish()
                    self._cv.wait(left)
                    continue
                return self._split_pending()

    def _take(self, alongside: int = 0) -> tuple[list[_Request], list[_Request]]:
        """What is ready now, without waiting (a step is on the device; `alongside`: the rows the next step carries
        besides, its guesses)."""
        self._plan_rows()
        with self._cv:
            return self._split_pending(alongside=alongside)

    def _split_pending(self, chunks: int | None = 1, alongside: int = 0, beside: int = 1
                       ) -> tuple[list[_Request], list[_Request]]:
        """The pending forwards that fit a step (a new prompt wider than the others maybe by its head alone,
        `_split_joins`), and the longer ones whose next chunks run eagerly: at most `chunks` of them (None: all); the
        rest stay pending, new prompts held back for company among them (`_held_joins`; `alongside`: rows the step
        carries besides these, `beside` tokens wide at most). The caller holds the lock."""
        steps = [r for r in self._pending if len(r.ids) <= self.graph_max_tokens]
        long = [r for r in self._pending if len(r.ids) > self.graph_max_tokens][:chunks]
        held = self._held_joins(steps, alongside, beside)
        if held:
            steps = [r for r in steps if r not in held]
        if chunks and not long and (alone := self._alone(steps, alongside)):
            steps = [r for r in steps if r not in alone]
            long = alone
        self._pending = [r for r in self._pending if r not in steps and r not in long]
        return self._split_joins(steps, alongside, beside), long

    def _split_joins(self, steps: list[_Request], alongside: int, beside: int) -> list[_Request]:
        """`steps`, with each new prompt (a driven session's first forward) wider than the other rows fed over this
        step and the next ones at their width instead, where the cost table says that widening costs the other rows
        more, in all, than the steps it adds before the prompts' first tokens cost them (rows are padded to the
        widest: at many rows a verify of 4 drafts costs ~60% more 9 tokens wide, a new 8-token prompt's width; at a
        few, about nothing). A split prompt is replaced by its head, as wide as the others, whose results no one
        reads; the rest goes pending once the head is in the cache (`_resume`). At most JOIN_SPLIT_STEPS steps more
        each, so not in a plain decode step (a prompt one token a step)."""
        joins = [r for r in steps if r.row is not None and not r.row.cycle_tokens and r.chain is None]
        if not joins:
            return steps
        others = len(steps) - len(joins) + alongside
        width, wide = self._wider(joins, steps, beside)
        extra = [-(-len(r.ids) // width) - 1 for r in wide]  # the steps a split adds before each one's first token
        if not others or not wide or max(extra) > JOIN_SPLIT_STEPS:
            return steps
        rows = self.batch_rows()
        narrow, widened = self.costs.cost(rows, width), self.costs.cost(rows, max(len(r.ids) for r in wide))
        if narrow is None or widened is None or others * (widened - narrow) <= sum(extra) * narrow:
            return steps
        heads = {}
        for r in wide:
            heads[id(r)] = _Request(r.index, r.start, r.ids[:width], 1, True, rest=r)
            r.start, r.ids = r.start + width, r.ids[width:]
        self.stats.joins_split += len(wide)
        return [heads.get(id(r), r) for r in steps]

    def _resume(self, head: _Request) -> None:
        """A split prompt's head is in the cache (`_split_joins`): the rest of the prompt goes pending, for the next
        step."""
        rest = head.rest
        rest.row.loop.slot.tokens.extend(head.ids)
        with self._cv:
            self._pending.append(rest)
            self._cv.notify_all()

    def _held_joins(self, steps: list[_Request], alongside: int, beside: int = 1) -> list[_Request]:
        """The new prompts (driven sessions' first forwards) to hold back from this step: rows are padded to a step's
        widest, so each prompt wider than the step's other rows costs every row a wide step, and prompts that trickle
        in one a step (clients coming back at different times) pay it once each. Held only where the cost table says
        the widening costs more than a step of the rows as they are (at many rows; at a few it costs little, and the
        wait would only delay the first token). Each waits at most JOIN_HOLD_STEPS steps, and none waits once they
        are JOIN_GROUP_SHARE of the other rows, or where the step has no other rows (a wide step then costs no one).
        `alongside` rows are `beside` tokens wide (an early verify's, `_launch_early`): the widening is priced from
        their width, not a plain step's, or a new prompt would wait whole drafted cycles for a verify it hardly widens."""
        joins = [r for r in steps if r.row is not None and not r.row.cycle_tokens and r.chain is None]
        others = len(steps) - len(joins) + alongside
        if not joins or not others:
            return []
        width, wide = self._wider(joins, steps, beside)
        if not wide:
            return []
        rows = self.batch_rows()
        narrow, widened = self.costs.cost(rows, width), self.costs.cost(rows, max(len(r.ids) for r in wide))
        if narrow is None or widened is None or widened - narrow <= narrow:
            return []
        step = self.stats.steps
        for r in wide:
            r.held_from = step if r.held_from < 0 else r.held_from
        if len(wide) >= JOIN_GROUP_SHARE * others or any(step - r.held_from >= JOIN_HOLD_STEPS for r in wide):
            return []
        return wide

    def _wider(self, joins: list[_Request], steps: list[_Request], beside: int = 1) -> tuple[int, list[_Request]]:
        """(The tokens a row of `steps` runs as without `joins`, the new prompts among them that widen it): rows are
        padded to a step's widest (`beside`: that of rows the step carries besides `steps`)."""
        width = self.step_shape(1, max([beside] + [len(r.ids) for r in steps if r not in joins]))[1]
        return width, [r for r in joins if self.step_shape(1, len(r.ids))[1] > width]

    def _alone(self, steps: list[_Request], alongside: int = 0) -> list[_Request]:
        """The new prompts (driven sessions' first forwards, or callers') wider than every other forward of a step,
        where a forward of them alone, as one chunk after the step, costs less than widening every row of the step
        to them (rows are padded to the widest: at many rows a step of a few tokens a row costs several plain steps,
        and a few rows of them about one; docs/benchmarks.md, call t1). A chunk read apart (`_reads_apart`: launched
        before the step ahead) costs its forward; any other is charged a step more: its host read also waits for the
        step launched ahead of it, and the device idles while the host then plans the next. `alongside`: rows the
        step carries besides `steps` (a step launched ahead: its guesses, one token each, taken to be the lowest
        slots). Empty: the step takes them all, as where the costs are not known yet."""
        # every step asks: a pass over the rows, most end here
        joining = [r for r in steps if r.chain is None and (r.row is None or not r.row.cycle_tokens)]
        if not joining or len(joining) == len(steps) and not alongside:
            return []
        _, alone = self._wider(joining, steps)
        if not alone:
            return []
        rest = [r for r in steps if r not in alone]
        n, w = max(len(r.ids) for r in alone), max((len(r.ids) for r in rest), default=1)
        rows_rest = max(max((r.index for r in rest), default=-1) + 1, alongside)
        rows = max(rows_rest, max(r.index for r in alone) + 1)
        wide, narrow = self.costs.cost(rows, n), self.costs.cost(rows_rest, w)
        chunk = self.costs.cost(*self._chunk_computes(alone, n))
        if None in (wide, narrow, chunk):
            return []
        return alone if wide - narrow > chunk + (0.0 if self._reads_apart(alone) else narrow) else []

    def _chunk_computes(self, requests: list[_Request], longest: int) -> tuple[int, int]:
        """(rows, tokens a row) a chunk forward of `requests`, the longest of `longest` tokens, computes
        (`_chunk_form`): a chunk graph's rows where there is one, else every slot of their span."""
        n, graph = self._chunk_form(requests, longest, 1)
        if graph is not None:
            return len(requests), n
        return self._span_rows(max(r.index for r in requests) + 1 - min(r.index for r in requests)), n

    def _chunk_form(self, requests: list[_Request], longest: int, keep: int) -> tuple[int, _Graph | None]:
        """(tokens a row, graph) a chunk of `requests` whose longest has `longest` tokens runs as, keeping `keep`
        logits a row: short ones (new prompts no wider than a step) the narrowest chunk graph of a step's width that
        holds them, else the chunk graph at the chunk's bucket (`_chunk_tokens`), at any slots; None: an eager
        forward at that bucket (none captured, or more than one logit kept)."""
        n = self._chunk_tokens(longest)
        if keep > 1:
            return n, None
        rows = self._span_rows(len(requests))
        for width in self._short_chunk_widths():
            if longest <= width and (graph := self._chunk_graphs.get((rows, width))) is not None:
                return width, graph
        return n, self._chunk_graphs.get((rows, n))

    def _short_chunk_widths(self) -> list[int]:
        """The widths chunk graphs of new short prompts are captured at (JOIN_CHUNK_TOKENS, at most a step's)."""
        return sorted({min(width, self.pad) for width in JOIN_CHUNK_TOKENS})

    def _plan_rows(self, early: bool = False) -> None:
        """Ask every driven session that is not in a step yet for its next forward. With a drafter, the blocks
        sessions asked for with their last verdicts are drafted first, together; those that asked while being
        planned (none was asked for yet, or it was stale) are drafted for next and planned again (once: one that
        asks again waits for the engine's next round). `early` (no step in flight): the sessions that draft no
        block are planned first, and the drafting phase may launch the step itself (_launch_early)."""
        if early and self.drafter is not None and self.early_verify:
            self._plan_ready(drafting=False)
        self._draft(early)
        self._plan_ready()
        if self._draft(early):
            self._plan_ready()
        self._unconfirmed()

    def _plan_ready(self, drafting: bool = True) -> None:
        """Plan the rows not in a step (and those whose early verify awaits its plan); `drafting=False`: only those
        that verify no draft next."""
        with self._cv:
            rows = [row for row in self._rows.values() if (not row.busy or row.early is not None) and not row.closed
                    and (drafting or not row.loop.drafting)]
            for row in rows:
                row.busy = True
        for row in rows:
            self._replan(row)

    def _unconfirmed(self) -> None:
        """Drop the early verifies no plan confirmed (their sessions ended or were not planned): their rows go on
        from the step before, their writes past the rows' lengths overwritten before they are read."""
        rows, self._early_rows = self._early_rows, []
        for row in rows:
            if row.early is not None:
                self._void(row.early)
                row.early = None
                self._idle(row)

    def _draft(self, early: bool = False) -> bool:
        """Draft for every session that asked (a StepDrafter); False when none had. `early`: the phase may launch
        the step that verifies its blocks before the host reads them (_launch_early)."""
        if self.drafter is None:
            return False
        t0, before, joining = time.perf_counter(), self._early, self.drafter.joining_s()
        told = self._launch_early if early and self.early_verify and before is None else None
        if told is not None:  # read by _launch_early, for the engine's log
            self._phase_began, self._phase_mark, self._phase_cpu = t0, self._mark(), time.thread_time()
        if not self.drafter.draft(told):
            return False
        done = time.perf_counter()
        # a joining session's catch-up, a good part of a cycle, timed into every drafting row's cycle (folded in as
        # many times) made drafting look dearer at each join (docs/benchmarks.md, call w1)
        self._uncharged_s += self.drafter.joining_s() - joining
        s = self.stats
        s.drafting_s, s.drafting_phases = s.drafting_s + done - t0, s.drafting_phases + 1
        s.drafting_longest_s = max(s.drafting_longest_s, done - t0)
        self.on_drafting(done - t0)
        step = self._early
        if step is not before:  # launched in this phase: its cost is what follows it
            step.began = step.launched = done
            step.drafted_before = s.drafting_s
        return True

    def _launch_early(self, drafted: list[tuple[object, Drafted]]) -> None:
        """A drafting phase's blocks are launched on the device and not yet read: launch the step that verifies
        them now, each asking row's ids its last committed tokens then its block's tokens filled on the device,
        with every other forward ready to run, so the device verifies while the host reads, picks and plans. Each
        verify is kept only where the row's plan asks for exactly that forward (`_replan`)."""
        rows = self._idle_rows_by_link()
        early, fill = [], []
        tokens = drafted[0][1].tokens if drafted else None
        for link, block in drafted:
            row = rows.get(id(link))
            verify = row.loop.early_verify(block.steps) if row is not None and block.tokens is tokens else None
            if verify is None:
                continue
            committed, drafts, greedy = verify
            slot = row.loop.slot
            reuse = min(common_prefix_len(slot.tokens, committed), len(committed) - 1)
            ids = [*committed[reuse:], *[0] * drafts]
            early.append(_Request(slot.index, reuse, ids, drafts + 1, greedy, row=row, done=None, drafted=block))
            fill += [(slot.index, len(ids) - drafts + i, block.row, i) for i in range(drafts)]
        if not early:
            return
        with self._cv:
            steps, _ = self._split_pending(chunks=0, alongside=len(early), beside=max(len(r.ids) for r in early))
            # every ready forward that fits a step; prompt chunks wait
        index = self._on_device(fill, tokens.device).T  # [4, drafts]
        try:
            with self._turn():
                values = tokens[index[2], index[3]].to(self.device)  # the drafted tokens, in fill order
                launching, before = time.perf_counter(), self._mark()
                step = self._launch(steps + early, fill=(index[0].to(self.device), index[1].to(self.device), values))
                step.timeline = (self._phase_mark, before, self._mark())
        except BaseException:  # noqa: BLE001 - the rows are verified as usual, in the next step
            log.exception("launching a verify from drafted tokens failed; the rows verify as usual")
            with self._cv:
                self._pending[:0] = steps
            return
        s = self.stats
        self._early, s.early = step, s.early + len(early)  # its cost starts once the phase ends
        s.early_steps, s.early_after_s = s.early_steps + 1, s.early_after_s + launching - self._phase_began
        s.early_before_s += self._phase_began - self._read_at
        s.early_before_cpu_s += self._phase_cpu - self._read_cpu
        with self._cv:
            for r in early:
                r.row.early, r.row.busy = r, True
        self._early_rows = [r.row for r in early]

    def _draft_ahead(self, step: _Launched) -> list[_Request]:
        """Before reading a step that verifies drafted blocks: have their draft runner launch each row's next chain's
        first step from the step's outcome on the device (`launch_ahead`: a greedy row's from its argmax, a sampled
        row's from `verify.outcomes_on_device`), and a greedy row's further steps, as many as it drafted this time, so
        the draft computes while the host reads, verifies, completes and plans (at many rows that host work is longer
        than a draft step); with them, the catch-up of each new session whose prompt step this is
        (`Driven.draft_join`).
        Returns the rows it was launched for."""
        rows = [r for r in step.requests if not r.void and r.drafted is not None and r.drafted.ahead is not None
                and r.keep - 1 == r.drafted.steps]
        if not rows or rows[0].drafted.tokens.device != step.logits.device:
            return []
        runner = rows[0].drafted.ahead
        self._ahead_runner = runner
        greedy = [r for r in rows if r.drafted.ahead is runner and r.greedy and r.drafted.read is not None]
        read = greedy[0].drafted.read if greedy else None
        greedy = [r for r in greedy if r.drafted.read is read]
        sampled = [r for r in rows if r.drafted.ahead is runner and not r.greedy and r.drafted.sampled is not None]
        joins = []
        for r in step.requests if read is not None else ():  # a prompt step (its row has no cycle yet)
            if r.row is None or r.row.cycle_tokens or r.void or r.drafted is not None or not r.greedy or r.keep != 1:
                continue
            join = r.row.loop.draft_join()
            if join is not None and join.ahead is runner and join.read is read:
                r.join = join
                joins.append(r)
        try:
            runner.launch_ahead([(r.drafted.row, self._drafts_from(r), r.keep - 1, r.index, len(r.ids) - r.keep)
                                 for r in greedy], rows[0].drafted.tokens, step.top, read,
                                [(r.join, r.index, len(r.ids) - 1) for r in joins], self._sampled_ahead(step, sampled),
                                steps=[r.keep - 1 for r in greedy], known=[r.drafted.known for r in greedy],
                                since=step.timeline[2] if step.timeline is not None else None)
        except BaseException:  # noqa: BLE001 - the rows draft their next chains as usual
            log.exception("launching draft steps from a verify's outcome failed; the rows draft as usual")
            return []
        return greedy + sampled + joins

    def _idle_rows_by_link(self) -> dict[int, _Row]:
        """The open driven rows in no step, by their draft link, as a drafting phase names its blocks."""
        with self._cv:
            return {id(row.loop.link): row for row in self._rows.values() if not row.closed and not row.busy}

    def _sampled_ahead(self, step: _Launched, rows: list[_Request]) -> SampledAhead | None:
        """Sampled rows of a verify step for `launch_ahead`: each one's outcome worked out on the device from the step's
        logits (`verify.outcomes_on_device`, on its kept positions processed with no host read), and copied to the host
        before the draft step is launched behind it. Where each of a row's distributions was processed as the host
        processes it (top-p's nucleus found among the first candidates), the outcome is its verification
        (`_take_outcomes`): the host reads it without waiting for the draft step."""
        if not rows:
            return None
        planned = [r.row.loop.sampled_verify() for r in rows]  # (sampling, SampledVerify), planned before launching
        at = [(b, r.index, len(r.ids) - r.keep + j) for b, r in enumerate(rows) for j in range(r.keep)]
        where = self._on_device(list(zip(*at)), step.logits.device)  # [3, positions]: its row, then where in `logits`
        probs, found = process_rows_first(step.logits[where[1], where[2]], [s for r, (s, _) in zip(rows, planned)
                                                                            for _ in range(r.keep)])
        accepted, token = outcomes_on_device([v for _, v in planned], probs)
        exact = torch.ones(len(rows), dtype=torch.long, device=found.device).scatter_reduce(
            0, where[0], found.long(), reduce="amin")  # [rows]: every distribution of the row found
        outcomes = OnTheWay(torch.stack([accepted, token, exact], dim=1))  # [rows, 3]
        for b, (r, (_, verify)) in enumerate(zip(rows, planned)):
            r.outcome = (outcomes, b, verify.drafts)
        return SampledAhead([(r.drafted.row, self._drafts_from(r), r.keep - 1) for r in rows], accepted, token,
                            [r.drafted.sampled for r in rows], outcomes)

    @staticmethod
    def _take_outcomes(requests: list[_Request]) -> None:
        """Sampled verifies whose outcome the device worked out as the host would (`_sampled_ahead`): that is their
        verification, read with no wait for the draft step launched after it."""
        for r in requests:
            if r.outcome is not None and r.verified is None:
                outcomes, b, drafts = r.outcome
                accepted, token, exact = outcomes.get()[b]
                if exact:
                    r.verified = VerifyResult(accepted, [*drafts[:accepted], token])

    @classmethod
    def _expect_ahead(cls, rows: list[_Request]) -> None:
        """The verify launched ahead of is read and verified: tell the draft runner how each row's next chain must begin
        (a joining session's: after its prompt, with the token drawn after it)."""
        for r in rows:
            if r.void:
                continue
            if r.join is not None:
                if r.argmax is not None:
                    r.join.ahead.expect_ahead(r.join.slot, len(r.join.ids), [], 0, r.argmax[-1])
                continue
            drafts = [p.token for p in r.drafted.picks[:r.keep - 1]]
            verified = (verify_greedy(drafts, r.argmax) if r.argmax is not None else None) if r.greedy else r.verified
            if verified is not None and not verified.dropped:
                r.drafted.ahead.expect_ahead(r.drafted.row, cls._drafts_from(r), drafts, verified.accepted,
                                             verified.token_ids[-1])

    @staticmethod
    def _drafts_from(verify: _Request) -> int:
        """The position of a verify's first draft: what its first kept logits predict."""
        return verify.start + len(verify.ids) - verify.keep + 1

    def _replan(self, row: _Row, guess: _Request | None = None, token: int = -1) -> None:
        """Ask a driven session for its next forward. `guess`: a forward already launched for it on the guess
        that it decodes `token` plainly next; kept only when the plan is exactly that forward (as is a verify
        launched early from its draft's tokens, `row.early`)."""
        forward = None
        early, row.early = row.early, None
        try:
            forward = row.loop.plan(wait=False)
            request = None
            if forward is not WAITING and forward is not None:
                slot = row.loop.slot
                ids = self._new_tokens(slot, forward.ids, forward.keep)  # rolls the row back to what it reuses
                if (guess is not None and (forward.greedy or guess.drawn_ahead is not None) and forward.keep == 1
                        and slot.length == guess.start and list(ids) == [token]):
                    guess.ids = [token]
                    self.stats.guesses_kept += 1
                    return  # its forward is on the device: the row stays busy
                if (early is not None and forward.greedy == early.greedy
                        and self._confirms(early, slot.length, ids, forward.keep)):
                    early.ids = list(ids)
                    self.stats.early_kept += 1
                    return  # the same: on the device since the drafting phase
                request = _Request(slot.index, slot.length, list(ids), forward.keep, forward.greedy, row=row,
                                   done=None)  # the engine completes it: nobody waits on an event
        except BaseException as e:  # noqa: BLE001 - the session ends with it, the others go on
            log.exception("a session's cycle failed")
            self._void(guess)
            self._void(early)
            self._end(row, e)
            return
        self._void(guess)
        self._void(early)
        with self._cv:
            if forward is None:
                self._end(row, _END)
            elif request is not None:
                self._pending.append(request)
            else:
                self._idle(row)

    @staticmethod
    def _confirms(early: _Request, start: int, ids: Sequence[int], keep: int) -> bool:
        """Whether a planned forward is the one launched early: the same row start, committed tokens and block
        (its drafts the tokens the device drew and fed it, `Drafted.fed`)."""
        head = len(early.ids) - early.keep + 1  # the committed tokens in front of its drafts
        return (start == early.start and keep == early.keep and len(ids) == len(early.ids)
                and list(ids[:head]) == early.ids[:head] and list(ids[head:]) == early.drafted.fed[:keep - 1])

    @staticmethod
    def _void(guess: _Request | None) -> None:
        if guess is not None:
            guess.void = True

    def _end(self, row: _Row, last: object) -> None:
        """A driven session is over: `last` (_END or an exception) is its reader's last item."""
        self._outputs.append((row, last))
        with self._cv:
            self._drop(row)

    def _deliver(self, r: _Request, width: int) -> None:
        """A request's forward is done (in a step `width` tokens wide): wake its caller, or complete a driven
        session's cycle (and confirm or drop the guess launched after it)."""
        row = r.row
        if row is None:
            if r.rest is not None:
                self._resume(r)
                return
            if r.chain is not None and self._next_pick(r):
                return
            _wake(r)
            return
        guess, r.next = r.next, None
        with self._cv:
            closed = row.closed
        if closed:
            self._void(guess)
            self._end(row, _END)
            return
        row.loop.slot.tokens.extend(r.ids)
        self._time_cycle(row, len(r.ids), width)
        try:
            cycle = row.loop.complete(r.argmax, r.logits, r.started, r.verified)
        except BaseException as e:  # noqa: BLE001 - the session ends with it, the others go on
            log.exception("a session's cycle failed")
            self._void(guess)
            self._end(row, e)
            return
        self._outputs.append((row, cycle))
        if row.loop.done:
            self._void(guess)
            self._end(row, _END)
            return
        if guess is not None and not guess.void:
            self._replan(row, guess, r.argmax[-1] if r.argmax is not None else r.drew)
            return
        self._idle(row)

    def _publish(self) -> None:
        """Hand the driven sessions what the engine finished for them. Called once the next forward is
        launched (or before the engine waits): their threads, woken now, stream while the GPU computes,
        instead of contending for the interpreter with the engine's verifying and planning."""
        interval = self.stream_interval or auto_stream_interval(len(self._rows))
        outputs, self._outputs = self._outputs, []
        for row, item in outputs:
            if item is _END or isinstance(item, BaseException):
                self._hand(row)
                row.outbox.put(item)
                continue
            row.held.append(item)
            if not row.handed or len(row.held) >= interval:
                self._hand(row)

    @staticmethod
    def _hand(row: _Row) -> None:
        """Give a session's reader the cycles held for it, as one item."""
        if row.held:
            row.outbox.put(row.held)
            row.held, row.handed = [], True

    def _next_pick(self, r: _Request) -> bool:
        """A draft chain's step is done: pick its token (unless its group's draw did); True when the request
        goes on to its next step."""
        chain = r.chain
        try:
            pick = r.pick if r.pick is not None else chain.draw(r.logits[-1:], [r.start + len(r.ids)])[0]
        except BaseException as e:  # noqa: BLE001 - the caller's to handle
            r.error = e
            return False
        chain.picks.append(pick)
        if len(chain.picks) == chain.steps:
            return False
        r.start, r.ids, r.fed, r.logits, r.pick = r.start + len(r.ids), [pick.token], 0, None, None
        with self._cv:
            self._pending.append(r)  # in the next step, with no round trip to the caller
        return True

    def _fail(self, r: _Request, error: BaseException) -> None:
        if r.void:
            return
        self._void(r.next)
        if r.rest is not None:  # a split prompt's head: its session fails with it
            self._fail(r.rest, error)
        if r.row is not None:
            self._end(r.row, error)
        else:
            r.error = error
            _wake(r)

    def _stop_all(self) -> None:
        """The engine stops: every waiting caller and driven session gets UNAVAILABLE (the caller holds the lock)."""
        for r in self._pending:
            if r.row is None:
                r.error = Unavailable(self._stop_reason)
                _wake(r)
        self._publish()
        for row in list(self._rows.values()):
            self._hand(row)
            row.outbox.put(Unavailable(self._stop_reason))
            self._drop(row)

    def _looks_ahead(self, step: _Launched) -> bool:
        """Whether the next step may be launched before `step` is read: every row of it a driven session's
        plain decode, greedy or drawn on the device (whose next forward, if it goes on decoding plainly, is the token
        just drawn)."""
        return (self.lookahead and step.n == 1 and not self._stopping
                and all(r.void or (r.row is not None and r.keep == 1 and (r.greedy or r.drawn_ahead is not None))
                        for r in step.requests))

    def _guesses(self, step: _Launched) -> list[_Request]:
        """A plain decode of the token each row of `step` draws, one position on."""
        guesses = []
        for r in step.requests:  # a drafting session's next forward waits for its draft: no guess for it
            if not r.void and r.start + 2 <= self.max_len and not r.row.loop.drafting:
                r.next = _Request(r.index, r.start + 1, [], 1, r.greedy, row=r.row, done=None, guess=True,
                                  drawn_ahead=r.drawn_ahead)
                guesses.append(r.next)
        self.stats.guesses += len(guesses)
        return guesses

    def _launch_or_fail(self, requests: list[_Request], after: _Launched | None = None) -> _Launched | None:
        if not requests:
            return None
        try:
            return self._launch(requests, after)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting session, the loop goes on
            log.exception("batched forward failed")
            for r in requests:
                if r.guess:
                    r.void = True  # its row goes on from the step it was guessed from
                else:
                    self._fail(r, e)
            return None

    def _launch(self, requests: list[_Request], after: _Launched | None = None, fill: Fill | None = None) -> _Launched:
        """Launch one forward over slots [0, B): each request's tokens in its own row, padded to n; a guess's
        token is `after`'s argmax for its row, read on the device (and `fill`'s tokens are written on it)."""
        began = time.perf_counter()
        self._arrived(requests, began)
        ids, positions, reach = self._inputs(requests)
        guessed = [r.index for r in requests if r.guess]
        launched = time.perf_counter()
        logits = self._batched(ids, positions, reach, guessed, after.top[:, -1] if after is not None else None,
                               fill)  # [rows, n, V]
        top = host_top = ready = kept = None
        drawn = self._drawn_at_launch(requests)
        if drawn or any(r.greedy for r in requests):
            top = host_top = logits.argmax(-1)  # [rows, n]
            if drawn:
                host_top, kept = self._draw_ahead(logits, top, drawn)  # [rows, n + 1]: the drawn tokens, found flags
                top = host_top[:, :-1]
            if top.is_cuda:
                host_top, ready = self._readback(host_top)
        self._publish()  # the last step's results, while this one runs (on a GPU)
        return _Launched(requests, ids.shape[1], logits, top, host_top, ready, began, launched,
                         pipelined=after is not None, drafted_before=self.stats.drafting_s, drawn=drawn,
                         drawn_logits=kept)

    def _arrived(self, requests: Sequence[_Request], now: float) -> None:
        """Where new driven sessions' first forwards are launched: how long each took from its slot's opening to
        being driven, and from there to this launch, for the engine's log (a client's request spends both before its
        first step; with the time its slot stood closed, they are what keeps rows per step under the sessions)."""
        if not self._arriving:  # a dict's pop is atomic: no lock on this path, which every launch takes
            return
        s = self.stats
        for r in requests:
            times = self._arriving.pop(r.index, None)
            if times is not None:
                s.arrivals, s.arrival_setup_s, s.arrival_wait_s = (s.arrivals + 1, s.arrival_setup_s + times[1] - times[0],
                                                                   s.arrival_wait_s + now - times[1])

    def _drawn_at_launch(self, requests: list[_Request]) -> list[_Request]:
        """The requests whose token is drawn on the device as their step is launched, each given its sampling and seed
        (`drawn_ahead`): driven sessions' plain sampled cycles, looking ahead (a guess carries its row's last ones)."""
        if not self.lookahead:
            return []
        drawn = []
        for r in requests:
            if r.greedy or r.row is None or r.keep != 1 or r.void:
                continue
            if r.drawn_ahead is None:
                planned = r.row.loop.sampled_verify()
                if planned is None or planned[1].drafts:
                    continue
                r.drawn_ahead = (planned[0], planned[1].seed)
            drawn.append(r)
        return drawn

    def _draw_ahead(self, logits: torch.Tensor, top: torch.Tensor, drawn: list[_Request]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw plain sampled cycles' tokens on the device, with no host read (sampling.process_rows_first): each
        row's token as its verify would draw it where its nucleus was found among the first candidates (or it has
        no top-p), which a flag says; the host draws the others again once it reads them (`_take_drawn`). ->
        (the step's argmax [rows, n] with those tokens in and a last column of flags, [rows, n + 1]; their logits
        [drawn, V], a copy that outlives the next replay)."""
        where = self._on_device([[r.index for r in drawn], [self._fed(r) - 1 for r in drawn]], logits.device)
        kept = logits[where[0], where[1]]  # [drawn, V]
        probs, found = process_rows_first(kept, [r.drawn_ahead[0] for r in drawn])
        tokens = draw_on_device(probs, [drawn_uniform(r.drawn_ahead[1], r.start + self._fed(r)) for r in drawn])
        out = torch.ones((top.shape[0], top.shape[1] + 1), dtype=torch.long, device=top.device)  # [rows, n + 1]
        out[:, :-1] = top
        out[where[0], where[1]] = tokens
        out[where[0], -1] = found.long()
        return out, kept

    def _take_drawn(self, step: _Launched, top: list[list[int]]) -> None:
        """The plain sampled cycles drawn on the device (`_draw_ahead`), read: each row's token where its flag says
        it is right, else drawn again on the host from its kept logits; `drew` keeps what the device fed a guess."""
        again = []
        for j, r in enumerate(step.drawn):
            if r.void:  # a guess its plan did not confirm: nothing to hand on
                continue
            r.drew = top[r.index][self._fed(r) - 1]
            if top[r.index][step.n]:
                r.verified = VerifyResult(0, [r.drew])
            else:
                again.append(j)
        if again:  # verified as plain cycles, as `_verify_sampled` verifies the rows it finds
            rows = [step.drawn[j] for j in again]
            index = self._on_device(again, step.drawn_logits.device)
            probs = process_rows(step.drawn_logits[index], [r.drawn_ahead[0] for r in rows])
            results = verify_sampling_rows([SampledVerify([], None, r.drawn_ahead[1], r.start + self._fed(r))
                                            for r in rows], probs)
            for r, result in zip(rows, results):
                r.verified = result

    @staticmethod
    def _fed(r: _Request) -> int:
        """The tokens a step feeds a request's row: its ids, or a guess's one token (filled on the device, its ids
        set only once its plan confirms it)."""
        return max(len(r.ids), 1)

    def _inputs(self, requests: list[_Request]) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """A step's token ids and positions [rows, n] on the host: each request's tokens in its own row from its
        start, padded to n; dummy rows and the padding write past max_len. And the columns its rows reach
        (`_reach` of those positions, from the starts: no tensor work on the host's path)."""
        rows, n = self.step_shape(max(r.index for r in requests) + 1, max(max(len(r.ids), 1) for r in requests))
        ids, starts = [0] * (rows * n), [self.max_len] * rows  # dummy rows: the padding columns
        for r in requests:
            ids[r.index * n:r.index * n + len(r.ids)] = r.ids
            starts[r.index] = r.start  # real tokens, then padded writes past them
        reach = min(max(starts[r.index] for r in requests) + n, self.max_len)  # a real row's positions below max_len
        return (self._pinned(ids).view(rows, n), self._pinned(torch.tensor(starts)[:, None] + self._columns[:n]),
                reach)

    def _draft_chained(self, requests: list[_Request]) -> None:
        """Every step of these draft chains (a runner without an engine loop), with no host read between steps:
        a row's next input is the token its last step drafted, its group's first value on the device, the token a
        replayed draft knows beforehand (`Grouped.known`), or a sampled chain's token drawn on the device
        (`_draw_chained`); every step's values are read at the end, in one host read, and picked from then. A draft
        step costs its forward, not a trip through the host. A sampled chain whose token the device could not draw
        exactly goes on a step at a time from there (`_chain_pass`).
        Chains whose caller wants them (`launched`) are told of their tokens on the device before that read. The first
        steps are those launched ahead from the verify's argmax where they stand for that chain (`_taken_ahead`): the
        others run theirs in a forward of their rows alone."""
        try:
            first = self._taken_ahead(requests)  # per step, the chains whose values of it are in already
            left = requests
            tell = True  # chains whose caller wants them are told of the first pass's tokens
            while left:
                left, first, tell = self._chain_pass(left, first, tell), None, False
            self._chain_ends = {r.index: r.start for r in requests}
        except BaseException as e:  # noqa: BLE001 - the caller's to handle
            for r in requests:
                self._fail(r, e)
            return
        for r in requests:
            _wake(r)

    def _chain_pass(self, requests: list[_Request],
                    first: list[list[tuple[list[_Request], torch.Tensor, object]]] | None, tell: bool) -> list[_Request]:
        """Run the steps these chains have left with one host read at the end (a stepwise chain: its next step, drawn
        on the host as `_draw_sampled` draws) and pick from it; -> the chains with steps left: those whose token the
        device drew from a nucleus it had not found (`sampling.process_first`) and the host drew otherwise, from there
        on a step at a time."""
        reads = []  # per step and group: (members, positions of their picks, values [members, m] on the device,
        #              a sampled group's (q [members, V'], its logits [members, V]), else None)
        slots = max(r.index for r in requests) + 1
        fed = torch.zeros(slots, dtype=torch.long, device=self.device)  # [slots]
        told = [r for r in requests if r.chain.launched is not None] if tell else []
        drafted = (torch.zeros((slots, max(r.chain.steps for r in told)), dtype=torch.long, device=self.device)
                   if told else None)  # [slots, steps]: each chain's tokens, for `launched`
        known_drafts: list[tuple[int, int, int]] = []  # (slot, step, token) a replayed draft knows on the host
        steps = {r: 1 if r.chain.stepwise else r.chain.steps - len(r.chain.picks) for r in requests}
        stepwise: list[tuple[_Request, int, torch.Tensor]] = []  # (request, position, its logits [V]) drawn on the host
        live, step, launched = requests, 0, time.perf_counter()
        timed = []  # per step run here: (its rows, a mark before it, a mark after it)
        first = first or []  # per step, groups whose values of it are in already (`_taken_ahead`)
        while live:
            with self._turn(), torch.inference_mode():
                in_already = first[step] if step < len(first) else []
                groups = [(members, self._on_device([r.index for r in members]), values, extra)
                          for members, values, extra in in_already]
                taken = {r for members, *_ in in_already for r in members}
                run = [r for r in live if r not in taken] if taken else live  # the rows this step forwards
                if run:
                    ids, positions, reach = self._inputs(run)
                    before = self._mark()
                    logits = self._batched(ids, positions, reach, [r.index for r in run if step and (
                        r.chain.group is None or r.chain.group.known is None)], fed)
                    timed.append((len(run), before, self._mark()))
                    self.stats.count(len(run), ids.shape[1])
                    groups += [(members, *self._read_rows(logits, read, members), None)  # [members], [members, m]
                               for read, members in self._by_read(run).items()]
                    sampled = [r for r in run if r.chain.sampled is not None and not r.chain.stepwise]
                    if sampled:
                        groups.append((sampled, *self._draw_chained(logits, sampled)))
                    alone = [r for r in run if r.chain.stepwise]
                    if alone:
                        where = self._on_device([[r.index for r in alone], [len(r.ids) - 1 for r in alone]],
                                                logits.device)
                        stepwise += zip(alone, [r.start + len(r.ids) for r in alone], logits[where[0], where[1]])
                for members, rows, values, extra in groups:
                    fed[rows] = values[:, 0]
                    if drafted is not None:
                        drafted[rows, step] = values[:, 0]
                    reads.append((members, [r.start + len(r.ids) for r in members], values, extra))
            for r in live:
                r.start, known = r.start + len(r.ids), r.chain.group.known if r.chain.group is not None else None
                r.ids = [known(r.start)] if known is not None else [0]  # 0: filled on the device
                if known is not None and drafted is not None:
                    known_drafts.append((r.index, step, r.ids[0]))
            step += 1
            live = [r for r in live if steps[r] > step]
        flat = (self._read_chains(torch.cat([values.flatten() for _, _, values, _ in reads]), told, drafted,
                                  known_drafts) if reads else [])  # the host read
        self.stats.forward_s += time.perf_counter() - launched  # the chain's launch to its values on the host
        for rows, before, after in timed:  # every step is done: its device time, what one more draft token costs
            self.costs.observe(rows, 1, self._elapsed(before, after))
        self._time_ahead()
        return self._pick_chained(reads, flat, stepwise)

    @staticmethod
    def _pick_chained(reads: list, flat: list, stepwise: list[tuple[_Request, int, torch.Tensor]]) -> list[_Request]:
        """Each chain's picks from a pass's values read (`_chain_pass`), step by step. A sampled chain's step whose
        token the device could not draw exactly (its nucleus not found among the first candidates) is drawn again on
        the host, with every such step of the round and the stepwise chains' steps in one draw: where the two agree
        the device's later steps stand, else they are dropped and the chain goes on from there, a step at a time.
        -> the chains with steps left."""
        entries: dict[_Request, list[tuple]] = {}  # per chain, by step: (position, value or None, q [V'], logits [V])
        at = 0
        for members, picked_at, values, extra in reads:
            m = values.shape[1]
            for b, (r, position) in enumerate(zip(members, picked_at)):
                entries.setdefault(r, []).append((position, flat[at:at + m], *((extra[0][b], extra[1][b])
                                                                                  if extra is not None else (None, None))))
                at += m
        for r, position, logits in stepwise:
            entries.setdefault(r, []).append((position, None, None, logits))
        cursor, walking, left = dict.fromkeys(entries, 0), list(entries), []
        while walking:
            redraw = []  # (chain, its step) drawn on the host
            for r in walking:
                for i in range(cursor[r], len(entries[r])):
                    position, value, q, _ = entries[r][i]
                    if r.chain.sampled is None:
                        r.chain.picks.append(r.chain.group.pick(value, position))
                        r.chain.fed.append(r.chain.picks[-1].token)
                        continue
                    if value is not None:
                        r.chain.fed.append(value[0])
                    if value is not None and value[1]:  # found: the device drew what the host draws
                        r.chain.picks.append(r.chain.sampled.pick(value[0], q))
                    else:
                        redraw.append((r, i))
                        break
            if not redraw:
                break
            drawn = draw_sampled(torch.stack([entries[r][i][3] for r, i in redraw]).float(),
                                 [r.chain.sampled for r, _ in redraw], [entries[r][i][0] for r, i in redraw])
            walking = []
            for (r, i), pick in zip(redraw, drawn):
                r.chain.picks.append(pick)
                position, value, _, _ = entries[r][i]
                if value is not None and pick.token == value[0]:  # the steps the device drew after it stand
                    cursor[r] = i + 1
                    walking.append(r)
                elif len(r.chain.picks) < r.chain.steps:
                    r.start, r.ids, r.chain.stepwise = position, [pick.token], True
                    left.append(r)
        return left

    def _draw_chained(self, logits: torch.Tensor, members: list[_Request]
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Sampled chains' next tokens drawn on the device from their rows of a step's logits [rows, n, V], with no
        host read (`runner.sampled_on_device`): -> (their rows [members], values [members, 2]: each token and whether
        its nucleus was found, (q [members, V'], their logits [members, V], a copy that outlives the next replay))."""
        where = self._on_device([[r.index for r in members], [len(r.ids) - 1 for r in members]], logits.device)
        chains = [r.chain.sampled for r in members]
        return where[0], *self._drawn(logits[where[0], where[1]], chains,
                                      draft_uniforms(chains, [r.start + len(r.ids) for r in members]))

    @staticmethod
    def _drawn(kept: torch.Tensor, chains: list[Sampled], u: Sequence[float] | torch.Tensor
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Sampled picks drawn on the device from their logits [s, V] (a copy that outlives the next replay), with no
        host read (`runner.sampled_on_device`): -> (values [s, 2]: each token and whether its nucleus was found, as
        `_pick_chained` reads them; (q [s, V'], those logits))."""
        q, tokens, found = sampled_on_device(kept.float(), chains, u, first=True)
        return torch.stack([tokens, found.long()], dim=1), (q, kept)

    def _mark(self) -> "float | torch.cuda.Event":
        """A point on the device's timeline (an event on a GPU; on a CPU, whose forwards the host waits for, now)."""
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    @staticmethod
    def _elapsed(before: "float | torch.cuda.Event", after: "float | torch.cuda.Event") -> float:
        """Seconds between two marks, once the later one is done."""
        return after - before if isinstance(before, float) else before.elapsed_time(after) / 1e3

    def _time_early(self, began: "float | torch.cuda.Event", before: "float | torch.cuda.Event",
                    after: "float | torch.cuda.Event") -> None:
        """A step launched in a drafting phase is read: how long the device waited for it once the work queued before the
        phase was done (the last verify, the draft steps launched ahead), and how long it ran: the engine's log says
        whether a late launch or the device's own work holds a drafted cycle."""
        if not isinstance(after, float):
            after.synchronize()  # recorded behind the step's own read-back
        s = self.stats
        s.early_waited_s += self._elapsed(began, before)
        s.early_device_s += self._elapsed(before, after)

    def _time_ahead(self) -> None:
        """After a host read: the draft steps launched ahead before it are done on the device; their time goes into
        the stats, so that the log tells what a drafted cycle's draft steps cost against the one-token steps the bound
        prices."""
        s, pending = self.stats, []
        for timed in self._ahead_timed:
            if not isinstance(timed.after, float) and not timed.after.query():
                pending.append(timed)  # still on the device: the next read times it
                continue
            s.ahead_launches, s.ahead_steps, s.ahead_width = (s.ahead_launches + 1, s.ahead_steps + timed.steps,
                                                              s.ahead_width + timed.width)
            seconds = self._elapsed(timed.before, timed.after)
            s.ahead_device_s += seconds
            if timed.since is not None:
                s.ahead_idled, s.ahead_idle_s = s.ahead_idled + 1, s.ahead_idle_s + self._elapsed(timed.since, timed.before)
            if timed.joined:
                s.ahead_joined, s.ahead_joined_s = s.ahead_joined + 1, s.ahead_joined_s + seconds
        self._ahead_timed = pending[-AHEAD_TIMED:]

    def _read_chains(self, values: torch.Tensor, told: list[_Request], drafted: torch.Tensor | None,
                     known_drafts: list[tuple[int, int, int]]) -> list:
        """A chained draft's values [m] read to the host. Chains whose caller wants them are told of their tokens
        (`drafted` [slots, steps], a replayed draft's written in from `known_drafts`) before the host waits: on a
        GPU the values are copied behind an event, so work the callers launch meanwhile runs while the host reads."""
        if not told:
            return values.tolist()
        if known_drafts:
            known = self._on_device(known_drafts).T  # [3, m]
            drafted[known[0], known[1]] = known[2]
        read_back = OnTheWay(values, self._chain_reads)
        by_call: dict[int, tuple[Launched, dict[int, Drafted]]] = {}
        for r in told:
            group = r.chain.group
            by_call.setdefault(id(r.chain.launched), (r.chain.launched, {}))[1][r.chain.index] = Drafted(
                drafted, r.index, r.chain.steps, r.chain.picks, r.chain.fed, self, group.read if group else None,
                r.chain.sampled, group.known if group else None)
        for call, chains in by_call.values():
            try:
                call(chains)
            except Exception:  # noqa: BLE001 - what the caller launches early is its own affair: the draft goes on
                log.exception("a chained draft's caller failed on its launched tokens")
        return read_back.get()

    def launch_ahead(self, rows: list[tuple[int, int, int, int, int]], tokens: torch.Tensor, top: torch.Tensor | None,
                     read: Callable[[torch.Tensor], torch.Tensor] | None,
                     joins: Sequence[tuple[DraftJoin, int, int]] = (), sampled: SampledAhead | None = None,
                     steps: Sequence[int] = (), known: Sequence[Callable[[int], int] | None] = (),
                     since: "float | torch.cuda.Event | None" = None) -> None:
        """Launch the first step of each row's next chain from a verify's argmax `top` [verify rows, n] on the device,
        before any host read. `rows`: (slot, L: the position the verify's first kept logits predict, K: the drafts it
        verifies, its row in `top`, that row's first kept column); `tokens` [slots, steps]: the drafts (Drafted). A
        row's accepted drafts are the leading ones equal to the argmax; its next chain begins with the argmax after
        them (the bonus token) at L + accepted, or, every draft accepted, with the last draft (not in the cache yet)
        and the bonus from L + K - 1. Either way the step writes only entries the committed sequence has there. Rows
        whose last chain did not end where K drafts from L end are left out.
        `sampled`: rows of a sampled verify, whose outcome the target worked out on the device: their next chains
        begin likewise, and each one's first pick is drawn on the device as its chain draws it (`_draw_chained`).
        `joins`: (a new session's draft, its prompt step's row in `top`, that row's kept column): the same step
        forwards its prompt and the token the target drew after it, from position 0, and reads its chain's first step
        there; its first drafting phase takes that as its catch-up (`joined_ahead`), and its chain's later steps
        (`DraftJoin.steps`) are launched with the rows'. A prompt wider than a graph step (every row is padded to a
        join's width) catches up on its own.
        `steps` (by row of `rows`; default 1 each): how many of its next chain's steps to launch, each after the first
        from the token the one before drafted (`known`, by row: a replayed draft's `Grouped.known`, the token it drafts
        at a position), so that the draft computes a whole chain while the host reads the verify (`_launch_later`).
        `since`: a mark (`_mark`) after the verify, to time how long the device idled between it and these steps."""
        def continues(slot: int, at: int, k: int) -> bool:
            return at + k < self.max_len and self._chain_ends.get(slot) == at + k - 1
        chained = [(r, n, f) for r, n, f in zip(rows, steps or [1] * len(rows), known or [None] * len(rows))
                   if continues(*r[:3])]
        rows = [r for r, _, _ in chained]
        drawn = [i for i, r in enumerate(sampled.rows) if continues(*r)] if sampled is not None else []
        joins = [j for j in joins if len(j[0].ids) < min(self.graph_max_tokens, self.max_len)]
        if not rows and not drawn and not joins:
            return
        width = max([2] + [len(join.ids) + 1 for join, _, _ in joins])
        launched = [r[0] for r in rows] + [join.slot for join, _, _ in joins] + [sampled.rows[i][0] for i in drawn]
        n_rows, n = self.step_shape(max(launched) + 1, width)
        columns = self._device_columns[:n]  # [n]
        ids = torch.zeros((n_rows, n), dtype=torch.long, device=self.device)
        positions = (self.max_len + columns).repeat(n_rows, 1)  # dummy rows: the padding
        greedy_reads, sampled_reads = [], []  # (slots, the column each one's values are read at) [m] each, per kind
        outcomes = []  # per kind of rows: (its reads, slot, L, K, accepted, the token after them) [m] each
        if rows:
            spec = self._on_device(rows)  # [m, 5]
            slot, at, k, row, first = spec.unbind(1)  # [m] each
            j = torch.arange(max(r[2] for r in rows) + 1, device=self.device)  # [K + 1]
            argmax = top[row[:, None], (first[:, None] + j).clamp(max=top.shape[1] - 1)]  # [m, K + 1]
            drafts = tokens[slot[:, None], j[:-1].clamp(max=tokens.shape[1] - 1)]  # [m, K]
            accepted = ((drafts == argmax[:, :-1]) & (j[:-1] < k[:, None])).long().cumprod(1).sum(1)  # [m]
            outcomes.append((greedy_reads, slot, at, k, accepted, argmax.gather(1, accepted[:, None])[:, 0]))
        if drawn:
            spec = self._on_device([sampled.rows[i] for i in drawn])  # [s, 3]
            index = self._on_device(drawn, sampled.accepted.device)  # [s]
            drawn_accepted = sampled.accepted[index].to(self.device)  # [s]
            outcomes.append((sampled_reads, *spec.unbind(1), drawn_accepted, sampled.token[index].to(self.device)))
        for reads, slot, at, k, accepted, bonus in outcomes:
            full = accepted == k  # every draft accepted: the last one goes in first
            last = tokens[slot, (k - 1).clamp(min=0)]  # [m]
            ids[slot, 0], ids[slot, 1] = torch.where(full, last, bonus), torch.where(full, bonus, 0)
            positions[slot, 0] = torch.where(full, at + k - 1, at + accepted)
            positions[slot, 1] = torch.where(full, at + k, self.max_len + 1)
            reads.append((slot, full.long()))  # each row's last token's
        ends = [(at, k) for _, at, k, *_ in rows] + [sampled.rows[i][1:] for i in drawn]  # (L, K) of every row
        reach = max([0] + [at + k + 1 for at, k in ends])
        if joins:
            prompts = self._on_device([join.ids + [0] * (n - len(join.ids)) for join, _, _ in joins])  # [m', n]
            spec = self._on_device([(join.slot, row, column, len(join.ids)) for join, row, column in joins])  # [m', 4]
            slot, row, column, length = spec.unbind(1)  # [m'] each
            ids[slot] = prompts
            ids[slot, length] = top[row, column]  # the token the prompt step drew
            positions[slot] = torch.where(columns <= length[:, None], columns, self.max_len + columns)
            greedy_reads.append((slot, length))  # read with the greedy rows
            reach = max([reach] + [len(join.ids) + 1 for join, _, _ in joins])
        values = picks = None
        for i in drawn:  # until `expect_ahead` checks its guess: the step may write a wrong token at L + accepted
            self._rewrite[sampled.rows[i][0]] = sampled.rows[i][1]
        with self._turn(), torch.inference_mode():
            before = self._mark()
            logits = self._batched(ids, positions, min(reach, self.max_len), [], None)
            order = greedy_reads + sampled_reads
            kept = logits[torch.cat([s for s, _ in order]), torch.cat([c for _, c in order])]  # [m + m' + s, V]:
            #                                                                          greedy rows, joins, sampled rows
            greedy = len(rows) + len(joins)
            if greedy:
                values = read(kept[:greedy].float())  # [m + m', values]
            if drawn:
                picks = self._draw_ahead_picks(kept[greedy:], [sampled.rows[i] for i in drawn],
                                               [sampled.chains[i] for i in drawn], drawn_accepted)
            self.stats.count(len(launched), n)
            later = self._launch_later(*self._later_rows(chained, outcomes[0] if rows else None, joins),
                                       values[:greedy, 0], read) if greedy else []
            self._time_ahead()
            self._ahead_timed.append(_AheadTimed(before, self._mark(), 1 + len(later), n, bool(joins), since))
        self.stats.ahead += len(rows) + len(drawn) + sum(len(where) for where, _ in later)
        self.stats.joins += len(joins)
        self._ahead = _Ahead(read, {s: i for i, s in enumerate(launched[:greedy])}, {s: self._closes[s] for s in launched},
                             values, joins={join.slot: join.ids for join, _, _ in joins},
                             drawn={sampled.rows[i][0]: (b, sampled.chains[i], i) for b, i in enumerate(drawn)},
                             picks=picks, guesses=sampled.outcomes if sampled is not None else None, later=later)

    def _later_rows(self, chained: list[tuple[tuple[int, int, int, int, int], int, Callable[[int], int] | None]],
                    outcome: tuple | None, joins: Sequence[tuple[DraftJoin, int, int]]
                    ) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_launch_later`'s rows and their (slot, L, accepted) [m] each: the greedy rows' (`chained`, `outcome`: their
        first step's, None where there are none), then the joins', each a chain whose first step forwarded its
        prompt's last token at its length p, so that its step s feeds the token drafted at p + s as a row that
        accepted 0 drafts from L = p does."""
        rows = chained + [((join.slot, len(join.ids), 0, row, column), join.steps, join.known)
                          for join, row, column in joins]
        parts = [outcome[1:3] + outcome[4:5]] if outcome is not None else []  # (slot, L, accepted) of the rows
        if joins:
            spec = self._on_device([[join.slot, len(join.ids)] for join, _, _ in joins])  # [m', 2]
            parts.append((spec[:, 0], spec[:, 1], torch.zeros_like(spec[:, 0])))
        if len(parts) == 1:  # no copies where the rows or the joins are alone
            return rows, *parts[0]
        slot, at, accepted = (torch.cat(part) for part in zip(*parts))
        return rows, slot, at, accepted

    def _launch_later(self, rows: list[tuple[tuple[int, int, int, int, int], int, Callable[[int], int] | None]],
                      slot: torch.Tensor, at: torch.Tensor, accepted: torch.Tensor, token: torch.Tensor,
                      read: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[dict[int, int], torch.Tensor]]:
        """The steps after the first of greedy rows' (and joins') next chains (`launch_ahead`, `_later_rows`), on the
        device with no host read: a row (spec, steps, known) that accepted a drafts feeds at L + a + s the token its
        step s - 1 drafted (`token` [m] for s = 1), or a replayed draft's known token there, picked from those at every
        a. Each step writes past the committed sequence, where its chain's own step would, and only its rows whose
        chain reaches it within max_len. `slot`, `at` (L), `accepted` [m]: each row's, from its first step. -> per step
        from the second: (draft slot -> its row in the values, the values [rows', m] of its rows' logits read by
        `read`)."""
        most = max(n for _, n, _ in rows)
        knows = any(f is not None for _, _, f in rows)
        if knows:  # [m, K + steps + 1]: the token a replayed draft drafts at L + j, read from the table by the device
            width = max(spec[2] + n for spec, n, _ in rows) + 1
            table = self._on_device([[f(spec[1] + j) for j in range(width)] if f is not None else [0] * width
                                     for spec, _, f in rows])
            replayed = self._on_device([f is not None for _, _, f in rows], dtype=torch.bool)  # [m]
        later = []
        for s in range(1, most):  # the last step's draft is fed to no step
            if knows:
                token = torch.where(replayed, table.gather(1, (accepted + s).clamp(max=table.shape[1] - 1)[:, None])[:, 0],
                                    token)
            live = [i for i, (spec, n, _) in enumerate(rows) if n > s and spec[1] + spec[2] + s < self.max_len]
            if not live:
                continue
            index = self._on_device(live)  # [m']
            n_rows, _ = self.step_shape(max(rows[i][0][0] for i in live) + 1, 1)
            ids = torch.zeros((n_rows, 1), dtype=torch.long, device=self.device)
            positions = torch.full((n_rows, 1), self.max_len, dtype=torch.long, device=self.device)  # dummy rows
            ids[slot[index], 0] = token[index]
            positions[slot[index], 0] = at[index] + accepted[index] + s
            reach = max(rows[i][0][1] + rows[i][0][2] + s + 1 for i in live)
            logits = self._batched(ids, positions, min(reach, self.max_len), [], None)
            values = read(logits[slot[index], 0].float())  # [m', values]
            token = token.clone()
            token[index] = values[:, 0]
            later.append(({rows[i][0][0]: b for b, i in enumerate(live)}, values))
            self.stats.count(len(live), 1)
        return later

    def _draw_ahead_picks(self, kept: torch.Tensor, rows: list[tuple[int, int, int]], chains: list[Sampled],
                          accepted: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The first picks of sampled rows' next chains, from the step launched ahead's logits [s, V] at each row's
        last token, as `_draw_chained` draws a chain's step: a row (slot, L, K) that accepted a drafts picks the token
        at L + a + 1, whose uniform number is taken on the device from those of every a. -> (values [s, 2], (q, logits))."""
        width = max(k for _, _, k in rows) + 1
        u = self._on_device([[*draft_uniforms([c] * (k + 1), range(at + 1, at + k + 2)), *[0.0] * (width - k - 1)]
                             for c, (_, at, k) in zip(chains, rows)], dtype=torch.float64)  # [s, width]
        return self._drawn(kept, chains, u.gather(1, accepted[:, None])[:, 0])

    def expect_ahead(self, slot: int, start: int, drafts: list[int], accepted: int, token: int) -> None:
        """The host's side of `launch_ahead`, once it has verified: row `slot` verified the K `drafts` from position
        `start` (a join's: none, from the end of its prompt), accepted `accepted` of them and drew `token` after them;
        how its next chain must begin, (start, ids), for the step launched ahead to be its first."""
        ahead = self._ahead
        if ahead is None or (slot not in ahead.rows and slot not in ahead.drawn):
            return
        k = len(drafts)
        if slot in ahead.drawn:  # a sampled row: the step stands only where the device guessed the host's outcome
            guessed, wanted = ahead.guesses.get()[ahead.drawn[slot][2]][:2], [accepted, token]
            if guessed != wanted:  # its writes from L + min(guessed, K - 1) on: not the committed sequence's
                self._rewrite[slot] = start + min(guessed[0], max(k - 1, 0))
                return
            self._rewrite.pop(slot, None)
        ahead.expected[slot] = ((start + accepted, [token]) if accepted < k or not k
                                else (start + k - 1, [drafts[-1], token]))

    def joined_ahead(self, slot: KVSlot, ids: Sequence[int], read: Callable[[torch.Tensor], torch.Tensor]
                     ) -> torch.Tensor | None:
        """A new session's catch-up on `ids` (its prompt and the first token) done by the step launched ahead
        (`launch_ahead`'s `joins`), where that step forwarded exactly them into this slot and nothing wrote to it or
        closed it since: its chain's first step's values [1, m] on the device (`Chain.first`), the slot then holding
        `ids`. None: it must catch up itself (`catch_up_reads`)."""
        ahead = self._ahead
        if (ahead is None or slot.index not in ahead.joins or ahead.read is not read
                or ahead.joins[slot.index] != list(ids[:-1])
                or ahead.expected.get(slot.index) != (len(ids) - 1, list(ids[-1:])) or slot.index in ahead.touched
                or self._closes[slot.index] != ahead.closes[slot.index]):
            return None
        slot.tokens = list(ids)
        ahead.joined.add(slot.index)
        self.stats.joins_kept += 1
        i = ahead.rows[slot.index]
        return ahead.values[i:i + 1]

    def _taken_ahead(self, requests: list[_Request]) -> list[list[tuple[list[_Request], torch.Tensor, object]]]:
        """Per step from the first, the chains whose values of that step they have already, in groups as a step's
        (members, values [members, m] in their order, a sampled group's (q, logits) or None): the first step's from a
        chain's catch-up (`_Chain.first`: a new session's, or one resumed after a pause), or from the step launched
        ahead, where its chain begins as expected, in a slot nothing else wrote to or closed since, drawn by the same
        read (a sampled chain's: for the same chain); the later steps' launched ahead (`_launch_later`), for the chains
        that took the first and reach them. The others (one whose verify took another turn) run their steps
        themselves, over whatever the steps launched ahead wrote (the first: entries the committed sequence has; the
        later: entries past it, which their own steps write again)."""
        ahead, self._ahead = self._ahead, None

        def stands(r: _Request) -> bool:
            return (ahead.expected.get(r.index) == (r.start, r.ids) and r.index not in ahead.touched
                    and self._closes[r.index] == ahead.closes[r.index])
        groups, later = [], []
        grouped = [r for r in requests if r.chain.group is not None]
        if grouped:
            read = ahead.read if ahead is not None and ahead.read is not None else grouped[0].chain.group.read
            taken = [r for r in grouped if r.chain.group.read is read and (r.chain.first is not None or (
                ahead is not None and r.index in ahead.rows and stands(r)))]
            from_ahead = [r for r in taken if r.chain.first is None]
            self.stats.ahead_kept += len(from_ahead)
            ahead_values = ahead.values[self._on_device([ahead.rows[r.index] for r in from_ahead])] if from_ahead else None
            if taken and len(from_ahead) == len(taken):  # the usual case: one gather, not a tensor per row
                groups.append((taken, ahead_values, None))
            elif taken:
                values = iter(ahead_values.unbind() if from_ahead else ())
                groups.append((taken, torch.stack([r.chain.first[0] if r.chain.first is not None else next(values)
                                                   for r in taken]), None))
            joined = [r for r in taken if r.chain.first is not None and ahead is not None and r.index in ahead.joined]
            later = self._taken_later(ahead, from_ahead + joined)
        drawn = [r for r in requests if r.chain.sampled is not None and ahead is not None and r.index in ahead.drawn
                 and ahead.drawn[r.index][1] is r.chain.sampled and stands(r)]
        if drawn:
            self.stats.ahead_kept += len(drawn)
            index = self._on_device([ahead.drawn[r.index][0] for r in drawn])  # [drawn]
            values, (q, logits) = ahead.picks
            groups.append((drawn, values[index], (q[index], logits[index])))
        return [groups, *later]

    def _taken_later(self, ahead: _Ahead, chains: list[_Request]) -> list[list[tuple]]:
        """The later steps launched ahead (`_Ahead.later`) that `chains` (those that took their first step from it) take:
        per step, as one group, those whose chain reaches that step and that took every step before it."""
        steps = []
        for where, values in ahead.later if chains else ():
            chains = [r for r in chains if r.index in where and r.chain.steps - len(r.chain.picks) > len(steps) + 1]
            if not chains:
                break
            self.stats.ahead_kept += len(chains)
            steps.append([(chains, values[self._on_device([where[r.index] for r in chains])], None)])
        return steps

    def _readback(self, top: torch.Tensor, ring: str = "step") -> tuple[torch.Tensor, "torch.cuda.Event"]:
        """Copy a step's argmax to the host without waiting: into one of two pinned buffers of its shape, taken
        in turn (at most two steps are unread at once), with an event recorded after the copy. A chunk read apart
        (`_launch_chunks`) takes buffers of its own `ring`: it is unread while two steps are."""
        key = (ring, *top.shape)
        buffers = self._readbacks.get(key) or self._add_readbacks(key)
        buffers.append(buffers.pop(0))
        host_top, ready = buffers[0]
        host_top.copy_(top, non_blocking=True)
        ready.record(torch.cuda.current_stream(top.device))
        return host_top, ready

    def _add_readbacks(self, key: tuple) -> list:
        """Pinned buffers are allocated before serving (`_capture_all`): a first allocation costs milliseconds.
        `key`: the ring's name, then the shape."""
        ring = self._readbacks[key] = [(torch.empty(key[1:], dtype=torch.long, pin_memory=True), torch.cuda.Event())
                                       for _ in range(2)]
        return ring

    def _read(self, step: _Launched) -> None:
        """Read a launched step's results: one host sync for all rows."""
        if step.ready is not None:
            step.ready.synchronize()
        top = step.host_top.tolist() if step.host_top is not None else None
        read = time.perf_counter()
        if step.timeline is not None:
            self._time_early(*step.timeline)
        began = max(step.began, self._read_at)  # launched ahead: its cost starts when the last step was read
        self.stats.forward_s += read - max(step.launched, self._read_at)
        self._read_at, self._read_cpu = read, time.thread_time()
        step.cost_from = began
        step.chunk_in, self._apart_at_read = self.stats.chunks_apart != self._apart_at_read, self.stats.chunks_apart
        requests = [r for r in step.requests if not r.void]
        if requests and not step.pipelined and not self.passive:  # by its own rows: a few rows' step launched amid
            # drafting (a row near its end, a new one) costs far less than a plain step of every row (benchmarks, v1)
            self.costs.observe_forward(len(step.requests), step.n, read - step.launched)
        if step.drawn:
            self._take_drawn(step, top)
        if not step.ahead:  # else the next replay has overwritten the logits: only greedy and drawn rows were launched
            self._take_outcomes(requests)
            self._draw_groups(step.logits, requests)
            self._draw_sampled(step.logits, requests)
            self._verify_sampled(step.logits, requests)
        for r in requests:
            kept = slice(len(r.ids) - r.keep, len(r.ids))
            if r.greedy:
                r.argmax = top[r.index][kept]
            elif r.pick is None and r.verified is None:
                r.logits = step.logits[r.index, kept].to(torch.float32, copy=True)
            r.started = began

    def _time_cycle(self, row: _Row, tokens: int, width: int) -> None:
        """A session's cycle, from its last cycle's end to this one's (kept for `_fold_cycles`), where both
        forwarded `tokens` tokens: a change of K is a transition (a session that stops drafting waits for the
        step launched ahead of it; one that starts waits for its draft to catch up). Timed only where every row
        did as this one: not in a step wider than its own forward (`width` tokens: others verified more), nor
        with steps of another width in it (others' verifies, or plain steps it was not in), nor, plain, with a
        drafting phase in it, nor with a new prompt split over its steps (`_split_joins`: such a prompt would have
        widened one, and its session's draft catches up in them; the cycles a join leaves alone are the sample either
        way). A plain cycle timed amid drafting ones looks as slow as theirs, and every session drafts where all
        decoding plainly would be faster."""
        now, s = time.perf_counter(), self.stats
        own = self.step_shape(1, tokens)[1]
        others = s.others(own)
        if (row.cycle_tokens == tokens and width == own and others == row.cycle_others
                and not (tokens == 1 and s.drafting_phases > row.cycle_phases) and s.chunks_apart == row.cycle_apart
                and s.joins_split == row.cycle_split):
            self._cycles.setdefault(tokens, []).append(now - row.cycle_end - (self._uncharged_s - row.cycle_uncharged))
        row.cycle_end, row.cycle_tokens, row.cycle_phases = now, tokens, s.drafting_phases
        row.cycle_uncharged, row.cycle_others, row.cycle_apart = self._uncharged_s, others, s.chunks_apart
        row.cycle_split = s.joins_split

    def _fold_cycles(self) -> None:
        """The cycles that ended in one step, their mean per token count into the table once
        (StepCostTable.observe_cycle)."""
        cycles, self._cycles = self._cycles, {}
        for tokens, seconds in cycles.items():
            self.costs.observe_cycle(self.batch_rows(), tokens, sum(seconds) / len(seconds), samples=len(seconds))

    def _hand_on(self, step: _Launched) -> None:
        """Complete every row of a step that was read; the step's cost goes into the table (unless every row
        of it was a dropped guess: such a step ran while its sessions' drafts drafted, on a shared GPU)."""
        useful = [r for r in step.requests if not r.void]
        s = self.stats
        s.driven, s.open_slots = s.driven + len(self._rows), s.open_slots + len(self._open)  # those the step ended still
        for r in useful:
            self._deliver(r, step.n)
        self._fold_cycles()
        began = step.cost_from  # drafting for the next step while this one was on the device is not its cost
        step_s = (self._read_at if step.ahead else time.perf_counter()) - began - (s.drafting_s - step.drafted_before)
        if useful and not step.chunk_in:
            self.costs.observe(len(step.requests), step.n, step_s)
        s.count(len(step.requests), step.n)
        s.busy_s += step_s
        self._lately.append(len(self._rows))
        self._lately_most = max(self._lately)
        self.on_step(len(step.requests), step_s)

    def _draw_groups(self, logits: torch.Tensor, requests: list[_Request]) -> None:
        """Pick the next token of every grouped draft chain of a step, a group at a time (one draw and one
        host read for all its rows, instead of one per row)."""
        for read, members in self._by_read(requests).items():
            for r, values in zip(members, self._read_rows(logits, read, members)[1].tolist()):
                r.pick = r.chain.group.pick(values, r.start + len(r.ids))

    def _draw_sampled(self, logits: torch.Tensor, requests: list[_Request]) -> None:
        """Pick the next token of every sampled draft chain of a step at once (runner.draw_sampled), from its last
        logits [rows, n, V]. Where that fails, each chain draws alone (`_next_pick`), so that only a failing one ends."""
        rows = [r for r in requests if r.chain is not None and r.pick is None and r.chain.sampled is not None]
        if not rows:
            return
        where = self._on_device([[r.index for r in rows], [len(r.ids) - 1 for r in rows]], logits.device)
        try:
            picks = draw_sampled(logits[where[0], where[1]].float(), [r.chain.sampled for r in rows],
                                 [r.start + len(r.ids) for r in rows])
        except Exception:  # noqa: BLE001 - one chain's failure must not end the others
            log.exception("drawing a step's sampled drafts together failed: each draws alone")
            return
        for r, pick in zip(rows, picks):
            r.pick = pick

    def _verify_sampled(self, logits: torch.Tensor, requests: list[_Request]) -> None:
        """Verify every sampled session's cycle among a step's requests at once (verify.verify_sampling_rows), from
        its kept logits [rows, n, V]; each gets its `verified` result. Where that fails, each row is verified alone
        (as the rows of a chunked prompt are), so that only a failing session ends."""
        rows = [(r, v) for r in requests if not r.greedy and r.row is not None and r.verified is None
                and (v := r.row.loop.sampled_verify())]
        if not rows:
            return
        at = [(r.index, len(r.ids) - r.keep + j) for r, _ in rows for j in range(r.keep)]
        where = self._on_device(list(zip(*at)), logits.device)  # [2, positions]
        try:
            probs = process_rows(logits[where[0], where[1]], [p for r, (p, _) in rows for _ in range(r.keep)])
            results = verify_sampling_rows([v for _, (_, v) in rows], probs)
        except Exception:  # noqa: BLE001 - one row's bad draft must not end the others
            log.exception("verifying a step's sampled rows together failed: each is verified alone")
            return
        for (r, _), result in zip(rows, results):
            r.verified = result

    def _read_rows(self, logits: torch.Tensor, read: Callable[[torch.Tensor], torch.Tensor],
                   members: list[_Request]) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's `read` of its members' rows of a step's logits [rows, n, V], each at its last token: (their
        rows [members], the values [members, m]), on the device."""
        where = self._on_device([[r.index for r in members], [len(r.ids) - 1 for r in members]], logits.device)
        return where[0], read(logits[where[0], where[1]].float())  # where: [2, members]

    @staticmethod
    def _by_read(requests: list[_Request]) -> dict[object, list[_Request]]:
        """The grouped draft chains' requests, by their groups' shared `read`."""
        groups: dict[object, list[_Request]] = {}
        for r in requests:
            if r.chain is not None and r.chain.group is not None:
                groups.setdefault(r.chain.group.read, []).append(r)
        return groups

    def _run_chunks(self, requests: list[_Request]) -> None:
        """The next chunk of each long request, in one forward (prompt lengths vary): `_launch_chunks`, then its
        results read and handed on (`_finish_chunks`)."""
        self._finish_chunks(self._launch_chunks(requests))

    def _launch_chunks(self, requests: list[_Request], read_apart: bool = False) -> _Chunks:
        """Launch the next chunk of each long request, in one forward: a chunk graph's where there is one for their
        number and length (rows at any slots, the requests' own, then dummies), else an eager one over slots
        [lo, hi). Each row is left-padded so that its last token is in the last column, where the kept logits are;
        the padding (and a dummy row, or a slot in the range with nothing to do) writes only into the padding
        column max_len. On a GPU the shape is rounded up to a bucket of rows and of tokens: each new shape costs the
        attention kernels' set-up again, and a catch-up's length is new almost every time. `read_apart` (`_reads_apart`,
        launched inside the launch of the step ahead): their argmax is copied to the host behind an event of its own
        (a GPU's), so that the step launched after the chunk does not hold its read (`_finish_chunks`)."""
        now = time.perf_counter()
        self._arrived(requests, now)
        chunks = [r.ids[r.fed:r.fed + self.prefill_chunk] for r in requests]
        last = [r.fed + len(c) == len(r.ids) for r, c in zip(requests, chunks)]
        wanted = max(r.keep if done else 1 for r, done in zip(requests, last))
        n, graph = self._chunk_form(requests, max(len(c) for c in chunks), wanted)
        keep = min(n, wanted)
        if graph is not None:
            rows, row_of = graph.inputs.ids.shape[0], {id(r): i for i, r in enumerate(requests)}
        else:
            lo, hi = min(r.index for r in requests), max(r.index for r in requests) + 1
            if self.bucket_chunks:
                span = self._span_rows(hi - lo)
                lo = min(lo, self.max_sessions - span)
                hi = lo + span
            rows, row_of = hi - lo, {id(r): r.index - lo for r in requests}
        ids = torch.zeros((rows, n), dtype=torch.long)
        positions = torch.full((rows, n), self.max_len, dtype=torch.long)  # padding and dummy rows: column max_len
        for r, c in zip(requests, chunks):
            r.started = r.started if r.fed else now
            ids[row_of[id(r)], n - len(c):] = torch.tensor(c)
            positions[row_of[id(r)], n - len(c):] = torch.arange(r.start + r.fed, r.start + r.fed + len(c))
        self._publish()
        read = None
        # read apart, it is launched inside the launch of the step ahead, which holds the turn (a CPU's)
        with contextlib.nullcontext() if read_apart else self._turn(), torch.inference_mode():
            if graph is not None:
                slots = [r.index for r in requests] + [requests[0].index] * (rows - len(requests))  # dummies: padding
                logits = self._replay(graph, self._pinned(ids), self._pinned(positions), self._pinned(slots))  # [rows, 1, V]
            else:
                logits = self._eager(ids, positions, keep=keep, first_slot=lo)  # [hi - lo, keep, V]
            for r, done in zip(requests, last):
                if done:
                    # [keep, V], a copy: a chunk graph's logits are its output buffer, which the next replay
                    # overwrites before a caller reading them later (catch_up_reads) has read them
                    r.logits = logits[row_of[id(r)], keep - min(r.keep, keep):].to(torch.float32, copy=True)
            if read_apart:
                top = logits[:, -1].argmax(-1, keepdim=True)  # [rows, 1]
                read = self._readback(top, ring="chunk") if top.is_cuda else (top, None)
        return _Chunks(requests, chunks, last, n, now, row_of, read)

    def _finish_chunks(self, launched: _Chunks) -> None:
        """A chunk launched by `_launch_chunks`: its greedy requests' argmax read, each request done handed on, the
        others pending again for their next chunk."""
        requests, row_of = launched.requests, launched.row_of
        if launched.read is not None:
            host_top, ready = launched.read
            if ready is not None:
                ready.synchronize()  # the chunk's copy: not the steps launched after it
            tops = host_top[:, 0].tolist()
            for r in requests:
                r.argmax = [tops[row_of[id(r)]]]
        else:
            for r, done in zip(requests, launched.last):
                if done:
                    r.argmax = r.logits.argmax(-1).tolist() if r.greedy else None
        self.stats.prefill_chunks += 1
        self.stats.prefill_rows += len(requests)
        self.stats.chunks_apart += launched.read is not None
        if launched.read is None:  # a new session's prompt, run in turn: not the running sessions' cycles
            self._uncharged_s += time.perf_counter() - launched.began
        # read apart, it ran on the device between two steps, partly before the host read the first where the host was
        # late: the step and the cycles its time fell in are not timed (`chunk_in`, `_Row.cycle_apart`)
        for r, c, done in zip(requests, launched.chunks, launched.last):
            r.fed += len(c)
            if done:
                self._deliver(r, launched.n)
            else:
                with self._cv:
                    self._pending.append(r)  # its next chunk goes with the next step
        self._fold_cycles()

    def _launch_apart(self, requests: list[_Request]) -> tuple[_Chunks | None, list[_Request]]:
        """`_launch_chunks(requests, read_apart=True)`, and the requests still to run: a chunk that fails fails its
        own requests only, not the step in flight."""
        try:
            return self._launch_chunks(requests, read_apart=True), requests
        except BaseException as e:  # noqa: BLE001 - handed to their callers
            log.exception("batched forward failed")
            for r in requests:
                self._fail(r, e)
            return None, []

    def _reads_apart(self, requests: list[_Request]) -> bool:
        """Whether a chunk of `requests` may be launched before the step ahead, its read apart from that step's
        (`_launch_chunks`): looking ahead (a GPU's), greedy prompts that fit one chunk, whose result is their argmax
        alone."""
        return (self.lookahead
                and all(r.greedy and r.keep == 1 and r.chain is None and not r.fed
                        and len(r.ids) <= self.prefill_chunk for r in requests))

    def _chunk_tokens(self, left: int) -> int:
        """The tokens per row a chunk of a request with `left` tokens still to feed runs as: at most a prefill
        chunk, on a GPU rounded up to a chunk bucket."""
        n = min(left, self.prefill_chunk)
        return max(n, min(bucket(n, CHUNK_BUCKETS), self._longest_chunk())) if self.bucket_chunks else n

    def step_shape(self, rows: int, tokens: int) -> tuple[int, int]:
        """The (rows, tokens per row) a step of that many runs as: with CUDA graphs, the captured bucket."""
        if not self.cuda_graphs:
            return rows, tokens
        return min(bucket(rows, ROW_BUCKETS), self.max_sessions), bucket(tokens, TOKEN_BUCKETS)

    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One step's forward of ids [rows, n] at positions [rows, n] into slots [0, rows), as the engine runs it
        (a CUDA graph where one is captured), outside its loop: for measuring step costs on an idle runner."""
        return self._batched(ids, positions, self._reach(positions), [], None)

    def _batched(self, ids: torch.Tensor, positions: torch.Tensor, reach: int | None, guessed: list[int],
                 fed: torch.Tensor | None, fill: Fill | None = None) -> torch.Tensor:
        """ids, positions [rows, n], whose rows reach `reach` columns (`_reach`); rows `guessed` take their first
        token from `fed` [rows or more] on the device (a token the last step drew there), and `fill`'s (rows,
        columns, tokens) are written there."""
        rows, n = ids.shape
        with torch.inference_mode():
            if not self.cuda_graphs:
                ids, positions = self._on_device(ids), self._on_device(positions)
                self._fill_guesses(ids, guessed, fed, fill)
                return self._run(_StepInputs(ids, positions, 0, self._span(reach)), keep=n)
            g = self._graphs[(rows, n, self._graph_span(reach))]  # all captured at start
            return self._replay(g, ids, positions, guessed=guessed, fed=fed, fill=fill)

    def _replay(self, g: _Graph, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor | None = None,
                guessed: Sequence[int] = (), fed: torch.Tensor | None = None, fill: Fill | None = None) -> torch.Tensor:
        """A graph's forward of ids, positions [rows, n]: for the rows at `slots` [rows] (a prompt chunk's graph),
        rows `guessed` taking their first token from `fed` and `fill`'s tokens written (`_fill_guesses`)."""
        with torch.cuda.device(self.device):
            g.inputs.ids.copy_(ids, non_blocking=True)
            g.inputs.positions.copy_(positions, non_blocking=True)
            if slots is not None:
                g.inputs.slots.copy_(slots, non_blocking=True)
            self._fill_guesses(g.inputs.ids, guessed, fed, fill)
            g.graph.replay()
            return g.logits

    def _fill_guesses(self, ids: torch.Tensor, guessed: Sequence[int], fed: torch.Tensor | None,
                      fill: Fill | None = None) -> None:
        """Write on the device the tokens the host has not read: guessed rows' first (from `fed`), and `fill`'s."""
        if guessed:
            index = self._on_device(guessed)  # [guessed]
            ids[index, 0] = fed[index]
        if fill is not None:
            rows, columns, tokens = fill
            ids[rows, columns] = tokens

    def _eager(self, ids: torch.Tensor, positions: torch.Tensor, keep: int, first_slot: int = 0,
               span: int | None = None) -> torch.Tensor:
        """One forward of ids [B, n] at positions [B, n] into slots [first_slot, first_slot + B), attending over
        `span` columns (None: `_span`'s)."""
        span = self._span(self._reach(positions)) if span is None else span
        return self._run(_StepInputs(self._on_device(ids), self._on_device(positions), first_slot, span), keep)

    def _span(self, reach: int | None) -> int | None:
        """On a CPU, the columns an eager step attends over: those its rows reach. None on a GPU, where an eager
        step's shape is a warmed-up bucket's (a new key length would be compiled or set up anew); graph steps
        attend over a span bucket (`_batched`)."""
        return reach if self.device.type == "cpu" else None

    def _graph_span(self, reach: int | None) -> int:
        """The span a graph step whose rows reach `reach` columns attends over: the smallest that reaches past
        its real rows."""
        return bucket(reach or 1, self._spans)

    def _reach(self, positions: torch.Tensor) -> int | None:
        """The cache columns a step's real rows reach (positions [B, n] on the host; dummy rows and padding past
        max_len are not real rows'): attention need read no further. None when no row is real."""
        real = positions[positions < self.max_len]
        return int(real.max()) + 1 if real.numel() else None

    def _run(self, inputs: _StepInputs, keep: int) -> torch.Tensor:
        """The model's forward over `inputs`; returns logits [B, keep, V]."""
        step = self.step
        step.ids, step.positions, step.first_slot = inputs.ids, inputs.positions, inputs.first_slot  # read by RowsCache
        step.span = self.max_len + self.pad if inputs.span is None else inputs.span  # read by RowsCache
        step.slots = inputs.slots
        step.rows = inputs.slots if inputs.slots is not None else torch.arange(
            inputs.first_slot, inputs.first_slot + inputs.ids.shape[0], device=self.device)
        keys = self._key_positions[:step.span]  # [span]: the columns attended over
        mask = step_mask(keys[None, None, None, :] <= inputs.positions[:, None, :, None], self._groups,
                         self.cache.keys.dtype)  # [B, 1, n, L] allowed, or folded and additive: once for every layer
        return self.model(input_ids=inputs.ids, position_ids=inputs.positions, attention_mask=mask, use_cache=True,
                          logits_to_keep=keep, **{self._cache_kw: self.cache}).logits

    def _longest_chunk(self) -> int:
        """The most tokens per row a prompt chunk runs as."""
        return min(self.prefill_chunk, self.max_len)

    def _chunk_lengths(self) -> set[int]:
        """The tokens per row a prompt chunk runs as on a GPU (`_run_chunks` rounds up to these)."""
        longest = self._longest_chunk()
        return {*(c for c in CHUNK_BUCKETS if c < longest), longest}

    def _warm_up_shapes(self) -> None:
        """Run each of `_warm_up_forwards` once, at start, writing only slots no session holds yet."""
        forwards = self._warm_up_forwards()
        progress = LogProgress(log, "compiling and warming up shapes", len(forwards))
        for b, n, first, span in forwards:
            progress.item(f"{b} rows x {n} tokens")
            ids, positions = torch.zeros((b, n), dtype=torch.long), torch.arange(n).repeat(b, 1)  # as callers' are
            with torch.inference_mode():
                self._eager(ids, positions, keep=1, first_slot=first, span=span)

    def _warm_up_forwards(self) -> list[tuple[int, int, int, int | None]]:
        """The (rows, tokens, first slot, span or None) of the forwards the warm-up runs: compiled layers compile
        each shape class here (rows 1 or more x one token, a verify's tokens, a prompt chunk's), never in a served
        step, after `_prime_shapes`; and on a GPU each bucketed eager prompt-chunk shape of up to four rows sets up
        its attention kernels here, where an eager chunk (one that keeps more than its last logits; prompts and
        catch-ups replay chunk graphs) would otherwise pay for it."""
        shapes = set()
        if self.compiled:
            shapes |= {(b, n) for b in {1, min(2, self.max_sessions)} for n in (1, self.pad, self._longest_chunk())}
        if self.bucket_chunks:
            shapes |= {(min(b, self.max_sessions), n) for b in ROW_BUCKETS[:3] for n in self._chunk_lengths()}
        primes = self._prime_shapes() if self.compiled else []
        return primes + [(b, n, 0, None) for b, n in sorted(shapes)]

    def _prime_shapes(self) -> list[tuple[int, int, int, int | None]]:
        """The first forwards of compiled layers (automatic dynamic shapes, core.compiled): the second changes every
        size and integer a served step varies from the first (rows, tokens, first slot, span), so what compiles
        after it is generic in them; the third is the generic program for one row of one token (dynamo
        specialises sizes of 1). Without them each, first met at capture or in a served step, compiles again."""
        last, span = self.max_sessions - 1, self._spans[0]
        return [(1, 1, 0, None), (min(2, self.max_sessions), self.pad, max(last - 1, 0), span), (1, 1, last, span)]

    def _capture_all(self) -> None:
        """Capture every (rows, tokens) bucket before serving: a capture while other threads of the process
        use the GPU (a session sampling, an in-process draft) is what CUDA graphs tolerate least."""
        t0 = time.perf_counter()
        steps, chunks = self._step_shapes(), self._chunk_shapes()
        progress = LogProgress(log, "capturing CUDA graphs", len(steps) * len(self._spans) + len(chunks))
        with torch.inference_mode(), torch.cuda.device(self.device):
            for b, n in steps:
                for span in reversed(self._spans):  # the whole cache first: the others write into its logits
                    progress.item(f"{b} rows x {n} tokens over {span} columns")
                    self._capture(b, n, span)
            for b, n in chunks:
                progress.item(f"a prompt chunk of {b} rows x {n} tokens")
                self._chunk_graphs[(b, n)] = self._capture_graph(_StepInputs(
                    torch.zeros((b, n), dtype=torch.long, device=self.device),
                    torch.full((b, n), self.max_len, device=self.device),
                    slots=torch.zeros(b, dtype=torch.long, device=self.device)), keep=1)
        for b, n in {(b, n) for b, n, _ in self._graphs}:
            self._add_readbacks(("step", b, n))  # outside inference mode: the argmax is copied into them outside it
            if n == 1 and self.lookahead:
                self._add_readbacks(("step", b, 2))  # a plain step with sampled rows drawn on the device: their flags too
        if self.lookahead:
            for b in {b for b, _ in self._chunk_graphs}:
                self._add_readbacks(("chunk", b, 1))  # new prompts' chunks read apart (`_launch_chunks`)
        self._time_graphs()
        log.info("captured and timed %d CUDA graphs (rows %s x tokens up to %d x spans %s; and %d of prompt chunks) in "
                 "%.1f s; device ms over the whole cache %s", len(self._graphs),
                 sorted({b for b, _ in steps}), self.pad, self._spans,
                 len(self._chunk_graphs), time.perf_counter() - t0,
                 ", ".join(f"{b}x{n}: {1e3 * s:.1f}" for (b, n), s in sorted(self.costs.seeds.items())))

    def _step_shapes(self) -> list[tuple[int, int]]:
        """The (rows, tokens) buckets steps are captured for: every one, or those of `captured`."""
        tokens = [t for t in TOKEN_BUCKETS if t <= self.pad]
        if self._captured is None:
            return [(b, n) for b in self._graph_rows() for n in tokens]
        rows, widths = self._captured
        return sorted({self.step_shape(r, n) for r in rows for n in widths})

    def _graph_rows(self) -> list[int]:
        """The row buckets steps are captured for."""
        return [b for b in ROW_BUCKETS if b < self.max_sessions] + [self.max_sessions]

    def _chunk_shapes(self) -> list[tuple[int, int]]:
        """(rows, tokens) of the prompt-chunk graphs: an engine loop runs one long request's chunk a step, or new
        short prompts together (`_alone`: up to JOIN_CHUNK_ROWS rows, at JOIN_CHUNK_TOKENS), a runner without one
        every caller's catch-ups at once (`_run_chunks` looks them up by `_span_rows` and `_chunk_tokens`)."""
        lengths = sorted(self._chunk_lengths())
        if self.passive:
            return [(b, n) for b in self._graph_rows() for n in lengths]
        long = [(1, n) for n in lengths]
        short = [(b, width) for b in self._graph_rows() if b <= JOIN_CHUNK_ROWS for width in self._short_chunk_widths()]
        return list(dict.fromkeys(long + short))  # each once: a chunk no longer than a step's width is both

    def _time_graphs(self, replays: int = 3) -> None:
        """Seed the cost table with each captured step's device time over the whole cache (StepCostTable.seed, a
        ceiling until steps are measured): replays write only padding columns, as the capture did."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.device(self.device):
            for (b, n, span), g in self._graphs.items():
                if span != self._spans[-1]:
                    continue
                g.graph.replay()  # warm
                start.record()
                for _ in range(replays):
                    g.graph.replay()
                end.record()
                end.synchronize()
                self.costs.seed(b, n, start.elapsed_time(end) / 1e3 / replays)

    def _capture(self, rows: int, n: int, span: int) -> _Graph:
        """Capture one step of `rows` x `n` tokens attending over the cache's first `span` columns, its logits
        written into those of the step over the whole cache (captured first): one logits buffer per shape. Warm-up
        and capture write only padding columns."""
        whole = span == self._spans[-1]
        inputs = _StepInputs(torch.zeros((rows, n), dtype=torch.long, device=self.device),
                             torch.arange(self.max_len, self.max_len + n, device=self.device).repeat(rows, 1),
                             span=None if whole else span)
        out = None if whole else self._graphs[(rows, n, self._spans[-1])].logits
        g = self._graphs[(rows, n, span)] = self._capture_graph(inputs, keep=n, out=out)
        return g

    def _capture_graph(self, inputs: _StepInputs, keep: int, out: torch.Tensor | None = None) -> _Graph:
        """Capture the forward over `inputs` (their tensors become the graph's static inputs), its logits copied
        into `out` where given."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run(inputs, keep=keep)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with graph_capture(graph, self._graph_pool, stream):
            logits = self._run(inputs, keep=keep)
            if out is not None:
                logits = out.copy_(logits)
        self._graph_pool = graph.pool()
        return _Graph(graph, inputs, logits)


def serving_runner(compute: Compute, model: torch.nn.Module, *, batching: bool, gather_s: float,
                   prefill_chunk: int = 512, lookahead: bool | None = None, stream_interval: int | None = None,
                   compile: bool = True, **kwargs) -> tuple[ModelRunner, Compute]:
    """A service's runner, built on its compute thread, and where its sessions then compute: batched, the
    engine loop takes over the compute thread and sessions run inline (their forwards go to the engine)."""
    if not batching:
        return compute.run(ModelRunner, model, **kwargs), compute
    return compute.run(BatchedRunner, model, gather_s=gather_s, prefill_chunk=prefill_chunk, lookahead=lookahead,
                       stream_interval=stream_interval, compile=compile, launch=compute.hand_over, **kwargs), INLINE
