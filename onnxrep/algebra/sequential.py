"""Convs in sequence, AvgPool as a conv, and padding of a pointwise map (REPARAM.md transforms 6-8).

* **1x1 → KxK.** ``conv2(pad_P2(conv1(pad_P1(x))))`` with ``conv1`` pointwise (1x1, stride 1):
  ``W[o, i] = Σ_m W2[o, m] W1[m, i]`` (per group), ``b = b2 + Σ_{m,k} W2[o, m, k] b1[m]``,
  pads ``P1 + P2``. Exact when ``P2 = 0`` or ``b1 = 0``: ``conv2``'s zero padding pads the
  intermediate with 0 where the merged conv sees ``b1``; and never when ``P1`` crops (negative)
  a side that ``P2`` pads: the merged conv would read the cropped pixels instead of zeros.
* **KxK → 1x1** (a compactor): ``W' = Q · W`` over the output axis, ``b' = Q b + b2``; the 1x1
  must be stride 1 without padding.
* **Pad with the map's value at zero.** For a pointwise ``F`` (1x1, stride 1),
  ``pad(F(x), p, value=F(0))`` is ``F(pad0(x, p))``: the same conv with pads ``+ p``. That is
  what DBB's ``BNAndPadLayer`` writes (BN(0) in the border), and a plain zero Pad when ``F(0)=0``.
* **AvgPool** ``k, s, p`` is the depthwise conv with kernel ``1/prod(k)``; exact for
  ``count_include_pad=1`` or no padding (``ceil_mode`` must not add a window).
"""
from __future__ import annotations

import math

import numpy as np

from .branches import regroup
from .errors import NotRepresentable
from .forms import ConvForm, Deferred, f64


def is_pointwise(conv: ConvForm) -> bool:
    return all(k == 1 for k in conv.kernel_shape) and all(s == 1 for s in conv.strides)


def _check_no_pad_after_crop(inner, outer) -> None:
    """Zero padding after a crop re-reads nothing: ``pad(crop(x))`` is not a padding of ``x``."""
    if any(a < 0 and b > 0 for a, b in zip(inner, outer)):
        raise NotRepresentable("padding after a crop on the same side is not a conv of the uncropped input",
                               code="padding")


