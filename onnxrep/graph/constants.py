"""Constant queries of the rewrite context: initializers, Constant nodes, and small computed constants."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate

#: computed constants (``ConstantQueries.computed``): at most this many elements (inputs, output) and
#: this many producers up from the tensor asked about
COMPUTED_MAX_ELEMENTS = 1 << 16
COMPUTED_MAX_DEPTH = 8


def is_onnx_op(node: gs.Node) -> bool:
    """True for nodes of the default (ai.onnx) domain; rules never touch other domains."""
    return node.domain in ("", "ai.onnx", None)


class ConstantQueries:
    """Mixed into ``GraphContext``: needs ``overridable``, ``opset``, ``producer``, ``is_absent``."""

    overridable: frozenset
    opset: int
    _computed: dict

    def constant_info(self, tensor: gs.Tensor | None) -> tuple[tuple[int, ...], np.dtype] | None:
        """``(shape, dtype)`` of a constant without loading its values (``None`` if not a constant)."""
        if tensor is None or tensor.name in self.overridable:
            return None
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.shape), np.dtype(tensor.dtype)
        value = self.constant(tensor)  # Constant nodes: small, already in memory
        return None if value is None else (value.shape, value.dtype)

    def stored_constant_info(self, tensor: gs.Tensor | None) -> tuple[tuple[int, ...], np.dtype] | None:
        """``constant_info`` of an initializer or a Constant-node output only: the tensors that count as
        parameters (a computed constant is counted by the stored ones it is computed from)."""
        producer = self.producer(tensor) if tensor is not None else None
        if isinstance(tensor, gs.Constant) or (producer is not None and producer.op == "Constant"):
            return self.constant_info(tensor)
        return None

    def constant(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """The value of an initializer, a Constant-node output, or a small tensor computed from
        those alone (``computed``); ``None`` for anything else.

        Initializers exposed as graph inputs are not constants: the caller may override them.
        """
        return self._value(tensor, 0)

    def _value(self, tensor: gs.Tensor | None, depth: int) -> np.ndarray | None:
        if tensor is None or tensor.name in self.overridable:
            return None
        if isinstance(tensor, gs.Constant):
            return tensor.values
        node = self.producer(tensor)
        if node is not None and node.op == "Constant" and is_onnx_op(node):
            a = node.attrs
            if "value" in a and isinstance(a["value"], gs.Constant):
                return a["value"].values
            for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                               ("value_int", np.int64), ("value_ints", np.int64)):
                if key in a:
                    return np.asarray(a[key], dtype=dtype)
            return None
        return self.computed(tensor, depth)

    def computed(self, tensor: gs.Tensor, depth: int = 0) -> np.ndarray | None:
        """The value of a tensor that small nodes compute from constants alone (evaluated once).

        Exports without constant folding write a zero bias as ``Expand(CastLike(0, W), [C])``: such a
        tensor is a constant to every rule, while the nodes stay in the graph until a rewrite
        leaves them unread (folding them all up front would turn one scalar into C parameters).
        Looks at most ``COMPUTED_MAX_DEPTH`` producers up.
        """
        cached = self._computed.get(id(tensor))
        if cached is not None and cached[0] is tensor:
            return cached[1]
        node = self.producer(tensor)
        if (node is None or not is_onnx_op(node) or len(node.outputs) != 1 or not node.inputs
                or node.op in RANDOM_OPS | CONTROL_FLOW | {"Constant"}
                or any(isinstance(v, gs.Graph) for v in node.attrs.values())):
            value = None
        elif depth >= COMPUTED_MAX_DEPTH:
            return None  # not remembered: a shallower question may still find it
        else:
            value = self._evaluate(node, depth)
        self._computed[id(tensor)] = (tensor, value)
        return value

    def _evaluate(self, node: gs.Node, depth: int) -> np.ndarray | None:
        """``node``'s output if every input is a small constant; sizes are read before any value is
        loaded (a weight in external data stays on disk)."""
        size = 0
        for t in node.inputs:
            if self.is_absent(t):
                continue
            if isinstance(t, gs.Constant):
                if t.name in self.overridable:
                    return None
                size += int(np.prod(t.shape, dtype=np.int64))
            else:
                v = self._value(t, depth + 1)
                if v is None:
                    return None
                size += v.size
            if size > COMPUTED_MAX_ELEMENTS:
                return None
        values = [None if self.is_absent(t) else self._value(t, depth + 1) for t in node.inputs]
        try:
            value = evaluate(node, values, self.opset)[0]
        except Exception:  # an op the reference implementation cannot run
            return None
        return value if value.size <= COMPUTED_MAX_ELEMENTS else None
