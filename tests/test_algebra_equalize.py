"""Cross-layer equalization algebra (``onnxrep/algebra/equalize.py``) against torch, float64.

Random layer pairs joined by each positively homogeneous op: the rescaled pair computes the same
function, and the equalized channel ranges of the two layers are equal.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from onnxrep.algebra.equalize import (equalizing_scales, input_ranges, output_ranges, range_matrix,  # noqa: E402
                                      scale_inputs, scale_outputs, spread)

C = 8
BETWEEN = {
    "none": lambda y, slope: y,
    "relu": lambda y, slope: F.relu(y),
    "leaky-relu": lambda y, slope: F.leaky_relu(y, 0.1),
    "prelu": lambda y, slope: F.prelu(y, slope),
    "maxpool": lambda y, slope: F.max_pool2d(F.relu(y), 3, 2, 1),
    "avgpool": lambda y, slope: F.avg_pool2d(y, 2, 1, 1, count_include_pad=True),
    "zero-pad": lambda y, slope: F.pad(F.relu(y), (1, 0, 2, 1)),
}
#: (groups of layer 1, groups of layer 2): dense -> dense, depthwise -> pointwise, pointwise -> depthwise, grouped
GROUPS = [(1, 1), (C, 1), (1, C), (2, 4)]


def _pair(rng, g1, g2):
    w1 = rng.standard_normal((C, C // g1, 3, 3)) * rng.uniform(0.05, 20.0, (C, 1, 1, 1))  # uneven channels
    w1[3] = 0.0  # a dead channel: its scale stays 1
    b1 = rng.standard_normal(C)
    w2 = rng.standard_normal((6 if g2 == 1 else C, C // g2, 1 if g2 == 1 else 3, 1 if g2 == 1 else 3))
    return w1, b1, w2


@pytest.mark.parametrize("between", sorted(BETWEEN))
@pytest.mark.parametrize("g1,g2", GROUPS)
def test_equalized_pair_computes_the_same(between, g1, g2):
    rng = np.random.default_rng(hash((between, g1, g2)) % 2**32)
    w1, b1, w2 = _pair(rng, g1, g2)
    slope = torch.tensor(rng.uniform(0.0, 0.5, C))
    x = torch.tensor(rng.standard_normal((2, C, 9, 7)))

    def run(w1, b1, w2):
        y = F.conv2d(x, torch.tensor(w1), torch.tensor(b1), padding=1, groups=g1)
        return F.conv2d(BETWEEN[between](y, slope), torch.tensor(w2), padding=w2.shape[-1] // 2, groups=g2)

    s = equalizing_scales(output_ranges(w1), input_ranges(w2, g2))
    assert s[3] == 1.0 and np.all(s > 0)
    w1e, b1e = scale_outputs(w1, b1, s)
    w2e = scale_inputs(w2, s, g2)
    ref, got = run(w1, b1, w2), run(w1e, b1e, w2e)
    assert float((got - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    live = np.arange(C) != 3
    np.testing.assert_allclose(output_ranges(w1e)[live], input_ranges(w2e, g2)[live], rtol=1e-12)
    np.testing.assert_allclose(output_ranges(w1e)[live] ** 2, (output_ranges(w1) * input_ranges(w2, g2))[live],
                               rtol=1e-12)  # both sqrt(r1 r2)


def test_fully_connected_head_after_global_pooling():
    """conv -> ReLU -> global average pool -> flatten -> Linear: input column i of the Linear is channel i."""
    rng = np.random.default_rng(7)
    w1, b1, _ = _pair(rng, 1, 1)
    fc = rng.standard_normal((5, C))
    x = torch.tensor(rng.standard_normal((3, C, 6, 6)))

    def run(w1, b1, fc):
        y = F.relu(F.conv2d(x, torch.tensor(w1), torch.tensor(b1), padding=1)).mean(dim=(2, 3))
        return F.linear(y, torch.tensor(fc))

    s = equalizing_scales(output_ranges(w1), input_ranges(fc))
    w1e, b1e = scale_outputs(w1, b1, s)
    ref, got = run(w1, b1, fc), run(w1e, b1e, scale_inputs(fc, s))
    assert float((got - ref).abs().max()) <= 1e-10 * float(ref.abs().max())


def test_range_matrix_stands_in_for_the_weight():
    """Ranges of a rescaled layer = ranges of its rescaled range matrix (what the pass iterates on)."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((8, 2, 3, 3))
    s_in, s_out = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    rescaled = scale_inputs(scale_outputs(w, None, s_out)[0], s_in, 4)
    r = scale_inputs(scale_outputs(range_matrix(w), None, s_out)[0], s_in, 4)
    np.testing.assert_allclose(range_matrix(rescaled), r, rtol=1e-12)
    np.testing.assert_allclose(output_ranges(rescaled), output_ranges(r), rtol=1e-12)
    np.testing.assert_allclose(input_ranges(rescaled, 4), input_ranges(r, 4), rtol=1e-12)


def test_spread_and_zero_ranges():
    assert spread(np.array([1.0, 2.0, 10.0])) == 5.0
    assert spread(np.zeros(3)) == 1.0
    np.testing.assert_array_equal(equalizing_scales(np.array([4.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.0])),
                                  [2.0, 1.0, 1.0])
