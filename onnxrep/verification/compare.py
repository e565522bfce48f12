"""Numerical verification of a candidate ONNX model against a reference one.

Both models are run with onnxruntime (CPUExecutionProvider, all graph optimisations disabled so
that each model's *own* arithmetic is measured, not ORT's fusions) on the same seeded random
inputs (``verification.inputs``), and every output is compared.

Comparison (:func:`verify`)
---------------------------
For each output, ``max_abs = max |cand - ref|`` (computed in float64) and
``max_rel = max_abs / max |ref|`` (scale-relative, 0 when both are 0, inf when
only the reference is all-zero).  Positions where exactly one side is
NaN/inf, or both are non-finite but differ (e.g. +inf vs -inf, NaN vs inf),
make ``max_abs`` infinite; positions where both sides hold the same non-finite
value count as equal.  An output passes when
``max_abs <= rtol * ref_max_abs + atol + 2 * noise``, where ``ref_max_abs`` is the largest
finite ``|ref|``; ``rtol``, ``atol`` and ``noise`` follow the precision on the output's path
(``verification.precision``) unless the caller gives ``rtol`` / ``atol``.

Partial verification
--------------------
When onnxruntime cannot run the reference (a TensorRT plugin, a custom op), the tensors feeding
the ops it cannot run and the outputs that do not depend on them are compared instead
(``verification.runnable``); the result lists what could not be verified.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from . import precision, runnable
from ..graph.io import first_line
from .inputs import ModelLike, VerifyError, load_graph_only, make_inputs, parse_input_shapes, real_inputs
from ..tables import text_table
from .sessions import run

__all__ = ["OutputDiff", "VerifyError", "VerifyResult", "format_result", "make_inputs", "parse_input_shapes",
           "run", "verify"]


@dataclass
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ref_max_abs: float
    rtol: float = 0.0
    atol: float = 0.0
    noise: float = 0.0          # the reference's own distance to its float32 evaluation
    precision: str = ""         # "float32", "float16", "mixed (float16, float32)", "user"
    what: str = "graph output"  # or "input of EfficientNMS_TRT 'nms'" (partial verification)

    @property
    def allowed(self) -> float:
        return self.rtol * self.ref_max_abs + self.atol + 2 * self.noise

    def passes(self, rtol: float | None = None, atol: float | None = None) -> bool:
        """Within this output's tolerance, or within ``rtol * max|ref| + atol`` when given."""
        if rtol is not None or atol is not None:
            return bool(self.max_abs <= (rtol or 0.0) * self.ref_max_abs + (atol or 0.0))
        return bool(self.max_abs <= self.allowed)


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
    rtol: float | None          # the caller's tolerance, or None: by precision
    atol: float | None
    seed: int
    #: outputs that could not be verified (onnxruntime cannot run what they depend on) and why
    unverifiable: dict[str, str] = field(default_factory=dict)
    #: the nodes onnxruntime cannot run ("op 'name'"), when only part of the model was verified
    blocked: list[str] = field(default_factory=list)
    #: outputs of those nodes fed with the same seeded random values to both models (what reads
    #: them was compared as a function of those values)
    fed: list[str] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return all(o.passes() for o in self.outputs)

    @property
    def partial(self) -> bool:
        return bool(self.blocked)

    def worst(self) -> OutputDiff | None:
        """The output furthest beyond (or closest to) its tolerance."""
        def excess(o: OutputDiff) -> float:
            if o.allowed > 0:
                return o.max_abs / o.allowed
            return math.inf if o.max_abs > 0 else 0.0
        return max(self.outputs, key=excess, default=None)

    def tolerance_text(self) -> str:
        if self.rtol is not None or self.atol is not None:
            return f"tolerance given: {self.rtol:g}*max|ref| + {self.atol:g}"
        return "tolerance by each path's precision: rtol*max|ref| + atol + 2*noise"

    def to_dict(self) -> dict:
        """JSON-serialisable (strict JSON: inf/nan are encoded as strings)."""
        return {
            "passed": self.passed,
            "partial": self.partial,
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "rtol": None if self.rtol is None else float(self.rtol),
            "atol": None if self.atol is None else float(self.atol),
            "tolerance": "given" if self.rtol is not None or self.atol is not None else "by precision",
            "seed": int(self.seed),
            "input_shapes": {k: [int(d) for d in v] for k, v in self.input_shapes.items()},
            "outputs": [
                {
                    "name": o.name,
                    "what": o.what,
                    "shape": [int(d) for d in o.shape],
                    "max_abs": _json_float(o.max_abs),
                    "max_rel": _json_float(o.max_rel),
                    "ref_max_abs": _json_float(o.ref_max_abs),
                    "precision": o.precision,
                    "rtol": float(o.rtol),
                    "atol": float(o.atol),
                    "noise": _json_float(o.noise),
                    "allowed": _json_float(o.allowed),
                    "passed": o.passes(),
                }
                for o in self.outputs
            ],
            "unverifiable": dict(self.unverifiable),
            "blocked": list(self.blocked),
            "fed": list(self.fed),
        }


