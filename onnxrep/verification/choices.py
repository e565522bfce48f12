"""Inputs the model accepts, read from its graph (If / Loop / Scan bodies included).

Branch values (:func:`branch_values`)
-------------------------------------
A scalar input (one element, a static shape) that the graph compares with constants picks a branch:
a sample rate tested with ``Equal(sr, 16000)`` before an If, a mode with ``Greater(mode, 2)`` before a
Where. The input is followed through ops that keep its value (Identity, Cast, Squeeze, Unsqueeze,
Reshape, Flatten, Expand); every constant it meets in Equal takes a turn, and in Greater, Less,
GreaterOrEqual, LessOrEqual the constant and its two neighbours (``c - 1, c, c + 1``), so both sides
of each test are verified. A bool scalar that reaches an If or Where condition (through Not, And, Or,
Xor too) takes ``False`` and ``True``. The value "none of them" is added by the caller.

Sizes (:func:`size_constraints`, :func:`size_attempts`)
-------------------------------------------------------
Dynamic dims default to 1 on axis 0 and 32 elsewhere. When the reference cannot run there, the sizes
tried next follow from the graph and then grow: an axis of an input (followed through Identity,
Cast, Unsqueeze, Squeeze and constant Pads) padded in ``reflect`` / ``wrap`` mode needs more
elements than the pad; under a Conv / MaxPool / AveragePool window, at least the window (less its
pads); an input reshaped to a constant shape, an element count that shape can hold (its product,
or a multiple of it with a ``-1``). Then every non-batch dynamic dim takes 32, 64, 128, 256 and 512,
each size twice: axis 0 as the batch (1), then, for an input whose axis 0 is static and not 1, its
*first* dynamic axis as its batch (a recurrent state ``(layers, ?, hidden)`` beside an input of batch 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate_protos
from ..graph.walk import all_nodes, bodies
from .given import input_kind
from .inputs import DEFAULT_BATCH_DIM, DEFAULT_OTHER_DIM, _model_dims

#: ops that pass their input's value through (for branch values) or its axes (for sizes)
_SAME_VALUE = {"Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Expand", "CastLike"}
_LOGIC = {"Not", "And", "Or", "Xor"}
_ORDER = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
#: values per scalar input at most (the caller adds one more: none of them)
MAX_VALUES = 8
#: the sizes tried for the non-batch dynamic dims, in order (the first is the default)
SIZES = (DEFAULT_OTHER_DIM, 64, 128, 256, 512)
SMALL = 4096


class Constants:
    """Small constant tensors of a model: initializers and Constant nodes in every scope, and what
    ONNX's reference implementation computes from them (pads built by Concat / Reshape / Slice)."""

    def __init__(self, model: onnx.ModelProto):
        self.opsets = list(model.opset_import)
        self.values: dict[str, np.ndarray] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        graphs = [model.graph] + [b for n in all_nodes(model.graph) for b in bodies(n)]
        for g in graphs:
            for t in g.initializer:
                if math.prod(t.dims) <= SMALL and not t.external_data:
                    self.values[t.name] = numpy_helper.to_array(t)
        for node in all_nodes(model.graph):
            for o in node.output:
                self.producer[o] = node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
                a = node.attribute[0]
                if a.name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                    v = onnx.helper.get_attribute_value(a)
                    self.values[node.output[0]] = numpy_helper.to_array(v) if a.name == "value" else np.asarray(v)
        inputs = {vi.name for vi in model.graph.input}
        for name in inputs:
            self.values.pop(name, None)  # an initializer that is also an input is not a constant

    def get(self, name: str, depth: int = 24) -> np.ndarray | None:
        if not name or name in self.values:
            return self.values.get(name)
        node = self.producer.get(name)
        if node is None or depth == 0 or node.domain not in ("", "ai.onnx") \
                or node.op_type in CONTROL_FLOW | RANDOM_OPS | {"Shape", "Size"}:
            return None
        feeds = {}
        for i in node.input:
            if i:
                v = self.get(i, depth - 1)
                if v is None:
                    return None
                feeds[i] = v
        try:
            out = evaluate_protos([node], feeds, self.opsets)
        except Exception:  # noqa: BLE001 - an op the reference implementation cannot run: not a constant here
            return None
        self.values.update((k, v) for k, v in out.items() if v.size <= SMALL)
        return self.values.get(name)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def scalar_inputs(inputs: Sequence[onnx.ValueInfoProto]) -> list[onnx.ValueInfoProto]:
    """The inputs of one element (static shape), of an integer, float or bool type."""
    return [vi for vi, dims in zip(inputs, _model_dims(list(inputs)).values())
            if dims is not None and all(isinstance(d, int) for d in dims) and math.prod(dims) == 1
            and input_kind(vi.type.tensor_type.elem_type) != "?"]


