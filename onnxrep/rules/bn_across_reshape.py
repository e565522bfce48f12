"""A BatchNormalization after a Reshape that merges channels moved before it, where a conv absorbs it.

RepMLP's FC is a 1x1 conv over ``S·h·w`` channels whose output is reshaped to ``(·, S, h, w)`` and
normalized by a BN over ``S`` channels. When a Reshape maps each input channel to one output channel
(input ``(n, C, *p)``, output ``(n, S, *q)``, ``C = r·S``, the same number of elements per sample, so
``prod(q) = r·prod(p)``), input channel ``c`` lands in output channel ``c // r``, and

    BN_S(Reshape(u)) = Reshape(BN_C(u))   with every BN parameter repeated ``r`` times (``np.repeat``).

Moved before the Reshape, the BN follows its conv (or Gemm) directly and is folded into it
(``W' = W s[o]``, ``b' = s b + t``). It is moved only when that fold does not add parameters: the
absorber already has a bias (the BN's ``4 S`` parameters go), or ``C <= 4 S`` (a new bias of ``C``).
RepMLP's bias-free FC over ``S·h·w`` channels is the other case: ``fold-conv-into-fc`` folds its BN
together with the conv branches, whose bias it needs anyway.
"""
from __future__ import annotations

import numpy as np

from ..pattern import op, var
from ..rule import PatternRule
from .ops.linear import has_bias
from .ops.views import sample_shape

#: producers that absorb a BN on their output channels (the collapse, fold-bn-into-gemm)
_ABSORBERS = ("Conv", "Gemm", "MatMul")


class MoveBatchNormBeforeReshape(PatternRule):
    name = "move-bn-before-reshape"
    priority = 8  # before the region collapse folds it
    pattern = op("BatchNormalization", op("Reshape", var("u"), var("shape"), name="reshape"),
                 var("scale"), var("bias"), var("mean"), var("var"), name="bn")

    def repeats(self, m) -> int | str:
        """``r`` (input channels per BN channel), or why the Reshape does not map channels to channels."""
        su, sy = sample_shape(m["u"]), sample_shape(m.node("reshape").outputs[0])
        if not su or not sy:
            return "Reshape input or output has no static per-sample shape"
        if int(np.prod(su)) != int(np.prod(sy)):
            return "Reshape moves elements between samples (axis 0 changes)"
        # element (c, p) of a sample sits at c·P_in + p; its output channel is that // P_out = c // r
        if sy[0] == 0 or su[0] % sy[0]:
            return f"Reshape does not merge whole channels ({su[0]} -> {sy[0]} channels)"
        return su[0] // sy[0]

    def check(self, m):
        if m.node("bn").attrs.get("training_mode", 0):
            return "BatchNormalization in training mode"
        r = self.repeats(m)
        if isinstance(r, str):
            return r
        producer = m.ctx.producer(m["u"])
        if producer is None or producer.op not in _ABSORBERS or not m.ctx.is_private(m["u"]):
            return (f"no conv or Gemm right before the Reshape to absorb it (moved, it would repeat its "
                    f"parameters {r} times)")
        params = [m.ctx.constant(m.tensor(k)) for k in ("scale", "bias", "mean", "var")]
        if any(p is None or p.ndim != 1 for p in params):
            return "BatchNormalization parameters are not constant vectors"
        channels, bn_params = r * params[0].shape[0], 4 * params[0].shape[0]
        if not has_bias(m.ctx, producer) and channels > bn_params:
            return (f"folded before the Reshape it would add a bias of {channels} to a producer without one "
                    f"(the BN has {bn_params} parameters)")
        return None

    def rewrite(self, m, b):
        r = self.repeats(m)
        params = [b.const(k, np.repeat(m.ctx.constant(m.tensor(k)), r)) for k in ("scale", "bias", "mean", "var")]
        bn = m.node("bn")
        u = m.tensor("u")
        normalized = b.tensor("normalized", dtype=u.dtype, shape=u.shape)
        b.op("BatchNormalization", [u, *params], outputs=[normalized], attrs=dict(bn.attrs))
        b.op("Reshape", [normalized, m.tensor("shape")], outputs=[m.output], attrs=dict(m.node("reshape").attrs))