def format_result(result: VerifyResult) -> str:
    """Aligned text table: tensor, shape, max abs err, allowed, max rel err, precision, status."""
    rows = [["tensor", "shape", "max abs err", "allowed", "max rel err", "precision", "status"]]
    for o in result.outputs:
        name = o.name if o.what == "graph output" else f"{o.name} ({o.what})"
        rows.append([name, "(" + ",".join(str(d) for d in o.shape) + ")", f"{o.max_abs:.3e}", f"{o.allowed:.3e}",
                     f"{o.max_rel:.3e}", o.precision + (f" +noise {o.noise:.1e}" if o.noise else ""),
                     "ok" if o.passes() else "FAIL"])
    lines = text_table(rows, right={2, 3, 4})
    for name, why in result.unverifiable.items():
        lines.append(f"not verified: {name} ({why})")
    if result.blocked:
        lines.append(f"onnxruntime cannot run: {', '.join(result.blocked)}; the tensors feeding them were compared")
    if result.fed:
        lines.append(f"fed with the same random values in both models: {', '.join(result.fed)} (what reads "
                     f"them was compared too)")
    verdict = "PASSED" if result.passed else "FAILED"
    part = "part of the model; " if result.partial else ""
    lines.append(f"{verdict} ({part}{result.tolerance_text()}; seed={result.seed})")
    return "\n".join(lines)


def _is_float(value) -> bool:
    """A floating-point output (compared within a tolerance; kind ``V``: ml_dtypes' bfloat16 and
    float8); integer, bool and string outputs are compared exactly."""
    return np.asarray(value).dtype.kind in "fcV"


