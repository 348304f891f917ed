"""Device idle gaps from a torch.profiler trace (tools.device_gaps): a trace written by hand, in the shape
torch.profiler's chrome export gives on a GPU (the analysis itself needs no GPU), and a real CPU trace (no device
operations)."""

import json

import torch

from specdec.tools.device_gaps import analyse, report


def x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}


TRACE = {"traceEvents": [
    x("kernel", "gemm", 0, 100, tid=7, correlation=1),
    x("kernel", "gemm", 90, 110, tid=7, correlation=2),  # overlaps the first (another stream): one busy interval
    x("kernel", "argmax", 500, 100, tid=7, correlation=3),  # 300 us after the last ended: the host was late
    x("gpu_memcpy", "Memcpy HtoD", 610, 90, tid=7, correlation=4),  # 10 us: launch latency, not counted
    x("cpu_op", "aten::argmax", 440, 60),
    x("cuda_runtime", "cudaLaunchKernel", 470, 5, correlation=3),
    x("cpu_op", "aten::copy_", 200, 400),
    x("cuda_runtime", "cudaMemcpyAsync", 250, 340, correlation=4),  # held the host 340 us: it waited for the stream
    x("cuda_sync", "Stream Sync", 260, 330),  # the synchronisation itself (enable_cuda_sync_events)
    x("cuda_sync", "Event Sync", 650, 40),  # short: not listed
    {"ph": "i", "name": "a marker", "ts": 5},  # not a complete event: ignored
]}


def test_gaps_are_told_by_the_launch_that_ended_them_and_blocking_calls_are_listed():
    gaps = analyse(TRACE, min_gap_us=20, blocking_us=100)
    assert gaps.window_us == 700 and gaps.busy_us == 200 + 100 + 90
    assert gaps.gaps == [(200, 300, "cudaLaunchKernel", "aten::argmax")]
    assert gaps.blocking == {"cudaMemcpyAsync": 340, "Stream Sync": 330}
    assert gaps.blocking_calls == {"cudaMemcpyAsync": 1, "Stream Sync": 1}
    text = report(gaps, steps=2)
    assert "device busy 55.7% of 0.7 ms; 1 gaps of 0.3 ms, 0.15 ms per engine step (2 steps)" in text
    assert "aten::argmax -> cudaLaunchKernel" in text and "cudaMemcpyAsync" in text


def replay(correlation, start, kernels):
    """A graph replay: its launch, then its kernels (name, length us) back to back with 2 us between them."""
    events, t = [x("cuda_runtime", "cudaGraphLaunch", start - 20, 15, correlation=correlation)], start
    for name, dur in kernels:
        events.append(x("kernel", name, t, dur, tid=7, correlation=correlation))
        t += dur + 2
    return events


def test_graph_replays_are_told_apart_by_their_kernels():
    """Two graphs (a big model's step of two long kernels, a small one's of four short ones), each replayed twice,
    and a kernel launched on its own, which belongs to no replay."""
    big, small = [("gemm_big", 300), ("attention", 100)], [("gemm_small", 10), ("norm", 4), ("gemm_small", 10),
                                                           ("norm", 4)]
    trace = {"traceEvents": replay(1, 1000, big) + replay(2, 1500, small) + replay(3, 2000, big)
             + replay(4, 2500, small) + [x("kernel", "argmax", 3000, 5, tid=7, correlation=5),
                                         x("cuda_runtime", "cudaLaunchKernel", 2990, 5, correlation=5)]}
    graphs = analyse(trace).graphs
    assert sorted(graphs) == [2, 4]
    assert graphs[2].spans_us == [402, 402] and graphs[2].kernels_us == [400, 400]
    assert graphs[4].spans_us == [34, 34] and graphs[4].kernels_us == [28, 28]
    assert graphs[4].by_kernel == {"gemm_small": 40, "norm": 16}
    text = report(analyse(trace))
    assert "2 kernels: 2 replays, 0.40 ms each, kernels 100% (200.0 us a kernel); gemm_big 75%, attention 25%" in text
    assert "4 kernels: 2 replays, 0.03 ms each, kernels 82% (7.0 us a kernel); gemm_small 71%, norm 29%" in text


def test_a_trace_without_device_operations_says_so(tmp_path):
    """A CPU run's trace, as torch.profiler writes it: no device operation, no gap to tell."""
    path = tmp_path / "trace.json"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ones(8).sum()
    prof.export_chrome_trace(str(path))
    gaps = analyse(json.loads(path.read_text()))
    assert gaps.window_us == 0 and report(gaps) == "no device operations in the trace"
