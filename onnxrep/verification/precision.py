"""Verification tolerance that follows the precision on the path to each output.

An output passes when ``max |cand - ref| <= rtol * max|ref| + atol + 2 * noise``:

* ``rtol`` / ``atol`` come from the *loosest* floating-point type on the output's path (every
  tensor, initializer, graph input and Cast target it depends on; a path with several types is
  "mixed" and takes the loosest). One rewrite replaces several roundings (one per branch, per BN,
  per Add) by one rounding of a merged weight and a merged sum, so the two models differ by a few
  half-ulps of the largest intermediate value. With ``eps`` the type's machine epsilon:

  ========== ========== ========= =========================================================
  type       eps        rtol/atol why
  ========== ========== ========= =========================================================
  float64    2.2e-16    1e-9      sums reordered in float64: far below any real fault
  float32    1.2e-7     1e-4/1e-5 ~840 eps: summation order (tiling, FMA) over K*K*C terms
  float16    9.8e-4     2.5e-3    ~2.5 eps: five half-ulps (each op rounds its output)
  bfloat16   7.8e-3     2e-2      ~2.5 eps, as float16
  float8     0.125+     0.5       one ulp is 6-25%: the check only catches gross faults
  ========== ========== ========= =========================================================

* ``noise`` (reduced precision only) is how far the *original* model's output moves under float16
  rounding, the larger of: (a) its distance to the same model evaluated in float32 (its float16 /
  bfloat16 tensors widened, see :func:`widened`), the rounding of activations; (b) in float32, the
  distance between its weights as they are and its weights each moved by a random fraction of half
  an ulp, the rounding of weights. A merge rounds its merged weights once, so it moves the output
  about as much as (b); a network that amplifies rounding (a tiny scale before a large gain, a
  saturating activation after) moves a lot under both, and so does its optimized form. The
  optimized model is then within ``|cand - exact| + |exact - ref| <= 2 * noise`` of the original
  (the triangle inequality). onnxruntime's CPU kernels compute float16 ops in float32, so on CPU (b)
  is usually the larger.

A user's ``--rtol`` / ``--atol`` replace the whole rule (no noise term).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import numpy_helper

from ..graph.dtypes import FLOAT_TYPES
from ..graph.shapes import inferred_shapes
from ..graph.walk import bodies, outer_reads

FLOAT8_TYPES = frozenset({T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ})
#: types whose rounding is measured against a float32 evaluation of the reference
REDUCED = frozenset({T.FLOAT16, T.BFLOAT16})

FLOAT32_RTOL, FLOAT32_ATOL = 1e-4, 1e-5
#: (name, rtol, atol) per type, loosest last in ``_ORDER``
_TOLERANCE = {
    T.DOUBLE: ("float64", 1e-9, 1e-9),
    T.FLOAT: ("float32", FLOAT32_RTOL, FLOAT32_ATOL),
    T.FLOAT16: ("float16", 2.5e-3, 2.5e-3),
    T.BFLOAT16: ("bfloat16", 2e-2, 2e-2),
    **{t: ("float8", 0.5, 0.5) for t in FLOAT8_TYPES},
}
_ORDER = [T.DOUBLE, T.FLOAT, T.FLOAT16, T.BFLOAT16, *sorted(FLOAT8_TYPES)]


@dataclass(frozen=True)
class Precision:
    """The floating-point types on one output's path and the tolerance they imply."""
    types: frozenset[int]

    @property
    def loosest(self) -> int:
        present = [t for t in _ORDER if t in self.types]
        return present[-1] if present else T.FLOAT

    @property
    def label(self) -> str:
        names = []
        for t in _ORDER:
            if t in self.types and _TOLERANCE[t][0] not in names:
                names.append(_TOLERANCE[t][0])
        if len(names) > 1:
            return "mixed (" + ", ".join(names) + ")"
        return names[0] if names else "float32"

    @property
    def rtol(self) -> float:
        return _TOLERANCE[self.loosest][1]

    @property
    def atol(self) -> float:
        return _TOLERANCE[self.loosest][2]

    @property
    def reduced(self) -> bool:
        return bool(self.types & REDUCED)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name the model states or shape inference finds."""
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.output) + list(g.value_info) + list(inferred_shapes(model).values()):
        et = vi.type.tensor_type.elem_type
        if et:
            types.setdefault(vi.name, et)
    return types


def _single_float_type(model: onnx.ModelProto) -> set[int] | None:
    """The model's one float type (as a set, empty when it has none) when every weight, input, output,
    value_info, Cast / Constant node states the same one and no If / Loop / Scan body could hide
    another; ``None`` otherwise (paths must be traced)."""
    g = model.graph
    found = {t.data_type for t in g.initializer}
    found.update(v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info))
    for node in g.node:
        if bodies(node):
            return None
        found.update(_node_types(node))
    found &= FLOAT_TYPES
    return found if len(found) <= 1 else None


def _node_types(node: onnx.NodeProto) -> Iterable[int]:
    """Float types a node creates from attributes: Cast targets, Constant values."""
    for a in node.attribute:
        if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT:
            yield a.i
        elif a.type == onnx.AttributeProto.TENSOR:
            yield a.t.data_type


def output_precisions(model: onnx.ModelProto) -> dict[str, Precision]:
    """``{output name: Precision}``: the float types on each graph output's ancestor cone."""
    g = model.graph
    single = _single_float_type(model)
    if single is not None:  # one float type in the whole model: no need to trace paths
        return {out.name: Precision(frozenset(single)) for out in g.output}
    producer = {o: n for n in g.node for o in n.output if o}
    types = _elem_types(model)
    result = {}
    for out in g.output:
        found, seen, stack = set(), set(), [out.name]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if types.get(name) in FLOAT_TYPES:
                found.add(types[name])
            node = producer.get(name)
            if node is None:
                continue
            found.update(t for t in _node_types(node) if t in FLOAT_TYPES)
            stack.extend(i for i in node.input if i)
            stack.extend(outer_reads(node))
        result[out.name] = Precision(frozenset(found))
    return result