def branch_values(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, list]:
    """For each input of ``names`` that the graph compares with constants, the values to verify it at
    (module doc; Python numbers, in graph order, at most MAX_VALUES); inputs compared with nothing
    are left out."""
    consts = Constants(model)
    kinds = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    found: dict[str, list] = {}
    for name in names:
        reach, values = {name}, []
        is_bool = kinds.get(name) == onnx.TensorProto.BOOL
        for node in all_nodes(model.graph):
            ins = [i for i in node.input if i]
            if not any(i in reach for i in ins):
                continue
            if node.op_type in _SAME_VALUE or (is_bool and node.op_type in _LOGIC):
                if node.input[0] in reach:
                    reach.update(o for o in node.output if o)
            if is_bool and (node.op_type in ("If", "Where") and node.input[0] in reach):
                values += [False, True]
            if node.op_type == "Equal" or node.op_type in _ORDER:
                other = [consts.get(i) for i in ins if i not in reach]
                if len(other) != 1 or other[0] is None or other[0].size > MAX_VALUES:
                    continue
                for c in np.asarray(other[0]).ravel().tolist():
                    if node.op_type in _ORDER:
                        values += [c - 1, c, c + 1]
                    else:
                        values.append(c)
        cleaned = values
        if input_kind(kinds.get(name, 0)) == "i":  # a float constant met through a Cast: the integers around it
            info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(kinds[name]))
            cleaned = [v for c in values for v in ([int(c)] if float(c).is_integer() else
                                                   [math.floor(c), math.ceil(c)]) if info.min <= v <= info.max]
        unique = list(dict.fromkeys(cleaned))[:MAX_VALUES]
        if unique:
            found[name] = unique
    return found


# ------------------------------------------------------------------ sizes
@dataclass
class Need:
    """What the graph needs of one input: ``min`` per axis, and an element count (``count`` exactly,
    else a multiple of ``multiple``)."""
    min: dict[int, int] = field(default_factory=dict)
    count: int | None = None
    multiple: int = 1


def size_constraints(model: onnx.ModelProto) -> dict[str, Need]:
    """What the graph's ops need of each input's sizes (module doc); inputs it does not constrain are
    left out."""
    consts = Constants(model)
    dims = {vi.name: d for vi, d in zip(model.graph.input, _model_dims(list(model.graph.input)).values())}
    # tensor -> (input, [input axis or None per axis], [size added to the input's per axis])
    traced = {n: (n, list(range(len(d))), [0] * len(d)) for n, d in dims.items() if d is not None}
    needs: dict[str, Need] = {}

    def need(name: str, axis: int | None, least: int) -> None:
        if axis is not None and least > 1:
            n = needs.setdefault(name, Need())
            n.min[axis] = max(n.min.get(axis, 1), least)

    for node in all_nodes(model.graph):
        if not node.input or node.input[0] not in traced or node.domain not in ("", "ai.onnx"):
            continue
        src, axes, added = traced[node.input[0]]
        rank, op, at = len(axes), node.op_type, _attrs(node)
        if op in ("Identity", "Cast"):
            traced[node.output[0]] = (src, axes, added)
        elif op == "Pad":
            pads = consts.get(node.input[1]) if len(node.input) > 1 else np.asarray(at.get("pads", []))
            which = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(rank)
            if pads is None or which is None or len(pads) != 2 * len(which):
                continue
            grown = list(added)
            mode = at.get("mode", b"constant")
            for k, a in enumerate(int(a) % rank for a in which):
                begin, end = int(pads[k]), int(pads[k + len(which)])
                if mode in (b"reflect", b"wrap"):
                    need(src, axes[a], max(begin, end) + 1 - added[a])
                grown[a] += begin + end
            traced[node.output[0]] = (src, axes, grown)
        elif op in ("Unsqueeze", "Squeeze"):
            which = at.get("axes") if "axes" in at else consts.get(node.input[1]) if len(node.input) > 1 else None
            if which is None:
                continue
            out_rank = rank + len(which) if op == "Unsqueeze" else rank - len(which)
            which = sorted(int(a) % (out_rank if op == "Unsqueeze" else rank) for a in np.ravel(which))
            a2, d2 = list(axes), list(added)
            for a in (which if op == "Unsqueeze" else reversed(which)):
                if op == "Unsqueeze":
                    a2.insert(a, None)
                    d2.insert(a, 0)
                else:
                    del a2[a], d2[a]
            traced[node.output[0]] = (src, a2, d2)
        elif op in ("Conv", "MaxPool", "AveragePool", "LpPool") and at.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"):
            kernel = at.get("kernel_shape")
            if kernel is None and op == "Conv" and len(node.input) > 1:
                w = consts.get(node.input[1])
                kernel = list(w.shape[2:]) if w is not None else None
            if not kernel:
                continue
            pads = at.get("pads", [0] * 2 * len(kernel))
            dil = at.get("dilations", [1] * len(kernel))
            for j, k in enumerate(kernel):
                a = rank - len(kernel) + j
                need(src, axes[a], (k - 1) * dil[j] + 1 - pads[j] - pads[j + len(kernel)] - added[a])
        elif op == "Reshape" and len(node.input) > 1 and not any(added):
            target = consts.get(node.input[1])
            if target is None or 0 in target.tolist():
                continue
            n = needs.setdefault(src, Need())
            known = math.prod(int(t) for t in target.tolist() if t != -1)
            if -1 in target.tolist():
                n.multiple = math.lcm(n.multiple, known)
            else:
                n.count = known
    return needs


