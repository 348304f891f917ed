"""Int8 linear layers for a draft on a CPU whose rows are quantized each on its own.

torch.ao's dynamic quantization (fbgemm's int8 GEMM) picks one activation range per call, from the whole
tensor, so in a batched draft step one session's proposals moved with the other rows', and the sample a
seed gives depended on who shared the batch (greedy output and the output's distribution never changed:
speculative sampling is exact for any draft). Here each row is divided by its largest magnitude and the call
gets an anchor row holding -1 and +1: every call's range is then [-1, 1] whatever its rows, each row is
quantized alone, and the same fast kernel runs. Neither alternative measured here was as fast at 2-8 rows:
`torch._int_mm` with per-row scales, nor torchao's int8 dynamic quantization in eager mode (docs/benchmarks.md).
"""

from __future__ import annotations

import warnings

import torch

_TINY = torch.finfo(torch.float32).tiny


class _Rows:
    """An input's rows as the kernel takes them (each divided by its largest magnitude, the anchor row after them)
    and those magnitudes, kept for the next layer that reads the same input: a decoder layer's query, key and
    value projections read one tensor, as its gate and up projections do, and on a CPU the small operations
    around one row's matmul cost about what the matmul does (docs/benchmarks.md)."""

    def __init__(self) -> None:
        self.source: tuple[torch.Tensor, int] | None = None  # (input, its version: an in-place change is a new input)
        self.scaled = self.norm = torch.empty(0)

    def of(self, x: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        version = -1 if x.is_inference() else x._version  # inference tensors keep none (a decoder layer's linears
        #                                                    never write into their input)
        if self.source is None or self.source[0] is not x or self.source[1] != version:
            rows = x.reshape(-1, anchor.shape[1])  # [R, in]
            self.norm = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True).clamp_(min=_TINY)  # [R, 1]
            self.scaled = torch.cat([rows / self.norm, anchor])  # [R + 1, in]
            self.source = (x, version)
        return self.scaled, self.norm


class Int8Linear(torch.nn.Module):
    """`nn.Linear` with int8 weights (a scale per output feature) and int8 activations whose range is each row's
    own: a row's output never depends on the other rows of its call. `rows`: shared with the layers that read
    the same inputs (`quantize_linears`)."""

    def __init__(self, linear: torch.nn.Linear, rows: _Rows | None = None) -> None:
        super().__init__()
        self.rows = rows or _Rows()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()  # [out, in]
        scales = weight.abs().amax(dim=1).clamp(min=_TINY) / 127  # [out]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors' deprecation notice; the day they are removed this
            #                                  raises instead of running something else
            qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), axis=0,
                                                 dtype=torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)  # fbgemm's packed int8 weight
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        anchor = torch.zeros(1, self.in_features)
        anchor[0, :2] = torch.tensor([1.0, -1.0])
        self.register_buffer("anchor", anchor)  # [1, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] float32 (an int8 model computes in float32) -> [..., out]."""
        scaled, norm = self.rows.of(x, self.anchor)  # [R + 1, in], [R, 1]
        out = torch.ops.quantized.linear_dynamic(scaled, self._packed, True)[:-1]
        out = out.mul_(norm) if self.bias is None else torch.addcmul(self.bias, out, norm)  # [R, out]
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linears(model: torch.nn.Module) -> int:
    """Replace, in place, every `nn.Linear` of `model` by an Int8Linear; returns how many. The linears of one module
    that take inputs of one width share their prepared rows (reused only for the very same input tensor)."""
    places = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
              if type(child) is torch.nn.Linear]
    shared: dict[tuple[int, int], _Rows] = {}  # (parent, in_features) -> the rows its linears share
    with torch.no_grad():
        for parent, name in places:  # each dense weight is freed as soon as it is replaced
            linear = getattr(parent, name)
            rows = shared.setdefault((id(parent), linear.in_features), _Rows())
            setattr(parent, name, Int8Linear(linear, rows))
    return len(places)
