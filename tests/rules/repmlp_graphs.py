"""A RepMLP block written as ONNX by hand (the node sequence torch's exporters emit for the official
``RepMLPBlock`` without its global perceptron), for the rules that fold it: move-bn-before-reshape,
fold-conv-into-fc, merge-reshapes."""
from __future__ import annotations

import numpy as np

from onnx_builders import GraphBuilder


def shape(g: GraphBuilder, *dims: int) -> str:
    return g.init(np.array(dims, dtype=np.int64))


def repmlp_block(g: GraphBuilder, x: str, c: int, hw: tuple[int, int], parts: tuple[int, int], s: int,
                 ks=(1, 3), fc: str = "conv", conv_groups: int | None = None, output: str = "y") -> str:
    """``x`` (N, C, hp·h, wp·w) partitioned into h×w patches, S share-sets:

    T = Transpose(Reshape(x, (-1, C, hp, h, wp, w)), (0, 2, 4, 1, 3, 5))
    fc: Reshape(T, (-1, S·h·w, 1, 1)) -> Conv 1x1 groups S -> Reshape(-1, S, h, w) -> BN(S) -> Reshape(6-D)
        (``fc="gemm"``: Reshape(T, (-1, S·h·w)) -> Gemm, S must be 1)
    convs: Reshape(T, (-1, S, h, w)) -> Σ_k Conv kxk groups S (pads k//2) -> BN(S) -> Reshape(6-D)
    y = Reshape(Transpose(fc + convs, (0, 3, 1, 4, 2, 5)), (-1, C, H, W))
    """
    (h, w), (hp, wp) = hw, parts
    p = h * w
    six = shape(g, -1, hp, wp, s, h, w)
    part = g.node("Reshape", [x, shape(g, -1, c, hp, h, wp, w)])
    t = g.node("Transpose", [part], perm=[0, 2, 4, 1, 3, 5])
    if fc == "conv":
        rows = g.node("Reshape", [t, shape(g, -1, s * p, 1, 1)])
        f = g.conv(rows, s * p, s * p, 1, group=s, bias=False)
    else:
        assert s == 1
        rows = g.node("Reshape", [t, shape(g, -1, s * p)])
        f = g.node("Gemm", [rows, g.init(g.randn(p, p, scale=p ** -0.5)), g.init(g.randn(p))], transB=1)
    f = g.node("Reshape", [f, shape(g, -1, s, h, w)])
    f = g.node("Reshape", [g.bn(f, s), six])
    view = g.node("Reshape", [t, shape(g, -1, s, h, w)])
    total = None
    for k in ks:
        y = g.bn(g.conv(view, s, s, k, pads=k // 2, group=conv_groups or s, bias=False), s)
        total = y if total is None else g.add(total, y)
    if total is not None:
        f = g.add(f, g.node("Reshape", [total, six]))
    back = g.node("Transpose", [f], perm=[0, 3, 1, 4, 2, 5])
    return g.node("Reshape", [back, shape(g, -1, c, hp * h, wp * w)], output)