def _compare(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputDiff:
    if np.asarray(ref).dtype.kind in "OSU":  # strings: equal or not
        same = np.shape(ref) == np.shape(cand) and bool(np.all(np.asarray(ref) == np.asarray(cand)))
        return OutputDiff(name, tuple(int(d) for d in np.shape(ref)), 0.0 if same else math.inf,
                          0.0 if same else math.inf, 0.0)
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


def _load_full(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(os.fspath(model))
    except Exception as e:  # noqa: BLE001
        raise VerifyError(f"cannot load model {os.fspath(model)!r}: {first_line(e)}") from e


def _noise(reference: onnx.ModelProto, inputs: Mapping[str, Any], ref_out: Mapping[str, np.ndarray],
           names: list[str], seed: int) -> dict[str, float]:
    """Per output, how far the reference moves under float16 rounding (``verification.precision``): the
    larger of its distance to its float32 evaluation and, in float32, its distance to itself with
    every weight rounded once more; {} when the widened model cannot run."""
    feeds = precision.widened_inputs(dict(inputs))
    try:
        wide = run(precision.widened(reference), feeds)
        rounded = run(precision.widened(reference, rounding_seed=seed), feeds)
    except VerifyError:
        return {}
    found = {}
    for name in names:
        if name in wide and name in rounded and np.shape(wide[name]) == np.shape(ref_out[name]):
            found[name] = max(_compare(name, wide[name], ref_out[name]).max_abs,
                              _compare(name, wide[name], rounded[name]).max_abs)
    return found


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Run ``reference`` and ``candidate`` on the same inputs and compare outputs.

    Inputs are ``inputs`` if given, else :func:`make_inputs` on the reference.
    The candidate is fed only the inputs it declares (it may have dropped an
    unused one) and must not need inputs the reference lacks.  Outputs are
    matched by name; differing output names or output shapes raise
    VerifyError.  Tolerances follow each output's precision (``verification.precision``) unless
    ``rtol`` / ``atol`` are given.  When onnxruntime cannot run the reference, the part it can
    run is compared (module doc); VerifyError when nothing can.
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
    cand_feeds = {n: inputs[n] for n in cand_inputs}
    part = None
    try:
        ref_out = run(reference, inputs)
        ref_model = load_graph_only(reference)
    except VerifyError as exc:
        part = runnable.run_partial(_load_full(reference), inputs, exc, seed)
        ref_out, ref_model = part.outputs, part.model
    plan = part.plan if part is not None else None
    if part is None:
        cand_out = _run_labeled("candidate", candidate, cand_feeds)
    else:
        cand_full = _load_full(candidate)
        produced = {o for n in cand_full.graph.node for o in n.output} | {i.name for i in cand_full.graph.input}
        lost = [t for t in list(plan.targets) + list(part.fed) if t not in produced]
        if lost:
            raise VerifyError(f"candidate model: tensor(s) {', '.join(lost)} of the reference are gone")
        cand_out = _run_labeled("candidate", part.cut_from(cand_full), {**cand_feeds, **part.fed})
        del cand_full

    if set(ref_out) != set(cand_out):
        only_ref = [n for n in ref_out if n not in cand_out]
        only_cand = [n for n in cand_out if n not in ref_out]
        raise VerifyError(
            "output names differ: missing in candidate: "
            f"{', '.join(only_ref) or '-'}; extra in candidate: {', '.join(only_cand) or '-'}"
        )
    given = rtol is not None or atol is not None
    if given:  # one given: the other keeps its float32 default
        rtol = precision.FLOAT32_RTOL if rtol is None else rtol
        atol = precision.FLOAT32_ATOL if atol is None else atol
    precisions = {} if given else precision.output_precisions(ref_model)
    reduced = [n for n, p in precisions.items() if p.reduced and n in ref_out]
    noise_inputs = {**inputs, **part.fed} if part is not None else inputs
    noise = _noise(_load_full(reference) if plan is None else ref_model, noise_inputs, ref_out, reduced,
                   seed) if reduced else {}
    diffs = []
    for name, r in ref_out.items():
        c = cand_out[name]
        if tuple(np.shape(r)) != tuple(np.shape(c)):
            raise VerifyError(
                f"output {name!r}: shape {tuple(np.shape(c))} in candidate "
                f"!= {tuple(np.shape(r))} in reference"
            )
        d = _compare(name, r, c)
        if given:
            d.rtol, d.atol, d.precision = float(rtol), float(atol), "given"
        elif not _is_float(r):  # an index, a count, a mask: a rewrite must not change it at all
            d.precision = f"exact ({np.asarray(r).dtype})"
        else:
            p = precisions.get(name) or precision.Precision(frozenset())
            d.rtol, d.atol, d.precision = p.rtol, p.atol, p.label
            d.noise = float(noise.get(name, 0.0)) if math.isfinite(noise.get(name, 0.0)) else 0.0
        if plan is not None:
            d.what = plan.targets[name]
        diffs.append(d)
    return VerifyResult(
        outputs=diffs,
        input_shapes={k: tuple(int(d) for d in np.shape(v)) for k, v in inputs.items()},
        rtol=float(rtol) if given else None,
        atol=float(atol) if given else None,
        seed=int(seed),
        unverifiable=dict(plan.unverifiable) if plan else {},
        blocked=list(plan.blocked) if plan else [],
        fed=sorted(part.fed) if part is not None else [],
    )
