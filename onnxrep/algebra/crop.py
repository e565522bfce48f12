"""Taps that never read the input: a kernel cropped to the taps that do (exact).

Per spatial axis, tap ``t`` reads input ``o·s − p_b + t·d`` for output ``o``; on an input of ``n`` pixels
the taps landing inside for some output form a range ``[a, b]`` (a KxK kernel on a map smaller than
itself mostly reads padding). The others multiply zeros, so the conv with ``W[..., a:b+1]`` and pads
``p_b − a·d``, ``p_e − (k − 1 − b)·d`` computes the same output of the same size:
``o·s − (p_b − a·d) + t'·d`` is the old pixel of tap ``t' + a``, and ``p_b + p_e − d(k − 1)`` is unchanged.
Only non-negative new pads are used (a negative one would crop the input: left to the caller).
"""
from __future__ import annotations

from .conv_fc import output_size, tap_reads
from .forms import ConvForm


def used_taps(form: ConvForm, in_size: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per spatial axis, the first and last tap that reads an input pixel for some output (``(0, -1)``:
    none). ``NotRepresentable`` when the window is larger than the padded input."""
    out = output_size(form, in_size)
    ranges = []
    for ax, k in enumerate(form.kernel_shape):
        hit = [t for t in range(k) if len(tap_reads(form, in_size, out, ax, t)[0])]
        ranges.append((hit[0], hit[-1]) if hit else (0, -1))
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
