"""Unit tests of the pure-numpy algebra ``onnxrep.algebra`` against ``torch.nn.functional``.

Every form the algebra builds is evaluated in torch (float64) and compared with the composition it
claims to equal; every refusal is checked to raise ``NotRepresentable``. A ``ConvForm`` is evaluated
as ``F.pad`` with its ONNX pads (negative = crop) followed by the conv with ``padding=0``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks import not_representable
from onnxrep.algebra import (
    AffineForm,
    ConvForm,
    NotRepresentable,
    add,
    affine_as_conv,
    affine_sum,
    affine_then_affine,
    affine_then_conv,
    bn_affine,
    channel_constant,
    conv_then_affine,
    convtranspose_then_affine,
    gemm_then_affine,
    identity,
    regroup,
)
from torch_ref import assert_close, run_conv, t64  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def run_affine(aff: AffineForm, x: np.ndarray) -> np.ndarray:
    """``s * x + t`` with per-channel vectors on axis 1 (or scalars)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    s = np.asarray(aff.scale, dtype=np.float64)
    t = np.asarray(aff.shift, dtype=np.float64)
    s = s.reshape(shape) if s.ndim == 1 else s
    t = t.reshape(shape) if t.ndim == 1 else t
    return s * x + t


def rand_conv(rng, n, cin, cout, groups, kernel, strides=None, pads=None, dilations=None, bias=True):
    w = rng.standard_normal((cout, cin // groups) + tuple(kernel))
    b = rng.standard_normal(cout) if bias else None
    return ConvForm.make(w, b, strides, pads, dilations, groups)


def rand_affine(rng, channels, scalar_scale=False, scalar_shift=False, zero_shift=False):
    s = np.float64(rng.uniform(0.5, 2.0)) if scalar_scale else rng.uniform(-2.0, 2.0, channels)
    if zero_shift:
        t = np.float64(0.0) if scalar_shift else np.zeros(channels)
    else:
        t = np.float64(rng.standard_normal()) if scalar_shift else rng.standard_normal(channels)
    return AffineForm(s, t)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def x_for(rng, form: ConvForm, spatial) -> np.ndarray:
    return rng.standard_normal((2, form.in_channels) + tuple(spatial))


# ----------------------------------------------------------------------------------------------
# self-check of the torch reference helpers (so a wrong pad order cannot hide bugs)
# ----------------------------------------------------------------------------------------------
def test_run_conv_pad_order_matches_torch_padding():
    rng = np.random.default_rng(0)
    form = rand_conv(rng, 2, 3, 4, 1, (3, 5), pads=(1, 2, 1, 2))
    x = rng.standard_normal((2, 3, 6, 7))
    ref = F.conv2d(t64(x), t64(form.weight), t64(form.bias), padding=(1, 2)).numpy()
    assert_close(run_conv(form, x), ref)
    # asymmetric: H begin 1, W begin 0, H end 0, W end 2
    form2 = form.with_params(form.weight, form.bias)
    form2 = ConvForm(form2.weight, form2.bias, (1, 1), (1, 0, 0, 2), (1, 1), 1)
    xp = np.zeros((2, 3, 7, 9))
    xp[:, :, 1:, :7] = x
    ref2 = F.conv2d(t64(xp), t64(form.weight), t64(form.bias)).numpy()
    assert_close(run_conv(form2, x), ref2)


# ----------------------------------------------------------------------------------------------
# forms: AffineForm.check_rank / vectors, ConvForm validation, channel_constant
# ----------------------------------------------------------------------------------------------
def test_check_rank():
    aff = AffineForm(np.ones(3), np.zeros(3), rank=4, min_rank=3)
    aff.check_rank(4)
    for bad in (2, 3, 5):
        with pytest.raises(NotRepresentable):
            aff.check_rank(bad)
    scal = AffineForm(np.float64(2.0), np.float64(1.0), rank=None, min_rank=4)
    scal.check_rank(4)
    scal.check_rank(5)
    with pytest.raises(NotRepresentable):
        scal.check_rank(3)
    AffineForm.identity().check_rank(1)
    AffineForm.identity().check_rank(7)


def test_vectors_wrong_length_raises_and_broadcasts_scalars():
    aff = AffineForm(np.arange(3.0), np.float64(5.0))
    s, t = aff.vectors(3)
    assert s.tolist() == [0.0, 1.0, 2.0] and t.tolist() == [5.0, 5.0, 5.0]
    with pytest.raises(NotRepresentable):
        aff.vectors(4)
    assert aff.channels == 3 and AffineForm.identity().channels is None


def test_convform_validation():
    w = np.zeros((4, 2, 3, 3))
    with pytest.raises(NotRepresentable):
        ConvForm(np.zeros((4, 2)), np.zeros(4), (), (), (), 1)
    with pytest.raises(NotRepresentable):
        ConvForm(w, np.zeros(4), (1,), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(NotRepresentable):
        ConvForm(w, np.zeros(3), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(NotRepresentable):
        ConvForm(w, np.zeros(4), (1, 1), (0, 0, 0, 0), (1, 1), 3)
    f = ConvForm.make(w, groups=2)
    assert (f.in_channels, f.out_channels, f.kernel_shape, f.rank) == (4, 4, (3, 3), 4)
    assert f.pads == (0, 0, 0, 0) and f.strides == (1, 1) and f.bias.tolist() == [0.0] * 4


@pytest.mark.parametrize("shape,rank,min_rank", [
    ((5, 1, 1), 4, 3),
    ((1, 5, 1, 1), 4, 4),
    ((1, 5, 1, 1, 1), 5, 5),
    ((5,), 2, 1),
    ((1, 5), 2, 2),
])
def test_channel_constant_per_channel(shape, rank, min_rank):
    rng = np.random.default_rng(1)
    const = rng.standard_normal(shape)
    vec, got_rank, got_min = channel_constant(const)
    assert (got_rank, got_min) == (rank, min_rank)
    assert vec.shape == (5,) and vec.dtype == np.float64
    # numpy broadcasting over a tensor of the returned rank equals the per-channel (axis-1) vector
    x = rng.standard_normal((2, 5) + (3,) * (rank - 2))
    assert_close(x * const, run_affine(AffineForm(vec, np.float64(0.0)), x), rtol=0)
    assert_close(x + const, run_affine(AffineForm(np.float64(1.0), vec), x), rtol=0)


@pytest.mark.parametrize("shape", [(1,), (), (1, 1, 1, 1)])
def test_channel_constant_scalar(shape):
    const = np.full(shape, 2.5, dtype=np.float32)
    vec, rank, min_rank = channel_constant(const)
    assert vec.shape == () and float(vec) == 2.5 and vec.dtype == np.float64
    assert rank is None and min_rank == len(shape)


@pytest.mark.parametrize("shape", [(3, 2, 1), (1, 3, 2, 1), (2, 3), (3, 1, 4)])
def test_channel_constant_not_per_channel(shape):
    with pytest.raises(NotRepresentable):
        channel_constant(np.ones(shape))


# ----------------------------------------------------------------------------------------------
# affine.py
# ----------------------------------------------------------------------------------------------
@SETTINGS
@given(c=st.integers(1, 9), n=st.integers(0, 3), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       seed=st.integers(0, 2**31 - 1))
def test_bn_affine_vs_batch_norm(c, n, eps, seed):
    rng = np.random.default_rng(seed)
    gamma, beta, mean = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c)
    var = rng.uniform(0.05, 3.0, c)
    x = rng.standard_normal((2, c) + (3,) * n)
    aff = bn_affine(gamma.astype(np.float32), beta, mean, var, eps)
    assert aff.scale.shape == (c,) and aff.shift.shape == (c,)
    aff.check_rank(n + 2)
    ref = F.batch_norm(t64(x), t64(mean), t64(var), t64(gamma.astype(np.float32)), t64(beta),
                       training=False, eps=eps).numpy()
    assert_close(run_affine(aff, x), ref)


@SETTINGS
@given(c=st.integers(2, 6), kinds=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       seed=st.integers(0, 2**31 - 1))
def test_affine_then_affine(c, kinds, seed):
    rng = np.random.default_rng(seed)
    first = rand_affine(rng, c, scalar_scale=kinds[0], scalar_shift=kinds[1])
    second = rand_affine(rng, c, scalar_scale=kinds[2], scalar_shift=kinds[3])
    x = rng.standard_normal((2, c, 4, 3))
    out = affine_then_affine(first, second)
    assert np.ndim(out.scale) == np.ndim(out.shift)
    assert_close(run_affine(out, x), run_affine(second, run_affine(first, x)))


def test_affine_then_affine_ranks():
    a = AffineForm(np.ones(3), np.zeros(3), rank=4, min_rank=3)
    b = AffineForm(np.float64(2.0), np.float64(1.0), rank=None, min_rank=4)
    out = affine_then_affine(a, b)
    assert (out.rank, out.min_rank) == (4, 4)
    assert (affine_then_affine(b, a).rank, affine_then_affine(b, a).min_rank) == (4, 4)
    with pytest.raises(NotRepresentable):
        affine_then_affine(a, AffineForm(np.ones(3), np.zeros(3), rank=2, min_rank=1))
    with pytest.raises(NotRepresentable):
        affine_sum(a, AffineForm(np.ones(3), np.zeros(3), rank=3, min_rank=2))


@SETTINGS
@given(c=st.integers(2, 6), kinds=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       sign=st.sampled_from([1.0, -1.0]), seed=st.integers(0, 2**31 - 1))
def test_affine_sum(c, kinds, sign, seed):
    rng = np.random.default_rng(seed)
    a = rand_affine(rng, c, scalar_scale=kinds[0], scalar_shift=kinds[1])
    b = rand_affine(rng, c, scalar_scale=kinds[2], scalar_shift=kinds[3])
    x = rng.standard_normal((2, c, 3))
    out = affine_sum(a, b, sign)
    assert np.ndim(out.scale) == np.ndim(out.shift)
    assert_close(run_affine(out, x), run_affine(a, x) + sign * run_affine(b, x))


@st.composite
def conv_cases(draw, allow_pads=True):
    """A random conv: (n, cin, cout, groups, kernel, strides, pads, dilations, spatial input size)."""
    n = draw(st.integers(1, 3))
    g = draw(st.sampled_from([1, 2, 3, 6]))  # 6 with cin 6 is depthwise
    cin = 6
    cout = 6 * draw(st.integers(1, 2))
    kmax = 3 if n == 3 else 4
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(n))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * n)) if allow_pads else (0,) * (2 * n)
    spatial = tuple(dilations[i] * (kernel[i] - 1) + 1 + draw(st.integers(0, 3)) for i in range(n))
    return n, cin, cout, g, kernel, strides, pads, dilations, spatial


