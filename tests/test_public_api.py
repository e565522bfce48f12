"""The public API's names (README "Python API"): what ``import onnxrep`` gives, whatever the package's layout."""
from __future__ import annotations

import inspect

import onnxrep

PUBLIC = ["optimize", "optimize_file", "verify", "PatternRule", "Pass", "GraphContext", "op", "var", "const", "any_of",
          "approx", "NotRepresentable", "RuleError", "Rule", "RuleSetError", "RuleUsageError", "Builder", "Match",
          "Report", "RuleRecord", "Decline", "MergedConv", "VerifyResult", "VerificationFailed", "load_rules_from"]


def test_public_names_are_exported():
    assert set(PUBLIC) <= set(onnxrep.__all__)
    assert all(hasattr(onnxrep, name) for name in onnxrep.__all__)


def test_public_names_are_what_they_say():
    assert inspect.isfunction(onnxrep.verify)  # the function: the verification package is onnxrep.verification
    for name in ("optimize", "optimize_file", "op", "var", "const", "any_of", "load_rules_from"):
        assert inspect.isfunction(getattr(onnxrep, name)), name
    for name in ("PatternRule", "Pass", "GraphContext", "approx", "Builder", "Match", "Report", "VerifyResult"):
        assert inspect.isclass(getattr(onnxrep, name)), name
    for name in ("NotRepresentable", "RuleError", "RuleSetError", "RuleUsageError", "VerificationFailed"):
        assert issubclass(getattr(onnxrep, name), Exception), name
    assert issubclass(onnxrep.PatternRule, onnxrep.Rule) and issubclass(onnxrep.Pass, onnxrep.Rule)
    assert list(inspect.signature(onnxrep.optimize).parameters)[:2] == ["model", "rules"]
    assert {"include_defaults", "max_sweeps"} <= set(inspect.signature(onnxrep.optimize).parameters)
    assert list(inspect.signature(onnxrep.verify).parameters)[:2] == ["reference", "candidate"]


def test_importing_the_verification_package_keeps_verify_a_function():
    import onnxrep.verification.culprit  # noqa: F401  (a submodule import sets the package attribute)
    import onnxrep.verification.sessions  # noqa: F401

    assert inspect.isfunction(onnxrep.verify) and onnxrep.verify is onnxrep.verification.verify
