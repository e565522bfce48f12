"""Unit tests of ``onnxrep/algebra/sequential.py`` (REPARAM.md transforms 6-8) against
``torch.nn.functional`` in float64.

* ``compose(first, second)``: ``second(first(x))`` as one conv, for 1x1 -> KxK (DBB's
  ``1x1 -> BNAndPad -> KxK``, including the depthwise 2x widening) and KxK -> 1x1 (a compactor);
* ``pad_pointwise(conv, pads, value)``: ``pad(conv(x), pads, value)`` when ``value == conv(0)``;
* ``avgpool(...)``: AveragePool as a depthwise conv.

A ``ConvForm`` is evaluated as ``F.pad`` with its ONNX pads (begins then ends; negative = crop)
followed by the conv with ``padding=0``; the reference applies each step separately.
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
from onnxrep.algebra import ConvForm, NotRepresentable, avgpool, compose, is_pointwise, pad_pointwise
from torch_ref import CONV, run_conv, t64, torch_pads  # noqa: E402
from torch_ref import assert_close as _assert_close  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AVG = {1: F.avg_pool1d, 2: F.avg_pool2d}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def pad_np(x: np.ndarray, pads, value=0.0) -> np.ndarray:
    """``F.pad`` with ONNX pads (negative crops); the new border holds ``value`` (scalar or per
    channel), written by hand, as DBB's BNAndPadLayer does."""
    n = len(pads) // 2
    y = F.pad(t64(x), torch_pads(pads)).numpy()
    value = np.asarray(value, dtype=np.float64)
    if np.all(value == 0) or not any(p > 0 for p in pads):
        return y
    # the positions that F.pad created (inside = positions that come from x)
    inside = np.zeros(y.shape[2:], bool)
    idx = []
    for ax in range(n):
        b = max(int(pads[ax]), 0)
        size = y.shape[2 + ax] - b - max(int(pads[n + ax]), 0)
        idx.append(slice(b, b + size))
    inside[tuple(idx)] = True
    v = np.broadcast_to(value.reshape(-1), (y.shape[1],))
    y = y.copy()
    for c in range(y.shape[1]):
        y[:, c][:, ~inside] = v[c]
    return y


def conv_ref(x: np.ndarray, form: ConvForm, pads=None) -> np.ndarray:
    """``form`` applied to ``x`` (with ``pads`` instead of the form's own, if given)."""
    xt = F.pad(t64(x), torch_pads(form.pads if pads is None else pads))
    return CONV[form.n_spatial](xt, t64(form.weight), t64(form.bias), stride=tuple(form.strides), padding=0,
                                dilation=tuple(form.dilations), groups=form.groups).numpy()


def assert_close(actual, ref, rtol: float = 1e-10) -> None:
    _assert_close(actual, ref, rtol)