def compose(first: ConvForm, second: ConvForm) -> ConvForm:
    """``second(first(x))`` as one conv, or ``NotRepresentable``."""
    if first.n_spatial != second.n_spatial:
        raise NotRepresentable("sequential convs have different spatial ranks", code="rank")
    if first.out_channels != second.in_channels:
        raise NotRepresentable(f"channel mismatch: {first.out_channels} outputs feed {second.in_channels} inputs",
                               code="channels")
    if is_pointwise(first):
        _check_no_pad_after_crop(first.pads, second.pads)
        if any(second.pads) and np.any(f64(first.bias) != 0):
            raise NotRepresentable("the second conv zero-pads an intermediate whose border value (bias) is not 0",
                                   code="padding")
        pads = tuple(a + b for a, b in zip(first.pads, second.pads))
        strides, dilations = second.strides, second.dilations
        kernel = second.kernel_shape
    elif is_pointwise(second) and not any(second.pads):
        pads, strides, dilations, kernel = first.pads, first.strides, first.dilations, first.kernel_shape
    else:
        raise NotRepresentable("only 1x1 -> KxK and KxK -> 1x1 (stride 1, no padding) sequences merge", code="sequence")
    g = math.gcd(first.groups, second.groups)
    out_c, in_c, mid = second.out_channels, first.in_channels, first.out_channels
    # b = b2 + sum_{m,k} W2[o, m, k] b1[m], read in the second conv's own groups
    g2, ig2 = second.groups, second.weight_shape[1]
    w2_sums = np.asarray(second.weight).reshape(out_c, ig2, -1).sum(axis=2, dtype=np.float64)
    b1 = f64(first.bias).reshape(g2, 1, ig2)
    bias = f64(second.bias) + (w2_sums.reshape(g2, out_c // g2, ig2) * b1).sum(axis=2).reshape(-1)

    def weight():
        a, b = regroup(first, g), regroup(second, g)
        w1 = f64(a.weight).reshape((g, mid // g, in_c // g) + a.kernel_shape)
        w2 = f64(b.weight).reshape((g, out_c // g, mid // g) + b.kernel_shape)
        if is_pointwise(first):  # W[g, o, i, k] = sum_m W2[g, o, m, k] W1[g, m, i]
            k2 = np.moveaxis(w2.reshape(g, out_c // g, mid // g, -1), 3, 1)          # (g, K, o, m)
            w = np.moveaxis(k2 @ w1.reshape(g, 1, mid // g, in_c // g), 1, 3)          # (g, o, i, K)
        else:  # W[g, o, i, k] = sum_m Q[g, o, m] W1[g, m, i, k]
            w = w2.reshape(g, out_c // g, mid // g) @ w1.reshape(g, mid // g, -1)     # (g, o, i*K)
        return w.reshape((out_c, in_c // g) + kernel)

    return ConvForm(Deferred((out_c, in_c // g) + kernel, weight), bias, tuple(strides), tuple(pads),
                    tuple(dilations), g)


def pad_pointwise(conv: ConvForm, pads, value, rtol: float = 1e-5) -> ConvForm:
    """``pad(conv(x), pads, value)`` as a conv, when ``conv`` is pointwise and ``value == conv(0)``.

    ``value`` is a scalar or a per-channel vector (DBB's BN(0) border). Negative pads crop.
    ``rtol``: how closely the value must match, relative to the map's output scale; exporters
    compute the border in the model's precision (float32: 1e-5; float16 needs about 4e-3).
    """
    if not is_pointwise(conv):
        raise NotRepresentable("padding after a non-pointwise conv is not a conv of the unpadded input", code="padding")
    pads = tuple(int(p) for p in pads)
    if len(pads) != len(conv.pads):
        raise NotRepresentable("pads do not match the spatial rank", code="rank")
    _check_no_pad_after_crop(conv.pads, pads)
    if any(p > 0 for p in pads):  # a crop (negative pads) writes no border
        value = f64(value).reshape(-1)
        if value.size not in (1, conv.out_channels):
            raise NotRepresentable(f"{value.size} padding values for {conv.out_channels} channels", code="channels")
        border = np.broadcast_to(value, (conv.out_channels,))
        bias = f64(conv.bias)
        # exporters compute the border value in the model's precision: compare at that level,
        # relative to the size of the map's outputs (|bias| + the largest row sum of |W|)
        scale = np.abs(bias).max(initial=0) + np.abs(f64(conv.weight)).reshape(conv.out_channels, -1).sum(1).max()
        if np.abs(border - bias).max(initial=0) > rtol * scale + 1e-12:
            raise NotRepresentable("the padding value is not the map's value at zero input", code="padding")
    return ConvForm(conv.raw_weight, conv.bias, conv.strides, tuple(a + b for a, b in zip(conv.pads, pads)),
                    conv.dilations, conv.groups)


def avgpool(channels: int, kernel, strides=None, pads=None, count_include_pad: bool = False) -> ConvForm:
    """AveragePool as a depthwise conv (``groups = channels``)."""
    kernel = tuple(int(k) for k in kernel)
    n = len(kernel)
    pads = tuple(int(p) for p in (pads or (0,) * (2 * n)))
    if any(pads) and not count_include_pad:
        raise NotRepresentable("AveragePool with padding and count_include_pad=0 divides borders differently",
                               code="padding")
    w = np.full((channels, 1) + kernel, 1.0 / math.prod(kernel))
    return ConvForm.make(w, np.zeros(channels), strides or (1,) * n, pads, (1,) * n, channels)
