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
from .rule import Pass, PatternRule, Rule, RuleError
from .verification.compare import VerifyError, verify
from .verification.result import run_label


class VerificationFailed(Exception):
    """The optimized model differs from the input beyond tolerance; nothing was written."""

    def __init__(self, message: str, report: Report):
        super().__init__(message)
        self.report = report


def _failure_message(result, culprit: dict | None) -> str:
    """``verification failed: rule 'R' at node 'N' (max abs error ...)``, or without a culprit the error alone."""
    worst = result.worst()
    where = f" at {run_label(result.runs[worst.run])}" if len(result.runs) > 1 else ""
    numbers = (f"max abs error {worst.max_abs:.3g} on '{worst.name}'{where}, allowed {worst.allowed:.3g}, "
               f"max rel {worst.max_rel:.3g}")
    if culprit:
        return f"verification failed: rule '{culprit['rule']}' at node '{culprit['node']}' ({numbers}); nothing written"
    return f"verification failed: {numbers}; nothing written"


def _refusal_message(error: VerifyError, culprit: dict | None) -> str:
    """The optimized model fails in onnxruntime (load or run) where the input runs: a rewrite's failure."""
    what = f"the optimized model fails in onnxruntime, the input model runs: {error}"
    if culprit:
        return f"verification failed: rule '{culprit['rule']}' at node '{culprit['node']}' ({what}); nothing written"
    return (f"verification failed ({what}), even with none of the rewrites made: onnxrep's export broke it "
            f"(a bug, please report it); nothing written")


def _passes(src, out, verify_args) -> bool:
    """Whether ``out`` verifies against ``src``; a model onnxruntime refuses to load or run does not."""
    try:
        return verify(str(src), out, **verify_args).passed
    except VerifyError:
        return False


def _input_runs(src, verify_args) -> bool:
    """Whether the input model verifies against itself: it loads and runs in onnxruntime (the part that
    can, when some ops cannot) on the inputs verification makes for it."""
    try:
        verify(str(src), str(src), **verify_args)
    except (VerifyError, ValueError):
        return False
    return True


def _culprit(src, report: Report, rules, include_defaults: bool, max_sweeps: int, progress, verify_args) -> dict | None:
    """Bisect the run's edits for the one that broke verification (see ``onnxrep.verification.culprit``);
    an edit count whose model onnxruntime refuses fails like one that differs beyond tolerance."""
    from .verification.culprit import find_culprit

    model, _ = load_model(src, check=False)
    try:
        return find_culprit(model, report.edits, lambda out: _passes(src, out, verify_args),
                            rules=rules, include_defaults=include_defaults, max_sweeps=max_sweeps, progress=progress)
    except RuleError:
        return None


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
                  rtol: float | None = None, atol: float | None = None, max_sweeps: int = 8,
                  progress: Callable[[str], None] | None = None, equalize: bool = False, int8_report: bool = False,
                  calibration: str | None = None, inputs=None, input_values=None) -> Report:
    """Optimize ``src`` into ``dest`` (``None``: dry run, nothing written).

    With ``check_result`` the optimized model is run against ``src`` in onnxruntime first
    (tolerance by precision unless ``rtol`` / ``atol``); above tolerance the edit that broke it is
    found (``onnxrep.verification.culprit``), ``VerificationFailed`` names it, and nothing is written.
    ``equalize``: cross-layer equalization, kept only where the measured W8A8 error does not grow
    (``onnxrep.int8.equalization``); ``int8_report``: measure the W8A8 error of the result. Both quantize
    on ``calibration`` (an .npz, ``onnxrep.int8.measure.calibration_inputs``) or seeded random inputs.
    ``inputs`` (an .npz of samples, or arrays) and ``input_values`` (``{name: value}``) are what
    verification runs on (``onnxrep.verification.compare.verify``).
    """
    if dest is not None and same_file(src, dest):
        raise OutputError(f"{dest}: output path is the input path (choose another output file)")
    model, had_external = load_model(src)
    external = True if had_external else None  # keep external data; None: decide by size
    rules = list(rules or [])
    optimized, report = optimize(model, rules, include_defaults=include_defaults, max_sweeps=max_sweeps,
                                 progress=progress)
    del model
    gc.collect()  # the rewritten gs graph is cyclic garbage that still reads the input's weights: free both now
    if equalize or int8_report:
        from .int8.equalization import equalize_measured, measured
        from .int8.measure import calibration_inputs
        if progress:
            progress("measuring INT8 (onnxruntime quantization)")
        cal = calibration_inputs(optimized, path=calibration, seed=seed, input_shapes=input_shapes)
        if equalize:
            optimized, record, report.int8 = equalize_measured(optimized, cal, max_sweeps=max_sweeps)
            if record is not None:  # weights rescaled in place of each other: nodes, parameters and MACs as before
                report.rules.append(record)
        else:
            report.int8 = measured(optimized, cal)
    pending = None
    try:
        if dest is not None:
            pending = PendingOutput(optimized, dest, external_data=external)
        if check_result:
            if progress:
                progress("verifying with onnxruntime")
            candidate = pending.path if pending is not None else optimized
            try:
                result = verify(str(src), candidate, input_shapes=input_shapes, seed=seed, rtol=rtol, atol=atol,
                                inputs=inputs, input_values=input_values)
            except ValueError as exc:  # bad --input-shape
                raise InputError(first_line(exc)) from None
            except VerifyError as exc:
                given = dict(input_shapes=input_shapes, seed=seed, rtol=rtol, atol=atol, inputs=inputs,
                             input_values=input_values)
                if not _input_runs(src, given):  # the input model's failure: nothing to compare with
                    raise VerificationFailed(f"verification could not run ({exc}); nothing written "
                                             f"(--no-verify skips the check)", report) from None
                # the input runs and the optimized model does not: one of onnxrep's edits broke it
                if pending is not None:
                    pending.discard()
                    pending = None
                del optimized, candidate
                gc.collect()
                report.culprit = _culprit(src, report, rules, include_defaults, max_sweeps, progress, given)
                if report.culprit is not None:
                    report.culprit["error"] = str(exc)
                raise VerificationFailed(_refusal_message(exc, report.culprit), report) from None
            report.verification = result
            if not result.passed:
                if pending is not None:
                    pending.discard()
                    pending = None
                del optimized
                gc.collect()
                report.culprit = _culprit(src, report, rules, include_defaults, max_sweeps, progress,
                                          dict(inputs=result.samples, seed=seed, rtol=rtol, atol=atol))
                raise VerificationFailed(_failure_message(result, report.culprit), report)
        if pending is not None:
            pending.commit()
            pending = None
    finally:
        if pending is not None:
            pending.discard()
    return report
