"""The records of a verification: one output's difference (:class:`OutputDiff`), the whole result
(:class:`VerifyResult`: every output, the runs it was measured on, what could not be verified), and
its text table (:func:`format_result`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..tables import text_table


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
    run: int = 0                # the run (``VerifyResult.runs``) of this row: the output's worst

    @property
    def allowed(self) -> float:
        return self.rtol * self.ref_max_abs + self.atol + 2 * self.noise

    @property
    def excess(self) -> float:
        """How far past (above 1) or short of its tolerance the error is: ``max_abs / allowed``."""
        if self.allowed > 0:
            return self.max_abs / self.allowed
        return math.inf if self.max_abs > 0 else 0.0

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
    #: the runs (sets of inputs) compared: ``{"values": {input: value}}`` (the scalar values chosen or
    #: given), with ``"sample": i`` for the samples of an ``--inputs`` file; one run: ``[{"values": {}}]``
    runs: list[dict] = field(default_factory=lambda: [{"values": {}}])
    #: runs the reference cannot run (left out): run label -> onnxruntime's message
    skipped: dict[str, str] = field(default_factory=dict)
    #: how the inputs were found (the sizes used when the reference cannot run at the default ones)
    notes: list[str] = field(default_factory=list)
    #: the inputs of each run (not in ``to_dict``): ``verify(..., inputs=result.samples)`` repeats them
    samples: list[dict] = field(default_factory=list, repr=False, compare=False)

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
        return max(self.outputs, key=lambda o: o.excess, default=None)

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
                    "run": o.run,
                }
                for o in self.outputs
            ],
            "unverifiable": dict(self.unverifiable),
            "blocked": list(self.blocked),
            "fed": list(self.fed),
            "runs": [{"label": run_label(r), **r} for r in self.runs],
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
        }


def format_result(result: VerifyResult) -> str:
    """Aligned text table: tensor, shape, max abs err, allowed, max rel err, precision, status."""
    several = len(result.runs) > 1
    rows = [["tensor", "shape", "max abs err", "allowed", "max rel err", "precision", "status"]
            + (["worst run"] if several else [])]
    for o in result.outputs:
        name = o.name if o.what == "graph output" else f"{o.name} ({o.what})"
        rows.append([name, "(" + ",".join(str(d) for d in o.shape) + ")", f"{o.max_abs:.3e}", f"{o.allowed:.3e}",
                     f"{o.max_rel:.3e}", o.precision + (f" +noise {o.noise:.1e}" if o.noise else ""),
                     "ok" if o.passes() else "FAIL"] + ([run_label(result.runs[o.run])] if several else []))
    lines = text_table(rows, right={2, 3, 4})
    if several or result.skipped:
        lines.append(f"{len(result.runs)} run{'s' if several else ''}: {'; '.join(run_label(r) for r in result.runs)}"
                     + (" (each output's row is its worst run)" if several else ""))
    for label, why in result.skipped.items():
        lines.append(f"not run: {label} (the reference cannot run it: {why})")
    lines += result.notes
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


def run_label(run: dict) -> str:
    """``"sample 2, sr=16000"``: what a run's inputs were (``""`` for the one run of default inputs)."""
    parts = [f"sample {run['sample']}"] if run.get("sample") is not None else []
    return ", ".join(parts + [f"{k}={v}" for k, v in run.get("values", {}).items()])
