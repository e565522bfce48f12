"""Canonical value types of the algebra: a conv and a per-channel affine map.

Everything here is pure numpy; no ONNX import. Arrays may be stored in any float dtype
(a form built straight from a model keeps the model's array, no copy); every operation
that combines forms computes in float64.

``ConvForm`` is ``y = conv(x, W, b; strides, pads, dilations, groups)`` with ``W`` of shape
``(O, I/g, k_1, ..., k_n)`` and ONNX-ordered ``pads = (b_1..b_n, e_1..e_n)``. Pads may be
negative inside the algebra (a crop of the input); only non-negative pads can be emitted.

``pads`` may also be ``SizeDependentPads``: ONNX ``auto_pad=SAME_*`` with a stride > 1 on a
dynamic size, whose pads are only known at run time. Such a form composes only where its pads
do not matter (an affine after it, a regrouping); every operation that reads its pads refuses
with the reason (reading them raises ``NotRepresentable``), and it is written back with its
``auto_pad``.

``AffineForm`` is ``y = s * x + t`` with ``s``, ``t`` per channel (axis 1) or scalars. ``rank``
records the tensor rank that a broadcast constant required (``None`` when any rank works).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NotRepresentable


def overflow(dtype, *arrays: np.ndarray) -> str | None:
    """Why ``arrays`` cannot be written in ``dtype`` (``None`` if they can): a value beyond the
    float range (a merged float16 weight past 65504 would be inf), or not finite. Reads the
    extremes only, no copy."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return None
    limit = float(np.finfo(dtype).max)
    for a in arrays:
        a = np.asarray(a)
        if a.size and not (-limit <= float(np.min(a)) and float(np.max(a)) <= limit):
            return f"merged weights overflow {dtype.name}"
    return None


