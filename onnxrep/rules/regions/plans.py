"""Plans of a linear region: the ways one tensor can be computed, and how they combine.

A *plan* computes ``sink = Σ terms(root)``: its open segment (``nodes``) is rewritten as one
Conv per term reading ``root`` (and Adds between them), once the regions in ``below`` (its cut
points) are written on their own; the nodes in ``kept`` stay as they are (an Add whose
branches read different tensors). Most plans have one term: the whole segment as one conv.
Several terms arise where branches on one root cost less apart than merged (a depthwise KxK
beside a dense 1x1): they stay separate convs, and what follows them still folds in
(``s (A + B) + t = s A + (s B + t)``).

A region keeps at most one plan per root. That is enough for an exact choice: what a plan can
still become depends only on its root and its terms (a later merge needs the same root; the
cost of a form depends on its shape), so among plans with one root only the cheapest below can
win.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import (AffineForm, ConvForm, NotRepresentable, SizeDependentPads, add, affine_as_conv, affine_sum,
                        affine_then_affine, affine_then_conv, compose, conv_then_affine, overflow, precision_loss)
from ...cost import ZERO, Cost

#: plans kept per region at most (the merged one, the cheapest others, and one that writes nothing)
MAX_PLANS = 6
#: an Add node left between two terms kept apart
ADD_NODE = Cost(0, 0, 1)

Form = ConvForm | AffineForm


@dataclass(eq=False)
class Plan:
    root: gs.Tensor
    terms: tuple[Form, ...]
    nodes: list
    below: tuple = ()
    closed: Cost = ZERO
    convs: int = 0
    dtype: np.dtype | None = None
    kept: tuple = ()
    #: ``(node, reason)``: terms this plan keeps apart because merging them costs more
    why: tuple = ()
    #: its cost once computed (``_Walk.plan_cost``)
    cost: Cost | None = None

    @property
    def merged(self) -> bool:
        """The whole region as one form (no cut point, no kept node, one term)."""
        return not self.below and not self.kept and len(self.terms) == 1

    @property
    def writes(self) -> bool:
        """The open segment is rewritten (one Conv per term, with Adds): only when that is shorter."""
        k = len(self.terms)
        return self.convs >= 1 and any(isinstance(t, ConvForm) for t in self.terms) and 2 * k - 1 < len(self.nodes)


@dataclass(eq=False)
class Region:
    """The plans found for ``sink``; ``choice`` (with its ``cost``) once decided.

    ``baseline`` is the plan that merges nothing more at this op (the operand's region written on
    its own, or the Add kept between two written branches): the chosen plan is the cheapest of
    those no worse than it in MACs and in parameters, so a region never costs more than its input.
    """
    sink: gs.Tensor
    plans: list[Plan]
    baseline: Plan | None = None
    absorbed: bool = False
    choice: Plan | None = None
    cost: Cost | None = None
    #: why the fully merged plan was not chosen (said when the region is written)
    why_apart: str | None = None
    #: ``_Walk.footprint`` of the choice
    footprint: tuple | None = None


def leaf(tensor: gs.Tensor) -> Plan:
    return Plan(tensor, (AffineForm.identity(),), [])


def prune(plans: list[Plan], total: Callable[[Plan], Cost], baseline: Plan | None = None) -> list[Plan]:
    """One plan per root (the cheapest by ``total``), at most ``MAX_PLANS``: the merged plan
    first, then the cheapest; and always ``baseline`` (it writes nothing, so it never fails)."""
    best: dict[int, Plan] = {}
    for p in plans:
        q = best.get(id(p.root))
        if q is None or total(p) < total(q) or p is baseline:
            best[id(p.root)] = p
    ordered = sorted(best.values(), key=lambda p: (not p.merged, total(p)))
    kept = ordered[:MAX_PLANS]
    if baseline is not None and baseline not in kept:
        kept.append(baseline)
    return kept


# ------------------------------------------------------------------ forms
def sum_forms(a: Form, b: Form, sign: float = 1.0, in_size: tuple[int | None, ...] | None = None) -> Form:
    """``a + sign * b`` for any two forms on the same root (of spatial size ``in_size`` where static)."""
    if isinstance(a, AffineForm) and isinstance(b, AffineForm):
        return affine_sum(a, b, sign)
    if isinstance(a, AffineForm):
        a = affine_as_conv(a, b.in_channels, b.n_spatial)
    if isinstance(b, AffineForm):
        b = affine_as_conv(b, a.in_channels, a.n_spatial)
    return add(a, b, sign, in_size)


def then(first: Form, second: Form) -> Form:
    """``second ∘ first``."""
    if isinstance(first, AffineForm):
        return affine_then_affine(first, second) if isinstance(second, AffineForm) else affine_then_conv(first, second)
    if isinstance(second, AffineForm):
        return conv_then_affine(first, second)
    return compose(first, second)


def affine_after_terms(terms: tuple[Form, ...], aff: AffineForm) -> tuple[Form, ...]:
    """``s Σ T_i + t = (s T_0 + t) + Σ_{i>0} s T_i``."""
    scale_only = AffineForm(aff.scale, np.zeros_like(np.asarray(aff.shift, dtype=np.float64)), aff.rank, aff.min_rank)
    return tuple(then(t, aff if i == 0 else scale_only) for i, t in enumerate(terms))


def negated(form: Form) -> Form:
    if isinstance(form, AffineForm):
        return AffineForm(-np.asarray(form.scale, dtype=np.float64), -np.asarray(form.shift, dtype=np.float64),
                          form.rank, form.min_rank)
    return form.deferred(form.weight_shape, lambda: -np.asarray(form.weight, dtype=np.float64),
                         -np.asarray(form.bias, dtype=np.float64))


def as_conv(form: Form, channels: int | None, n_spatial: int) -> ConvForm:
    """A form as a ``ConvForm`` (an affine becomes a 1x1 depthwise conv on ``channels``)."""
    if isinstance(form, ConvForm):
        return form
    channels = form.channels or channels
    if channels is None:
        raise NotRepresentable("number of channels unknown (no shape information)", code="channels")
    return affine_as_conv(form, channels, n_spatial)


def channels_of(form: Form, tensor: gs.Tensor) -> int | None:
    """Channels of ``tensor``, the output of ``form``: from the form, else from the tensor's shape."""
    if isinstance(form, ConvForm):
        return form.out_channels
    if form.channels is not None:
        return form.channels
    shape = tensor.shape
    if shape is not None and len(shape) > 1 and isinstance(shape[1], int):
        return shape[1]
    return None


