"""torch.compile for the batched runner's forwards: each decoder layer compiled once, for every shape.

Why: a small model's batched step on a GPU is bound by its kernel count, not by its weights: HF's layer
runs each RMSNorm, rotary embedding and activation as several elementwise kernels, and a CUDA graph
removes their launch cost but not their number or their trips through memory (docs/benchmarks.md, the
draft step's profile). Inductor fuses them.

How: the decoder layers share one code object, so compiling each layer's `forward` gives one compiled program per
shape class (rows 1 or more, tokens 1 or more), not one per layer and bucket, when two things stay out of the
traced code: a layer's index (an integer attribute, static by
default: `allow_unspec_int_on_nn_module`) and an HF cache's update, which looks its layer up by that
index in a list (`torch.compiler.disable` on `Cache.update`: it runs eagerly between two compiled parts
of the layer). Shapes are dynamo's automatic dynamic ones: a size or integer is traced as a constant until a
call changes it, then as a symbol. The runner's first forwards change every one a served step varies (rows,
tokens, first slot, columns attended over: core.batching's `_prime_shapes`), so the programs compiled after them
are generic in those, and trace far faster than with every size symbolic from the start (`dynamic=True`: sympy
reasoning about sizes that never change, such as the cache's, dominated start-up). The cache's tensors are kept
static (`keep_static`): a target's own draft runs the same layer code with a cache of another shape, which would
otherwise make them symbolic too. The batched engine's cache (core.batching.RowsCache) overrides that update with tensor indexing,
so its write is traced into the layer's one program, where inductor fuses it with the rotary embedding, in place. Both
settings are process-wide, as compiling is model-wide: every runner over a compiled model runs
its layers compiled. Past dynamo's limit of programs per frame a new shape class would run uncompiled, silently
and slower (docs/benchmarks.md, call h3): the limit is raised past every class the engine runs, and reaching it
is an error. The arithmetic is the same; fused kernels round differently, so a compiled engine's outputs are
compared with a compiled target-only run (the bench's greedy comparison reports any flipped near-tie).
"""

from __future__ import annotations

import torch

from specdec.core.errors import InvalidArgument

_MARK = "_specdec_compiled_layers"
RECOMPILE_LIMIT = 128  # programs per compiled frame: every shape class (rows, tokens, attention path, span, slots) of
#                       both models of a target with its own draft (one layer code object), with room


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
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=None, backend=backend)  # automatic dynamic
    setattr(model, _MARK, len(layers))
    return len(layers)


def keep_static(*tensors: torch.Tensor) -> None:
    """Keep these tensors' sizes constants in compiled programs, whichever sizes other calls pass: a model's own
    cache, whose shape differs from another model's through the same layer code (a target and its own draft)."""
    import torch._dynamo

    for tensor in tensors:
        torch._dynamo.mark_static(tensor)
