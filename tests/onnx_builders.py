"""Small helpers to build test ONNX graphs with ``onnx.helper`` (seeded random weights).

Usage::

    g = GraphBuilder(seed=0)
    y = g.conv("x", 4, 4, 3, pads=1)
    y = g.bn(y, 4)
    y = g.node("Relu", [y])
    model = g.model({"x": (1, 4, 8, 8)}, [y], opset=17)

Every helper returns the name of its output tensor, so graphs read top to bottom.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: The newest default-domain opset onnxruntime accepts is probed lazily (see ``newest_ort_opset``).
_NEWEST_ORT_OPSET: int | None = None


class GraphBuilder:
    """Collects nodes and initializers; ``model`` wraps them into a ModelProto."""

    def __init__(self, seed: int = 0, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count: Counter = Counter()

    # ---------------------------------------------------------------- naming
    def fresh(self, hint: str) -> str:
        self._count[hint] += 1
        return f"{hint}{self._count[hint]}"

    # ---------------------------------------------------------------- values
    def randn(self, *shape, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def uniform(self, lo: float, hi: float, *shape) -> np.ndarray:
        return self.rng.uniform(lo, hi, size=shape).astype(self.dtype)

    def init(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    # ----------------------------------------------------------------- nodes
    def node(self, op_type: str, inputs: Sequence[str], output: str | None = None, *,
             name: str | None = None, domain: str | None = None, **attrs) -> str:
        output = output or self.fresh(op_type.lower())
        n = helper.make_node(op_type, list(inputs), [output], name=name or self.fresh(op_type + "_"), **attrs)
        if domain:
            n.domain = domain
        self.nodes.append(n)
        return output

    def conv(self, x: str, cin: int, cout: int, k: int | Sequence[int] = 3, *, pads=None, strides=None,
             group: int = 1, dilations=None, bias: bool = True, weight: str | None = None,
             output: str | None = None, kernel_shape_attr: bool = True) -> str:
        """Conv with random weights ``(cout, cin/group, *k)``; ``pads`` int = symmetric."""
        ks = [k, k] if isinstance(k, int) else list(k)
        n = len(ks)
        if weight is None:
            fan_in = cin // group * int(np.prod(ks))
            weight = self.init(self.randn(cout, cin // group, *ks, scale=1.0 / np.sqrt(fan_in)))
        inputs = [x, weight]
        if bias:
            inputs.append(self.init(self.randn(cout, scale=0.5)))
        if pads is None:
            pads = [0] * (2 * n)
        elif isinstance(pads, int):
            pads = [pads] * (2 * n)
        attrs = dict(pads=list(pads), group=group)
        if kernel_shape_attr:
            attrs["kernel_shape"] = ks
        if strides is not None:
            attrs["strides"] = [strides] * n if isinstance(strides, int) else list(strides)
        if dilations is not None:
            attrs["dilations"] = [dilations] * n if isinstance(dilations, int) else list(dilations)
        return self.node("Conv", inputs, output, **attrs)

    def bn_params(self, c: int) -> list[np.ndarray]:
        """gamma, beta, mean random; var in [0.5, 2]."""
        return [self.uniform(0.5, 1.5, c) * self.rng.choice([-1, 1], size=c).astype(self.dtype),
                self.randn(c, scale=0.5), self.randn(c, scale=0.5), self.uniform(0.5, 2.0, c)]

    def bn(self, x: str, c: int, *, epsilon: float = 1e-5, output: str | None = None,
           training_mode: int | None = None, extra_outputs: Sequence[str] = ()) -> str:
        names = [self.init(p) for p in self.bn_params(c)]
        attrs = {"epsilon": epsilon}
        if training_mode is not None:
            attrs["training_mode"] = training_mode
        output = output or self.fresh("bn")
        n = helper.make_node("BatchNormalization", [x] + names, [output] + list(extra_outputs),
                             name=self.fresh("BN_"), **attrs)
        self.nodes.append(n)
        return output

    def add(self, a: str, b: str, output: str | None = None) -> str:
        return self.node("Add", [a, b], output)

    def sub(self, a: str, b: str, output: str | None = None) -> str:
        return self.node("Sub", [a, b], output)

    def chan_const(self, c: int, rank: int = 4, lead: bool = False, lo=None, hi=None) -> str:
        """A per-channel constant of shape ``(C, 1, ..)`` (``lead``: ``(1, C, 1, ..)``)."""
        shape = ((1,) if lead else ()) + (c,) + (1,) * (rank - 2)
        v = self.randn(*shape) if lo is None else self.uniform(lo, hi, *shape)
        return self.init(v)

    # ----------------------------------------------------------------- model
    def model(self, inputs: Mapping[str, Sequence | None], outputs: Iterable[str | tuple[str, Sequence | None]],
              opset: int = 17, extra_opsets: Mapping[str, int] | None = None,
              graph_inputs_from_inits: Iterable[str] = ()) -> onnx.ModelProto:
        """``inputs``: name -> shape (ints or dim_param strings). ``outputs``: names (shape unknown)
        or ``(name, shape)``. ``graph_inputs_from_inits``: initializer names also listed as inputs."""
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        ins = [helper.make_tensor_value_info(n, elem, list(s) if s is not None else None)
               for n, s in inputs.items()]
        by_name = {t.name: t for t in self.inits}
        for n in graph_inputs_from_inits:
            t = by_name[n]
            ins.append(helper.make_tensor_value_info(n, t.data_type, list(t.dims)))
        outs = []
        for o in outputs:
            name, shape = (o, None) if isinstance(o, str) else o
            outs.append(helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None))
        graph = helper.make_graph(self.nodes, "g", ins, outs, initializer=self.inits)
        ops = [helper.make_opsetid("", opset)]
        for dom, v in (extra_opsets or {}).items():
            ops.append(helper.make_opsetid(dom, v))
        model = make_model(graph, ops)
        fill_output_shapes(model)
        return model


def fill_output_shapes(model: onnx.ModelProto) -> None:
    """Give graph outputs declared without a shape their inferred shape (the checker requires one).
    An output that shape inference cannot type (e.g. behind a custom op) is left as declared."""
    missing = [o for o in model.graph.output if not o.type.tensor_type.HasField("shape")]
    if not missing:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return
    types = {o.name: o.type for o in inferred.graph.output}
    types.update({v.name: v.type for v in inferred.graph.value_info})
    for o in missing:
        t = types.get(o.name)
        if t is not None and t.tensor_type.HasField("shape"):
            o.type.CopyFrom(t)


def make_model(graph: onnx.GraphProto, opset_imports) -> onnx.ModelProto:
    """A model whose IR version is the oldest that supports its opsets (onnxruntime-friendly)."""
    m = helper.make_model(graph, opset_imports=list(opset_imports))
    try:
        m.ir_version = helper.find_min_ir_version_for(list(opset_imports), ignore_unknown=True)
    except Exception:  # noqa: BLE001
        m.ir_version = 8
    m.ir_version = max(m.ir_version, 7)
    return m


# ------------------------------------------------------------------ inspection
def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def node_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def dims(vi: onnx.ValueInfoProto) -> list:
    """Shape of a ValueInfo as ints / dim_param strings / None."""
    out = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return out


def newest_ort_opset() -> int:
    """The newest default-domain opset (<= onnx's) that onnxruntime can load a Relu model at."""
    global _NEWEST_ORT_OPSET
    if _NEWEST_ORT_OPSET is None:
        import onnxruntime as ort
        for v in range(onnx.defs.onnx_opset_version(), 10, -1):
            g = GraphBuilder()
            y = g.node("Relu", ["x"])
            m = g.model({"x": (1, 2)}, [y], opset=v)
            try:
                ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            except Exception:  # noqa: BLE001
                continue
            _NEWEST_ORT_OPSET = v
            break
        else:
            _NEWEST_ORT_OPSET = 17
    return _NEWEST_ORT_OPSET
