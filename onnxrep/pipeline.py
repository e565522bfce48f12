"""The whole job on files: load, optimize, write to a temporary file, verify, then commit."""
from __future__ import annotations

import gc
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from .graph.io import InputError, OutputError, PendingOutput, first_line, load_model, same_file
from .optimizer import optimize
from .report import Report
from .rule import Pass, PatternRule, Rule
from .verification import VerifyError, verify


class VerificationFailed(Exception):
    """The optimized model differs from the input beyond tolerance; nothing was written."""

    def __init__(self, message: str, report: Report):
        super().__init__(message)
        self.report = report


class RulesFileError(Exception):
    """A ``--rules-from`` file could not be imported or defines no rule."""


def load_rules_from(path: str | os.PathLike) -> list[Rule]:
    """Import a Python file and collect its rules.

    A module-level ``RULES`` list wins; otherwise every ``Rule`` subclass defined in the file
    (not imported into it) is instantiated.
    """
    p = Path(path)
    if not p.is_file():
        raise RulesFileError(f"{p}: no such file")
    name = f"onnxrep_user_rules_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise RulesFileError(f"{p}: cannot import ({type(exc).__name__}: {first_line(exc)})") from None
    if hasattr(module, "RULES"):
        rules = [r() if isinstance(r, type) else r for r in module.RULES]
    else:
        rules = [cls() for _, cls in inspect.getmembers(module, inspect.isclass)
                 if issubclass(cls, Rule) and cls not in (Rule, Pass, PatternRule) and cls.__module__ == name]
    if not rules or not all(isinstance(r, Rule) for r in rules):
        raise RulesFileError(f"{p}: defines no onnxrep rule (subclass onnxrep.PatternRule or onnxrep.Pass, or set RULES = [...])")
    return rules


def optimize_file(src: str | os.PathLike, dest: str | os.PathLike | None, *, rules: Iterable[Rule] | None = None,
                  include_defaults: bool = True, check_result: bool = True, input_shapes=None, seed: int = 0,
                  rtol: float = 1e-4, atol: float = 1e-5, max_sweeps: int = 8,
                  progress: Callable[[str], None] | None = None) -> Report:
    """Optimize ``src`` into ``dest`` (``None``: dry run, nothing written).

    With ``check_result`` the optimized model is run against ``src`` in onnxruntime first;
    above tolerance ``VerificationFailed`` is raised and nothing is written.
    """
    if dest is not None and same_file(src, dest):
        raise OutputError(f"{dest}: output path is the input path (choose another output file)")
    model, had_external = load_model(src)
    external = True if had_external else None  # keep external data; None: decide by size
    optimized, report = optimize(model, rules, include_defaults=include_defaults, max_sweeps=max_sweeps,
                                 progress=progress)
    del model
    gc.collect()  # the rewritten gs graph is cyclic garbage that still reads the input's weights: free both now
    pending = None
    try:
        if dest is not None:
            pending = PendingOutput(optimized, dest, external_data=external)
        if check_result:
            if progress:
                progress("verifying with onnxruntime")
            candidate = pending.path if pending is not None else optimized
            try:
                result = verify(str(src), candidate, input_shapes=input_shapes, seed=seed, rtol=rtol, atol=atol)
            except ValueError as exc:  # bad --input-shape
                raise InputError(first_line(exc)) from None
            except VerifyError as exc:
                raise VerificationFailed(f"verification could not run ({exc}); nothing written "
                                         f"(--no-verify skips the check, e.g. for custom ops)", report) from None
            report.verification = result
            if not result.passed:
                raise VerificationFailed(
                    f"verification failed: max abs error {result.max_abs:.3g} (max rel {result.max_rel:.3g}) "
                    f"above tolerance rtol={rtol:g}, atol={atol:g}; nothing written", report)
        if pending is not None:
            pending.commit()
            pending = None
    finally:
        if pending is not None:
            pending.discard()
    return report