@SETTINGS
@given(case=conv_cases(), scal=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_conv_then_affine(case, scal, seed):
    n, cin, cout, g, kernel, strides, pads, dilations, spatial = case
    rng = np.random.default_rng(seed)
    conv = rand_conv(rng, n, cin, cout, g, kernel, strides, pads, dilations)
    aff = rand_affine(rng, cout, scalar_scale=scal[0], scalar_shift=scal[1])
    x = x_for(rng, conv, spatial)
    out = conv_then_affine(conv, aff)
    assert (out.strides, out.pads, out.dilations, out.groups) == (strides, pads, dilations, g)
    assert_close(run_conv(out, x), run_affine(aff, run_conv(conv, x)))


def test_conv_then_affine_rank_and_channel_checks():
    rng = np.random.default_rng(2)
    conv = rand_conv(rng, 1, 4, 4, 1, (3,))
    with pytest.raises(NotRepresentable):  # a (C,1,1) constant on a rank-3 tensor is not per-channel
        conv_then_affine(conv, AffineForm(np.ones(4), np.zeros(4), rank=4, min_rank=3))
    with pytest.raises(NotRepresentable):
        conv_then_affine(conv, AffineForm(np.ones(5), np.zeros(5)))


@SETTINGS
@given(case=conv_cases(), scal=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_affine_then_conv(case, scal, seed):
    n, cin, cout, g, kernel, strides, pads, dilations, spatial = case
    rng = np.random.default_rng(seed)
    conv = rand_conv(rng, n, cin, cout, g, kernel, strides, pads, dilations)
    padded = any(pads)
    aff = rand_affine(rng, cin, scalar_scale=scal[0], scalar_shift=scal[1], zero_shift=padded)
    x = x_for(rng, conv, spatial)
    out = affine_then_conv(aff, conv)
    assert (out.strides, out.pads, out.dilations, out.groups) == (strides, pads, dilations, g)
    assert_close(run_conv(out, x), run_conv(conv, run_affine(aff, x)))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_affine_then_conv_padding_with_shift_refused(groups):
    rng = np.random.default_rng(3)
    conv = rand_conv(rng, 2, 4, 4, groups, (3, 3), pads=(1, 1, 1, 1))
    with pytest.raises(NotRepresentable):
        affine_then_conv(rand_affine(rng, 4), conv)
    with pytest.raises(NotRepresentable):
        affine_then_conv(AffineForm(np.float64(1.0), np.float64(0.5)), conv)
    # only one non-zero pad is enough to refuse
    conv1 = rand_conv(rng, 2, 4, 4, groups, (3, 3), pads=(0, 0, 0, 1))
    with pytest.raises(NotRepresentable):
        affine_then_conv(rand_affine(rng, 4), conv1)
    # shift zero with padding is fine: padding scale*x with 0 is scale*(x padded with 0)
    aff = rand_affine(rng, 4, zero_shift=True)
    x = rng.standard_normal((2, 4, 5, 6))
    assert_close(run_conv(affine_then_conv(aff, conv), x), run_conv(conv, run_affine(aff, x)))
    # and the refusal is real: the naive fold differs from the reference
    aff_t = rand_affine(rng, 4)
    naive = affine_then_conv(aff_t, ConvForm(conv.weight, conv.bias, (1, 1), (0, 0, 0, 0), (1, 1), groups))
    naive = ConvForm(naive.weight, naive.bias, (1, 1), (1, 1, 1, 1), (1, 1), groups)
    assert np.max(np.abs(run_conv(naive, x) - run_conv(conv, run_affine(aff_t, x)))) > 1e-3


@SETTINGS
@given(c=st.integers(1, 8), n=st.integers(1, 3), scal=st.tuples(st.booleans(), st.booleans()),
       seed=st.integers(0, 2**31 - 1))
def test_affine_as_conv(c, n, scal, seed):
    rng = np.random.default_rng(seed)
    aff = rand_affine(rng, c, scalar_scale=scal[0], scalar_shift=scal[1])
    conv = affine_as_conv(aff, c, n)
    assert conv.groups == c and conv.kernel_shape == (1,) * n and conv.weight.shape[:2] == (c, 1)
    assert conv.pads == (0,) * (2 * n) and conv.strides == (1,) * n
    x = rng.standard_normal((2, c) + (4,) * n)
    assert_close(run_conv(conv, x), run_affine(aff, x))


def test_affine_as_conv_rank_check():
    with pytest.raises(NotRepresentable):
        affine_as_conv(AffineForm(np.ones(3), np.zeros(3), rank=4, min_rank=3), 3, 1)
    with pytest.raises(NotRepresentable):
        affine_as_conv(AffineForm(np.ones(3), np.zeros(3)), 4, 2)


# ----------------------------------------------------------------------------------------------
# branches.py: identity, regroup
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,n,groups", [
    (6, 1, None), (6, 2, 1), (6, 2, 2), (6, 2, 3), (6, 2, 6), (8, 3, 4), (4, 3, None), (1, 2, 1)])