def rand_conv(rng, cin, cout, groups, kernel, strides=None, pads=None, dilations=None, bias=True) -> ConvForm:
    w = rng.standard_normal((cout, cin // groups) + tuple(kernel))
    b = rng.standard_normal(cout) if bias else None
    return ConvForm.make(w, b, strides, pads, dilations, groups)


def sequential_ref(x, first: ConvForm, second: ConvForm) -> np.ndarray:
    """``second(first(x))``: both convs zero-pad their own input."""
    return conv_ref(conv_ref(x, first), second)


def min_size(form: ConvForm, ax: int) -> int:
    """Smallest input length on ``ax`` for which ``form`` yields >= 1 output."""
    n = form.n_spatial
    need = form.dilations[ax] * (form.kernel_shape[ax] - 1) + 1
    return max(need - form.pads[ax] - form.pads[n + ax], 1)


def test_helpers_pad_np_and_conv_ref_agree_with_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    y = pad_np(x, (1, 0, 2, 3), value=np.array([1.0, 2.0, 3.0]))  # H: 1 top 2 bottom; W: 0 left 3 right
    assert y.shape == (2, 3, 8, 9)
    assert_close(y[:, :, 1:6, 0:6], x, 0)
    assert np.all(y[:, 1, 0, :] == 2.0) and np.all(y[:, 2, :, 6:] == 3.0) and np.all(y[:, 0, 6:, :] == 1.0)
    assert pad_np(x, (-1, 0, 0, -2)).shape == (2, 3, 4, 4)
    f = rand_conv(rng, 3, 4, 1, (3, 3), pads=(1, 1, 1, 1))
    assert_close(conv_ref(x, f), F.conv2d(t64(x), t64(f.weight), t64(f.bias), padding=1).numpy())


# ----------------------------------------------------------------------------------------------
# compose: 1x1 -> KxK
# ----------------------------------------------------------------------------------------------
@st.composite
def pointwise_then_kxk(draw):
    n = draw(st.sampled_from([1, 2]))
    g1 = draw(st.sampled_from([1, 2, 3]))
    g2 = draw(st.sampled_from([1, 2, 4]))
    lcm = g1 * g2 // math.gcd(g1, g2)
    cin = g1 * draw(st.integers(1, 2))
    mid = lcm * draw(st.integers(1, 2))
    cout = g2 * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(n))
    p1 = tuple(draw(st.integers(0, 2)) for _ in range(2 * n))
    p2 = tuple(draw(st.integers(0, 2)) for _ in range(2 * n))
    bias1 = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    extra = tuple(draw(st.integers(0, 4)) for _ in range(n))
    return n, g1, g2, cin, mid, cout, kernel, strides, dilations, p1, p2, bias1, seed, extra


@SETTINGS
@given(pointwise_then_kxk())
def test_compose_1x1_then_kxk_matches_torch(case):
    n, g1, g2, cin, mid, cout, kernel, strides, dilations, p1, p2, bias1, seed, extra = case
    rng = np.random.default_rng(seed)
    first = rand_conv(rng, cin, mid, g1, (1,) * n, pads=p1, bias=bias1)
    second = rand_conv(rng, mid, cout, g2, kernel, strides, p2, dilations)
    spatial = tuple(min_size(second, ax) + extra[ax] for ax in range(n))
    x = rng.standard_normal((2, cin) + spatial)
    exact = not any(p2) or not bias1
    if not exact:
        with not_representable("padding"):
            compose(first, second)
        # the same pair with the first conv's bias removed is exact
        first = ConvForm.make(first.weight, None, None, p1, None, g1)
    merged = compose(first, second)
    assert merged.groups == math.gcd(g1, g2)
    assert merged.kernel_shape == kernel and merged.strides == strides and merged.dilations == dilations
    assert merged.pads == tuple(a + b for a, b in zip(p1, p2))
    assert (merged.in_channels, merged.out_channels) == (cin, cout)
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


@pytest.mark.parametrize("c,k,stride", [(3, 3, 1), (4, 3, 2), (2, 5, 1), (3, 5, 2)])
def test_compose_dbb_depthwise_widening(c, k, stride):
    """DBB's depthwise 1x1_kxk branch: 1x1 C -> 2C (groups C), KxK 2C -> C (groups C, stride)."""
    rng = np.random.default_rng(c * 10 + k)
    first = rand_conv(rng, c, 2 * c, c, (1, 1), bias=True)
    second = rand_conv(rng, 2 * c, c, c, (k, k), (stride, stride))
    p = k // 2
    x = rng.standard_normal((2, c, 7, 6))
    merged = compose(pad_pointwise(first, (p,) * 4, first.bias), second)
    assert merged.groups == c and merged.weight.shape == (c, 1, k, k) and merged.pads == (p,) * 4
    ref = conv_ref(pad_np(conv_ref(x, first), (p,) * 4, first.bias), second)
    assert_close(run_conv(merged, x), ref)
    # the same with an explicit zero-padding second conv is not exact (the border would be 0, not b1)
    padded_second = ConvForm.make(second.weight, second.bias, second.strides, (p,) * 4, None, c)
    with pytest.raises(NotRepresentable):
        compose(first, padded_second)


@pytest.mark.parametrize("g1,g2,expect", [(2, 4, 2), (4, 2, 2), (2, 3, 1), (6, 6, 6), (1, 6, 1)])
def test_compose_groups_merge_at_gcd(g1, g2, expect):
    rng = np.random.default_rng(g1 * 7 + g2)
    first = rand_conv(rng, 12, 24, g1, (1, 1))
    second = rand_conv(rng, 24, 12, g2, (3, 3))
    merged = compose(first, second)
    assert merged.groups == expect and merged.weight.shape == (12, 12 // expect, 3, 3)
    x = rng.standard_normal((1, 12, 6, 5))
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


def test_compose_first_pads_with_bias_is_exact():
    """A padding 1x1 conv writes its bias into the border: the merged conv sees the same."""
    rng = np.random.default_rng(1)
    first = rand_conv(rng, 3, 5, 1, (1, 1), pads=(2, 0, 1, 1))
    second = rand_conv(rng, 5, 4, 1, (3, 2), strides=(2, 1), dilations=(1, 2))
    x = rng.standard_normal((2, 3, 6, 7))
    merged = compose(first, second)
    assert merged.pads == (2, 0, 1, 1)
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


def test_compose_second_pads_need_zero_first_bias():
    rng = np.random.default_rng(2)
    first = rand_conv(rng, 3, 4, 1, (1, 1), bias=True)
    second = rand_conv(rng, 4, 4, 1, (3, 3), pads=(1, 1, 1, 1))
    with not_representable("padding"):
        compose(first, second)
    # bias exactly zero: exact
    first0 = ConvForm.make(first.weight, np.zeros(4))
    x = rng.standard_normal((1, 3, 5, 5))
    merged = compose(first0, second)
    assert merged.pads == (1, 1, 1, 1)
    assert_close(run_conv(merged, x), sequential_ref(x, first0, second))
    # one tiny non-zero entry is enough to refuse (zero padding is not b1 padding)
    first_tiny = ConvForm.make(first.weight, np.array([0.0, 0.0, 1e-3, 0.0]))
    with pytest.raises(NotRepresentable):
        compose(first_tiny, second)


@pytest.mark.parametrize("p1,p2", [
    ((-1, 0, 0, 0), (1, 0, 0, 0)),    # crop top, pad top
    ((0, 0, 0, -2), (0, 0, 0, 1)),    # crop right, pad right
    ((-1, -1, 0, 0), (0, 2, 0, 0)),   # crop left, pad left
])
def test_compose_crop_then_pad_same_side_raises(p1, p2):
    rng = np.random.default_rng(3)
    first = rand_conv(rng, 3, 4, 1, (1, 1), pads=p1, bias=False)
    second = rand_conv(rng, 4, 2, 1, (3, 3), pads=p2)
    with not_representable("padding"):
        compose(first, second)


@pytest.mark.parametrize("p1,p2", [
    ((-1, 0, 0, 0), (0, 1, 0, 1)),    # crop top; pad left/right (other axis)
    ((0, 0, -1, 0), (0, 1, 0, 1)),    # crop bottom; pad W
    ((-1, 0, 0, 0), (0, 0, 2, 0)),    # crop top; pad bottom (same axis, other side)
    ((0, -2, 0, 0), (0, 0, 0, 1)),    # crop left; pad right
    ((1, -1, 0, 1), (0, 0, 1, 0)),    # pad then crop mixed
])
def test_compose_crop_with_pads_elsewhere_is_exact(p1, p2):
    rng = np.random.default_rng(4)
    first = rand_conv(rng, 3, 4, 1, (1, 1), pads=p1, bias=False)
    second = rand_conv(rng, 4, 2, 1, (3, 3), pads=p2, strides=(1, 2))
    x = rng.standard_normal((2, 3, 7, 8))
    merged = compose(first, second)
    assert merged.pads == tuple(a + b for a, b in zip(p1, p2))
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


def test_compose_crop_with_bias_and_unpadded_second_is_exact():
    rng = np.random.default_rng(5)
    first = rand_conv(rng, 3, 4, 1, (1, 1), pads=(-1, 0, 0, -1), bias=True)
    second = rand_conv(rng, 4, 2, 1, (3, 3), strides=(2, 2))
    x = rng.standard_normal((1, 3, 8, 8))
    merged = compose(first, second)
    assert merged.pads == (-1, 0, 0, -1)
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


def test_compose_1d():
    rng = np.random.default_rng(6)
    first = rand_conv(rng, 4, 6, 2, (1,), pads=(1, 0))
    second = rand_conv(rng, 6, 3, 3, (5,), strides=(2,), dilations=(2,))
    x = rng.standard_normal((2, 4, 17))
    merged = compose(first, second)
    assert merged.n_spatial == 1 and merged.groups == 1 and merged.pads == (1, 0)
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


def test_compose_both_pointwise():
    rng = np.random.default_rng(7)
    first = rand_conv(rng, 4, 6, 2, (1, 1))
    second = rand_conv(rng, 6, 5, 1, (1, 1))
    x = rng.standard_normal((2, 4, 3, 3))
    merged = compose(first, second)
    assert merged.kernel_shape == (1, 1) and is_pointwise(merged)
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


# ----------------------------------------------------------------------------------------------
# compose: KxK -> 1x1 (compactor)
# ----------------------------------------------------------------------------------------------
@st.composite
def kxk_then_pointwise(draw):
    n = draw(st.sampled_from([1, 2]))
    g1 = draw(st.sampled_from([1, 2, 4]))
    g2 = draw(st.sampled_from([1, 2, 3]))
    lcm = g1 * g2 // math.gcd(g1, g2)
    cin = g1 * draw(st.integers(1, 2))
    mid = lcm * draw(st.integers(1, 2))
    cout = g2 * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = tuple(draw(st.integers(-1, 2)) for _ in range(2 * n))
    bias1, bias2 = draw(st.booleans()), draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    extra = tuple(draw(st.integers(1, 4)) for _ in range(n))
    return n, g1, g2, cin, mid, cout, kernel, strides, dilations, pads, bias1, bias2, seed, extra


@SETTINGS
@given(kxk_then_pointwise())
def test_compose_kxk_then_1x1_matches_torch(case):
    n, g1, g2, cin, mid, cout, kernel, strides, dilations, pads, bias1, bias2, seed, extra = case
    rng = np.random.default_rng(seed)
    first = rand_conv(rng, cin, mid, g1, kernel, strides, pads, dilations, bias=bias1)
    second = rand_conv(rng, mid, cout, g2, (1,) * n, bias=bias2)
    spatial = tuple(min_size(first, ax) + extra[ax] for ax in range(n))
    x = rng.standard_normal((2, cin) + spatial)
    merged = compose(first, second)
    assert merged.groups == math.gcd(g1, g2)
    assert (merged.kernel_shape, merged.strides, merged.pads) == (kernel, strides, pads)
    # a 1-tap axis has no dilation of its own (a pointwise first conv takes the 1x1's)
    assert [d for d, k in zip(merged.dilations, kernel) if k > 1] == [d for d, k in zip(dilations, kernel) if k > 1]
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


def test_compose_compactor_resrep():
    """ResRep: conv-BN folded (bias) then a bias-free 1x1 compactor Q: ``W' = Q W``, ``b' = Q b``."""
    rng = np.random.default_rng(8)
    conv = rand_conv(rng, 4, 6, 1, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    q = rand_conv(rng, 6, 6, 1, (1, 1), bias=False)
    merged = compose(conv, q)
    qm = q.weight[:, :, 0, 0]
    np.testing.assert_allclose(merged.weight, np.einsum("om,mikl->oikl", qm, conv.weight), rtol=1e-12)
    np.testing.assert_allclose(merged.bias, qm @ conv.bias, rtol=1e-12)
    x = rng.standard_normal((2, 4, 9, 8))
    assert_close(run_conv(merged, x), sequential_ref(x, conv, q))


def test_compose_grouped_kxk_then_dense_1x1():
    rng = np.random.default_rng(9)
    first = rand_conv(rng, 8, 8, 4, (3, 3), strides=(2, 1), pads=(1, 1, 1, 1))
    second = rand_conv(rng, 8, 3, 1, (1, 1))
    merged = compose(first, second)
    assert merged.groups == 1 and merged.weight.shape == (3, 8, 3, 3)
    x = rng.standard_normal((1, 8, 7, 7))
    assert_close(run_conv(merged, x), sequential_ref(x, first, second))


# ----------------------------------------------------------------------------------------------
# compose: refusals
# ----------------------------------------------------------------------------------------------
def test_compose_refusals():
    rng = np.random.default_rng(10)
    k3 = rand_conv(rng, 4, 4, 1, (3, 3), pads=(1, 1, 1, 1))
    p1 = rand_conv(rng, 4, 4, 1, (1, 1))
    with not_representable("channels"):
        compose(rand_conv(rng, 4, 5, 1, (1, 1)), k3)
    with not_representable("channels"):
        compose(k3, rand_conv(rng, 3, 4, 1, (1, 1)))
    with not_representable("sequence"):  # neither side pointwise
        compose(k3, rand_conv(rng, 4, 4, 1, (3, 3)))
    with not_representable("sequence"):  # a 1x1 second that pads after a KxK
        compose(k3, rand_conv(rng, 4, 4, 1, (1, 1), pads=(1, 1, 1, 1)))
    with not_representable("sequence"):  # a 1x1 with stride is not pointwise
        compose(rand_conv(rng, 4, 4, 1, (1, 1), strides=(2, 2)), k3)
    with not_representable("sequence"):  # nor is the second one
        compose(k3, rand_conv(rng, 4, 4, 1, (1, 1), strides=(2, 2)))
    with not_representable("rank"):
        compose(rand_conv(rng, 4, 4, 1, (1,)), k3)
    # the refusals above did not hide the accepted shapes
    compose(p1, ConvForm.make(k3.weight, k3.bias))
    compose(k3, p1)


# ----------------------------------------------------------------------------------------------
# pad_pointwise
# ----------------------------------------------------------------------------------------------
@st.composite
def pointwise_pads(draw):
    n = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2]))
    cin = g * draw(st.integers(1, 3))
    cout = g * draw(st.integers(1, 3))
    own = tuple(draw(st.integers(0, 2)) for _ in range(2 * n))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(2 * n))
    per_channel = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return n, g, cin, cout, own, pads, per_channel, seed


