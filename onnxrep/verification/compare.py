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
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from . import precision, runs
from ..graph.io import first_line
from .inputs import ModelLike, VerifyError, load_graph_only, make_inputs, parse_input_shapes, real_inputs
from .result import OutputDiff, VerifyResult, format_result
from .sessions import run

__all__ = ["OutputDiff", "VerifyError", "VerifyResult", "format_result", "make_inputs", "parse_input_shapes",
           "run", "verify"]


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


def _once(load):
    """``load()``, called at most once."""
    kept = []

    def get():
        if not kept:
            kept.append(load())
        return kept[0]
    return get


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    inputs: Any = None,
    input_values: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Run ``reference`` and ``candidate`` on the same inputs and compare outputs.

    ``inputs``: the inputs, as given: one ``{name: array}`` (one run), a list of them (a run each) or
    the path of an ``.npz`` file of samples (``verification.given``: a run per sample); inputs left
    out are made as usual. ``input_values``: ``{name: value}``, the value every run gives that input
    (``--input-value``). Otherwise :func:`make_inputs` on the reference, with a run per value of a
    scalar input the graph compares with constants, and other sizes when the reference cannot run at
    the default ones (``verification.runs``). Each output's row is its worst run.
    The candidate is fed only the inputs it declares (it may have dropped an
    unused one) and must not need inputs the reference lacks.  Outputs are
    matched by name; differing output names or output shapes raise
    VerifyError.  Tolerances follow each output's precision (``verification.precision``) unless
    ``rtol`` / ``atol`` are given.  When onnxruntime cannot run the reference, the part it can
    run is compared (module doc); VerifyError when nothing can.
    """
    full = _once(lambda: _load_full(reference))
    chosen = runs.choose(reference, full, input_shapes=input_shapes, seed=seed, inputs=inputs,
                         input_values=input_values)
    cand_inputs = [vi.name for vi in real_inputs(load_graph_only(candidate).graph)]
    missing = [n for n in cand_inputs if n not in chosen.runs[0].feeds]
    if missing:
        raise VerifyError(
            f"candidate model needs input(s) the reference does not provide: {', '.join(missing)}"
        )
    given = rtol is not None or atol is not None
    if given:  # one given: the other keeps its float32 default
        rtol = precision.FLOAT32_RTOL if rtol is None else rtol
        atol = precision.FLOAT32_ATOL if atol is None else atol
    cand_full = _once(lambda: _load_full(candidate))
    memo: dict = {}  # the reference's graph and its output precisions, read once for every run
    worst: dict[str, OutputDiff] = {}
    for index, r in enumerate(chosen.runs):
        for d in _compare_run(reference, full, candidate, cand_full, r, cand_inputs, seed, rtol, atol, given, memo):
            d.run = index
            if d.name not in worst or d.excess > worst[d.name].excess:
                worst[d.name] = d
    first = chosen.runs[0]
    plan = first.part.plan if first.part is not None else None
    return VerifyResult(
        outputs=list(worst.values()),
        input_shapes={k: tuple(int(d) for d in np.shape(v)) for k, v in first.feeds.items()},
        rtol=float(rtol) if given else None,
        atol=float(atol) if given else None,
        seed=int(seed),
        unverifiable=dict(plan.unverifiable) if plan else {},
        blocked=list(plan.blocked) if plan else [],
        fed=sorted(first.part.fed) if first.part is not None else [],
        runs=[r.label for r in chosen.runs],
        skipped=dict(chosen.skipped),
        notes=list(chosen.notes),
        samples=[r.feeds for r in chosen.runs],
    )


def _compare_run(reference, full, candidate, cand_full, r, cand_inputs: list[str], seed: int, rtol, atol,
                 given: bool, memo: dict) -> list[OutputDiff]:
    """The candidate run on ``r``'s inputs and compared with the reference's outputs there."""
    inputs, ref_out, part = r.feeds, r.outputs, r.part
    cand_feeds = {n: inputs[n] for n in cand_inputs}
    if part is None and "graph" not in memo:
        memo["graph"] = load_graph_only(reference)
    ref_model = part.model if part is not None else memo["graph"]
    plan = part.plan if part is not None else None
    if part is None:
        cand_out = _run_labeled("candidate", candidate, cand_feeds)
    else:
        model = cand_full()
        produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        lost = [t for t in list(plan.targets) + list(part.fed) if t not in produced]
        if lost:
            raise VerifyError(f"candidate model: tensor(s) {', '.join(lost)} of the reference are gone")
        cand_out = _run_labeled("candidate", part.cut_from(model), {**cand_feeds, **part.fed})

    if set(ref_out) != set(cand_out):
        only_ref = [n for n in ref_out if n not in cand_out]
        only_cand = [n for n in cand_out if n not in ref_out]
        raise VerifyError(
            "output names differ: missing in candidate: "
            f"{', '.join(only_ref) or '-'}; extra in candidate: {', '.join(only_cand) or '-'}"
        )
    if not given and id(ref_model) not in memo:
        memo[id(ref_model)] = precision.output_precisions(ref_model)
    precisions = {} if given else memo[id(ref_model)]
    reduced = [n for n, p in precisions.items() if p.reduced and n in ref_out]
    noise_inputs = {**inputs, **part.fed} if part is not None else inputs
    noise = _noise(full() if plan is None else ref_model, noise_inputs, ref_out, reduced, seed) if reduced else {}
    diffs = []
    for name, ref in ref_out.items():
        c = cand_out[name]
        if tuple(np.shape(ref)) != tuple(np.shape(c)):
            raise VerifyError(
                f"output {name!r}: shape {tuple(np.shape(c))} in candidate "
                f"!= {tuple(np.shape(ref))} in reference"
            )
        d = _compare(name, ref, c)
        if given:
            d.rtol, d.atol, d.precision = float(rtol), float(atol), "given"
        elif not _is_float(ref):  # an index, a count, a mask: a rewrite must not change it at all
            d.precision = f"exact ({np.asarray(ref).dtype})"
        else:
            p = precisions.get(name) or precision.Precision(frozenset())
            d.rtol, d.atol, d.precision = p.rtol, p.atol, p.label
            d.noise = float(noise.get(name, 0.0)) if math.isfinite(noise.get(name, 0.0)) else 0.0
        if plan is not None:
            d.what = plan.targets[name]
        diffs.append(d)
    return diffs
