"""Numerical verification of a candidate ONNX model against a reference one.

Both models are run with onnxruntime (CPUExecutionProvider, all graph optimisations disabled so
that each model's *own* arithmetic is measured, not ORT's fusions) on the same seeded random
inputs (``onnxrep.inputs``), and every output is compared.

Comparison (:func:`verify`)
---------------------------
For each output, ``max_abs = max |cand - ref|`` (computed in float64) and
``max_rel = max_abs / max |ref|`` (scale-relative, 0 when both are 0, inf when
only the reference is all-zero).  Positions where exactly one side is
NaN/inf, or both are non-finite but differ (e.g. +inf vs -inf, NaN vs inf),
make ``max_abs`` infinite; positions where both sides hold the same non-finite
value count as equal.  An output passes when
``max_abs <= rtol * ref_max_abs + atol``, where ``ref_max_abs`` is the largest
finite ``|ref|``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .inputs import ModelLike, VerifyError, load_graph_only, make_inputs, parse_input_shapes, real_inputs
from .report import text_table
from .runtime import run

__all__ = ["OutputDiff", "VerifyError", "VerifyResult", "format_result", "make_inputs", "parse_input_shapes",
           "run", "verify"]


@dataclass
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ref_max_abs: float

    def passes(self, rtol: float, atol: float) -> bool:
        return bool(self.max_abs <= rtol * self.ref_max_abs + atol)


def _json_float(x: float) -> Any:
    """Strict-JSON friendly float: non-finite values become strings."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


@dataclass
class VerifyResult:
    outputs: list[OutputDiff]
    input_shapes: dict[str, tuple[int, ...]]
    rtol: float
    atol: float
    seed: int

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return all(o.passes(self.rtol, self.atol) for o in self.outputs)

    def to_dict(self) -> dict:
        """JSON-serialisable (strict JSON: inf/nan are encoded as strings)."""
        return {
            "passed": self.passed,
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "rtol": float(self.rtol),
            "atol": float(self.atol),
            "seed": int(self.seed),
            "input_shapes": {k: [int(d) for d in v] for k, v in self.input_shapes.items()},
            "outputs": [
                {
                    "name": o.name,
                    "shape": [int(d) for d in o.shape],
                    "max_abs": _json_float(o.max_abs),
                    "max_rel": _json_float(o.max_rel),
                    "ref_max_abs": _json_float(o.ref_max_abs),
                    "passed": o.passes(self.rtol, self.atol),
                }
                for o in self.outputs
            ],
        }


def format_result(result: VerifyResult) -> str:
    """Small aligned text table: output, shape, max abs err, max rel err, status."""
    rows = [["output", "shape", "max abs err", "max rel err", "status"]]
    rows += [[o.name, "(" + ",".join(str(d) for d in o.shape) + ")", f"{o.max_abs:.3e}", f"{o.max_rel:.3e}",
              "ok" if o.passes(result.rtol, result.atol) else "FAIL"] for o in result.outputs]
    lines = text_table(rows, right={2, 3})
    verdict = "PASSED" if result.passed else "FAILED"
    lines.append(f"{verdict} (rtol={result.rtol:g}, atol={result.atol:g}, seed={result.seed})")
    return "\n".join(lines)


def _compare(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputDiff:
    r = np.asarray(ref).astype(np.float64)
    c = np.asarray(cand).astype(np.float64)
    r_fin = np.isfinite(r)
    c_fin = np.isfinite(c)
    both = r_fin & c_fin
    ref_max_abs = float(np.max(np.abs(r[r_fin]))) if r_fin.any() else 0.0
    max_abs = float(np.max(np.abs(c[both] - r[both]))) if both.any() else 0.0
    nonfinite = ~both
    if nonfinite.any():
        rn, cn = r[nonfinite], c[nonfinite]
        same = (np.isnan(rn) & np.isnan(cn)) | (rn == cn)  # equal inf, or NaN on both sides
        if not same.all():
            max_abs = math.inf
    if max_abs == 0.0:
        max_rel = 0.0
    elif ref_max_abs == 0.0:
        max_rel = math.inf
    else:
        max_rel = max_abs / ref_max_abs
    return OutputDiff(name, tuple(int(d) for d in r.shape), max_abs, max_rel, ref_max_abs)


def _run_labeled(label: str, model: ModelLike, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    try:
        return run(model, inputs)
    except VerifyError as e:
        raise VerifyError(f"{label} model: {e}") from e


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    inputs: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Run ``reference`` and ``candidate`` on the same inputs and compare outputs.

    Inputs are ``inputs`` if given, else :func:`make_inputs` on the reference.
    The candidate is fed only the inputs it declares (it may have dropped an
    unused one) and must not need inputs the reference lacks.  Outputs are
    matched by name; differing output names or output shapes raise
    VerifyError.  The result's ``passed`` applies ``rtol``/``atol``.
    """
    if inputs is None:
        inputs = make_inputs(reference, input_shapes, seed)
    inputs = dict(inputs)

    cand_graph = load_graph_only(candidate).graph
    cand_inputs = [vi.name for vi in real_inputs(cand_graph)]
    missing = [n for n in cand_inputs if n not in inputs]
    if missing:
        raise VerifyError(
            f"candidate model needs input(s) the reference does not provide: {', '.join(missing)}"
        )
    ref_out = _run_labeled("reference", reference, inputs)
    cand_out = _run_labeled("candidate", candidate, {n: inputs[n] for n in cand_inputs})

    if set(ref_out) != set(cand_out):
        only_ref = [n for n in ref_out if n not in cand_out]
        only_cand = [n for n in cand_out if n not in ref_out]
        raise VerifyError(
            "output names differ: missing in candidate: "
            f"{', '.join(only_ref) or '-'}; extra in candidate: {', '.join(only_cand) or '-'}"
        )
    diffs = []
    for name, r in ref_out.items():
        c = cand_out[name]
        if tuple(np.shape(r)) != tuple(np.shape(c)):
            raise VerifyError(
                f"output {name!r}: shape {tuple(np.shape(c))} in candidate "
                f"!= {tuple(np.shape(r))} in reference"
            )
        diffs.append(_compare(name, r, c))
    return VerifyResult(
        outputs=diffs,
        input_shapes={k: tuple(int(d) for d in np.shape(v)) for k, v in inputs.items()},
        rtol=float(rtol),
        atol=float(atol),
        seed=int(seed),
    )