@SETTINGS
@given(pointwise_pads())
def test_pad_pointwise_with_bias_value_matches_border_fill(case):
    n, g, cin, cout, own, pads, per_channel, seed = case
    rng = np.random.default_rng(seed)
    conv = rand_conv(rng, cin, cout, g, (1,) * n, pads=own)
    if not per_channel:  # a scalar fill needs one bias for every channel
        conv = ConvForm.make(conv.weight, np.full(cout, rng.standard_normal()), None, own, None, g)
    value = conv.bias if per_channel else float(conv.bias[0])
    x = rng.standard_normal((2, cin) + tuple(int(s) for s in rng.integers(1, 5, n)))
    padded = pad_pointwise(conv, pads, value)
    assert padded.pads == tuple(a + b for a, b in zip(own, pads))
    assert np.array_equal(padded.weight, conv.weight) and np.array_equal(padded.bias, conv.bias)
    assert_close(run_conv(padded, x), pad_np(run_conv(conv, x), pads, value))


def test_pad_pointwise_zero_bias_is_a_plain_zero_pad():
    rng = np.random.default_rng(11)
    conv = rand_conv(rng, 3, 3, 3, (1, 1), bias=False)  # e.g. an identity / per-channel scale
    x = rng.standard_normal((1, 3, 4, 5))
    padded = pad_pointwise(conv, (1, 2, 0, 1), 0.0)
    assert_close(run_conv(padded, x), F.pad(t64(run_conv(conv, x)), [2, 1, 1, 0]).numpy())


