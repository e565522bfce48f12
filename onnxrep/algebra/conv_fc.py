"""A conv on a fixed-size map as a fully-connected layer (REPARAM.md transform 10, RepMLP).

A conv is linear in its input, so on an input of fixed size ``(C, *in)`` it *is* a matrix: with
the sample flattened row-major (``x_flat[c * P_in + p] = x[c, p]``, ``P_in = prod(in)``) and the
output likewise (``P_out = prod(out)``)

    conv(x, W, b)_flat = M x_flat + repeat(b, P_out)

where ``M[(e, o), (c, i)] = Σ_t W[e, c, t] · [i = o·s − p_b + t·d]`` (per spatial axis; taps that
land in the zero padding contribute nothing). A grouped conv only reads its own group's channels,
so ``M`` is block-diagonal: it is the weight of a 1x1 conv over ``C·P_in`` channels with the same
``groups`` (``(E·P_out, (C/g)·P_in, 1, ..., 1)``), or, read densely, the ``(E·P_out, C·P_in)``
matrix of a Gemm. That is exactly what the RepMLP authors compute by convolving an identity
batch (``conv(eye(P_in).reshape(P_in, C, *in))``); here each tap is placed directly, which needs
no conv implementation and stays exact in float64.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .errors import NotRepresentable
from .forms import ConvForm, Deferred, f64


def output_size(form: ConvForm, in_size: tuple[int, ...]) -> tuple[int, ...]:
    """The conv's output spatial size on an input of ``in_size``."""
    n = form.n_spatial
    out = []
    for ax in range(n):
        k, s, d = form.kernel_shape[ax], form.strides[ax], form.dilations[ax]
        span = in_size[ax] + form.pads[ax] + form.pads[n + ax] - d * (k - 1)
        if span < 1:
            raise NotRepresentable(f"conv window larger than its padded input on spatial axis {ax}", code="shape")
        out.append((span - 1) // s + 1)
    return tuple(out)


def tap_reads(form: ConvForm, in_size, out_size, ax: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Output positions on axis ``ax`` whose tap ``t`` lands inside the input, and those inputs."""
    o = np.arange(out_size[ax])
    i = o * form.strides[ax] - form.pads[ax] + t * form.dilations[ax]
    inside = (i >= 0) & (i < in_size[ax])
    return o[inside], i[inside]


def conv_as_fc(form: ConvForm, in_size: tuple[int, ...]) -> tuple[ConvForm, tuple[int, ...]]:
    """The conv on inputs of spatial size ``in_size`` as a pointwise conv on the flattened sample.

    Returns ``(fc, out_size)``: ``fc`` a 1x1 ``ConvForm`` with ``E·P_out`` outputs, ``C·P_in`` inputs
    and the conv's groups (weight ``M`` above, bias ``repeat(b, P_out)``), computed on first use.
    """
    in_size = tuple(int(v) for v in in_size)
    n = form.n_spatial
    if len(in_size) != n:
        raise NotRepresentable(f"{len(in_size)} spatial sizes for a conv with {n} spatial axes", code="rank")
    out_size = output_size(form, in_size)
    p_in, p_out = math.prod(in_size), math.prod(out_size)
    e, cg = form.out_channels, form.weight_shape[1]

    def weight():
        w = f64(form.weight)
        # (out..., in..., E, C/g): one tap writes each (output pixel, input pixel) pair at most once
        m = np.zeros(out_size + in_size + (e, cg))
        for tap in itertools.product(*(range(k) for k in form.kernel_shape)):
            pairs = [tap_reads(form, in_size, out_size, ax, t) for ax, t in enumerate(tap)]
            if any(len(o) == 0 for o, _ in pairs):
                continue
            index = []
            for part in (0, 1):  # output positions, then the input positions they read
                for ax, pair in enumerate(pairs):
                    shape = [1] * n
                    shape[ax] = len(pair[part])
                    index.append(pair[part].reshape(shape))
            m[tuple(index)] += w[(slice(None), slice(None)) + tap]
        # -> (E, out..., C/g, in...) -> (E·P_out, (C/g)·P_in)
        order = (2 * n,) + tuple(range(n)) + (2 * n + 1,) + tuple(range(n, 2 * n))
        return m.transpose(order).reshape(e * p_out, cg * p_in, *(1,) * n)

    bias = np.repeat(f64(form.bias), p_out)
    fc = ConvForm(Deferred((e * p_out, cg * p_in) + (1,) * n, weight), bias, strides=(1,) * n, pads=(0,) * (2 * n),
                  dilations=(1,) * n, groups=form.groups)
    return fc, out_size

