"""Sums of parallel convs that read one tensor (REPARAM.md transforms 4-5).

Two convs on the same input add into one when stride and groups agree and every kernel tap
lands on the same input pixel. Per spatial axis a branch with begin pad ``p_b``, end pad
``p_e``, kernel ``k`` and dilation ``d`` reads, for output ``o``, pixels
``o*s - p_b + d*t`` for ``t in [0, k)``; its output length depends only on the *slack*
``e = p_e - (d*(k-1) - p_b)``. So branches merge when their slacks are equal and their begin
pads differ by multiples of ``d``: the merged conv has ``P = max p_b``, places branch ``i``'s
kernel at offset ``(P - p_b_i) / d`` and zero-fills the rest (the classic "centre-pad 1x1 into
3x3", ACNet's 1xK / Kx1 crosses, even kernels and asymmetric pads alike). Different groups
merge at ``gcd`` of the groups by expanding the block-diagonal weights (``regroup``).

Equal slacks prove the sum for *every* input size. On an input of known length ``L`` (the
static size the graph states) the output length is ``floor((L - 1 + e) / s) + 1``, so with
stride ``s > 1`` different slacks can give the same length: TensorFlow's 'same' padding puts
the odd pixel at the end, a stride-2 3x3 conv has pads ``(0, 1)`` (``e = -1``) beside a 1x1
with none (``e = 0``), equal lengths on every even ``L``. The taps still read the same pixels,
so the sum is one conv there, with any slack between the two (the smallest one whose end pad is
not negative): exact on that size, which is the only one the graph admits.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import NotRepresentable
from .forms import ConvForm, f64
from .geometry import output_length, slack


def regroup(conv: ConvForm, groups: int) -> ConvForm:
    """The same conv written with fewer groups (``groups`` must divide ``conv.groups``).

    ``W_new[o, i' ]`` is ``W[o, i]`` on the old group's block and zero elsewhere.
    """
    g_old = conv.groups
    if groups == g_old:
        return conv
    if groups < 1 or g_old % groups:
        raise NotRepresentable(f"cannot rewrite groups={g_old} as groups={groups}", code="groups")
    out_c, in_c = conv.out_channels, conv.in_channels
    og_old, ig_old = out_c // g_old, conv.weight_shape[1]
    ig_new = in_c // groups
    per_new = g_old // groups  # old groups inside each new group

    def weight():
        w_old = f64(conv.weight)
        w = np.zeros((out_c, ig_new) + conv.kernel_shape)
        for j in range(g_old):
            offset = (j % per_new) * ig_old
            w[j * og_old:(j + 1) * og_old, offset:offset + ig_old] = w_old[j * og_old:(j + 1) * og_old]
        return w

    return conv.deferred((out_c, ig_new) + conv.kernel_shape, weight, f64(conv.bias), groups=groups)


def add(a: ConvForm, b: ConvForm, sign: float = 1.0, in_size: tuple[int | None, ...] | None = None) -> ConvForm:
    """``a(x) + sign * b(x)`` as one conv, or ``NotRepresentable`` with the reason.

    ``in_size``: the spatial size of ``x`` where it is static (``None`` per dynamic axis): branches
    whose slacks differ are summed when their output lengths agree on that size."""
    if a.n_spatial != b.n_spatial:
        raise NotRepresentable("branches have different spatial ranks", code="rank")
    if a.out_channels != b.out_channels or a.in_channels != b.in_channels:
        raise NotRepresentable(
            f"branch channels differ: {a.in_channels}->{a.out_channels} vs {b.in_channels}->{b.out_channels}",
            code="channels")
    n = a.n_spatial
    strides, dilations, begins, ends, kernel, offsets = [], [], [], [], [], []
    for ax in range(n):
        ka, kb = a.kernel_shape[ax], b.kernel_shape[ax]
        sa, sb = a.strides[ax], b.strides[ax]
        if sa != sb:
            raise NotRepresentable(f"strides differ on spatial axis {ax}: {sa} vs {sb}", code="strides")
        da, db = a.dilations[ax], b.dilations[ax]
        # a 1-tap kernel has no dilation of its own: it takes the other branch's
        if ka == 1:
            da = db
        if kb == 1:
            db = da
        if da != db:
            raise NotRepresentable(f"dilations differ on spatial axis {ax}: {da} vs {db}", code="dilations")
        d = da
        pba, pea = a.pads[ax], a.pads[n + ax]
        pbb, peb = b.pads[ax], b.pads[n + ax]
        slack_a, slack_b = slack(ka, d, pba, pea), slack(kb, d, pbb, peb)
        begin = max(pba, pbb)
        if (begin - pba) % d or (begin - pbb) % d:
            raise NotRepresentable(f"branch taps fall between dilated taps on spatial axis {ax}", code="alignment")
        oa, ob = (begin - pba) // d, (begin - pbb) // d
        k = max(oa + ka, ob + kb)
        e = slack_a
        if slack_a != slack_b:
            length = in_size[ax] if in_size is not None and ax < len(in_size) else None
            if length is None:
                raise NotRepresentable(f"branches are not aligned on spatial axis {ax} (output sizes differ on "
                                       f"some input sizes, and this one is dynamic)", code="alignment")
            if output_length(length, sa, slack_a) != output_length(length, sb, slack_b):
                raise NotRepresentable(f"branches are not aligned on spatial axis {ax} (output sizes differ on "
                                       f"its size {length})", code="alignment")
            low, high = sorted((slack_a, slack_b))
            e = min(max(low, begin - d * (k - 1)), high)  # the end pad, never negative where it can be
        strides.append(sa)
        dilations.append(d)
        begins.append(begin)
        ends.append(e + d * (k - 1) - begin)
        kernel.append(k)
        offsets.append((oa, ob))
    groups = math.gcd(a.groups, b.groups)
    a, b = regroup(a, groups), regroup(b, groups)

    def weight():
        w = np.zeros((a.out_channels, a.weight_shape[1]) + tuple(kernel))
        for form, which, sgn in ((a, 0, 1.0), (b, 1, sign)):
            idx = (slice(None), slice(None)) + tuple(
                slice(offsets[ax][which], offsets[ax][which] + form.kernel_shape[ax]) for ax in range(n))
            w[idx] += sgn * f64(form.weight)
        return w

    bias = f64(a.bias) + sign * f64(b.bias)
    return a.deferred((a.out_channels, a.weight_shape[1]) + tuple(kernel), weight, bias, strides=tuple(strides),
                      pads=tuple(begins) + tuple(ends), dilations=tuple(dilations), groups=groups)


def identity(channels: int, n_spatial: int, groups: int | None = None) -> ConvForm:
    """The identity as a 1x1 conv: ``W[i, i mod (C/g)] = 1`` (depthwise when ``groups`` is None)."""
    groups = channels if groups is None else groups
    if channels % groups:
        raise NotRepresentable(f"{channels} channels not divisible by groups={groups}", code="channels")
    ig = channels // groups
    w = np.zeros((channels, ig) + (1,) * n_spatial)
    w[(np.arange(channels), np.arange(channels) % ig) + (0,) * n_spatial] = 1.0
    return ConvForm.make(w, None, groups=groups)