def test_pad_pointwise_value_far_from_bias_raises():
    rng = np.random.default_rng(12)
    conv = rand_conv(rng, 3, 4, 1, (1, 1))
    with not_representable("padding"):
        pad_pointwise(conv, (1, 1, 1, 1), 0.0)
    wrong = conv.bias.copy()
    wrong[2] += 0.05
    with not_representable("padding"):
        pad_pointwise(conv, (1, 1, 1, 1), wrong)
    with not_representable("padding"):
        pad_pointwise(conv, (0, 0, 0, 1), conv.bias + 1e-3)


def test_pad_pointwise_value_per_channel_of_another_tensor_raises():
    """A border value per channel of another tensor (3 values for 4 channels) is declined, not broadcast."""
    conv = rand_conv(np.random.default_rng(12), 3, 4, 1, (1, 1))
    with not_representable("channels"):
        pad_pointwise(conv, (1, 1, 1, 1), conv.bias[:3])


def test_pad_pointwise_accepts_float32_rounded_value():
    """Exporters write BN(0) computed in float32: accept it, and the result is still within
    float32 rounding of the hand-filled border."""
    rng = np.random.default_rng(13)
    conv = rand_conv(rng, 5, 6, 1, (1, 1))
    conv = ConvForm.make(conv.weight, conv.bias * 37.123456789)  # biases with many mantissa bits
    v32 = conv.bias.astype(np.float32)
    assert np.any(v32.astype(np.float64) != conv.bias)  # the value really differs
    padded = pad_pointwise(conv, (2, 1, 2, 1), v32)
    x = rng.standard_normal((1, 5, 3, 4))
    assert_close(run_conv(padded, x), pad_np(run_conv(conv, x), (2, 1, 2, 1), v32), rtol=1e-6)


