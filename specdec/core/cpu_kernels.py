"""CPU fast path: every linear layer as a oneDNN matmul over weights packed once at load time.

Why: speculative decoding pays only if verifying K+1 tokens costs about what decoding one does. On
CPU, stock fp32 `nn.Linear` with a handful of rows goes through BLAS paths that are neither
bandwidth-optimal nor flat in the row count, so a few-token verify costs several decode steps. oneDNN
with pre-packed weights (`torch.utils.mkldnn`, PyTorch's own module) runs the same layer faster at one
row and much flatter across rows (figures in docs/benchmarks.md, "CPU fast path"). Same fp32
arithmetic, a different accumulation order, used for decode and verify alike.
"""

from __future__ import annotations

STOCK, ONEDNN = "stock", "onednn"
INT8 = "int8"  # a load-time dtype (models.load_model), for drafts on CPU
CPU_KERNELS = (ONEDNN, STOCK)


def pack_linear_layers(model) -> int:
    """Replace, in place, every fp32 `nn.Linear` of a CPU model by a oneDNN packed-weight linear.

    Returns how many layers were packed. The dense weights are released (memory stays ~1x), so the
    model is the runner's from then on; a caller that also wants stock HF behaviour loads its own copy.
    Raises RuntimeError when this PyTorch build has no oneDNN, rather than silently running stock.
    """
    import torch
    from torch.utils.mkldnn import MkldnnLinear

    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this PyTorch build has no oneDNN (MKLDNN); run with --cpu-kernels stock")

    # (parent, name) pairs only: holding the Linear modules themselves would keep every dense weight
    # alive until the end, doubling peak memory; this way each is freed as soon as it is replaced.
    places = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
              if type(child) is torch.nn.Linear and child.weight.device.type == "cpu"
              and child.weight.dtype == torch.float32]
    with torch.no_grad():  # with autograd on, each packed copy would keep its dense source alive
        for parent, name in places:
            setattr(parent, name, MkldnnLinear(getattr(parent, name), torch.float32))
    return len(places)


def quantize_int8(model):
    """Int8 weights and activations for every `nn.Linear`, each row of a call quantized on its own (core.int8).

    For a draft on CPU: a draft only proposes, so its precision moves acceptance, never the output, and
    an int8 draft step costs a fraction of an fp32 one (lm_head included: it is a quarter of a 0.5B
    model; docs/benchmarks.md).
    """
    from specdec.core.int8 import quantize_linears

    quantize_linears(model)
    return model
