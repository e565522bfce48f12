"""onnxrep: structural re-parameterization on ONNX graphs.

    import onnx, onnxrep
    model, report = onnxrep.optimize(onnx.load("train.onnx"))            # in memory
    report = onnxrep.optimize_file("train.onnx", "deploy.onnx")          # + verify + atomic write
    result = onnxrep.verify("train.onnx", "deploy.onnx")                 # onnxruntime comparison

Write your own rules with ``onnxrep.PatternRule`` (see ``onnxrep.pattern``) and pass them as
``rules=[...]``.
"""
from .algebra import NotRepresentable
from .graph import Builder
from .optimizer import Report, optimize
from .pattern import Match, PatternRule, Rule, const, op, var
from .pipeline import VerificationFailed, load_rules_from, optimize_file
from .verification import VerifyResult, verify

__all__ = ["Builder", "Match", "NotRepresentable", "PatternRule", "Report", "Rule", "VerificationFailed",
           "VerifyResult", "const", "load_rules_from", "op", "optimize", "optimize_file", "var", "verify"]
__version__ = "0.1.0"