def test_pad_pointwise_crop_needs_no_value():
    rng = np.random.default_rng(14)
    conv = rand_conv(rng, 3, 4, 1, (1, 1), pads=(1, 0, 0, 0))
    x = rng.standard_normal((2, 3, 6, 5))
    cropped = pad_pointwise(conv, (-1, -1, 0, -2), None)
    assert cropped.pads == (0, -1, 0, -2)
    assert_close(run_conv(cropped, x), pad_np(run_conv(conv, x), (-1, -1, 0, -2)))
    # any value is ignored by a pure crop, even one far from the bias
    assert pad_pointwise(conv, (0, -1, 0, 0), 123.0).pads == (1, -1, 0, 0)


def test_pad_pointwise_pad_after_crop_same_side_raises():
    rng = np.random.default_rng(15)
    conv = rand_conv(rng, 3, 4, 1, (1, 1), pads=(-1, 0, 0, 0))
    with not_representable("padding"):
        pad_pointwise(conv, (1, 0, 0, 0), conv.bias)
    # padding another side is fine
    x = rng.standard_normal((1, 3, 5, 5))
    padded = pad_pointwise(conv, (0, 1, 1, 0), conv.bias)
    assert padded.pads == (-1, 1, 1, 0)
    assert_close(run_conv(padded, x), pad_np(run_conv(conv, x), (0, 1, 1, 0), conv.bias))


