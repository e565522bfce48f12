"""The cost model: multiply-accumulates (MACs) and parameters, with one counting convention.

Convention (for the region collapse's gate and for the report alike)
--------------------------------------------------------------------
MACs are the multiply-accumulates of the ops that are linear maps with a weight or a window,
for one inference at the sizes the graph states:

* ``Conv``               output elements x (C_in / group) x prod(kernel)
                         (= output pixels x ``weight.size`` per image)
* ``ConvTranspose``      input elements x (C_out / group) x prod(kernel)
* ``Gemm``, ``MatMul``   output elements x K (the reduction length)
* ``AveragePool``        output elements x prod(kernel)
* ``GlobalAveragePool``  input elements

Every other op (BatchNormalization, elementwise arithmetic, activations, Pad, data movement)
counts 0 MACs: those are memory-bound and show in the node count instead. Parameters are the
elements of initializers and Constant tensors. Costs compare by MACs, then parameters, then
nodes, so between two exact forms of equal arithmetic the smaller and then the shorter wins;
and a merge is made only when it is no worse in MACs *and* in parameters (``Cost.no_worse``), so
that neither ever grows (a strided 1x1 -> KxK can save MACs and still add weights).

Sizes: a model-level count pins dynamic input dims (1 on axis 0, 32 elsewhere, like the
verification inputs) and runs shape inference. Inside the region collapse, a dynamic spatial
axis has the size ``a n + b`` in the unknown input size ``n`` (``SpatialSize``), derived op by
op: divided by the strides, grown by pads, shrunk by kernels. Pixel counts are then polynomials
in ``n`` (``Poly``) compared for large ``n``: per output pixel with the stride factors first,
then the border terms (a 1x1 conv moved after a Pad computes the border too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import onnx


class Poly:
    """A polynomial in the unknown input size ``n`` (coefficients ``c[0] + c[1] n + ...``, Fractions),
    ordered by its value for large ``n``: the highest-degree coefficient first."""
    __slots__ = ("c",)

    def __init__(self, coefficients):
        c = [Fraction(x) for x in coefficients]
        while len(c) > 1 and c[-1] == 0:
            c.pop()
        self.c = tuple(c) or (Fraction(0),)

    @staticmethod
    def of(x) -> "Poly":
        return x if isinstance(x, Poly) else Poly([x])

    def __add__(self, other):
        a, b = self.c, Poly.of(other).c
        n = max(len(a), len(b))
        return Poly([(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)])

    __radd__ = __add__

    def __mul__(self, other):
        if not isinstance(other, Poly):
            return Poly([x * other for x in self.c])
        out = [Fraction(0)] * (len(self.c) + len(other.c) - 1)
        for i, x in enumerate(self.c):
            for j, y in enumerate(other.c):
                out[i + j] += x * y
        return Poly(out)

    __rmul__ = __mul__

    def _key(self, other) -> int:
        """Sign of ``self - other`` for large ``n``."""
        d = (self + Poly.of(other) * -1).c
        for x in reversed(d):
            if x:
                return 1 if x > 0 else -1
        return 0

    def __lt__(self, other):
        return self._key(other) < 0

    def __le__(self, other):
        return self._key(other) <= 0

    def __gt__(self, other):
        return self._key(other) > 0

    def __ge__(self, other):
        return self._key(other) >= 0

    def __eq__(self, other):
        return isinstance(other, (Poly, int, Fraction)) and self._key(other) == 0

    def __hash__(self):
        return hash(self.c)

    def __float__(self):
        """Its value at the pinned size (for display)."""
        return float(sum(x * PIN_OTHER ** i for i, x in enumerate(self.c)))

    def __repr__(self):
        return " + ".join(f"{x}n^{i}" for i, x in enumerate(self.c) if x) or "0"


@dataclass(frozen=True)
class SpatialSize:
    """One spatial axis of size ``scale * n + offset`` (``n``: the unknown input size)."""
    scale: Fraction
    offset: Fraction

    @classmethod
    def of(cls, dim) -> "SpatialSize":
        """A static dim, or a fresh unknown one (``n``)."""
        return cls(Fraction(0), Fraction(dim)) if isinstance(dim, int) else cls(Fraction(1), Fraction(0))

    def window(self, kernel: int, stride: int, pad: int, dilation: int) -> "SpatialSize":
        """After a conv / pool window: ``(size + pad - dilation (kernel - 1) - 1) / stride + 1``."""
        return SpatialSize(self.scale / stride, (self.offset + pad - dilation * (kernel - 1) - 1) / stride + 1)

    def poly(self) -> Poly:
        return Poly([self.offset, self.scale])


Number = int | Fraction | Poly

#: sizes given to dynamic input dims when a whole model is counted (as the verification inputs)
PIN_BATCH, PIN_OTHER = 1, 32


@dataclass(frozen=True, order=True)
class Cost:
    """``(macs, params, nodes)``, compared in that order."""
    macs: Number = 0
    params: int = 0
    nodes: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.params + other.params, self.nodes + other.nodes)

    def no_worse(self, other: "Cost") -> bool:
        """Neither more MACs nor more parameters than ``other`` (the guard on every merge)."""
        return self.macs <= other.macs and self.params <= other.params

    def describe(self) -> str:
        """``'1.52 GMACs, 4 M params, 3 node(s)'``."""
        (m, mp), (p, pp) = human(self.macs), human(self.params)
        return f"{m} {mp}MACs, {p} {pp + ' ' if pp else ''}params, {self.nodes} node(s)"


ZERO = Cost()


def human(x: Number) -> tuple[str, str]:
    """``1234567`` -> ``('1.23', 'M')``; three significant digits (fractions: per-pixel costs)."""
    x = float(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}", unit
    return f"{x:.3g}", ""


def conv_cost(weight_shape: Sequence[int], out_pixels: Number, bias: bool = True) -> Cost:
    """One Conv writing ``out_pixels`` pixels per image: ``out_pixels x weight.size`` MACs."""
    size = math.prod(weight_shape)
    return Cost(out_pixels * size, size + (weight_shape[0] if bias else 0), 1)


def op_macs(op_type: str, attrs: dict, inputs: Sequence[Sequence[int] | None],
            outputs: Sequence[Sequence[int] | None]) -> int | None:
    """MACs of one node from its input and output shapes (``None`` where a needed shape is unknown).

    ``inputs`` / ``outputs`` hold one shape per node input / output (``None`` when unknown or
    absent); a shape is a sequence of ints.
    """
    def known(shape):
        return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)

    def numel(shape):
        return math.prod(shape)

    out = outputs[0] if outputs else None
    if op_type == "Conv":
        if len(inputs) < 2 or not known(inputs[1]) or not known(out):
            return None
        return numel(out) * numel(inputs[1][1:])
    if op_type == "ConvTranspose":
        if len(inputs) < 2 or not known(inputs[0]) or not known(inputs[1]):
            return None
        return numel(inputs[0]) * numel(inputs[1][1:])
    if op_type in ("Gemm", "MatMul"):  # K from B when it is known (A's shape may be computed at run time)
        if len(inputs) < 2 or not known(out):
            return None
        a, b = inputs[0], inputs[1]
        if known(b) and len(b) >= 2:
            k = (b[1] if attrs.get("transB", 0) else b[0]) if op_type == "Gemm" else b[-2]
        elif known(a) and a:
            k = (a[0] if attrs.get("transA", 0) else a[-1]) if op_type == "Gemm" else a[-1]
        else:
            return None
        return numel(out) * k
    if op_type == "AveragePool":
        if not known(out) or "kernel_shape" not in attrs:
            return None
        return numel(out) * numel(attrs["kernel_shape"])
    if op_type == "GlobalAveragePool":
        return numel(inputs[0]) if inputs and known(inputs[0]) else None
    return 0
