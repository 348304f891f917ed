"""Compiled decoder layers (core.compiled): what is compiled, and a clear error where nothing can be. Compiling
itself runs on a GPU (tests/gpu: the engines there compile by default and must compile nothing once serving);
on this CI's two cores tracing the tiny model takes about a minute."""

import contextlib
import copy

import pytest
import torch

from specdec.core.batching import BatchedRunner, _StepInputs
from specdec.core.compiled import compile_layers, decoder_layers
from specdec.core.cpu_kernels import STOCK
from specdec.core.errors import InvalidArgument


def test_the_decoder_layers_are_what_gets_compiled(tiny_pair):
    model = tiny_pair.target.model
    assert len(decoder_layers(model)) == model.config.num_hidden_layers


def test_a_model_without_decoder_layers_is_refused_not_run_uncompiled():
    with pytest.raises(InvalidArgument, match="compile: Linear has no \\*DecoderLayer modules.*--no-compile"):
        compile_layers(torch.nn.Linear(2, 2))


def test_a_cpu_runner_does_not_compile(tiny_pair_fp32):
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=2, compile=True)
    assert not runner.cuda_graphs and not runner.compiled


def test_compiling_raises_the_recompile_limit_and_never_falls_back_to_eager(monkeypatch):
    """Past dynamo's limit of programs per frame a new shape would run uncompiled, silently: compile_layers raises
    the limit past the engine's shape classes and makes reaching it an error. (A fresh one-layer model: nothing
    is traced until it runs, so this costs no compile; the process-wide changes are undone after.)"""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.cache_utils import Cache

    from specdec.core.compiled import RECOMPILE_LIMIT

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=32))
    monkeypatch.setattr(Cache, "update", Cache.update)  # put back at the end
    with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=False,
                                    allow_unspec_int_on_nn_module=torch._dynamo.config.allow_unspec_int_on_nn_module):
        assert compile_layers(model) == 1
        assert torch._dynamo.config.recompile_limit == RECOMPILE_LIMIT
        assert torch._dynamo.config.fail_on_recompile_limit_hit


@contextlib.contextmanager
def traced_layers(monkeypatch, model: torch.nn.Module, backend="aot_eager"):
    """`model`'s layers compiled with aot_eager (dynamo and functionalization as inductor receives them, without
    generating code) or `backend`, dynamo's counters cleared; the process-wide changes are undone after."""
    from torch._dynamo.utils import counters
    from transformers.cache_utils import Cache

    monkeypatch.setattr(Cache, "update", Cache.update)  # put back at the end
    with torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit,
                                    fail_on_recompile_limit_hit=torch._dynamo.config.fail_on_recompile_limit_hit,
                                    allow_unspec_int_on_nn_module=torch._dynamo.config.allow_unspec_int_on_nn_module):
        compile_layers(model, backend=backend)
        counters.clear()
        try:
            yield counters
        finally:
            torch._dynamo.reset()


def small_qwen() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64)).eval()


def test_a_compiled_layer_writes_the_batched_cache_inside_its_one_program(monkeypatch):
    """RowsCache's update is traced with the layer (no graph break around the cache write, one frame per layer call),
    and every kind of step (a span of slots from any first slot, rows at any slots, attention over a span of
    columns) writes and reads the cache as the uncompiled layers do."""
    model = small_qwen()
    plain = copy.deepcopy(model)
    with traced_layers(monkeypatch, model) as counters:
        runners = [BatchedRunner(m, launch=None, max_len=32, max_sessions=4, cpu_kernels=STOCK) for m in (model, plain)]
        steps = [([[5, 6, 7], [8, 9, 10]], [[0, 1, 2], [0, 1, 2]], 0, None, None),  # prompts into slots 0, 1
                 ([[11], [12], [13]], [[3], [3], [0]], 0, 8, None),  # decodes over a span of 8 columns
                 ([[14, 15], [16, 17]], [[1, 2], [4, 5]], 2, None, None),  # slots 2, 3
                 ([[18, 19], [20, 21]], [[6, 7], [4, 5]], 0, None, [3, 1])]  # rows at slots 3 and 1
        for ids, positions, first, span, slots in steps:
            logits = []
            for runner in runners:
                inputs = _StepInputs(torch.tensor(ids), torch.tensor(positions), first, span,
                                     None if slots is None else torch.tensor(slots))
                with torch.inference_mode():
                    logits.append(runner._run(inputs, keep=len(ids[0])))
            torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
            for tensor in ("keys", "values"):
                torch.testing.assert_close(getattr(runners[0].cache, tensor), getattr(runners[1].cache, tensor),
                                           rtol=1e-5, atol=1e-5)
        assert not counters["graph_break"], dict(counters["graph_break"])
        assert counters["frames"]["total"] == counters["frames"]["ok"] > 0