def test_pad_pointwise_refusals():
    rng = np.random.default_rng(16)
    k3 = rand_conv(rng, 3, 4, 1, (3, 3))
    with not_representable("padding"):
        pad_pointwise(k3, (1, 1, 1, 1), k3.bias)
    strided = rand_conv(rng, 3, 4, 1, (1, 1), strides=(2, 2))
    with not_representable("padding"):
        pad_pointwise(strided, (1, 1, 1, 1), strided.bias)
    p = rand_conv(rng, 3, 4, 1, (1, 1))
    with not_representable("rank"):
        pad_pointwise(p, (1, 1), p.bias)


# ----------------------------------------------------------------------------------------------
# avgpool
# ----------------------------------------------------------------------------------------------
@st.composite
def pool_case(draw):
    n = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    # torch's avg_pool pads symmetrically with pad <= k // 2
    pads = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    c = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    extra = tuple(draw(st.integers(0, 4)) for _ in range(n))
    return n, kernel, strides, pads, c, seed, extra


@SETTINGS
@given(pool_case())
def test_avgpool_count_include_pad_matches_torch(case):
    n, kernel, strides, pads, c, seed, extra = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c) + tuple(k + e for k, e in zip(kernel, extra)))
    form = avgpool(c, kernel, strides, pads + pads, count_include_pad=True)
    assert form.groups == c and form.weight.shape == (c, 1) + kernel
    ref = AVG[n](t64(x), kernel, strides, pads, ceil_mode=False, count_include_pad=True).numpy()
    assert_close(run_conv(form, x), ref)


