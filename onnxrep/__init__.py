"""onnxrep: structural re-parameterization on ONNX graphs.

    import onnx, onnxrep
    model, report = onnxrep.optimize(onnx.load("train.onnx"))            # in memory
    report = onnxrep.optimize_file("train.onnx", "deploy.onnx")          # + verify + atomic write
    result = onnxrep.verify("train.onnx", "deploy.onnx")                 # onnxruntime comparison

Write your own rules with ``onnxrep.PatternRule`` (a pattern, a check, a rewrite) or
``onnxrep.Pass`` (whole-graph ``run(ctx)`` on a ``GraphContext``) and pass them as ``rules=[...]``.
"""
from .algebra import NotRepresentable
from .graph import Builder, GraphContext, RuleUsageError
from .optimizer import RuleSetError, optimize
from .pattern import Match, any_of, approx, const, op, var
from .pipeline import VerificationFailed, load_rules_from, optimize_file
from .report import Decline, MergedConv, Report, RuleRecord
from .rule import Pass, PatternRule, Rule, RuleError
from .verification import VerifyResult, verify

__all__ = ["Builder", "Decline", "GraphContext", "Match", "MergedConv", "NotRepresentable", "Pass", "PatternRule",
           "Report", "Rule", "RuleError", "RuleRecord", "RuleSetError", "RuleUsageError", "VerificationFailed",
           "VerifyResult", "any_of", "approx", "const", "load_rules_from", "op", "optimize", "optimize_file", "var",
           "verify"]
__version__ = "0.1.0"