def test_identity(channels, n, groups):
    form = identity(channels, n, groups)
    g = channels if groups is None else groups
    ig = channels // g
    assert form.groups == g and form.weight.shape == (channels, ig) + (1,) * n
    expected = np.zeros((channels, ig))
    expected[np.arange(channels), np.arange(channels) % ig] = 1.0
    assert np.array_equal(form.weight.reshape(channels, ig), expected)
    assert np.array_equal(form.bias, np.zeros(channels))
    x = np.random.default_rng(4).standard_normal((2, channels) + (3,) * n)
    assert_close(run_conv(form, x), x, rtol=0)


def test_identity_bad_groups():
    with pytest.raises(NotRepresentable):
        identity(6, 2, 4)


@SETTINGS
@given(case=conv_cases(), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_regroup(case, data, seed):
    n, cin, cout, g, kernel, strides, pads, dilations, spatial = case
    rng = np.random.default_rng(seed)
    conv = rand_conv(rng, n, cin, cout, g, kernel, strides, pads, dilations)
    h = data.draw(st.sampled_from(divisors(g)))
    out = regroup(conv, h)
    assert out.groups == h and out.weight.shape == (cout, cin // h) + kernel
    assert (out.strides, out.pads, out.dilations) == (strides, pads, dilations)
    x = x_for(rng, conv, spatial)
    assert_close(run_conv(out, x), run_conv(conv, x))


@pytest.mark.parametrize("g,h", [(4, 3), (2, 4), (6, 4), (3, 0), (3, -1)])
def test_regroup_non_divisor_raises(g, h):
    conv = rand_conv(np.random.default_rng(5), 2, 12, 12, g, (3, 3))
    with pytest.raises(NotRepresentable):
        regroup(conv, h)


# ----------------------------------------------------------------------------------------------
# branches.py: add
# ----------------------------------------------------------------------------------------------
def check_add(a: ConvForm, b: ConvForm, spatial, sign=1.0, seed=0, in_size=None) -> ConvForm:
    rng = np.random.default_rng(seed)
    x = x_for(rng, a, spatial)
    out = add(a, b, sign, in_size)
    assert_close(run_conv(out, x), run_conv(a, x) + sign * run_conv(b, x))
    return out


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_add_repvgg(groups):
    rng = np.random.default_rng(6)
    c = 8
    bn = [bn_affine(rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c),
                    rng.uniform(0.1, 2, c), 1e-5) for _ in range(3)]
    k3 = conv_then_affine(rand_conv(rng, 2, c, c, groups, (3, 3), pads=(1, 1, 1, 1), bias=False), bn[0])
    k1 = conv_then_affine(rand_conv(rng, 2, c, c, groups, (1, 1), bias=False), bn[1])
    idb = conv_then_affine(identity(c, 2, groups), bn[2])
    merged = add(add(k3, k1), idb)
    assert merged.kernel_shape == (3, 3) and merged.pads == (1, 1, 1, 1) and merged.groups == groups
    x = rng.standard_normal((2, c, 7, 6))
    ref = run_conv(k3, x) + run_conv(k1, x) + run_affine(bn[2], x)
    assert_close(run_conv(merged, x), ref)
    # the same in the other association order
    assert_close(run_conv(add(idb, add(k1, k3)), x), ref)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_add_acnet(k, stride):
    rng = np.random.default_rng(7 + k)
    p = k // 2
    s = (stride, stride)
    sq = rand_conv(rng, 2, 4, 6, 1, (k, k), s, (p, p, p, p))
    hor = rand_conv(rng, 2, 4, 6, 1, (1, k), s, (0, p, 0, p))
    ver = rand_conv(rng, 2, 4, 6, 1, (k, 1), s, (p, 0, p, 0))
    merged = check_add(add(sq, hor), ver, (9, 8))
    assert merged.kernel_shape == (k, k) and merged.pads == (p, p, p, p) and merged.strides == s
    # the cross really lands on the centre row / column
    expected = sq.weight.copy()
    expected[:, :, p:p + 1, :] += hor.weight
    expected[:, :, :, p:p + 1] += ver.weight
    assert_close(merged.weight, expected)


@pytest.mark.parametrize("k", [3, 5])
def test_add_acnet_crop(k):
    """KxK without padding + 1xK / Kx1 reading a cropped input (ACNet's Slice when p < K//2)."""
    rng = np.random.default_rng(8)
    c = k // 2
    sq = rand_conv(rng, 2, 3, 5, 1, (k, k))
    hor = rand_conv(rng, 2, 3, 5, 1, (1, k), pads=(-c, 0, -c, 0))
    ver = rand_conv(rng, 2, 3, 5, 1, (k, 1), pads=(0, -c, 0, -c))
    merged = check_add(add(sq, hor), ver, (k + 3, k + 2))
    assert merged.kernel_shape == (k, k) and merged.pads == (0, 0, 0, 0)


def test_add_different_groups_gcd():
    rng = np.random.default_rng(9)
    a = rand_conv(rng, 2, 12, 12, 4, (3, 3), pads=(1, 1, 1, 1))
    b = rand_conv(rng, 2, 12, 12, 6, (1, 1))
    out = check_add(a, b, (5, 6))
    assert out.groups == 2
    dw = rand_conv(rng, 2, 12, 12, 12, (3, 3), pads=(1, 1, 1, 1))
    out2 = check_add(dw, b, (5, 6), sign=-1.0)
    assert out2.groups == 6
    out3 = check_add(dw, identity(12, 2), (5, 6))
    assert out3.groups == 12


def test_add_dilation_with_1x1():
    rng = np.random.default_rng(10)
    a = rand_conv(rng, 2, 4, 4, 1, (3, 3), pads=(2, 2, 2, 2), dilations=(2, 2))
    b = rand_conv(rng, 2, 4, 4, 1, (1, 1))
    out = check_add(a, b, (7, 8))
    assert out.kernel_shape == (3, 3) and out.dilations == (2, 2) and out.pads == (2, 2, 2, 2)
    out2 = check_add(b, a, (7, 8), sign=-1.0)
    assert out2.kernel_shape == (3, 3) and out2.dilations == (2, 2)
    # 1-tap branch with its own (irrelevant) dilation attribute
    b3 = rand_conv(rng, 2, 4, 4, 1, (1, 1), dilations=(3, 3))
    check_add(a, b3, (7, 8))
    # dilation 2 along H only, 1x3 on the other axis
    c = rand_conv(rng, 2, 4, 4, 1, (3, 3), pads=(2, 1, 2, 1), dilations=(2, 1))
    d = rand_conv(rng, 2, 4, 4, 1, (1, 3), pads=(0, 1, 0, 1), dilations=(5, 1))
    check_add(c, d, (7, 8))


def test_add_strides_2():
    rng = np.random.default_rng(11)
    a = rand_conv(rng, 2, 4, 6, 2, (3, 3), (2, 2), (1, 1, 1, 1))
    b = rand_conv(rng, 2, 4, 6, 1, (1, 1), (2, 2))
    for hw in [(8, 8), (7, 9)]:
        check_add(a, b, hw)
        check_add(b, a, hw, sign=-1.0)


def test_add_even_kernels_asymmetric_pads():
    rng = np.random.default_rng(12)
    # 2x2 padded at the end only + 1x1: the 1x1 sits at the kernel's top-left tap
    a = rand_conv(rng, 2, 3, 3, 1, (2, 2), pads=(0, 0, 1, 1))
    b = rand_conv(rng, 2, 3, 3, 1, (1, 1))
    out = check_add(a, b, (5, 6))
    assert out.kernel_shape == (2, 2) and out.pads == (0, 0, 1, 1)
    # 4x4 pads (1,1,2,2) + 2x2 pads (0,0,1,1): the 2x2 sits at offset 1
    c = rand_conv(rng, 2, 3, 3, 1, (4, 4), pads=(1, 1, 2, 2))
    d = rand_conv(rng, 2, 3, 3, 1, (2, 2), pads=(0, 0, 1, 1))
    out2 = check_add(c, d, (6, 5), sign=-1.0)
    assert out2.kernel_shape == (4, 4) and out2.pads == (1, 1, 2, 2)
    # 2x2 pads (1,1,0,0) + 2x2 pads (0,0,1,1): one-pixel shift -> a 3x3 kernel
    e = rand_conv(rng, 2, 3, 3, 1, (2, 2), pads=(1, 1, 0, 0))
    out3 = check_add(e, d, (6, 5))
    assert out3.kernel_shape == (3, 3) and out3.pads == (1, 1, 1, 1)


def test_add_1d_and_3d():
    rng = np.random.default_rng(13)
    check_add(rand_conv(rng, 1, 4, 4, 2, (5,), pads=(2, 2)), rand_conv(rng, 1, 4, 4, 4, (3,), pads=(1, 1)), (9,))
    a = rand_conv(rng, 3, 4, 4, 1, (3, 3, 3), pads=(1, 1, 1, 1, 1, 1))
    b = rand_conv(rng, 3, 4, 4, 4, (1, 3, 1), pads=(0, 1, 0, 0, 1, 0))
    out = check_add(a, b, (4, 5, 3))
    assert out.kernel_shape == (3, 3, 3) and out.groups == 1


def test_add_refusals():
    rng = np.random.default_rng(14)
    k3 = rand_conv(rng, 2, 4, 4, 1, (3, 3), pads=(1, 1, 1, 1))
    # strides differ
    with not_representable("strides"):
        add(k3, rand_conv(rng, 2, 4, 4, 1, (1, 1), strides=(2, 2)))
    with not_representable("strides"):
        add(k3, rand_conv(rng, 2, 4, 4, 1, (3, 3), strides=(1, 2), pads=(1, 1, 1, 1)))
    # misaligned outputs: 1x1 with pad 1 gives a larger output than 3x3 pad 1
    with not_representable("alignment"):
        add(k3, rand_conv(rng, 2, 4, 4, 1, (1, 1), pads=(1, 1, 1, 1)))
    with not_representable("alignment"):
        add(k3, rand_conv(rng, 2, 4, 4, 1, (3, 3), pads=(0, 0, 0, 0)))
    # channels differ (out, then in)
    with not_representable("channels"):
        add(k3, rand_conv(rng, 2, 4, 6, 1, (1, 1)))
    with not_representable("channels"):
        add(k3, rand_conv(rng, 2, 6, 4, 1, (1, 1)))
    with not_representable("channels"):
        add(k3, rand_conv(rng, 2, 8, 4, 2, (1, 1)))  # 8 input channels (4 per group x 2)
    # spatial ranks differ
    with pytest.raises(NotRepresentable):
        add(k3, rand_conv(rng, 1, 4, 4, 1, (3,), pads=(1, 1)))
    # dilations differ on a multi-tap kernel
    dil = rand_conv(rng, 2, 4, 4, 1, (3, 3), pads=(2, 2, 2, 2), dilations=(2, 2))
    with not_representable("dilations"):
        add(k3, dil)
    # taps between dilated taps: 1x1 reading pixel o-1, 3x3 d2 reads o-2, o, o+2
    with not_representable("alignment"):
        add(dil, rand_conv(rng, 2, 4, 4, 1, (1, 1), pads=(1, 1, -1, -1)))
    with not_representable("alignment"):
        add(dil, rand_conv(rng, 2, 4, 4, 1, (3, 3), pads=(3, 2, 1, 2), dilations=(2, 2)))


def test_add_on_a_static_size_tensorflow_same():
    """TF 'same' on a stride-2 3x3 pads (0, 1) (the odd pixel at the end) beside an unpadded 1x1:
    aligned on every even size, not on odd ones; merged only where the size is known and even."""
    rng = np.random.default_rng(15)
    k3 = rand_conv(rng, 2, 4, 6, 1, (3, 3), (2, 2), (0, 0, 1, 1))
    k1 = rand_conv(rng, 2, 4, 6, 1, (1, 1), (2, 2))
    for hw in [(8, 10), (2, 4), (32, 32)]:
        out = check_add(k3, k1, hw, in_size=hw)
        assert out.kernel_shape == (3, 3) and out.pads == (0, 0, 1, 1) and out.strides == (2, 2)
        out = check_add(k1, k3, hw, sign=-1.0, in_size=hw)
        assert out.pads == (0, 0, 1, 1)
    with not_representable("alignment") as info:
        add(k3, k1)
    assert "dynamic" in str(info.value)
    with not_representable("alignment") as info:
        add(k3, k1, in_size=(7, 8))  # odd height: the 3x3 has 3 rows of output, the 1x1 has 4
    assert "size 7" in str(info.value)
    with not_representable("alignment"):
        add(k3, k1, in_size=(None, 8))
    # stride 1: different slacks never give equal lengths
    with not_representable("alignment"):
        add(rand_conv(rng, 2, 4, 6, 1, (3, 3), pads=(0, 0, 1, 1)), rand_conv(rng, 2, 4, 6, 1, (1, 1)),
            in_size=(8, 8))


def test_add_on_a_static_size_end_pad_never_negative():
    """A 1x1 cropping its end beside a 3x3 (slacks -1 and -3, stride 4): the merged end pad is the
    smallest non-negative one that keeps the output length."""
    rng = np.random.default_rng(16)
    a = rand_conv(rng, 1, 2, 2, 1, (3,), (4,), (1, 0))       # slack -1
    b = rand_conv(rng, 1, 2, 2, 1, (1,), (4,), (0, -3))      # slack -3, reads o*4
    out = check_add(a, b, (12,), in_size=(12,))  # 3 outputs each
    assert out.pads == (1, 0) and out.kernel_shape == (3,)
    with not_representable("alignment"):
        add(a, b, in_size=(10,))  # 3 outputs vs 2


@st.composite
def aligned_on_a_size_cases(draw):
    """Two 2-D branches with any slacks and one stride, on a size where their output lengths agree."""
    s = draw(st.integers(2, 4))
    axes, spatial = [], []
    for _ in range(2):
        k1, k2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        b1, b2 = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        e1, e2 = draw(st.integers(-1, 2)), draw(st.integers(-1, 2))
        lengths = [n for n in range(max(k1, k2) + 4, 24)
                   if (n + b1 + e1 - k1) // s == (n + b2 + e2 - k2) // s]
        if not lengths:
            lengths = [None]
        n = draw(st.sampled_from(lengths))
        axes.append(((k1, b1, e1), (k2, b2, e2)))
        spatial.append(n)
    return s, axes, spatial


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=aligned_on_a_size_cases(), seed=st.integers(0, 2**31 - 1))
def test_add_random_on_a_static_size(case, seed):
    s, axes, spatial = case
    rng = np.random.default_rng(seed)
    ka, kb = tuple(ax[0][0] for ax in axes), tuple(ax[1][0] for ax in axes)
    pads_a = tuple(ax[0][1] for ax in axes) + tuple(ax[0][2] for ax in axes)
    pads_b = tuple(ax[1][1] for ax in axes) + tuple(ax[1][2] for ax in axes)
    a = rand_conv(rng, 2, 4, 4, 2, ka, (s, s), pads_a)
    b = rand_conv(rng, 2, 4, 4, 1, kb, (s, s), pads_b)
    if None in spatial:
        with pytest.raises(NotRepresentable):
            add(a, b, in_size=tuple(spatial))
        return
    out = check_add(a, b, tuple(spatial), seed=seed, in_size=tuple(spatial))
    assert min(out.pads) >= min(min(pads_a), min(pads_b), 0)


@st.composite
def add_cases(draw):
    """Two random branches that the algebra must merge (aligned, same stride)."""
    n = draw(st.integers(1, 3))
    cin = draw(st.sampled_from([4, 6]))
    cout = cin * draw(st.integers(1, 2))
    ga = draw(st.sampled_from(divisors(cin)))
    gb = draw(st.sampled_from(divisors(cin)))
    kmax = 3 if n == 3 else 5
    ka, kb, da, db, pa, pb, strides, spatial = [], [], [], [], [], [], [], []
    for _ in range(n):
        s = draw(st.integers(1, 2))
        d = draw(st.integers(1, 3))
        e = draw(st.integers(-1, 2))  # common slack
        k1, k2 = draw(st.integers(1, kmax)), draw(st.integers(1, kmax))
        # a 1-tap kernel's dilation is free when the other branch has several taps
        d1 = draw(st.integers(1, 3)) if k1 == 1 and k2 > 1 else d
        d2 = draw(st.integers(1, 3)) if k2 == 1 and k1 > 1 else d
        p0 = draw(st.integers(-1, 2))
        b1, b2 = p0 + d * draw(st.integers(0, 2)), p0 + d * draw(st.integers(0, 2))
        e1, e2 = e + d1 * (k1 - 1) - b1, e + d2 * (k2 - 1) - b2
        length = max(3, 1 - e, -b1 + 1, -b2 + 1, -e1 + 1, -e2 + 1) + draw(st.integers(0, 2))
        ka.append(k1), kb.append(k2), da.append(d1), db.append(d2)
        pa.append((b1, e1)), pb.append((b2, e2)), strides.append(s), spatial.append(length)
    pads_a = tuple(p[0] for p in pa) + tuple(p[1] for p in pa)
    pads_b = tuple(p[0] for p in pb) + tuple(p[1] for p in pb)
    return (n, cin, cout, (ga, tuple(ka), tuple(strides), pads_a, tuple(da)),
            (gb, tuple(kb), tuple(strides), pads_b, tuple(db)), tuple(spatial))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=add_cases(), sign=st.sampled_from([1.0, -1.0]), seed=st.integers(0, 2**31 - 1))
