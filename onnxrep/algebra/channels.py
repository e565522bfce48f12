"""Dead channels: output channels that carry a constant, and removing them exactly.

A Conv output channel ``o`` whose weights are all zero is the constant ``b[o]`` (0 without a bias):
``y[:, o] = sum W[o] * x + b[o] = b[o]`` at every pixel. Elementwise ops map that constant
(``relu(b)``, ``s b + t`` through a BN or a per-channel Mul / Add, ``b`` through Max / Average /
GlobalAverage pooling); a consumer reading the channel folds it into its bias:

* Conv, groups 1: ``conv(x, W)[:, o] = sum_{c kept} W[o, c] * x_c + v * sum_taps W[o, c_dead]``
  at a pixel whose window lies inside the input; at the border, zero padding drops taps, so the
  fold is exact only when ``v == 0`` or the conv pads nothing (:func:`drop_conv_inputs`).
* Gemm ``alpha A B + beta C``: ``C' = C + (alpha / beta) * sum_dead v * B[row]``.
* a depthwise conv keeps the channel on both sides: its output channel ``c`` is the constant
  ``b[c] + v * sum W[c]`` (again with ``v == 0`` or no padding).

Everything here is numpy in float64; the caller casts back (``forms.cast_back``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import NotRepresentable
from .forms import f64


def zero_rows(weight: np.ndarray) -> np.ndarray:
    """Indices of the output channels (axis 0) whose weights are all exactly zero."""
    w = np.asarray(weight)
    if w.ndim < 2 or w.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(~np.any(w.reshape(len(w), -1) != 0, axis=1))


def row_constants(weight: np.ndarray, bias: np.ndarray | None) -> dict[int, float]:
    """``{o: value}`` for the zero rows of a Conv / (transposed) Gemm weight: the bias, or 0."""
    return {int(o): float(bias[o]) if bias is not None else 0.0 for o in zero_rows(weight)}


def _kept(n: int, removed) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[list(removed)] = False
    return np.flatnonzero(mask)


def drop_conv_outputs(weight: np.ndarray, bias: np.ndarray | None, removed) -> tuple[np.ndarray, np.ndarray | None]:
    """The conv without output channels ``removed`` (weights and bias)."""
    keep = _kept(len(weight), removed)
    return np.asarray(weight)[keep], (None if bias is None else np.asarray(bias)[keep])


def drop_conv_inputs(weight: np.ndarray, bias: np.ndarray | None, removed: Mapping[int, float],
                     padded: bool) -> tuple[np.ndarray, np.ndarray]:
    """A groups-1 conv without the input channels ``removed`` (``{c: constant}``), their constants
    folded into the bias: ``b' = b + sum_c v_c * sum_taps W[:, c]``.

    ``NotRepresentable`` when the conv pads and a constant is not 0 (border pixels see fewer taps).
    """
    w = f64(weight)
    if padded and any(v != 0 for v in removed.values()):
        raise NotRepresentable("a dead channel with a nonzero constant feeds a conv that pads (its border "
                               "pixels would see fewer taps of the constant)", code="padding")
    b = np.zeros(len(w)) if bias is None else f64(bias).copy()
    for c, v in removed.items():
        if v:
            b += v * w[:, c].reshape(len(w), -1).sum(axis=1)
    return np.asarray(weight)[:, _kept(w.shape[1], removed)], b


def depthwise_constants(weight: np.ndarray, bias: np.ndarray | None, inputs: Mapping[int, float],
                        padded: bool) -> dict[int, float]:
    """Output constants of a depthwise conv (one filter per channel) whose input channels ``inputs``
    are constants: ``b[c] + v * sum W[c]`` where exact (``v == 0`` or no padding)."""
    w = f64(weight)
    found = {}
    for c, v in inputs.items():
        if v == 0 or not padded:
            found[c] = (0.0 if bias is None else float(bias[c])) + v * float(w[c].sum())
    return found


def drop_gemm_inputs(b_matrix: np.ndarray, c: np.ndarray | None, alpha: float, beta: float, trans_b: bool,
                     removed: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """A Gemm ``alpha A op(B) + beta C`` without the input features ``removed`` (``{k: constant}``).

    Returns ``(B', C')`` for ``alpha A' op(B') + 1 * C'``: ``C' = beta C + alpha sum_k v_k op(B)[k]``
    (``C'`` is None when there was no ``C`` and every constant is 0).
    """
    bm = f64(b_matrix)
    rows = bm.T if trans_b else bm  # op(B): (K, N)
    keep = _kept(rows.shape[0], removed)
    new_b = np.asarray(b_matrix)[:, keep] if trans_b else np.asarray(b_matrix)[keep]
    if c is None and not any(removed.values()):
        return new_b, None
    if c is not None and np.size(c) not in (1, rows.shape[1]):
        raise NotRepresentable("Gemm C varies along the rows", code="broadcast")
    out = np.zeros(rows.shape[1]) if c is None else np.broadcast_to(beta * f64(c).ravel(), (rows.shape[1],)).copy()
    for k, v in removed.items():
        if v:
            out += alpha * v * rows[k]
    return new_b, out


def drop_gemm_outputs(b_matrix: np.ndarray, c: np.ndarray | None, trans_b: bool, removed
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """A Gemm without the output columns ``removed`` (``C`` per column, or broadcast, kept as it is)."""
    n = b_matrix.shape[0] if trans_b else b_matrix.shape[1]
    keep = _kept(n, removed)
    new_b = np.asarray(b_matrix)[keep] if trans_b else np.asarray(b_matrix)[:, keep]
    if c is not None and np.ndim(c) >= 1 and np.shape(c)[-1] == n and n > 1:
        c = np.asarray(c)[..., keep]
    return new_b, c


def gemm_column_constants(b_matrix: np.ndarray, c: np.ndarray | None, beta: float, trans_b: bool) -> dict[int, float]:
    """``{n: value}`` for the output columns of a Gemm whose weights are all zero: ``beta * C[n]``."""
    cols = np.asarray(b_matrix) if trans_b else np.asarray(b_matrix).T  # (N, K)
    n = len(cols)
    if c is not None and np.size(c) not in (1, n):
        return {}  # C varies along the rows too: a zero column is not one constant
    full = np.zeros(n) if c is None else np.broadcast_to(beta * f64(c).ravel(), (n,))
    return {int(j): float(full[j]) for j in zero_rows(cols)}


def drop_channels(vector: np.ndarray, removed) -> np.ndarray:
    """A per-channel parameter (BN scale, a ``(C,1,1)`` constant) without the channels ``removed``
    (along the axis of length > 1, if any; a scalar stays)."""
    v = np.asarray(vector)
    if v.size <= 1:
        return v
    axis = next(i for i, d in enumerate(v.shape) if d > 1)
    return np.take(v, _kept(v.shape[axis], removed), axis=axis)


def activation(op: str, attrs: Mapping, v: float, bounds: tuple[float, float] | None = None) -> float | None:
    """``op(v)`` for an elementwise activation (ONNX attribute defaults), or ``None`` if ``op`` is not
    one this module knows."""
    x = float(v)
    if op in ("Identity", "Dropout"):
        return x
    if op == "Relu":
        return max(x, 0.0)
    if op == "LeakyRelu":
        return x if x >= 0 else float(attrs.get("alpha", 0.01)) * x
    if op == "Sigmoid":
        return float(1 / (1 + np.exp(-x)))
    if op == "HardSigmoid":
        return float(np.clip(float(attrs.get("alpha", 0.2)) * x + float(attrs.get("beta", 0.5)), 0, 1))
    if op == "HardSwish":
        return x * float(np.clip(x / 6 + 0.5, 0, 1))
    if op == "Tanh":
        return float(np.tanh(x))
    if op == "Elu":
        return x if x >= 0 else float(attrs.get("alpha", 1.0)) * (np.exp(x) - 1)
    if op == "Softplus":
        return float(np.log1p(np.exp(x)))
    if op == "Clip":
        lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
        return float(min(max(x, lo), hi))
    return None
