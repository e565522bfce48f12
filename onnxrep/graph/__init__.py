"""Graph layer over onnx-graphsurgeon: the rewrite context, the builder, load/save, shapes."""
from .builder import Builder, PendingNode, RuleUsageError
from .constants import is_onnx_op
from .context import GraphContext

__all__ = ["Builder", "GraphContext", "PendingNode", "RuleUsageError", "is_onnx_op"]