def precision_loss(dtype, weight: np.ndarray) -> str | None:
    """Why ``weight`` (float64) loses precision in ``dtype`` beyond normal rounding (``None`` if not).

    Rounding a normal number to nearest moves it by at most half an ulp, ``eps/2 * |w|``: per output
    channel (axis 0), ``sum |cast(w) - w| <= eps/2 * sum |w|``. Values under the smallest normal
    number (float16: 6.1e-5; a tiny scale folded into a weight) are rounded to a fixed spacing
    instead: when their share of the loss alone exceeds half that bound, the merged layer is less
    precise than the layers it replaces (they round the small values once, at their output, not
    every weight). Checked for float types with a narrow exponent range only (float16).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or float(np.finfo(dtype).tiny) < 1e-30:
        return None
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim < 2 or not w.size:
        return None
    flat = w.reshape(len(w), -1)
    tiny = float(np.finfo(dtype).tiny)
    under = (np.abs(flat) < tiny) & (flat != 0)
    if not under.any():
        return None
    lost = np.where(under, np.abs(flat.astype(dtype).astype(np.float64) - flat), 0.0).sum(axis=1)
    budget = float(np.finfo(dtype).eps) / 2 * np.abs(flat).sum(axis=1)
    worst = int(np.argmax(lost - budget / 2))
    if lost[worst] > budget[worst] / 2:
        return (f"merged weights fall under {dtype.name}'s normal range (output channel {worst}: rounding its "
                f"weights under {tiny:.2g} loses {lost[worst] / budget[worst]:.2f}x the bound of normal rounding)")
    return None


def cast_back(dtype, *arrays: np.ndarray) -> list[np.ndarray]:
    """The float64 results cast to the model's ``dtype``; ``NotRepresentable`` if any overflows it,
    or if the first (the weight) loses more precision than normal rounding (``precision_loss``)."""
    reason = overflow(dtype, *arrays)
    if reason:
        raise NotRepresentable(reason, code="dtype-range")
    reason = precision_loss(dtype, arrays[0]) if arrays else None
    if reason:
        raise NotRepresentable(reason, code="dtype-precision")
    return [np.asarray(a).astype(np.dtype(dtype)) for a in arrays]


def f64(a) -> np.ndarray:
    """View ``a`` as float64 (copies only when the dtype differs)."""
    return np.asarray(a, dtype=np.float64)


class SizeDependentPads:
    """The pads of ``auto_pad=SAME_UPPER`` / ``SAME_LOWER`` with a stride > 1 on a dynamic size.

    They follow the input size (TensorFlow's 'same' puts the odd pixel at the end: a stride-2 3x3
    conv pads ``(0, 1)`` on even sizes, ``(1, 1)`` on odd ones), so no fixed pads equal them.
    Iterating, indexing, measuring or comparing them raises ``NotRepresentable``: an operation
    that needs the pads declines instead of using wrong ones.
    """
    __slots__ = ("mode", "n_spatial")

    def __init__(self, mode: str, n_spatial: int):
        self.mode, self.n_spatial = mode, n_spatial

    def refuse(self, *_):
        raise NotRepresentable(f"auto_pad={self.mode} with stride > 1 depends on the input size, which is dynamic",
                               code="strides")

    __iter__ = __getitem__ = __len__ = __eq__ = __bool__ = refuse
    __hash__ = None

    def __repr__(self) -> str:
        return f"SizeDependentPads({self.mode!r})"


class Deferred:
    """A weight computed on first use; its ``shape`` is known up front.

    The region collapse weighs many exact merges and writes few: a merged form's geometry and
    bias are computed at once (cheap), its weight only when someone reads it. A rejected merge
    of a depthwise 7x7 and a 1x1 expansion never builds its dense 7x7 kernel.
    """
    __slots__ = ("shape", "_compute", "_value")

    def __init__(self, shape, compute):
        self.shape = tuple(int(d) for d in shape)
        self._compute = compute
        self._value = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def computed(self) -> bool:
        return self._value is not None

    def get(self) -> np.ndarray:
        if self._value is None:
            value = self._compute()
            if tuple(value.shape) != self.shape:
                raise AssertionError(f"deferred weight has shape {value.shape}, expected {self.shape}")
            self._value, self._compute = value, None
        return self._value


@dataclass(frozen=True)
class ConvForm:
    raw_weight: np.ndarray | Deferred
    bias: np.ndarray
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int = 1

    def __post_init__(self):
        n = len(self.weight_shape) - 2
        if n < 1:
            raise NotRepresentable(f"conv weight must have rank >= 3, got {self.weight_shape}", code="rank")
        pads_n = self.pads.n_spatial * 2 if isinstance(self.pads, SizeDependentPads) else len(self.pads)
        if len(self.strides) != n or len(self.dilations) != n or pads_n != 2 * n:
            raise NotRepresentable("strides/dilations/pads do not match the kernel rank", code="rank")
        if self.bias.shape != (self.weight_shape[0],):
            raise NotRepresentable(f"bias shape {self.bias.shape} does not match {self.weight_shape[0]} outputs",
                                   code="shape")
        if self.groups < 1 or self.weight_shape[0] % self.groups:
            raise NotRepresentable(f"{self.weight_shape[0]} output channels not divisible by groups={self.groups}",
                                   code="channels")

    @property
    def weight(self) -> np.ndarray:
        """``(O, I/g, k...)``; a deferred weight is computed here, once."""
        w = self.raw_weight
        return w.get() if isinstance(w, Deferred) else w

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.raw_weight.shape)

    @property
    def n_spatial(self) -> int:
        return len(self.weight_shape) - 2

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1] * self.groups

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return self.weight_shape[2:]

    @property
    def rank(self) -> int:
        """Rank of the tensors this conv reads and writes."""
        return self.n_spatial + 2

    @classmethod
    def make(cls, weight, bias=None, strides=None, pads=None, dilations=None, groups=1) -> "ConvForm":
        weight = np.asarray(weight)
        n = weight.ndim - 2
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=np.float64)
        return cls(
            weight,
            bias=np.asarray(bias).reshape(-1),
            strides=tuple(int(s) for s in (strides or (1,) * n)),
            pads=pads if isinstance(pads, SizeDependentPads) else tuple(int(p) for p in (pads or (0,) * (2 * n))),
            dilations=tuple(int(d) for d in (dilations or (1,) * n)),
            groups=int(groups),
        )

    def with_params(self, weight, bias) -> "ConvForm":
        return ConvForm(weight, bias, self.strides, self.pads, self.dilations, self.groups)

    def deferred(self, shape, compute, bias, **geometry) -> "ConvForm":
        """A form of this geometry (overridden by ``geometry``) with weight ``compute()`` of ``shape``."""
        fields = dict(strides=self.strides, pads=self.pads, dilations=self.dilations, groups=self.groups)
        fields.update(geometry)
        return ConvForm(Deferred(shape, compute), bias, **fields)


@dataclass(frozen=True)
class AffineForm:
    scale: np.ndarray  # shape () or (C,)
    shift: np.ndarray  # shape () or (C,)
    rank: int | None = None
    min_rank: int = 0

    @classmethod
    def identity(cls) -> "AffineForm":
        return cls(np.float64(1.0), np.float64(0.0))

    @property
    def channels(self) -> int | None:
        for a in (self.scale, self.shift):
            if np.ndim(a) == 1:
                return a.shape[0]
        return None

    def check_rank(self, rank: int) -> None:
        """Raise unless the broadcast constants this affine came from fit a tensor of ``rank``."""
        if self.rank is not None and self.rank != rank:
            raise NotRepresentable(f"constant broadcasts along an axis other than the channels of a rank-{rank} tensor",
                                   code="broadcast")
        if rank < self.min_rank:
            raise NotRepresentable(f"constant of rank {self.min_rank} would broadcast a rank-{rank} tensor up",
                                   code="broadcast")

    def vectors(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)`` as float64 vectors of length ``channels``."""
        out = []
        for a in (self.scale, self.shift):
            a = f64(a)
            if a.ndim == 1 and a.shape[0] != channels:
                raise NotRepresentable(f"per-channel constant of length {a.shape[0]} on {channels} channels",
                                       code="channels")
            out.append(np.broadcast_to(a, (channels,)))
        return out[0], out[1]


def merge_rank(a: AffineForm, b: AffineForm) -> tuple[int | None, int]:
    if a.rank is not None and b.rank is not None and a.rank != b.rank:
        raise NotRepresentable("constants broadcast along different axes", code="broadcast")
    return (a.rank if a.rank is not None else b.rank), max(a.min_rank, b.min_rank)


def channel_constant(const: np.ndarray) -> tuple[np.ndarray, int | None, int]:
    """Read a constant that multiplies/adds a tensor by broadcasting as a per-channel vector.

    Returns ``(vector_or_scalar, required_rank, min_rank)``. A constant of shape ``(C, 1, 1)``
    broadcasts along axis 1 only for rank-4 tensors, so its required rank is 4. Raises
    ``NotRepresentable`` when more than one axis is non-trivial.
    """
    const = np.asarray(const)
    big = [i for i, d in enumerate(const.shape) if d != 1]
    if not big:
        return f64(const).reshape(()), None, const.ndim
    if len(big) > 1:
        raise NotRepresentable(f"constant of shape {const.shape} is not per-channel", code="broadcast")
    pos_from_right = const.ndim - 1 - big[0]
    return f64(const).reshape(-1), pos_from_right + 2, const.ndim
