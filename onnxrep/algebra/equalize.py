"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019): exact rescaling of two
layers joined by a positively homogeneous op.

For ``f`` with ``f(x / s) = f(x) / s`` per channel for every ``s > 0`` (ReLU, LeakyReLU, PReLU with
per-channel slopes, max / average pooling, zero padding, or nothing), scaling output channel ``i`` of
the first layer (its weights and bias) by ``1 / s_i`` and input channel ``i`` of the second by ``s_i``
leaves ``layer2(f(layer1(x)))`` unchanged. With ``r1_i`` the range (max |w|) of output channel ``i`` of
layer 1 and ``r2_i`` that of input channel ``i`` of layer 2,

    s_i = sqrt(r1_i / r2_i)        makes both ranges sqrt(r1_i r2_i),

which is the choice that maximizes the product of the two layers' per-channel precisions under
per-tensor quantization (Nagel et al., eq. 9-11). Channels with a zero range on either side keep
``s_i = 1``. A chain of layers is equalized pair by pair until the scales converge.

Weights are conv weights ``(O, I/g, k...)`` (a fully-connected layer is ``(O, I)``: groups 1, no
taps). Input channel ``i`` of a grouped layer lives in group ``i // (I/g)``, at column ``i % (I/g)``
of that group's output rows. Every function here also takes a layer's *range matrix*
``R[o, j] = max_taps |W[o, j, ...]|`` (``range_matrix``) in place of its weight: the ranges of a
rescaled layer are those of its rescaled range matrix, so a chain is equalized on these small
matrices and each weight is rescaled once at the end. Everything is float64.
"""
from __future__ import annotations

import numpy as np


def range_matrix(weight: np.ndarray) -> np.ndarray:
    """``R[o, j] = max |W[o, j, ...]|`` over the taps: ``(O, I/g)``."""
    w = np.abs(np.asarray(weight, dtype=np.float64))
    return w.reshape(w.shape[0], w.shape[1], -1).max(axis=2)


def output_ranges(weight: np.ndarray) -> np.ndarray:
    """``max |W[o, ...]|`` per output channel ``o``."""
    w = np.abs(np.asarray(weight, dtype=np.float64))
    return w.reshape(len(w), -1).max(axis=1)


def input_ranges(weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """``max |W[o, i mod (I/g), ...]|`` over the output rows ``o`` of input channel ``i``'s group."""
    w = np.abs(np.asarray(weight, dtype=np.float64))
    out_c, ig = w.shape[0], w.shape[1]
    og = out_c // groups
    per = w.reshape(groups, og, ig, -1).max(axis=(1, 3))  # (g, I/g)
    return per.reshape(-1)


def equalizing_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)``; 1 where either range is 0."""
    r1, r2 = np.asarray(r1, dtype=np.float64), np.asarray(r2, dtype=np.float64)
    s = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return s


def scale_outputs(weight: np.ndarray, bias: np.ndarray | None, s: np.ndarray):
    """Layer 1 with output channel ``i`` divided by ``s_i``: ``(W / s, b / s)`` (``b`` None stays None)."""
    w = np.asarray(weight, dtype=np.float64)
    shape = (-1,) + (1,) * (w.ndim - 1)
    return w / s.reshape(shape), (None if bias is None else np.asarray(bias, dtype=np.float64) / s)


def scale_inputs(weight: np.ndarray, s: np.ndarray, groups: int = 1) -> np.ndarray:
    """Layer 2 with input channel ``i`` multiplied by ``s_i``."""
    w = np.asarray(weight, dtype=np.float64)
    out_c, ig = w.shape[0], w.shape[1]
    og = out_c // groups
    per_group = s.reshape(groups, 1, ig)  # (g, 1, I/g): channel i = group * ig + column
    scaled = w.reshape((groups, og, ig) + w.shape[2:]) * per_group.reshape((groups, 1, ig) + (1,) * (w.ndim - 2))
    return scaled.reshape(w.shape)


def spread(ranges: np.ndarray) -> float:
    """``max / median`` of the non-zero channel ranges (1 for none): what per-tensor quantization pays."""
    r = np.asarray(ranges, dtype=np.float64)
    r = r[r > 0]
    return float(r.max() / np.median(r)) if r.size else 1.0
