"""Taps that never read the input: a kernel cropped to the taps that do (exact).

Per spatial axis, tap ``t`` reads input ``o·s − p_b + t·d`` for output ``o``; on an input of ``n`` pixels
the taps landing inside for some output form a range ``[a, b]`` (a KxK kernel on a map smaller than
itself mostly reads padding). The others multiply zeros, so the conv with ``W[..., a:b+1]`` and pads
``p_b − a·d``, ``p_e − (k − 1 − b)·d`` computes the same output of the same size:
``o·s − (p_b − a·d) + t'·d`` is the old pixel of tap ``t' + a``, and ``p_b + p_e − d(k − 1)`` is unchanged.
Only non-negative new pads are used (a negative one would crop the input: left to the caller).
"""
from __future__ import annotations

import numpy as np

from .forms import ConvForm


def used_taps(form: ConvForm, in_size: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per spatial axis, the first and last tap that reads an input pixel for some output (``(0, -1)``: none)."""
    n = form.n_spatial
    ranges = []
    for ax in range(n):
        k, s, d, pb, pe = (form.kernel_shape[ax], form.strides[ax], form.dilations[ax], form.pads[ax],
                           form.pads[n + ax])
        out = (in_size[ax] + pb + pe - d * (k - 1) - 1) // s + 1
        t = np.arange(k)[:, None]
        pos = np.arange(max(out, 0))[None, :] * s - pb + t * d
        hit = np.nonzero(((pos >= 0) & (pos < in_size[ax])).any(axis=1))[0]
        ranges.append((int(hit[0]), int(hit[-1])) if len(hit) else (0, -1))
    return ranges


def crop_dead_taps(form: ConvForm, in_size: tuple[int, ...]) -> ConvForm | None:
    """The conv without the taps that only read padding on inputs of ``in_size``; ``None`` when every tap
    is used, no tap is, or cropping would need a negative pad."""
    n = form.n_spatial
    ranges = used_taps(form, in_size)
    if any(b < a for a, b in ranges) or all((a, b) == (0, k - 1) for (a, b), k in zip(ranges, form.kernel_shape)):
        return None
    begins, ends = [], []
    for ax, (a, b) in enumerate(ranges):
        d, k = form.dilations[ax], form.kernel_shape[ax]
        begins.append(form.pads[ax] - a * d)
        ends.append(form.pads[n + ax] - (k - 1 - b) * d)
    if min(begins + ends) < 0:
        return None
    index = (slice(None), slice(None)) + tuple(slice(a, b + 1) for a, b in ranges)
    return ConvForm(form.weight[index], form.bias, form.strides, tuple(begins + ends), form.dilations, form.groups)
