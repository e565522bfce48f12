"""algebra.conv_fc: a conv on a fixed-size map as an FC, checked against torch and the RepMLP authors' own
conversion (``models.repmlp.conv_to_fc``, their ``_convert_conv_to_fc``)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from checks import not_representable  # noqa: E402
from onnxrep.algebra import ConvForm, add, regroup  # noqa: E402
from onnxrep.algebra.conv_fc import conv_as_fc, output_size  # noqa: E402
from torch_ref import run_conv  # noqa: E402


def _fc_apply(fc: ConvForm, x: np.ndarray) -> np.ndarray:
    """``y = M x + b`` on each flattened sample (``M`` the dense matrix: the FC regrouped to groups 1)."""
    dense = regroup(fc, 1).weight.reshape(fc.out_channels, -1)
    return x.reshape(x.shape[0], -1) @ dense.T + fc.bias


CASES = [  # (C, E, groups, kernel, strides, pads, dilations, in_size)
    (4, 4, 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (5, 6)),       # RepMLP's 1x1 branch: per share-set scales
    (4, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (8, 8)),       # RepMLP's 3x3 branch
    (2, 2, 2, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), (4, 3)),       # a kernel larger than the map
    (3, 6, 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (7, 2)),       # depthwise multiplier 2
    (4, 6, 2, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (7, 5)),       # strided, grouped
    (3, 5, 1, (3, 2), (1, 2), (0, 1, 2, 0), (2, 1), (6, 6)),       # asymmetric pads, dilated, dense
    (2, 3, 1, (3,), (1,), (1, 1), (1,), (9,)),                     # 1-D
    (2, 2, 2, (3, 3, 3), (1, 1, 1), (1,) * 6, (1, 1, 1), (3, 4, 2)),  # 3-D
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c[0]}E{c[1]}g{c[2]}k{'x'.join(map(str, c[3]))}")
def test_fc_equals_conv_on_the_fixed_size(case):
    c, e, g, kernel, strides, pads, dilations, size = case
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((e, c // g) + kernel), rng.standard_normal(e)
    form = ConvForm.make(w, b, strides=strides, pads=pads, dilations=dilations, groups=g)
    fc, out = conv_as_fc(form, size)
    x = rng.standard_normal((3, c) + size)
    y = run_conv(form, x)
    assert y.shape[2:] == out == output_size(form, size)
    # a pointwise conv over C·P_in channels with the conv's groups: E·P_out outputs
    assert fc.weight_shape == (e * int(np.prod(out)), c // g * int(np.prod(size))) + (1,) * len(size)
    assert fc.groups == g and fc.kernel_shape == (1,) * len(size) and not any(fc.pads)
    np.testing.assert_allclose(_fc_apply(fc, x), y.reshape(3, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("s", [1, 2, 4])
@pytest.mark.parametrize("h,w", [(4, 4), (8, 8), (3, 5), (7, 2)])
def test_same_matrix_as_the_repmlp_authors(k, s, h, w):
    """RepMLP's ``_convert_conv_to_fc`` (conv of an identity batch) and the tap placement agree exactly."""
    from models.repmlp import conv_to_fc
    rng = np.random.default_rng(k * 100 + s * 10 + h)
    kernel, bias = rng.standard_normal((s, 1, k, k)), rng.standard_normal(s)
    fc, _ = conv_as_fc(ConvForm.make(kernel, bias, pads=(k // 2,) * 4, groups=s), (h, w))
    ref_w, ref_b = conv_to_fc(torch.tensor(kernel), torch.tensor(bias), h, w, s)
    # the authors' (S·h·w, h·w) is fc3's weight (groups S) before reshape_as
    np.testing.assert_allclose(fc.weight.reshape(s * h * w, h * w), ref_w.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fc.bias, ref_b.numpy())


def test_summed_with_a_grouped_fc_keeps_its_groups():
    """fc3 (groups S) + the depthwise conv's matrix (block-diagonal in the same S blocks) = one FC, groups S."""
    rng = np.random.default_rng(1)
    s, h, w = 4, 3, 3
    p = h * w
    fc3 = ConvForm.make(rng.standard_normal((s * p, p, 1, 1)), rng.standard_normal(s * p), groups=s)
    conv = ConvForm.make(rng.standard_normal((s, 1, 3, 3)), rng.standard_normal(s), pads=(1,) * 4, groups=s)
    matrix, _ = conv_as_fc(conv, (h, w))
    merged = add(fc3, matrix)
    assert merged.groups == s and merged.weight_shape == fc3.weight_shape
    x = rng.standard_normal((2, s, h, w))
    ref = _fc_apply(fc3, x) + run_conv(conv, x).reshape(2, -1)
    np.testing.assert_allclose(_fc_apply(merged, x), ref, rtol=0, atol=1e-12)


def test_window_larger_than_the_padded_map():
    form = ConvForm.make(np.ones((1, 1, 5, 5)))
    with not_representable("shape"):
        conv_as_fc(form, (3, 3))


def test_weight_is_deferred():
    """Only the shape is known until the weight is read (the rule's cost gate never builds it)."""
    form = ConvForm.make(np.ones((2, 1, 3, 3)), groups=2, pads=(1,) * 4)
    fc, _ = conv_as_fc(form, (64, 64))
    assert fc.weight_shape == (2 * 4096, 4096, 1, 1) and not fc.raw_weight.computed
