"""torch.compile for the batched runner's forwards: each decoder layer compiled once, for every shape.

Why: a small model's batched step on a GPU is bound by its kernel count, not by its weights: HF's layer
runs each RMSNorm, rotary embedding and activation as several elementwise kernels, and a CUDA graph
removes their launch cost but not their number or their trips through memory (docs/benchmarks.md, the
draft step's profile). Inductor fuses them.

How: a model's decoder layers share one code object, so compiling each layer's `forward` gives one compiled program
per shape class (rows 1 or more, tokens 1 or more), not one per layer and bucket, when two things stay out of the
traced code: a layer's index (an integer attribute, static by
default: `allow_unspec_int_on_nn_module`) and an HF cache's update, which looks its layer up by that
index in a list (`torch.compiler.disable` on `Cache.update`: it runs eagerly between two compiled parts
of the layer). Shapes are dynamo's automatic dynamic ones: a size or integer is traced as a constant until a
call changes it, then as a symbol. The runner's first forwards change every one a served step varies (rows,
tokens, first slot, columns attended over: core.batching's `_prime_shapes`), so the programs compiled after them
are generic in those, and trace far faster than with every size symbolic from the start (`dynamic=True`: sympy
reasoning about sizes that never change, such as the cache's, dominated start-up). What dynamo learns of sizes is
kept per code object, so each model's layers run a copy of the layer code of their own (`_own_code`): a target and
its own draft, through one code object, made the second model's head size and rotary embeddings symbolic, and its
steps slower. The cache's tensors are kept static (`keep_static`): another runner over the same model may size its
cache otherwise. The batched engine's cache (core.batching.RowsCache) overrides that update with tensor indexing,
so its write is traced into the layer's one program, where inductor fuses it with the rotary embedding, in place. Both
settings are process-wide, as compiling is model-wide: every runner over a compiled model runs
its layers compiled. Past dynamo's limit of programs per frame a new shape class would run uncompiled, silently
and slower (docs/benchmarks.md, call h3): the limit is raised past every class the engine runs, and reaching it
is an error. The arithmetic is the same; fused kernels round differently, so a compiled engine's outputs are
compared with a compiled target-only run (the bench's greedy comparison reports any flipped near-tie).
"""

from __future__ import annotations

import itertools
import types

import torch

from specdec.core.errors import InvalidArgument

_MARK = "_specdec_compiled_layers"
_copies = itertools.count()  # models compiled in this process, each one's layer code named apart
RECOMPILE_LIMIT = 128  # programs per compiled frame (a model's layer code): every shape class (rows, tokens, attention
#                       path, slots) of the runners over it, with room


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated decoder layers (the modules whose class name ends in DecoderLayer)."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_layers(model: torch.nn.Module, backend: str = "inductor") -> int:
    """Compile every decoder layer of `model` in place (once: again is a no-op); returns how many. Raises
    InvalidArgument for a model without recognisable decoder layers rather than running it uncompiled. `backend`:
    torch.compile's (tests trace with "aot_eager": dynamo and functionalization, no code generated)."""
    import torch._dynamo
    from transformers.cache_utils import Cache

    if getattr(model, _MARK, 0):
        return getattr(model, _MARK)
    layers = decoder_layers(model)
    if not layers:
        raise InvalidArgument("compile", f"{type(model).__name__} has no *DecoderLayer modules to compile; "
                                         "--no-compile runs it as is")
    torch._dynamo.config.allow_unspec_int_on_nn_module = True  # layer_idx: one program for every layer
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # past it an error, never layers run uncompiled
    if not getattr(Cache.update, "_specdec_eager", False):
        Cache.update = torch.compiler.disable(Cache.update)  # indexes a list by layer_idx
        Cache.update._specdec_eager = True
    copies: dict[types.FunctionType, types.FunctionType] = {}  # each layer class's forward, once per model
    for layer in layers:
        function = layer.forward.__func__
        if function not in copies:
            copies[function] = _own_code(function)  # this model's: its sizes its own
        layer.forward = torch.compile(types.MethodType(copies[function], layer), dynamic=None,
                                      backend=backend)  # automatic dynamic shapes
    setattr(model, _MARK, len(layers))
    return len(layers)


def _own_code(function: types.FunctionType) -> types.FunctionType:
    """A copy of `function` with a code object of its own, named apart (`forward_with_checkpointing_1`): dynamo keeps
    its programs per code object, and which sizes it has seen change per code name and place."""
    code = function.__code__
    code = code.replace(co_name=f"{code.co_name}_{next(_copies)}")
    copy = types.FunctionType(code, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__dict__.update(function.__dict__)
    return copy


def keep_static(*tensors: torch.Tensor) -> None:
    """Keep these tensors' sizes constants in compiled programs, whichever sizes other calls pass: a runner's cache,
    whose shape another runner over the same model may not share."""
    import torch._dynamo

    for tensor in tensors:
        torch._dynamo.mark_static(tensor)
