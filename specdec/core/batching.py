"""BatchedRunner: every session's forward of a step runs in one batched forward on one engine thread.

A session's thread still drives its own sequence (TargetSequence: verify, commit, roll back); only the
model call is shared. `extend` hands the engine the session's new tokens and blocks until its logits
come back. The engine gathers the requests of all sessions, pads them to a common length n (right
padding), and runs one forward over the first B slots of one cache [slots, heads, max_len + pad, dim]:
each row's keys and values are written at that row's own positions, and an explicit mask lets position
p see only the cache entries at positions <= p. Rolling back stays O(1) (a row's length is its token
list; entries past it are stale and overwritten before they are ever attended to).

Rows are addressed without copying the cache: a step covers slots [0, B), the open slots are the lowest
free ones first (SlotQueue), and slots in that range with nothing to do this step are dummy rows whose
writes land in the cache's padding columns, past every position a real row attends to. On CUDA the
step is a CUDA graph captured per (rows bucket, tokens bucket).

Prompts longer than `prefill_chunk` are fed a chunk per step, between batched steps, so a long prompt
delays the others' next token by at most one chunk's forward.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from specdec.core.compute import INLINE, Compute
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.errors import InvalidArgument, Unavailable
from specdec.core.runner import KVSlot, ModelRunner

log = logging.getLogger("specdec.batching")

ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # CUDA graph sizes: rows per step
TOKEN_BUCKETS = (1, 2, 3, 5, 9, 17)  # ... and tokens per row (a decode step, a verify of K = 1, 2, 4, 8, 16)
LOG_EVERY_S = 5.0  # a working engine logs its batch sizes and step times this often
LULL_S = 0.001  # a step waiting for its sessions goes once none has come back for this long


def bucket(n: int, sizes: Sequence[int]) -> int:
    """The smallest size >= n (n itself past the largest)."""
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else n


class RowsLayer(StaticLayer):
    """One layer of the batched cache: keys/values [slots, kv heads, max_len + pad, head dim], preallocated.
    A forward over B rows writes row r's n new entries at `positions[r]` of slot r (`positions` [B, n] is
    the step's position tensor, set by the engine before the forward) and attends to slots [0, B)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, step: "_StepInputs") -> None:
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values, self.step = keys, values, step
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows = slice(self.step.first_slot, self.step.first_slot + key_states.shape[0])  # key_states [B, H, n, D]
        keys, values = self.keys[rows], self.values[rows]  # views: [B, H, L, D]
        keys.scatter_(2, self.step.positions[:, None, :, None].expand_as(key_states), key_states)
        values.scatter_(2, self.step.positions[:, None, :, None].expand_as(value_states), value_states)
        return keys, values


@dataclass
class _StepInputs:
    """What one batched forward reads: token ids and positions [B, n] (static buffers for a CUDA graph),
    for slots [first_slot, first_slot + B)."""

    ids: torch.Tensor
    positions: torch.Tensor
    first_slot: int = 0


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
    fed: int = 0  # tokens already forwarded (chunked prefill)
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None  # [keep, V] float32, the session's own copy
    argmax: list[int] | None = None  # [keep]
    error: BaseException | None = None


@dataclass
class StepStats:
    """What the engine did, for metrics and tests."""

    steps: int = 0  # batched forwards
    rows: int = 0  # real rows over all of them
    prefill_chunks: int = 0
    busy_s: float = 0.0  # time in batched steps
    rows_seen: dict[int, int] = field(default_factory=dict)  # rows in a step -> how many steps