def combine(terms: list[Form], term_cost: Callable[[Form], Cost], in_size: tuple[int | None, ...] | None = None
            ) -> tuple[list[Form], list[str]]:
    """Merge terms pairwise while a merge costs no more (MACs and parameters) than the two terms
    and the Add between.

    Returns the terms left and, for every pair left apart, the reason: the algebra's, or both
    costs. Runs to a fixed point: a merge can make another one pay (ACNet's 1x3 and 3x1 pay only
    once inside the 3x3). The whole sum as one conv is tried last, so the result never costs more
    than either the terms as given or one conv. ``in_size``: the root's static spatial size, on
    which branches are aligned when no size-independent proof exists (``branches.add``).
    """
    terms = list(terms)
    merged_one = True
    while merged_one and len(terms) > 1:
        merged_one, why = False, []
        for i in range(len(terms)):
            for j in range(i + 1, len(terms)):
                try:
                    m = sum_forms(terms[i], terms[j], in_size=in_size)
                except NotRepresentable as exc:
                    why.append(str(exc))
                    continue
                one, apart = term_cost(m), term_cost(terms[i]) + term_cost(terms[j]) + ADD_NODE
                if one.no_worse(apart):
                    terms[i] = m
                    del terms[j]
                    merged_one = True
                    break
                why.append(f"branches kept apart: one conv would cost {one.describe()}; apart {apart.describe()}")
            if merged_one:
                break
    if len(terms) > 2:  # pairs may all lose where the whole sum wins: try it too
        try:
            one = terms[0]
            for t in terms[1:]:
                one = sum_forms(one, t, in_size=in_size)
        except NotRepresentable:
            one = None
        apart = ZERO
        for i, t in enumerate(terms):
            apart = apart + term_cost(t) + (ADD_NODE if i else ZERO)
        if one is not None and term_cost(one).no_worse(apart):
            return [one], []
    return terms, (why if len(terms) > 1 else [])


def writable(form: ConvForm, dtype) -> str | None:
    """Why ``form`` cannot be written as a Conv of ``dtype`` (``None`` if it can): negative pads (a
    crop) have no Conv; a float16 weight past 65504 would be inf, one under its normal range
    would lose precision."""
    if not isinstance(form.pads, SizeDependentPads) and any(p < 0 for p in form.pads):
        return "the merged conv would need negative padding"
    return overflow(dtype or np.float32, form.weight, form.bias) or precision_loss(dtype or np.float32, form.weight)


def precision_rtol(dtype) -> float:
    """Relative tolerance for values an exporter computed in ``dtype`` (4 ulps, at least 1e-5)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return 1e-5
    return max(1e-5, 4 * float(np.finfo(dt).eps)) if dt.kind == "f" else 1e-5
