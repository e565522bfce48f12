"""Verification: prove an optimized model against its original in onnxruntime.

``inputs`` (the model's real inputs, their shapes, seeded random values), ``given`` (what the user
gives: ``--inputs`` samples, ``--input-value`` values), ``choices`` (what the graph asks of its inputs:
the constants a scalar input is compared with, the sizes its ops need), ``runs`` (the sets of inputs
a verification runs, found with the reference), ``sessions`` (onnxruntime sessions with every graph
optimization off), ``precision`` (the tolerance that follows the precision on each output's path),
``runnable`` (the part of a model onnxruntime can run), ``compare`` (both models on the same inputs,
output by output), ``result`` (its records and text) and ``culprit`` (the bisection that names the
edit that broke a failing run). Nothing below the pipeline imports this package but the DBB border proof.
"""
from .compare import OutputDiff, VerifyResult, format_result, verify
from .inputs import VerifyError, make_inputs, parse_input_shapes
from .sessions import run

__all__ = ["OutputDiff", "VerifyError", "VerifyResult", "format_result", "make_inputs", "parse_input_shapes", "run",
           "verify"]
