"""A Constant node is an initializer written as a node: it becomes one, under its output's name.

``Constant(value=v)`` outputs ``v`` on every run, as an initializer named like its output does; the
readers read the same name, the stored values are the same (``value``, ``value_float(s)``,
``value_int(s)``: the parameters do not change) and the graph has one node less. Exporters without
constant folding, paddle2onnx and spox write weights and shape arguments as Constant nodes.

Kept, with the reason:

* a Constant whose output is a graph output (a body's too: an If branch returning a constant): the
  output keeps its producer (an initializer is no graph output in ONNX's sense, and the interface is
  the model's);
* a Constant that a node of an If / Loop / Scan body below it reads: onnx-graphsurgeon's export writes
  an initializer into every graph whose nodes read it, so it would be stored once per body (a Constant
  node's output is read from the outer scope, stored once);
* ``sparse_value`` and string values (``value_string(s)``, a string ``value``): rare, and no rule reads
  them as constants.

Inside a body a Constant becomes an initializer of that body (ONNX and onnxruntime accept initializers
in If / Loop / Scan bodies; the export writes it there).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import GraphContext
from ...rule import Pass
from ..ops.known import own_nodes

#: the attributes of a Constant node that hold its value
VALUE_ATTRIBUTES = ("value", "value_float", "value_floats", "value_int", "value_ints")


class ConstantsAsInitializers(Pass):
    """Constant nodes become initializers of their graph, under their output's name (one node less each)."""
    name = "constants-as-initializers"
    priority = 45  # last of a sweep's built-ins: the rules before count the Constant nodes their rewrites free as theirs

    def run(self, ctx: GraphContext) -> None:
        own = own_nodes(ctx)
        for node in ctx.nodes("Constant"):
            out = node.outputs[0]
            if ctx.is_graph_output(out):
                ctx.decline(node, f"its output '{out.name}' is a graph output (it keeps its producer)")
                continue
            kind = next((k for k in node.attrs if k in VALUE_ATTRIBUTES), None)
            value = ctx.constant(out) if kind is not None else None
            if value is None or np.asarray(value).dtype.kind in "OSU":
                ctx.decline(node, f"its value is a {next(iter(node.attrs), 'missing attribute')} (sparse or "
                                  f"strings): kept as a node")
                continue
            if any(id(c) not in own for c in out.outputs):
                ctx.decline(node, f"a body reads '{out.name}': as an initializer it would be stored in every "
                                  f"graph that reads it")
                continue
            # the name is free once the node goes: nothing else may produce it (a fresh name would rename it)
            ctx.substitute(out, gs.Constant(out.name, np.asarray(value, order="C")))
            ctx.replace([node], [])