@SETTINGS
@given(pool_case())
def test_avgpool_without_pads_matches_torch(case):
    n, kernel, strides, _, c, seed, extra = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c) + tuple(k + e for k, e in zip(kernel, extra)))
    for include in (False, True):
        form = avgpool(c, kernel, strides, None, count_include_pad=include)
        ref = AVG[n](t64(x), kernel, strides, 0, ceil_mode=False, count_include_pad=include).numpy()
        assert_close(run_conv(form, x), ref)


def test_avgpool_asymmetric_pads_count_include_pad():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 3, 6, 7))
    form = avgpool(3, (3, 2), (2, 1), (0, 1, 2, 0), count_include_pad=True)
    ref = F.avg_pool2d(F.pad(t64(x), [1, 0, 0, 2]), (3, 2), (2, 1)).numpy()  # zeros counted
    assert_close(run_conv(form, x), ref)


def test_avgpool_pads_without_count_include_pad_raises():
    with not_representable("padding"):
        avgpool(3, (3, 3), (1, 1), (1, 1, 1, 1), count_include_pad=False)
    with not_representable("padding"):
        avgpool(3, (3,), None, (0, 1), count_include_pad=False)
    # and the border really differs (so refusing is necessary)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    assert not torch.allclose(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
                              F.avg_pool2d(x, 3, 1, 1, count_include_pad=True))


@pytest.mark.parametrize("cin,cout,g,k,stride", [(4, 6, 1, 3, 1), (4, 6, 2, 3, 2), (6, 6, 3, 5, 1), (2, 4, 2, 3, 2)])
def test_dbb_avg_branch_1x1_bn_pad_avgpool(cin, cout, g, k, stride):
    """DBB's dbb_avg: 1x1 (BN folded: bias = BN(0)) -> pad with BN(0) -> AvgPool(k, s, pad 0)."""
    rng = np.random.default_rng(cin + 10 * cout + 100 * g + k)
    conv = rand_conv(rng, cin, cout, g, (1, 1))
    p = k // 2
    pool = avgpool(cout, (k, k), (stride, stride), None, count_include_pad=True)
    merged = compose(pad_pointwise(conv, (p,) * 4, conv.bias), pool)
    assert merged.kernel_shape == (k, k) and merged.pads == (p,) * 4 and merged.strides == (stride,) * 2
    assert merged.groups == g
    x = rng.standard_normal((2, cin, 7, 8))
    ref = F.avg_pool2d(t64(pad_np(run_conv(conv, x), (p,) * 4, conv.bias)), k, stride).numpy()
    assert_close(run_conv(merged, x), ref)
    # without the BN(0) border (zero padding by the pool itself) the merge must be refused
    with pytest.raises(NotRepresentable):
        compose(conv, avgpool(cout, (k, k), (stride, stride), (p,) * 4, count_include_pad=True))


def test_depthwise_dbb_avgpool_on_input():
    """Depthwise DBB: AvgPool with pads straight on x (count_include_pad=1) is a depthwise conv."""
    rng = np.random.default_rng(18)
    x = rng.standard_normal((2, 5, 9, 9))
    form = avgpool(5, (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=True)
    assert_close(run_conv(form, x), F.avg_pool2d(t64(x), 3, 2, 1, count_include_pad=True).numpy())
