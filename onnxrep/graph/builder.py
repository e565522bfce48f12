"""What a rewrite uses to describe its replacement: pending nodes and fresh constants."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


class RuleUsageError(TypeError):
    """A rule used the API in a way that cannot work (the message says what to do instead)."""


@dataclass
class PendingNode:
    """A node a rewrite wants to create; connected only when the rewrite is committed."""
    op: str
    inputs: list
    outputs: list
    attrs: dict
    name: str
    domain: str = ""


class Builder:
    """``b.op(...)`` adds a node, ``b.const(...)`` a new initializer, ``b.tensor(...)`` a fresh tensor.

    Nothing touches the graph until the rewrite is committed (``GraphContext.replace``).
    """

    def __init__(self, ctx, hint: str, match=None):
        self.ctx = ctx
        self.hint = hint
        self.match = match
        self.nodes: list[PendingNode] = []

    def const(self, suffix: str, values: np.ndarray) -> gs.Constant:
        """A new initializer (fresh name; existing, possibly shared, ones are never edited)."""
        return self.ctx.make_constant(f"{self.hint}_{suffix}", values)

    def tensor(self, suffix: str, dtype=None, shape=None) -> gs.Variable:
        return gs.Variable(self.ctx.unique_name(f"{self.hint}_{suffix}"), dtype=dtype, shape=shape)

    def op(self, op_type: str, inputs: list, outputs: list | None = None, attrs: dict | None = None,
           name: str | None = None, domain: str = "") -> list:
        """Add a node; returns its output tensors (fresh ones unless ``outputs`` is given).

        ``inputs`` are graph tensors (``m.tensor(name)``, ``m.output``, ``b.const(...)``, outputs
        of earlier ``b.op`` calls); ``None`` is an omitted optional input.
        """
        inputs = list(inputs)
        for i, t in enumerate(inputs):
            if t is not None and not isinstance(t, gs.Tensor):
                raise self._not_a_tensor(op_type, i, t)
        while inputs and inputs[-1] is None:
            inputs.pop()
        inputs = [gs.Variable.empty() if t is None else t for t in inputs]
        outputs = list(outputs) if outputs is not None else [self.tensor(op_type.lower())]
        for i, t in enumerate(outputs):
            if not isinstance(t, gs.Tensor):
                raise RuleUsageError(f"output {i} of b.op({op_type!r}) is a {type(t).__name__}, not a tensor: "
                                f"pass m.output or b.tensor('suffix')")
        self.nodes.append(PendingNode(op_type, inputs, outputs, dict(attrs or {}), name or self.hint, domain))
        return outputs

    def _not_a_tensor(self, op_type: str, i: int, value) -> RuleUsageError:
        bound = self.match.name_of(value) if self.match is not None else None
        if bound is not None:
            how = f"m[{bound!r}] is its value: pass m.tensor({bound!r}) to read the same tensor"
        elif isinstance(value, np.ndarray) or np.isscalar(value):
            how = "pass b.const('suffix', array) for new values"
        else:
            how = "pass a tensor: m.tensor(name), m.output, b.const(...) or an output of b.op(...)"
        return RuleUsageError(f"input {i} of b.op({op_type!r}) is a {type(value).__name__}, not a tensor; {how}")
