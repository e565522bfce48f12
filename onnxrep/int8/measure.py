"""Measured W8A8 INT8 error: how far onnxruntime's static INT8 quantization moves a model's outputs.

What is measured (:func:`int8_errors`)
--------------------------------------
The model is quantized with onnxruntime's static quantizer (``quantize_static``) the way TensorRT
quantizes explicitly: QDQ format, INT8 weights and INT8 activations, both symmetric (zero point 0),
MinMax calibration on the calibration samples, with one weight scale per tensor ("per-tensor") or
per output channel ("per-channel"). The float and the quantized model then run in onnxruntime
(CPUExecutionProvider, graph optimizations off, so the QDQ pairs are simulated in float rather than
fused into integer kernels) on the evaluation samples, and over every float output and every sample:

* ``max_abs = max |y_int8 - y_float|``
* ``rel = max over outputs of (max |y_int8 - y_float| / max |y_float|)``
* ``mean_abs`` = the mean of ``|y_int8 - y_float|`` over every element of every output and sample.

Non-float outputs (indices, masks) are not compared. Everything is deterministic: seeded inputs,
MinMax ranges, and the same runs each time.

Calibration samples (:func:`calibration_inputs`)
------------------------------------------------
From an ``.npz`` file (:func:`onnxrep.verification.given.npz_samples`, the format of ``--inputs``
too): one array per real graph input, named like the input, of shape ``(S, *input_shape)`` where
``input_shape`` is the whole shape fed to the model (batch included): sample ``i`` feeds
``array[i]``. Every input needs an array, every array needs an input, all arrays have the same
``S >= 1``, the static dims of the model (and ``input_shapes`` when given) must match, and an array
must be of the input's kind (float for a float input, integer for an integer one, bool for bool); it
is cast to the input's dtype. Without a file: ``count`` samples from
:func:`onnxrep.verification.inputs.make_inputs` with seeds ``seed, seed + 1, ...``.

Every problem is a one-line :class:`onnxrep.graph.io.InputError`.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx

from ..graph import io
from ..graph.io import InputError, first_line
from ..verification.given import npz_samples
from ..verification.inputs import VerifyError, make_inputs
from ..tables import text_table
from ..verification.sessions import run

__all__ = ["Int8Error", "SCHEMES", "calibration_inputs", "format_int8", "int8_errors"]

#: weight quantization schemes: name -> quantize_static's per_channel
SCHEMES = {"per-tensor": False, "per-channel": True}


@dataclass
class Int8Error:
    """One quantization scheme's error against the float model (module doc)."""
    scheme: str
    max_abs: float
    rel: float
    mean_abs: float

    def to_dict(self) -> dict:
        return {k: (v if isinstance(v, str) else float(v)) for k, v in asdict(self).items()}


