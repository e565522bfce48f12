"""Affine maps after fully-connected layers and transposed convs (REPARAM.md transform 1).

* Gemm ``y = alpha * A @ op(B) + beta * C`` followed by ``s y + t`` (per column ``n``) is the Gemm
  ``alpha * A @ op(B') + 1 * C'`` with ``op(B')[:, n] = op(B)[:, n] * s[n]`` and
  ``C' = s * beta * C + t``. ``op(B) = B`` or ``B^T`` (``transB``); ``A``'s transpose is irrelevant.
  A MatMul with a constant ``(K, N)`` weight is the Gemm with ``alpha = 1`` and no ``C``.
* An affine ``s x + t`` (per feature ``k``) *before* that Gemm (``transA = 0``) is the Gemm with
  ``op(B')[k, :] = s[k] op(B)[k, :]`` and ``C' = beta * C + alpha * t @ op(B)``.
* ConvTranspose weight has layout ``(I, O/g, k...)``; output channel of ``W[i, j]`` is
  ``(i // (I/g)) * (O/g) + j``, so the affine scales ``W[i, j]`` by ``s`` of that channel and
  ``b' = s * b + t``.
"""
from __future__ import annotations

import numpy as np

from .forms import AffineForm, f64


def gemm_then_affine(b, c, alpha: float, beta: float, trans_b: bool, affine: AffineForm):
    """Return ``(B', C')`` for the fused Gemm (which then uses the same alpha and ``beta = 1``)."""
    b = f64(b)
    n = b.shape[0] if trans_b else b.shape[1]
    affine.check_rank(2)
    s, t = affine.vectors(n)
    new_b = b * (s[:, None] if trans_b else s[None, :])
    if c is None:
        new_c = t.copy()
    else:
        new_c = s * (beta * f64(c)) + t
    return new_b, new_c


def affine_then_gemm(affine: AffineForm, b, c, alpha: float, beta: float, trans_b: bool):
    """Return ``(B', C')`` for ``Gemm(s x + t)`` as one Gemm (same alpha, ``beta = 1``); ``x`` is ``(M, K)``."""
    b = f64(b)
    k = b.shape[1] if trans_b else b.shape[0]
    affine.check_rank(2)
    s, t = affine.vectors(k)
    op_b = b.T if trans_b else b
    new_op_b = op_b * s[:, None]
    new_c = alpha * (t @ op_b)
    if c is not None:
        new_c = new_c + beta * f64(c)
    return (new_op_b.T if trans_b else new_op_b), new_c


def convtranspose_then_affine(weight, bias, groups: int, affine: AffineForm):
    """Return ``(W', b')`` for ``affine(conv_transpose(x, W, b))`` with any groups."""
    w = f64(weight)
    affine.check_rank(w.ndim)
    in_c, og = w.shape[0], w.shape[1]
    out_c = og * groups
    s, t = affine.vectors(out_c)
    ig = in_c // groups
    channel = (np.arange(in_c) // ig)[:, None] * og + np.arange(og)[None, :]  # (I, O/g)
    new_w = w * s[channel].reshape(channel.shape + (1,) * (w.ndim - 2))
    b = np.zeros(out_c) if bias is None else f64(bias)
    return new_w, b * s + t
