"""Graph layer over onnx-graphsurgeon: load/save, the rewrite context."""
from .context import Builder, Decline, GraphContext, PendingNode, RegionNotPrivate, RuleStats, is_onnx_op

__all__ = ["Builder", "Decline", "GraphContext", "PendingNode", "RegionNotPrivate", "RuleStats", "is_onnx_op"]