# ------------------------------------------------------------------ calibration samples
def calibration_inputs(model: onnx.ModelProto, *, path: str | None = None, count: int = 8, seed: int = 0,
                       input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration samples, ``{input name: array}`` each: read from the ``.npz`` file ``path``
    (arrays of shape ``(S, *input_shape)``, sample ``i`` = ``array[i]``; module doc), else ``count``
    seeded random samples from :func:`onnxrep.verification.inputs.make_inputs` with seeds ``seed, seed + 1, ...``
    (``input_shapes`` fixes dynamic dims as for verification). One-line InputError on a bad file."""
    if path is not None:
        return npz_samples(model, os.fspath(path), input_shapes)
    if count < 1:
        raise InputError(f"calibration needs at least one sample (count={count})")
    try:
        return [make_inputs(model, input_shapes, seed + i) for i in range(count)]
    except ValueError as exc:
        raise InputError(first_line(exc)) from None


# ------------------------------------------------------------------ quantizing and measuring
def _check_quantizable(model: onnx.ModelProto) -> None:
    """InputError unless onnxruntime's quantizer can take ``model``: under 2 GB, no external data,
    no op onnxruntime does not know."""
    if io.has_external_data(model) or io.proto_size(model) > io.PROTOBUF_LIMIT:
        raise InputError("--int8 needs a model under 2 GB (without external data)")
    from ..graph.foreign import describe
    from ..verification.runnable import statically_blocked
    blocked = statically_blocked(model)
    if blocked:
        from collections import Counter
        ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node
                      if tuple(n.output) in blocked)
        raise InputError(f"--int8 needs a model onnxruntime can run; it cannot run {describe(ops)}")


def _run_all(model, samples: Sequence[Mapping[str, np.ndarray]], what: str) -> list[dict[str, np.ndarray]]:
    try:
        return [run(model, s) for s in samples]
    except VerifyError as exc:
        raise InputError(f"--int8: {what} model: {exc}") from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer: its Python logging (and the root handler ``logging.warning`` installs
    as a side effect), its warnings, and the warnings of its calibration session (onnxruntime's
    default log severity is raised to errors for the duration, then set back to its default)."""
    import onnxruntime as ort
    previous, handlers = logging.root.manager.disable, list(logging.root.handlers)
    logging.disable(logging.CRITICAL)
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        logging.root.handlers[:] = handlers
        ort.set_default_logger_severity(2)


def _reader(samples: Sequence[Mapping[str, np.ndarray]]):
    """A CalibrationDataReader over ``samples`` (fresh: the quantizer reads it once)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([dict(s) for s in samples])

        def get_next(self):
            return next(self._it, None)

        def __len__(self) -> int:
            return len(samples)

    return _Samples()


def _quantize(src: str, dest: str, calibration: Sequence[Mapping[str, np.ndarray]], per_channel: bool) -> None:
    """``src`` quantized to ``dest``: QDQ, symmetric INT8 weights and activations, MinMax ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    try:
        with _quiet():
            quantize_static(src, dest, _reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    except Exception as exc:  # noqa: BLE001 - the quantizer raises anything
        raise InputError(f"--int8: onnxruntime's quantizer failed: {type(exc).__name__}: {first_line(exc)}") from None


def _float_names(outputs: Mapping[str, np.ndarray]) -> list[str]:
    return [n for n, v in outputs.items() if np.asarray(v).dtype.kind == "f"]


def _error(scheme: str, ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]],
           names: list[str]) -> Int8Error:
    """``max_abs``, ``rel`` and ``mean_abs`` of ``got`` against ``ref`` over ``names`` (module doc)."""
    max_abs, rel, total, size = 0.0, 0.0, 0.0, 0
    for name in names:
        out_max, ref_max = 0.0, 0.0
        for r, g in zip(ref, got):
            rv, gv = np.asarray(r[name], np.float64), np.asarray(g[name], np.float64)
            if rv.shape != gv.shape:
                raise InputError(f"--int8: output {name!r} has shape {gv.shape} quantized, {rv.shape} in float")
            d = np.abs(gv - rv)
            if d.size:
                out_max, ref_max = max(out_max, float(d.max())), max(ref_max, float(np.abs(rv).max()))
            total, size = total + float(d.sum()), size + d.size
        max_abs = max(max_abs, out_max)
        rel = max(rel, out_max / ref_max if ref_max > 0 else (0.0 if out_max == 0 else float("inf")))
    return Int8Error(scheme, max_abs, rel, total / size if size else 0.0)


def int8_errors(model: onnx.ModelProto, calibration: list[dict], evaluation: list[dict] | None = None,
                schemes=("per-tensor", "per-channel")) -> list[Int8Error]:
    """Each scheme's INT8 error of ``model``: quantized by onnxruntime's ``quantize_static`` (QDQ,
    QInt8 weights and activations, ``ActivationSymmetric`` / ``WeightSymmetric``, MinMax, per_channel
    False / True) on ``calibration``, float and quantized model run on ``evaluation`` (default:
    the calibration samples); module doc for the numbers. One-line InputError when the model is
    too large, cannot run in onnxruntime, or cannot be quantized."""
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise InputError(f"unknown INT8 scheme(s) {', '.join(unknown)}; known: {', '.join(SCHEMES)}")
    if not calibration:
        raise InputError("--int8 needs at least one calibration sample")
    _check_quantizable(model)
    evaluation = calibration if evaluation is None else evaluation
    ref = _run_all(model, evaluation, "float")
    names = _float_names(ref[0]) if ref else []
    if not names:
        raise InputError("--int8 needs a model with a float output")
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxrep-int8-") as tmp:
        src = os.path.join(tmp, "float.onnx")
        onnx.save_model(model, src)
        for scheme in schemes:
            dest = os.path.join(tmp, f"{scheme}.onnx")
            _quantize(src, dest, calibration, SCHEMES[scheme])
            got = _run_all(dest, evaluation, f"{scheme} INT8")
            results.append(_error(scheme, ref, got, names))
    return results


# ------------------------------------------------------------------ text
def _change(base: Int8Error | None, e: Int8Error) -> str:
    """Relative change of ``rel`` against the first label's same scheme ("" for the first label)."""
    if base is None or base is e:
        return ""
    if base.rel == 0:
        return "" if e.rel == 0 else "+inf%"
    return f"{(e.rel - base.rel) / base.rel * 100:+.1f}%"


def format_int8(rows: list[tuple[str, list[Int8Error]]]) -> str:
    """Text table, one row per (label, scheme): max abs err, rel (of max|y|), mean abs err, and the
    change of rel against the first label's same scheme (e.g. "-31.2%")."""
    first = {e.scheme: e for e in rows[0][1]} if rows else {}
    table = [["model", "scheme", "max abs err", "rel (of max|y|)", "mean abs err", "change"]]
    for label, errors in rows:
        for e in errors:
            table.append([label, e.scheme, f"{e.max_abs:.3e}", f"{e.rel:.3e}", f"{e.mean_abs:.3e}",
                          _change(first.get(e.scheme), e)])
    return "\n".join(text_table(table, right={2, 3, 4, 5}))