class BatchedRunner(ModelRunner):
    """A ModelRunner whose forwards all go through one engine thread, batched across sessions.

    `gather_s`: after a step, the most the engine waits for the sessions it just answered to come back
    before it starts the next step without them; it goes sooner once none has come back for LULL_S (a
    session waiting for its draft holds the others that long, not `gather_s`). `prefill_chunk`: the most
    prompt tokens of one session forwarded in one step.
    """

    def __init__(self, model: torch.nn.Module, *, max_len: int = 2048, max_sessions: int = 8,
                 cuda_graphs: bool | None = None, graph_max_tokens: int = 17, cpu_kernels: str = ONEDNN,
                 queue_size: int = 0, queue_wait_s: float = 0.0, gather_s: float = 0.02,
                 prefill_chunk: int = 512, launch: Callable[[Callable[[], None]], object] = INLINE.hand_over) -> None:
        """`launch(fn)`: runs the engine loop where forwards belong (default: a new thread; a CPU service
        passes its compute thread's `Compute.hand_over`)."""
        super().__init__(model, max_len=max_len, max_sessions=max_sessions, cuda_graphs=cuda_graphs,
                         graph_max_tokens=graph_max_tokens, cpu_kernels=cpu_kernels, queue_size=queue_size,
                         queue_wait_s=queue_wait_s)
        assert prefill_chunk >= graph_max_tokens, "a prefill chunk must hold a verify step's logits"
        self.gather_s = gather_s
        self.prefill_chunk = prefill_chunk
        self.pad = bucket(graph_max_tokens, TOKEN_BUCKETS)  # columns past max_len that padded writes land in
        self.step = _StepInputs(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, 1), dtype=torch.long))
        self.cache = self._allocate()
        self._key_positions = torch.arange(max_len + self.pad, device=self.device)  # [L]
        self._graphs: dict[tuple[int, int], _Graph] = {}  # (rows, tokens) -> graph
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._expected: set[int] = set()  # slots answered last step that are still open: worth waiting for
        self._open: set[int] = set()
        self._last_arrival = 0.0  # when the newest pending request came
        self._stopping = False
        self.stats = StepStats()
        if self.cuda_graphs:
            self._capture_all()
        self.on_step: Callable[[int, float], None] = lambda rows, seconds: None  # metrics: rows, step time
        launch(self._loop)

    def _allocate(self) -> StaticCache:
        """One cache for all slots, with its layers replaced by RowsLayers over preallocated tensors."""
        cfg = self.config.get_text_config(decoder=True) if hasattr(self.config, "get_text_config") else self.config
        layer_types = getattr(cfg, "layer_types", None) or []
        if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise InvalidArgument("batching", f"{cfg.model_type} has sliding-window layers; batched decoding supports "
                                              "full attention only (--no-batching serves it)")
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        dtype = next(self.model.parameters()).dtype
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):  # quantized weights: compute dtype
            dtype = torch.float32
        cache = StaticCache(config=self.config, max_cache_len=self.max_len + self.pad)
        shape = (self.max_sessions, heads, self.max_len + self.pad, dim)
        cache.layers = [RowsLayer(torch.zeros(shape, dtype=dtype, device=self.device),
                                  torch.zeros(shape, dtype=dtype, device=self.device), self.step)
                        for _ in cache.layers]
        return cache

    # The single-sequence runner's per-slot caches and length pointers do not exist here: positions are
    # explicit per row, so opening, closing and rolling back touch only the slot's token list.
    def open(self, cancelled: threading.Event | None = None) -> KVSlot:
        index, queued_s = self.slots.acquire(cancelled)
        with self._cv:
            self._open.add(index)
        return KVSlot(id=next(self._ids), index=index, queued_s=queued_s)

    def close(self, slot: KVSlot) -> None:
        index, slot.index, slot.tokens = slot.index, -1, []
        if index < 0:
            return
        with self._cv:
            self._open.discard(index)
            self._expected.discard(index)
            self._cv.notify_all()
        self.slots.release(index)

    def _set_length(self, index: int, length: int) -> None:
        pass  # a row's length is len(slot.tokens)

    def forward_branches(self, slot, step, tokens, positions, limits):
        return None  # pre-drafting's branch rows are not batched: the caller drafts one chain instead

    def stop(self) -> None:
        """End the engine loop; forwards still waiting fail with UNAVAILABLE."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def _forward(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> torch.Tensor:
        return self._submit(slot, new_ids, keep, greedy=False).logits

    def _forward_greedy(self, slot: KVSlot, new_ids: Sequence[int], keep: int) -> list[int]:
        return self._submit(slot, new_ids, keep, greedy=True).argmax

    def _submit(self, slot: KVSlot, new_ids: Sequence[int], keep: int, greedy: bool) -> _Request:
        """Hand the engine one forward and wait for it."""
        assert slot.length + len(new_ids) <= self.max_len, "extend() checks the context first"
        request = _Request(slot.index, slot.length, list(new_ids), keep, greedy)
        with self._cv:
            if self._stopping:
                raise Unavailable("the engine has stopped")
            self._pending.append(request)
            self._last_arrival = time.monotonic()
            self._cv.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        slot.tokens.extend(new_ids)
        return request

    # ---- the engine thread ----

    def _report(self, since: StepStats, t0: float) -> StepStats:
        """Log what the engine did since `since` (every LOG_EVERY_S while it works); a copy of the stats now."""
        s, wall = self.stats, time.monotonic() - t0
        if s.steps > since.steps:
            log.info("engine: %d steps in %.1f s, %.1f rows per step, %.1f ms per step, busy %.0f%%, %d prefill chunks",
                     s.steps - since.steps, wall, (s.rows - since.rows) / (s.steps - since.steps),
                     1e3 * (s.busy_s - since.busy_s) / (s.steps - since.steps), 100 * (s.busy_s - since.busy_s) / wall,
                     s.prefill_chunks - since.prefill_chunks)
        return StepStats(s.steps, s.rows, s.prefill_chunks, busy_s=s.busy_s)

    def _loop(self) -> None:
        mark, mark_t = StepStats(), time.monotonic()
        while True:
            if time.monotonic() - mark_t > LOG_EVERY_S:
                mark, mark_t = self._report(mark, mark_t), time.monotonic()
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    for r in self._pending:
                        r.error = Unavailable("the engine has stopped")
                        r.done.set()
                    return
                began = time.monotonic()
                deadline = began + self.gather_s
                while (self._expected - {r.index for r in self._pending}) and not self._stopping:
                    left = min(deadline, max(began, self._last_arrival) + LULL_S) - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                steps = [r for r in self._pending if len(r.ids) <= self.graph_max_tokens]
                prefill = next((r for r in self._pending if len(r.ids) > self.graph_max_tokens), None)
                self._pending = [r for r in self._pending if r not in steps and r is not prefill]
            try:
                if steps:
                    self._run_step(steps)
                if prefill is not None:
                    self._run_chunk(prefill)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting session, the loop goes on
                log.exception("batched forward failed")
                for r in steps + ([prefill] if prefill is not None else []):
                    r.error = e
                    r.done.set()
            with self._cv:
                self._expected = {r.index for r in steps if r.done.is_set()} & self._open
                if prefill is not None and not prefill.done.is_set():
                    self._pending.append(prefill)  # its next chunk goes with the next step

    def _run_step(self, requests: list[_Request]) -> None:
        """One forward over slots [0, B): each request's tokens in its own row, padded to n."""
        t0 = time.perf_counter()
        n = max(len(r.ids) for r in requests)
        rows = max(r.index for r in requests) + 1
        if self.cuda_graphs:
            n, rows = bucket(n, TOKEN_BUCKETS), min(bucket(rows, ROW_BUCKETS), self.max_sessions)
        ids = [[0] * n for _ in range(rows)]
        positions = [list(range(self.max_len, self.max_len + n))] * rows  # dummy rows: the padding columns
        for r in requests:
            ids[r.index] = r.ids + [0] * (n - len(r.ids))
            positions[r.index] = list(range(r.start, r.start + n))  # real tokens, then padded writes past them
        logits = self._batched(torch.tensor(ids), torch.tensor(positions))  # [rows, n, V], overwritten by the next replay
        top = logits.argmax(-1).tolist() if any(r.greedy for r in requests) else None  # one host sync for all rows
        for r in requests:
            kept = slice(len(r.ids) - r.keep, len(r.ids))
            if r.greedy:
                r.argmax = top[r.index][kept]
            else:
                r.logits = logits[r.index, kept].to(torch.float32, copy=True)
            r.done.set()
        s, step_s = self.stats, time.perf_counter() - t0
        s.steps, s.rows = s.steps + 1, s.rows + len(requests)
        s.busy_s += step_s
        s.rows_seen[len(requests)] = s.rows_seen.get(len(requests), 0) + 1
        self.on_step(len(requests), step_s)

    def _run_chunk(self, r: _Request) -> None:
        """The next chunk of a long request, alone (eager: prompt lengths vary)."""
        chunk = r.ids[r.fed:r.fed + self.prefill_chunk]
        start = r.start + r.fed
        ids = torch.tensor([chunk], dtype=torch.long)
        positions = torch.arange(start, start + len(chunk))[None]
        last = r.fed + len(chunk) == len(r.ids)
        with torch.inference_mode():
            logits = self._eager(ids, positions, keep=r.keep if last else 1, first_slot=r.index)  # [1, keep, V]
        r.fed += len(chunk)
        self.stats.prefill_chunks += 1
        if last:
            r.logits = logits[0].float()  # [keep, V]
            r.argmax = r.logits.argmax(-1).tolist() if r.greedy else None
            r.done.set()

    def _batched(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rows, n = ids.shape
        with torch.inference_mode():
            if not self.cuda_graphs:
                return self._eager(ids, positions, keep=n)
            with torch.cuda.device(self.device):
                g = self._graphs[(rows, n)]  # all captured at start
                g.inputs.ids.copy_(ids, non_blocking=True)
                g.inputs.positions.copy_(positions, non_blocking=True)
                g.graph.replay()
                return g.logits

    def _eager(self, ids: torch.Tensor, positions: torch.Tensor, keep: int, first_slot: int = 0) -> torch.Tensor:
        """One forward of ids [B, n] at positions [B, n] into slots [first_slot, first_slot + B)."""
        return self._run(_StepInputs(ids.to(self.device), positions.to(self.device), first_slot), keep)

    def _run(self, inputs: _StepInputs, keep: int) -> torch.Tensor:
        """The model's forward over `inputs`; returns logits [B, keep, V]."""
        step = self.step
        step.ids, step.positions, step.first_slot = inputs.ids, inputs.positions, inputs.first_slot  # read by RowsLayers
        mask = self._key_positions[None, None, None, :] <= inputs.positions[:, None, :, None]  # [B, 1, n, L]
        return self.model(input_ids=inputs.ids, position_ids=inputs.positions, attention_mask=mask, use_cache=True,
                          logits_to_keep=keep, **{self._cache_kw: self.cache}).logits

    def _capture_all(self) -> None:
        """Capture every (rows, tokens) bucket before serving: a capture while other threads of the process
        use the GPU (a session sampling, an in-process draft) is what CUDA graphs tolerate least."""
        t0 = time.perf_counter()
        rows = [b for b in ROW_BUCKETS if b < self.max_sessions] + [self.max_sessions]
        with torch.inference_mode(), torch.cuda.device(self.device):
            for b in rows:
                for n in (t for t in TOKEN_BUCKETS if t <= self.pad):
                    self._capture(b, n)
        log.info("captured %d CUDA graphs (rows %s x tokens up to %d) in %.1f s", len(self._graphs), rows, self.pad,
                 time.perf_counter() - t0)

    def _capture(self, rows: int, n: int) -> _Graph:
        """Capture one step of `rows` x `n` tokens; warm-up and capture write only padding columns."""
        inputs = _StepInputs(torch.zeros((rows, n), dtype=torch.long, device=self.device),
                             torch.arange(self.max_len, self.max_len + n, device=self.device).repeat(rows, 1))
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run(inputs, keep=n)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool, stream=stream, capture_error_mode="thread_local"):
            logits = self._run(inputs, keep=n)
        self._graph_pool = graph.pool()
        g = self._graphs[(rows, n)] = _Graph(graph, inputs, logits)
        return g


def serving_runner(compute: Compute, model: torch.nn.Module, *, batching: bool, gather_s: float,
                   prefill_chunk: int = 512, **kwargs) -> tuple[ModelRunner, Compute]:
    """A service's runner, built on its compute thread, and where its sessions then compute: batched, the
    engine loop takes over the compute thread and sessions run inline (their forwards go to the engine)."""
    if not batching:
        return compute.run(ModelRunner, model, **kwargs), compute
    return compute.run(BatchedRunner, model, gather_s=gather_s, prefill_chunk=prefill_chunk,
                       launch=compute.hand_over, **kwargs), INLINE