def _widen_tensor(t: onnx.TensorProto, rng: np.random.Generator | None) -> None:
    if t.data_type in REDUCED:
        values = numpy_helper.to_array(t).astype(np.float32)
        if rng is not None:  # one more rounding: each value moved by up to half an ulp of its type
            eps = float(np.finfo(np.float16).eps) if t.data_type == T.FLOAT16 else 2.0 ** -7
            values = values * (1 + rng.uniform(-eps / 2, eps / 2, values.shape)).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(values, t.name))


def _widen_graph(g: onnx.GraphProto, rng: np.random.Generator | None) -> None:
    for t in g.initializer:
        _widen_tensor(t, rng)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type in REDUCED:
            vi.type.tensor_type.elem_type = T.FLOAT
    for node in g.node:
        for a in node.attribute:
            if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i in REDUCED:
                a.i = T.FLOAT
            elif a.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(a.t, rng)
        for body in bodies(node):
            _widen_graph(body, rng)


def widened(model: onnx.ModelProto, rounding_seed: int | None = None) -> onnx.ModelProto:
    """A copy of ``model`` computing in float32 where it computes in float16 / bfloat16.

    Every float16 / bfloat16 initializer, Constant / ConstantOfShape value, declared tensor
    type and Cast / dtype target becomes float32 (exactly: both types embed in float32). With
    ``rounding_seed``, every such weight is also moved by a seeded random fraction of half an ulp
    (``w * (1 + u * eps / 2)``, ``|u| <= 1``): the model as if its weights were rounded once more.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _widen_graph(copy.graph, None if rounding_seed is None else np.random.default_rng(rounding_seed))
    return copy


def widened_inputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (v.astype(np.float32) if v.dtype == np.float16 or v.dtype.name == "bfloat16" else v)
            for k, v in feeds.items()}
