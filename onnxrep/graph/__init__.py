"""Graph layer over onnx-graphsurgeon: the rewrite context, the builder, load/save, shapes."""
from .builder import Builder, PendingNode, RuleUsageError
from .constants import is_onnx_op
from .context import GraphContext, RegionNotPrivate

__all__ = ["Builder", "GraphContext", "PendingNode", "RegionNotPrivate", "RuleUsageError", "is_onnx_op"]
