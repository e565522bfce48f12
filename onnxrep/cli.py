"""Command line: ``onnxrep optimize IN OUT`` and friends.

Exit codes (also in the README):
  0 success; 1 internal error (a bug: rerun with --debug for the traceback);
  2 bad command line; 3 the input model cannot be used; 4 the output cannot be written;
  5 verification failed (nothing written); 6 a --rules-from file cannot be used;
  7 a --rules-from rule raised an exception (the message names the rule and the node).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT, EXIT_VERIFY, EXIT_RULES, EXIT_RULE_FAILED = range(8)

EPILOG = """exit codes:
  0  success
  1  internal error (please report; --debug shows the traceback)
  2  bad command line (an --input-shape, --inputs or --input-value that does not fit the model's inputs)
  3  the input model cannot be used (missing, empty, not ONNX, invalid, missing external data)
  4  the output cannot be written (same as input, folder missing or read-only, disk full)
  5  verification failed: the optimized model differs beyond tolerance (the message names the rule
     and node of the first failing edit); nothing was written
  6  a --rules-from file cannot be imported, defines no rule, or reuses a rule name
  7  a --rules-from rule raised an exception (named with its node; --debug shows the traceback)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onnxrep",
        description="Structural re-parameterization of ONNX models: merge the parallel and stacked linear "
                    "branches of training-form networks (RepVGG, ACNet, ...) into single convs, and prove the "
                    "result with onnxruntime.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"onnxrep {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp, verify_opts=True):
        sp.add_argument("--rules-from", metavar="FILE.py", action="append", default=[],
                        help="import extra rules from a Python file (its RULES list, or every Rule subclass in it); "
                             "repeatable")
        sp.add_argument("--no-default-rules", action="store_true", help="run only the --rules-from rules")
        sp.add_argument("--max-sweeps", type=int, default=8, metavar="N", help="rule sweeps at most (default 8)")
        sp.add_argument("--explain", action="store_true", help="list declined candidates with their reasons")
        sp.add_argument("--prune-threshold", type=float, default=None, metavar="T",
                        help="ResRep pruning (not exact): zero the compactor rows (bias-free 1x1 convs after a "
                             "conv) with L2 norm <= T, keeping one per layer; the channels are then removed")
        sp.add_argument("--prune-tolerance", type=float, default=None, metavar="R",
                        help="with --prune-threshold: accept a max abs error up to R * max|y| against the "
                             "unpruned input (default: the usual tolerance, so only negligible rows pass)")
        sp.add_argument("--equalize", action="store_true",
                        help="after merging, equalize the channel ranges of conv -> ReLU -> conv pairs for INT8 "
                             "(cross-layer equalization: exact in float), kept only if the measured W8A8 error "
                             "(onnxruntime static quantization, per-tensor and per-channel) does not grow")
        sp.add_argument("--int8-report", "--int8", dest="int8_report", action="store_true",
                        help="measure the W8A8 error of the result (onnxruntime static quantization, QDQ, "
                             "per-tensor and per-channel) against the float model")
        sp.add_argument("--calibration", metavar="FILE.npz", default=None,
                        help="calibration inputs for --equalize / --int8-report: one array per graph input, "
                             "shaped (samples, *input shape) (default: 8 seeded random inputs)")
        sp.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE ('-' for stdout)")
        sp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
        sp.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
        if verify_opts:
            add_verify_opts(sp)

    def add_verify_opts(sp):
        sp.add_argument("--input-shape", metavar="NAME:SHAPE", action="append", default=[],
                        help="the shape of an input when verifying, as NAME:1x3x224x224 or NAME:1,3,224,224 "
                             "(repeatable; a model with one input also takes the bare 1x3x224x224); dynamic dims "
                             "not given are 1 on axis 0 and 32 elsewhere. A name the model does not have, or a "
                             "shape that contradicts its static dims, is a command-line error (exit 2)")
        sp.add_argument("--rtol", type=float, default=None,
                        help="pass if max abs error <= rtol*max|reference| + atol for every output; default: by the "
                             "precision of each output's path (float32 1e-4, float16 2.5e-3, bfloat16 2e-2, plus "
                             "twice the original's own float16 rounding error; README 'Verification')")
        sp.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance (with --rtol; default by precision: float32 1e-5, float16 2.5e-3)")
        sp.add_argument("--inputs", metavar="FILE.npz", default=None,
                        help="verify on these samples: one array per graph input, named like it, shaped (samples, "
                             "*input shape); every sample is a run. Inputs it leaves out are made as usual")
        sp.add_argument("--input-value", metavar="NAME=V", action="append", default=[],
                        help="give input NAME the value V in every run (a scalar such as a sample rate, or a value "
                             "for every element), read as the input's dtype: integer, float, or true/false "
                             "(repeatable). Without it, a scalar input the graph compares with constants takes "
                             "each of them in turn")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs (default 0)")

    o = sub.add_parser("optimize", help="rewrite IN into OUT, verify, then write OUT",
                       description="Rewrite IN with the rule set, verify the result against IN with onnxruntime, "
                                   "and write OUT atomically only if it verifies.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("input", metavar="IN", help="training-form ONNX model")
    o.add_argument("output", metavar="OUT", help="where to write the deploy-form model")
    o.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    common(o)

    i = sub.add_parser("inspect", help="report what optimize would rewrite, without writing anything",
                       description="Run the rule set on IN and print the report optimize would print (nodes, Convs, "
                                   "parameters, MACs before and after; rewrites and declines per rule), without "
                                   "writing anything; with --verify, also compare the result with IN in onnxruntime.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("input", metavar="IN", help="the ONNX model to inspect")
    i.add_argument("--verify", action="store_true", help="also run the onnxruntime comparison")
    common(i)

    c = sub.add_parser("compare", help="run two models on the same random inputs and print their differences",
                       description="Run A and B in onnxruntime on the same seeded random inputs (made from A's "
                                   "inputs) and print, per output, the max absolute and relative error and whether "
                                   "it is within tolerance; exit 5 when an output is not.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("reference", metavar="A", help="the reference ONNX model (its inputs define the random inputs)")
    c.add_argument("candidate", metavar="B", help="the ONNX model compared with A (same output names and shapes)")
    c.add_argument("--json", metavar="FILE", help="write the comparison as JSON to FILE ('-' for stdout)")
    c.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    add_verify_opts(c)

    r = sub.add_parser("rules", help="list the rules (built-in and --rules-from) with priority and opsets",
                       description="List every rule: the built-in ones that run by default, the opt-in ones with "
                                   "the flag that turns each on, and those of --rules-from files; with priority "
                                   "(lower runs first in every sweep), opset range, kind and a one-line summary.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--rules-from", metavar="FILE.py", action="append", default=[],
                   help="also list the rules of a Python file; repeatable")
    r.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("onnxrep")
    except Exception:
        return "dev"


class _Progress:
    """A one-line progress display on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\033[K[{time.perf_counter() - self.start:6.1f}s] {message}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _write_json(target: str, payload: dict) -> None:
    text = json.dumps(payload, indent=2)
    if target == "-":
        print(text)
    else:
        from .graph.io import OutputError
        try:
            with open(target, "w") as f:
                f.write(text + "\n")
        except OSError as exc:
            raise OutputError(f"{target}: cannot write JSON report ({exc.strerror})") from None


def _error(message: str, code: int) -> int:
    print(f"onnxrep: error: {message}", file=sys.stderr)
    return code


def _list_rules(args) -> int:
    """``onnxrep rules``: the default rules, the opt-in ones (with their flag), the --rules-from ones."""
    from .optimizer import RuleSetError, resolve_rules
    from .pipeline import RulesFileError, load_rules_from
    from .tables import text_table
    from .rules import opt_in_rules

    try:
        extra = [r for path in args.rules_from for r in load_rules_from(path)]
        listed = [(r, "default") for r in resolve_rules([], True)]
        builtin = {r.rule_name for r, _ in listed}
        listed += [(r, f"opt-in: {flag}") for r, flag in opt_in_rules()]
        # a built-in's name is free only when the built-ins do not run (optimizer.resolve_rules)
        listed += [(r, "--rules-from" + (" (only with --no-default-rules: a built-in's name)"
                                         if r.rule_name in builtin else "")) for r in resolve_rules(extra, False)]
    except (RulesFileError, RuleSetError) as exc:
        return _error(str(exc), EXIT_RULES)
    rows = [["rule", "priority", "opsets", "kind", "runs", "what it does"]]
    for r, runs in listed:
        doc = type(r).__doc__ or sys.modules[type(r).__module__].__doc__ or ""
        kind = "pattern" if hasattr(r, "pattern") else "pass"
        rows.append([r.rule_name, str(r.priority), r.opset_range(), kind, runs,
                     doc.strip().splitlines()[0] if doc.strip() else ""])
    print("\n".join(text_table(rows, right={1})))
    print("\nLower priorities run first in every sweep; a rule outside its opsets is skipped (the report says so).")
    return EXIT_OK


def _run(args) -> int:
    from .graph.io import first_line
    from .optimizer import RuleSetError, resolve_rules
    from .pipeline import RulesFileError, VerificationFailed, load_rules_from, optimize_file
    from .summary import format_report
    from .tables import text_table
    from .verification.given import check_given, parse_input_values
    from .verification.inputs import check_input_shapes
    from .verification.compare import VerifyError, format_result, parse_input_shapes, verify

    if args.command == "rules":
        return _list_rules(args)

    model_path = args.reference if args.command == "compare" else args.input
    try:
        shapes = parse_input_shapes(args.input_shape)
        check_input_shapes(model_path, shapes)
    except ValueError as exc:
        return _error(f"--input-shape: {exc}", EXIT_USAGE)
    try:
        values = parse_input_values(args.input_value)
    except ValueError as exc:
        return _error(f"--input-value: {exc}", EXIT_USAGE)
    if args.inputs or values:
        try:
            check_given(model_path, shapes, args.inputs, values)
        except ValueError as exc:
            return _error(first_line(exc), EXIT_USAGE)

    if args.command == "compare":
        try:
            result = verify(args.reference, args.candidate, input_shapes=shapes, seed=args.seed,
                            rtol=args.rtol, atol=args.atol, inputs=args.inputs, input_values=values)
        except (VerifyError, ValueError) as exc:
            return _error(first_line(exc), EXIT_INPUT)
        print(format_result(result))
        if args.json:
            _write_json(args.json, result.to_dict())
        return EXIT_OK if result.passed else EXIT_VERIFY

    rules = []
    try:
        for path in args.rules_from:
            rules += load_rules_from(path)
        resolve_rules(rules, not args.no_default_rules)  # names clash: refused before any work
    except (RulesFileError, RuleSetError) as exc:
        return _error(str(exc), EXIT_RULES)
    if args.no_default_rules and not rules:
        return _error("--no-default-rules needs at least one --rules-from file", EXIT_USAGE)
    rtol, atol = args.rtol, args.atol
    if args.prune_threshold is not None:
        from .rules import PruneCompactorRows
        if args.prune_threshold < 0:
            return _error("--prune-threshold must be >= 0", EXIT_USAGE)
        rules.append(PruneCompactorRows(args.prune_threshold))
        if args.prune_tolerance is not None:
            rtol, atol = args.prune_tolerance, atol if atol is not None else 0.0
    elif args.prune_tolerance is not None:
        return _error("--prune-tolerance needs --prune-threshold", EXIT_USAGE)

    dest = args.output if args.command == "optimize" else None
    check = (not args.no_verify) if args.command == "optimize" else args.verify
    progress = _Progress(not args.quiet)
    failure = None
    try:
        report = optimize_file(args.input, dest, rules=rules, include_defaults=not args.no_default_rules,
                               check_result=check, input_shapes=shapes, seed=args.seed, rtol=rtol,
                               atol=atol, max_sweeps=args.max_sweeps, progress=progress, equalize=args.equalize,
                               int8_report=args.int8_report, calibration=args.calibration, inputs=args.inputs,
                               input_values=values)
    except VerificationFailed as exc:
        report, failure = exc.report, str(exc)
    finally:
        progress.done()
    if not args.quiet:
        print(format_report(report, args.input, dest, explain=args.explain))
    if args.json:
        payload = report.to_dict()
        payload.update(input=args.input, output=dest, written=failure is None and dest is not None)
        _write_json(args.json, payload)
    if failure:
        return _error(failure, EXIT_VERIFY)
    if dest and not args.quiet:
        print(f"\nwrote {dest}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code. A reader that closes stdout early (``| head``) ends the
    output quietly: exit 0, nothing on stderr (the output file, if any, is already written)."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a closed pipe says nothing."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured output): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .graph.io import InputError, OutputError, first_line
    from .rule import RuleError
    try:
        return _run(args)
    except BrokenPipeError:
        raise
    except InputError as exc:
        return _error(str(exc), EXIT_INPUT)
    except OutputError as exc:
        return _error(str(exc), EXIT_OUTPUT)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except RuleError as exc:
        if getattr(args, "debug", False):
            raise
        if exc.builtin:
            return _error(f"internal error: {exc} (rerun with --debug for the traceback)", EXIT_INTERNAL)
        return _error(f"{exc} (--debug shows the traceback)", EXIT_RULE_FAILED)
    except Exception as exc:  # a bug: one line unless --debug
        if getattr(args, "debug", False):
            raise
        msg = first_line(exc) if str(exc).strip() else ""
        return _error(f"internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)",
                      EXIT_INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
