"""crop-dead-taps: the taps of a kernel that only ever read padding on a static map, cropped (exact)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from checks import assert_verifies, rewrites, rule, run_opt  # noqa: E402
from onnx_builders import GraphBuilder, initializer, op_histogram  # noqa: E402
from onnxrep.algebra import ConvForm  # noqa: E402
from onnxrep.algebra.crop import crop_dead_taps, used_taps  # noqa: E402
from torch_ref import run_conv  # noqa: E402

RULE = "crop-dead-taps"


def _kernel_and_pads(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
    return list(initializer(model, conv.input[1]).shape[2:]), attrs["pads"]


@pytest.mark.parametrize("k,pads,strides,dil,size", [
    (3, (1, 1, 1, 1), 1, 1, (1, 1)), (7, (3, 3, 3, 3), 1, 1, (2, 2)), (5, (2, 1, 2, 3), 2, 1, (3, 2)),
    (3, (2, 2, 2, 2), 1, 2, (2, 1)), (7, (3, 3, 3, 3), 1, 1, (8, 1)), (3, (1, 1, 1, 1), 1, 1, (5, 5))])
def test_cropped_conv_equals_the_conv(k, pads, strides, dil, size):
    rng = np.random.default_rng(k)
    form = ConvForm.make(rng.standard_normal((4, 2, k, k)), rng.standard_normal(4), strides=(strides,) * 2,
                         pads=pads, dilations=(dil,) * 2, groups=2)
    cropped = crop_dead_taps(form, size)
    if size == (5, 5):
        assert cropped is None and used_taps(form, size) == [(0, 2), (0, 2)]
        return
    assert cropped is not None and np.prod(cropped.kernel_shape) < k * k
    x = rng.standard_normal((2, 4) + size)
    ref, got = run_conv(form, x), run_conv(cropped, x)
    assert ref.shape == got.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_kxk_on_one_pixel_is_its_centre_tap():
    g = GraphBuilder(40)
    pooled = g.node("GlobalAveragePool", ["x"])
    y = g.conv(pooled, 8, 6, 3, pads=1, output="y")
    m = g.model({"x": ("N", 8, 5, 5)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"GlobalAveragePool": 1, "Conv": 1}
    assert _kernel_and_pads(out) == ([1, 1], [0, 0, 0, 0])
    assert rep.before.macs - rep.after.macs == 6 * 8 * 9 - 6 * 8 and rewrites(rep)[RULE] == 1
    (node, why), = rule(rep, RULE).fired
    assert "a 3x3 kernel on a 1x1 map reads its input with 1x1 taps only: 9 -> 1 MACs per output" in why
    assert rule(rep, RULE).to_dict()["fired"] == [{"node": node, "why": why}]
    assert_verifies(m, out, input_shapes={"x": (3, 8, 5, 5)})


def test_depthwise_7x7_on_2x2_becomes_3x3():
    """YOLOv10n's large-kernel depthwise conv at a small input: 49 taps, 9 of them read the 2x2 map."""
    g = GraphBuilder(41)
    y = g.conv("x", 4, 4, 7, pads=3, group=4, output="y")
    m = g.model({"x": ("N", 4, 2, 2)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1} and _kernel_and_pads(out) == ([3, 3], [1, 1, 1, 1])
    assert rep.after.params == 4 * 9 + 4 and rep.after.macs * 49 == rep.before.macs * 9
    assert_verifies(m, out, input_shapes={"x": (3, 4, 2, 2)})


def test_kernel_that_fits_or_dynamic_map_untouched():
    g = GraphBuilder(43)
    a = g.conv("x", 4, 4, 3, pads=1, output="a")
    b = g.conv("z", 4, 4, 7, pads=3, output="b")
    out, rep = run_opt(g.model({"x": ("N", 4, 8, 8), "z": ("N", 4, "H", "W")}, [a, b]))
    assert RULE not in rewrites(rep) and [list(initializer(out, n.input[1]).shape[2:]) for n in out.graph.node] \
        == [[3, 3], [7, 7]]