def test_a_step_over_a_span_of_columns_runs_the_program_of_one_over_all_of_them(monkeypatch):
    """On a GPU the warm-up compiles each (rows, tokens) class over the whole cache, and capture then runs each class
    over a span of columns too: were those two classes, every one would compile again at capture (on an H100 capture
    took 73 s where it had taken 22, call fc1). The cache's extra column keeps both strided views of one class."""
    model = small_qwen()
    with traced_layers(monkeypatch, model) as counters:
        runner = BatchedRunner(model, launch=None, max_len=32, max_sessions=4, cpu_kernels=STOCK)

        def decode(rows: int, span: int | None) -> None:
            with torch.inference_mode():
                runner._run(_StepInputs(torch.zeros((rows, 1), dtype=torch.long), torch.full((rows, 1), 3), 0, span),
                            keep=1)

        decode(2, None)
        decode(3, 16)  # rows and span symbolic from here on (automatic dynamic shapes)
        compiled = counters["stats"]["unique_graphs"]
        for rows, span in ((2, 8), (3, None), (4, None), (4, 8)):
            decode(rows, span)
        assert counters["stats"]["unique_graphs"] == compiled


def test_after_the_warm_up_a_step_from_any_slot_over_any_span_compiles_nothing(monkeypatch):
    """Layers compile with automatic dynamic shapes: a size or integer is a constant until a call changes it. The
    warm-up's first forwards change rows, tokens, first slot and span, so a served step, wherever its rows sit and
    however many columns it attends over, runs a program compiled at start."""
    model = small_qwen()
    with traced_layers(monkeypatch, model) as counters:
        runner = BatchedRunner(model, launch=None, max_len=300, max_sessions=4, cpu_kernels=STOCK)
        assert runner._spans[0] < runner._spans[-1]  # two spans, as on a GPU
        runner.compiled = True  # as on a GPU: the warm-up compiles, and eager steps attend over the whole cache
        runner._span = lambda reach: None
        runner._warm_up_shapes()
        compiled = counters["stats"]["unique_graphs"]
        assert compiled > 0
        for rows, n, first, span in ((3, 1, 1, 256), (2, 3, 2, 256), (1, 1, 2, None), (4, 5, 0, 256), (1, 2, 3, 256),
                                     (3, 9, 1, None)):
            ids, positions = torch.zeros((rows, n), dtype=torch.long), torch.arange(n).repeat(rows, 1)  # as callers'
            with torch.inference_mode():
                runner._eager(ids, positions, keep=1, first_slot=first, span=span or runner._spans[-1])
            assert counters["stats"]["unique_graphs"] == compiled, (rows, n, first, span)


def test_two_models_of_one_layer_class_each_keep_their_sizes_static(monkeypatch):
    """A target and its own draft run decoder layers of one class: each model's programs still see its sizes (the
    cache's shape, its head size and so its rotary embeddings') as constants, not as symbols that automatic dynamic
    shapes would make of sizes that changed between the two models' calls (compiled._own_code), nor between two
    runners' caches over one model (compiled.keep_static)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    caches, rotary = [], []  # per compiled program: its 5-dimensional inputs' shapes, its rotary embeddings' last size

    def backend(gm, example_inputs):
        for node in gm.graph.find_nodes(op="placeholder"):
            value = node.meta.get("example_value")
            if isinstance(value, torch.Tensor) and value.dim() == 5:
                caches.append(tuple(value.shape))
            if isinstance(value, torch.Tensor) and "position_embeddings" in node.name:
                rotary.append(value.shape[-1])
        return gm.forward

    target = small_qwen()  # head size 8
    draft = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                         num_key_value_heads=1, intermediate_size=64)).eval()  # head size 16
    with traced_layers(monkeypatch, target, backend=backend):
        compile_layers(draft, backend=backend)
        runners = [BatchedRunner(m, launch=None, max_len=length, max_sessions=4, cpu_kernels=STOCK)
                   for m, length in ((target, 300), (draft, 200), (target, 280))]  # the last: another cache, one model
        for runner in runners + runners:
            runner.compiled, runner._span = True, lambda reach: None  # as on a GPU
            runner._warm_up_shapes()
        assert caches and rotary
        assert {shape for shape in caches} == {tuple(r.cache.keys.shape) for r in runners}  # no symbol among them
        assert set(rotary) == {8, 16}


def test_each_layer_class_of_a_model_runs_its_own_forward(monkeypatch):
    """Each model compiles its own copy of its layers' code (compiled._own_code), one per layer class: a model whose
    decoder layers are of two classes runs each one's own forward."""

    class AddDecoderLayer(torch.nn.Module):
        def forward(self, x):
            return x + 1

    class DoubleDecoderLayer(torch.nn.Module):
        def forward(self, x):
            return x * 2

    model = torch.nn.Sequential(AddDecoderLayer(), DoubleDecoderLayer(), AddDecoderLayer())
    with traced_layers(monkeypatch, model, backend="eager"):
        x = torch.tensor([3.0])
        assert [float(layer(x)) for layer in model] == [4.0, 6.0, 4.0]
        assert model[0].forward.__wrapped__.__func__ is model[2].forward.__wrapped__.__func__  # one copy a class
