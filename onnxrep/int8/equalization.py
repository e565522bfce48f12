"""``--equalize``: cross-layer equalization kept only where the measured INT8 error does not grow.

Equalization (``rules/equalize_cross_layer.py``) is exact in float and balances the layers' weight
ranges, which is what per-tensor weight quantization needs; but it also rescales the activations
between the layers, which stay per-tensor, so on some networks (residual ones, or with per-channel
weights) the quantized error grows. So the file-level job measures: the merged model and the
model equalized at strengths 1 and 1/2 (the converged scales ``s`` applied as ``s**a``) are each
quantized with onnxruntime's static W8A8 quantizer (per-tensor and per-channel) on the calibration
inputs and compared with the float model; the strongest equalization under which no scheme's error
grows is kept, else none. The report shows every row of that table and says what was kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .measure import Int8Error, int8_errors

STRENGTHS = (1.0, 0.5)


@dataclass
class Int8Report:
    rows: list[tuple[str, list[Int8Error]]] = field(default_factory=list)
    note: str = ""
    kept: str = "optimized"  # the label of the row that was written

    def to_dict(self) -> dict:
        return {"rows": [{"model": label, "errors": [e.to_dict() for e in errs]} for label, errs in self.rows],
                "note": self.note, "kept": self.kept}


def measured(model: onnx.ModelProto, calibration: list[dict], label: str = "optimized") -> Int8Report:
    return Int8Report([(label, int8_errors(model, calibration))])


def equalize_measured(model: onnx.ModelProto, calibration: list[dict], max_sweeps: int = 8):
    """``(model to keep, its equalize-cross-layer record or None, Int8Report)``."""
    from ..optimizer import optimize
    from ..rules import EqualizeCrossLayer

    base = int8_errors(model, calibration)
    report = Int8Report([("optimized", base)])
    for strength in STRENGTHS:
        candidate, rep = optimize(model, [EqualizeCrossLayer(strength)], include_defaults=False, max_sweeps=max_sweeps)
        record = next(r for r in rep.rules if r.name == EqualizeCrossLayer.name)
        if not record.rewrites:
            report.note = "equalization: no conv -> homogeneous op -> conv / FC pair to rescale"
            return model, None, report
        errs = int8_errors(candidate, calibration)
        label = f"equalized (strength {strength:g})"
        report.rows.append((label, errs))
        worse = [f"{e.scheme} {b.rel:.4g} -> {e.rel:.4g}" for b, e in zip(base, errs) if e.rel > b.rel]
        if not worse:
            report.kept = label
            report.note = (f"equalization kept at strength {strength:g}: no W8A8 error grows on the "
                           f"{len(calibration)} calibration inputs")
            return candidate, record, report
    report.note = ("equalization not kept: the W8A8 error grows at every strength tried "
                   f"({'; '.join(worse)} at strength {STRENGTHS[-1]:g}); the merged model is written")
    return model, None, report