def test_add_random(case, sign, seed):
    n, cin, cout, pa, pb, spatial = case
    rng = np.random.default_rng(seed)
    a = rand_conv(rng, n, cin, cout, pa[0], pa[1], pa[2], pa[3], pa[4])
    b = rand_conv(rng, n, cin, cout, pb[0], pb[1], pb[2], pb[3], pb[4])
    out = check_add(a, b, spatial, sign, seed)
    assert out.groups == math.gcd(pa[0], pb[0])
    assert out.strides == pa[2]
    assert all(k >= max(x, y) for k, x, y in zip(out.kernel_shape, pa[1], pb[1]))


# ----------------------------------------------------------------------------------------------
# dense.py
# ----------------------------------------------------------------------------------------------
@SETTINGS
@given(m=st.integers(1, 5), k=st.integers(1, 6), nn=st.integers(1, 6), trans_b=st.booleans(),
       alpha=st.sampled_from([1.0, 0.5, -2.0]), beta=st.sampled_from([1.0, 0.0, 0.25, -3.0]),
       c_kind=st.sampled_from(["none", "n", "1n", "mn", "m1", "scalar"]),
       scal=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_gemm_then_affine(m, k, nn, trans_b, alpha, beta, c_kind, scal, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((nn, k) if trans_b else (k, nn))
    c = {"none": None, "n": rng.standard_normal(nn), "1n": rng.standard_normal((1, nn)),
         "mn": rng.standard_normal((m, nn)), "m1": rng.standard_normal((m, 1)),
         "scalar": np.float64(rng.standard_normal())}[c_kind]
    aff = rand_affine(rng, nn, scalar_scale=scal[0], scalar_shift=scal[1])
    s, t = aff.vectors(nn)
    # reference: torch Gemm then the affine on the columns
    if trans_b:
        y = alpha * F.linear(t64(a), t64(b))
    else:
        y = alpha * (t64(a) @ t64(b))
    if c is not None:
        y = y + beta * t64(c)
    ref = (y * t64(s) + t64(t)).numpy()
    new_b, new_c = gemm_then_affine(b, c, alpha, beta, trans_b, aff)
    assert new_b.shape == b.shape
    fused = alpha * (t64(a) @ (t64(new_b).T if trans_b else t64(new_b))) + 1.0 * t64(new_c)
    assert_close(fused.numpy(), ref)


def test_gemm_then_affine_rank_check():
    with pytest.raises(NotRepresentable):
        gemm_then_affine(np.ones((3, 4)), None, 1.0, 1.0, False,
                         AffineForm(np.ones(4), np.zeros(4), rank=4, min_rank=3))
    with pytest.raises(NotRepresentable):
        gemm_then_affine(np.ones((3, 4)), None, 1.0, 1.0, True, AffineForm(np.ones(4), np.zeros(4)))


@SETTINGS
@given(n=st.sampled_from([1, 2, 2, 3]), gkind=st.sampled_from(["1", "2", "dw"]), og=st.integers(1, 3),
       stride=st.integers(1, 3), pad=st.integers(0, 1), dil=st.integers(1, 2), has_bias=st.booleans(),
       scal=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_convtranspose_then_affine(n, gkind, og, stride, pad, dil, has_bias, scal, seed):
    rng = np.random.default_rng(seed)
    if gkind == "dw":
        in_c, groups, og = 4, 4, 1
    else:
        groups = int(gkind)
        in_c = 4
    out_c = og * groups
    kernel = (3,) * n if n < 3 else (2, 3, 2)
    w = rng.standard_normal((in_c, og) + kernel)
    bias = rng.standard_normal(out_c) if has_bias else None
    aff = rand_affine(rng, out_c, scalar_scale=scal[0], scalar_shift=scal[1])
    x = rng.standard_normal((2, in_c) + (4,) * n)
    kw = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    y = CONV_T[n](t64(x), t64(w), None if bias is None else t64(bias), **kw).numpy()
    ref = run_affine(aff, y)
    new_w, new_b = convtranspose_then_affine(w, bias, groups, aff)
    assert new_w.shape == w.shape and new_b.shape == (out_c,)
    out = CONV_T[n](t64(x), t64(new_w), t64(new_b), **kw).numpy()
    assert_close(out, ref)


def test_convtranspose_then_affine_channel_mismatch():
    with pytest.raises(NotRepresentable):
        convtranspose_then_affine(np.ones((4, 2, 3, 3)), None, 2, AffineForm(np.ones(2), np.zeros(2)))


# --------------------------------------------------------------------------- float16 precision of merged weights
def test_precision_loss_flags_weights_under_float16_normal_range():
    """A tiny scale folded into a weight (Mul(conv(x), 1e-4)): most weights under 6.1e-5 round to a fixed
    spacing, losing more than the bound of normal rounding; the same weights at scale 1 do not."""
    from onnxrep.algebra import cast_back, precision_loss

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8, 1, 1)) * 0.3
    assert precision_loss(np.float16, w) is None
    assert precision_loss(np.float32, w * 1e-4) is None          # float32's normal range reaches 1e-38
    reason = precision_loss(np.float16, w * 1e-4)
    assert reason is not None and "normal range" in reason
    with pytest.raises(NotRepresentable) as exc:
        cast_back(np.float16, w * 1e-4, np.zeros(4))
    assert exc.value.code == "dtype-precision"
    # one negligible subnormal weight beside normal ones is not a loss worth declining
    w2 = w.copy()
    w2[0, 0, 0, 0] = 1e-7
    assert precision_loss(np.float16, w2) is None
    # normal numbers never break the bound: sum |cast(w) - w| <= eps/2 * sum |w| per channel
    for scale in (1e-3, 1.0, 300.0):
        flat = (w * scale).reshape(4, -1)
        lost = np.abs(flat.astype(np.float16).astype(np.float64) - flat).sum(1)
        assert np.all(lost <= np.finfo(np.float16).eps / 2 * np.abs(flat).sum(1))
