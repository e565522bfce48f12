"""algebra.channels against torch: a channel that carries a constant, removed and folded into a bias."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from onnxrep.algebra import NotRepresentable  # noqa: E402
from onnxrep.algebra import channels as ch  # noqa: E402

RNG = np.random.default_rng(0)


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float64))


def test_zero_rows_and_their_constants():
    w = RNG.standard_normal((5, 3, 3, 3))
    w[[1, 4]] = 0
    assert list(ch.zero_rows(w)) == [1, 4]
    assert ch.row_constants(w, np.arange(5.0)) == {1: 1.0, 4: 4.0}
    assert ch.row_constants(w, None) == {1: 0.0, 4: 0.0}
    assert list(ch.zero_rows(np.zeros((0, 3, 1, 1)))) == []


@pytest.mark.parametrize("k,pad", [(1, 0), (3, 0), (3, 1)])
def test_drop_conv_inputs_folds_the_constant(k, pad):
    x = RNG.standard_normal((2, 5, 7, 6))
    dead = {1: 0.7, 3: 0.0}
    for c, v in dead.items():
        x[:, c] = v
    w, b = RNG.standard_normal((4, 5, k, k)), RNG.standard_normal(4)
    ref = F.conv2d(_t(x), _t(w), _t(b), padding=pad).numpy()
    if pad and any(dead.values()):
        with pytest.raises(NotRepresentable) as info:
            ch.drop_conv_inputs(w, b, dead, padded=True)
        assert info.value.code == "padding"
        dead = {3: 0.0}  # only a zero constant may leave a padded conv
    w2, b2 = ch.drop_conv_inputs(w, b, dead, padded=bool(pad))
    keep = [c for c in range(5) if c not in dead]
    got = F.conv2d(_t(x[:, keep]), _t(w2), _t(b2), padding=pad).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_depthwise_constants_and_drop_outputs():
    x = RNG.standard_normal((1, 4, 6, 6))
    x[:, 2] = 0.5
    w, b = RNG.standard_normal((4, 1, 3, 3)), RNG.standard_normal(4)
    y = F.conv2d(_t(x), _t(w), _t(b), groups=4).numpy()
    (v,) = ch.depthwise_constants(w, b, {2: 0.5}, padded=False).values()
    np.testing.assert_allclose(y[:, 2], v, rtol=1e-12)
    assert ch.depthwise_constants(w, b, {2: 0.5}, padded=True) == {}  # border pixels see fewer taps
    w2, b2 = ch.drop_conv_outputs(w, b, {2})
    assert w2.shape == (3, 1, 3, 3) and list(b2) == list(b[[0, 1, 3]])


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("c_shape", [None, (6,), (1, 6), ()])
def test_drop_gemm_inputs(trans_b, c_shape):
    a = RNG.standard_normal((3, 5))
    a[:, 2] = -1.5
    bm = RNG.standard_normal((6, 5) if trans_b else (5, 6))
    c = None if c_shape is None else RNG.standard_normal(c_shape)
    alpha, beta = 0.7, 1.3
    op_b = bm.T if trans_b else bm
    ref = alpha * a @ op_b + (0 if c is None else beta * c)
    b2, c2 = ch.drop_gemm_inputs(bm, c, alpha, beta, trans_b, {2: -1.5})
    keep = [0, 1, 3, 4]
    got = alpha * a[:, keep] @ (b2.T if trans_b else b2) + c2
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_gemm_column_constants_and_drop_outputs():
    bm = RNG.standard_normal((5, 6))
    bm[:, 4] = 0
    assert ch.gemm_column_constants(bm, np.arange(6.0), 2.0, False) == {4: 8.0}
    assert ch.gemm_column_constants(bm, np.ones((3, 6)), 1.0, False) == {}  # C varies along rows
    b2, c2 = ch.drop_gemm_outputs(bm, np.arange(6.0), False, {4})
    assert b2.shape == (5, 5) and list(c2) == [0, 1, 2, 3, 5]


def test_activations_and_channel_vectors():
    assert ch.activation("Relu", {}, -2.0) == 0.0 and ch.activation("LeakyRelu", {"alpha": 0.1}, -2.0) == -0.2
    assert ch.activation("Clip", {}, 7.0, (0.0, 6.0)) == 6.0 and ch.activation("Gelu", {}, 1.0) is None
    assert ch.activation("HardSwish", {}, 1.0) == pytest.approx(1.0 * (1 / 6 + 0.5))
    assert ch.drop_channels(np.arange(4.0).reshape(1, 4, 1, 1), {1}).ravel().tolist() == [0, 2, 3]
    assert ch.drop_channels(np.float32(3.0), {1}) == 3.0