def _fit(shape: list[int], free: list[int], need: Need | None) -> list[int]:
    """``shape`` with the ``free`` axes raised to what ``need`` asks (the last free axis takes the
    element count)."""
    if need is None:
        return shape
    for a, least in need.min.items():
        if a in free and shape[a] < least:
            shape[a] = least
    if free and (need.count is not None or need.multiple > 1):
        last = free[-1]
        rest = math.prod(d for i, d in enumerate(shape) if i != last)
        if need.count is not None:
            if rest and need.count % rest == 0:
                shape[last] = need.count // rest
        else:
            step = need.multiple // math.gcd(need.multiple, rest) if rest else 1
            shape[last] = -(-shape[last] // step) * step
    return shape


def size_attempts(model: onnx.ModelProto, first: Mapping[str, tuple[int, ...]], fixed: Sequence[str],
                  needs: Mapping[str, Need] | None = None) -> list[dict[str, tuple[int, ...]]]:
    """The input shapes to try, in order: ``first`` (the defaults, or what was given), then sizes from
    ``needs`` and the growing sizes of the module doc (without repeats). Inputs in ``fixed`` (given
    shapes, samples) keep their shape; a dim_param takes one size everywhere."""
    from .inputs import real_inputs
    inputs = real_inputs(model.graph)
    declared = _model_dims(inputs)
    needs = size_constraints(model) if needs is None else needs
    attempts = [dict(first)]
    for size in SIZES:
        for first_dynamic_is_batch in (False, True):
            symbols: dict[str, int] = {n: s for name in fixed for n, s in zip(declared[name] or [], first[name])
                                       if isinstance(n, str)}
            shapes = {}
            for vi in inputs:
                name, dims = vi.name, declared[vi.name]
                if name in fixed or dims is None:
                    shapes[name] = tuple(first[name])
                    continue
                dynamic = [a for a, d in enumerate(dims) if not isinstance(d, int)]
                # (layers, ?, hidden): a static axis 0 other than 1 is not the batch, the first dynamic one is
                state = first_dynamic_is_batch and dynamic and dims[0] not in (1, None) and not isinstance(dims[0], str)
                batch = dynamic[0] if state else 0
                shape, free = [], []
                for a, d in enumerate(dims):
                    if isinstance(d, int):
                        shape.append(d)
                        continue
                    if isinstance(d, str) and d in symbols:
                        shape.append(symbols[d])
                        continue
                    shape.append(DEFAULT_BATCH_DIM if a == batch else size)
                    if a != batch:
                        free.append(a)
                shape = _fit(shape, free, needs.get(name))
                for a, d in enumerate(dims):
                    if isinstance(d, str):
                        symbols.setdefault(d, shape[a])
                shapes[name] = tuple(shape)
            if shapes not in attempts:
                attempts.append(shapes)
    return attempts
