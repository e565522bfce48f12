"""Per-channel affine maps and their folds into convs (REPARAM.md transforms 1-4).

* BN as an affine: ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``.
* Affine after affine: ``s2 (s1 x + t1) + t2 = (s2 s1) x + (s2 t1 + t2)``.
* Affine after a conv: ``W' = W * s[o]``, ``b' = s * b + t``.
* Affine before a conv: ``conv(s x + t) = conv_{W * s[i]}(x) + sum_{i,k} W[o,i,k] t[i]`` -- exact only
  when the conv does not zero-pad (padding pads ``s x + t`` with 0, not with ``t``) or ``t == 0``.
* Affine as a conv: the 1x1 depthwise kernel ``W[c, 0] = s[c]``, ``b = t`` (the identity when
  ``s = 1, t = 0``).
"""
from __future__ import annotations

import numpy as np

from .errors import NotRepresentable
from .forms import AffineForm, ConvForm, f64, merge_rank


def bn_affine(scale, bias, mean, var, epsilon: float) -> AffineForm:
    """BatchNormalization (inference) as ``s x + t``."""
    s = f64(scale) / np.sqrt(f64(var) + float(epsilon))
    t = f64(bias) - f64(mean) * s
    return AffineForm(s.reshape(-1), t.reshape(-1), rank=None, min_rank=0)


def _same_channels(a: AffineForm, b: AffineForm) -> None:
    ca, cb = a.channels, b.channels
    if ca is not None and cb is not None and ca != cb:
        raise NotRepresentable(f"per-channel constants of lengths {ca} and {cb} (one broadcasts along another axis)",
                               code="broadcast")


def affine_then_affine(first: AffineForm, second: AffineForm) -> AffineForm:
    """``second(first(x))``."""
    rank, min_rank = merge_rank(first, second)
    _same_channels(first, second)
    scale = f64(second.scale) * f64(first.scale)
    shift = f64(second.scale) * f64(first.shift) + f64(second.shift)
    if scale.ndim == 1 and shift.ndim == 0:
        shift = np.broadcast_to(shift, scale.shape).copy()
    if shift.ndim == 1 and scale.ndim == 0:
        scale = np.broadcast_to(scale, shift.shape).copy()
    return AffineForm(scale, shift, rank, min_rank)


def affine_sum(a: AffineForm, b: AffineForm, sign: float = 1.0) -> AffineForm:
    """``a(x) + sign * b(x)``."""
    rank, min_rank = merge_rank(a, b)
    _same_channels(a, b)
    scale = f64(a.scale) + sign * f64(b.scale)
    shift = f64(a.shift) + sign * f64(b.shift)
    if scale.ndim != shift.ndim:
        n = max(np.size(scale), np.size(shift))
        scale, shift = np.broadcast_to(scale, (n,)).copy(), np.broadcast_to(shift, (n,)).copy()
    return AffineForm(scale, shift, rank, min_rank)


def conv_then_affine(conv: ConvForm, affine: AffineForm) -> ConvForm:
    """``affine(conv(x))``: scale each output channel's kernel and bias."""
    affine.check_rank(conv.rank)
    s, t = affine.vectors(conv.out_channels)
    b = f64(conv.bias) * s + t
    return conv.deferred(conv.weight_shape, lambda: f64(conv.weight) * s.reshape((-1,) + (1,) * (conv.rank - 1)), b)


def affine_then_conv(affine: AffineForm, conv: ConvForm) -> ConvForm:
    """``conv(affine(x))``: scale each input channel; the shift becomes bias.

    Raises ``NotRepresentable`` when the conv zero-pads a non-zero shift.
    """
    affine.check_rank(conv.rank)
    s, t = affine.vectors(conv.in_channels)
    if any(p != 0 for p in conv.pads) and np.any(t != 0):
        raise NotRepresentable("affine with a non-zero shift before a zero-padding conv is not a conv", code="padding")
    g, ig = conv.groups, conv.weight_shape[1]
    og = conv.out_channels // g
    grouped = (g, og, ig) + conv.kernel_shape
    spatial = (1,) * conv.n_spatial
    # input channel of W[o, j] is (o // og) * ig + j
    s_g = s.reshape((g, 1, ig) + spatial)
    t_g = t.reshape(g, 1, ig)
    sums = np.asarray(conv.weight).reshape(grouped).sum(axis=tuple(range(3, 3 + conv.n_spatial)), dtype=np.float64)
    shift = (sums * t_g).sum(axis=2).reshape(-1)
    return conv.deferred(conv.weight_shape, lambda: (f64(conv.weight).reshape(grouped) * s_g).reshape(conv.weight_shape),
                         f64(conv.bias) + shift)


def affine_as_conv(affine: AffineForm, channels: int, n_spatial: int) -> ConvForm:
    """The affine as a 1x1 depthwise conv (``groups = channels``) on ``channels`` channels."""
    affine.check_rank(n_spatial + 2)
    s, t = affine.vectors(channels)
    w = s.reshape((channels, 1) + (1,) * n_spatial).copy()
    return ConvForm.make(w, t.copy(), groups=channels)
