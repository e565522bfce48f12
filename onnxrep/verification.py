"""Numerical verification of a candidate ONNX model against a reference one.

Both models are run with onnxruntime (CPUExecutionProvider, all graph
optimisations disabled so that each model's *own* arithmetic is measured, not
ORT's fusions) on the same seeded random inputs, and every output is compared.

Input generation (:func:`make_inputs`)
--------------------------------------
* Only *real* inputs are fed: ``graph.input`` minus names that are initializers.
* Static dims are kept.  A dynamic dim (``dim_param`` or no value at all) is
  taken from ``input_shapes[name]`` when given.  Otherwise a symbolic dim that
  the user fixed on another input (same ``dim_param``) reuses that value, and
  the remaining dynamic dims use the defaults: axis 0 -> 1 (batch), any other
  axis -> 32.
* Float inputs (float/double/float16/bfloat16/float8) are standard-normal
  samples from ``numpy.random.default_rng(seed)`` cast to the dtype
  (bfloat16/float8 via ``ml_dtypes``); integer inputs are uniform in [0, 4);
  bool inputs are uniform random.  Inputs are drawn in graph order, so the
  result is deterministic for a given model, shapes and seed.

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

import ctypes
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.external_data_helper import set_external_data, uses_external_data

from .stats import estimated_size

__all__ = [
    "DEFAULT_BATCH_DIM",
    "DEFAULT_OTHER_DIM",
    "PROTOBUF_SIZE_LIMIT",
    "OutputDiff",
    "VerifyError",
    "VerifyResult",
    "format_result",
    "make_inputs",
    "parse_input_shapes",
    "run",
    "verify",
]

ModelLike = Union[onnx.ModelProto, str, "os.PathLike[str]"]

#: Default for a dynamic axis 0 (batch) when the user gives no shape.
DEFAULT_BATCH_DIM = 1
#: Default for any other dynamic axis when the user gives no shape.
DEFAULT_OTHER_DIM = 32
#: ModelProtos larger than this (bytes) are handed to ORT through a temporary
#: file with external data instead of an in-memory serialisation (protobuf's
#: hard limit is 2 GiB).
PROTOBUF_SIZE_LIMIT = 1_900_000_000

_FLOAT_TYPES = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2,
    TensorProto.FLOAT8E5M2FNUZ,
}
_INT_TYPES = {
    TensorProto.INT8,
    TensorProto.INT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.UINT8,
    TensorProto.UINT16,
    TensorProto.UINT32,
    TensorProto.UINT64,
}


class VerifyError(Exception):
    """A model could not be run (session creation or run failed).

    The message is always a single line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


def _one_line(text: Any) -> str:
    """First non-empty line of ``str(text)`` (the exception type name if empty)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return "" if isinstance(text, str) else type(text).__name__


# --------------------------------------------------------------------------- results


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
    header = ("output", "shape", "max abs err", "max rel err", "status")
    rows = [header]
    for o in result.outputs:
        rows.append(
            (
                o.name,
                "(" + ",".join(str(d) for d in o.shape) + ")",
                f"{o.max_abs:.3e}",
                f"{o.max_rel:.3e}",
                "ok" if o.passes(result.rtol, result.atol) else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    left = (True, True, False, False, True)
    lines = []
    for r in rows:
        cells = [c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(r, widths, left)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = "PASSED" if result.passed else "FAILED"
    lines.append(f"{verdict} (rtol={result.rtol:g}, atol={result.atol:g}, seed={result.seed})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- shapes


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse CLI shape specs ``"name:1,3,224,224"`` (repeatable).

    A spec without a name (``"1,3,224,224"``) means "the only input" and is
    returned under the key ``""``; it must then be the only spec.  The name is
    split at the *last* colon, so names containing colons (``"x:0:1,3"``) work.
    Raises ValueError with a one-line message on bad syntax.
    """
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        s = str(spec).strip()
        if ":" in s:
            name, dims_text = s.rsplit(":", 1)
            name = name.strip()
            if not name:
                raise ValueError(f"bad input shape {spec!r}: empty input name before ':'")
        else:
            name, dims_text = "", s
        dims_text = dims_text.strip()
        if not dims_text:
            raise ValueError(f"bad input shape {spec!r}: expected NAME:D1,D2,... or D1,D2,...")
        dims = []
        for part in dims_text.split(","):
            part = part.strip()
            try:
                d = int(part)
            except ValueError:
                raise ValueError(
                    f"bad input shape {spec!r}: dimension {part!r} is not an integer"
                ) from None
            if d < 1:
                raise ValueError(f"bad input shape {spec!r}: dimension {d} must be >= 1")
            dims.append(d)
        if name in out:
            what = f"input {name!r}" if name else "the unnamed input"
            raise ValueError(f"bad input shapes: {what} given more than once")
        out[name] = tuple(dims)
    if "" in out and len(out) > 1:
        raise ValueError("bad input shapes: an unnamed shape is only allowed as the single shape spec")
    return out


def _load_graph_only(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any load failure is user-facing
        raise VerifyError(f"cannot load model {os.fspath(model)!r}: {_one_line(e)}") from e


def _real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return [vi for vi in graph.input if vi.name not in inits]


def _fmt_model_shape(dims: list[Any]) -> str:
    return "(" + ",".join(str(d) for d in dims) + ")"


def _resolve_shapes(
    inputs: list[onnx.ValueInfoProto], input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    names = [vi.name for vi in inputs]
    user = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
    if "" in user:
        if len(names) != 1:
            raise ValueError(
                f"an unnamed input shape needs a model with exactly one input, "
                f"but it has {len(names)}: {', '.join(names) or '(none)'}"
            )
        if names[0] in user:
            raise ValueError(f"input {names[0]!r} given both with and without a name")
        user[names[0]] = user.pop("")
    unknown = [k for k in user if k not in names]
    if unknown:
        raise ValueError(
            f"input shape given for unknown input(s) {', '.join(map(repr, unknown))}; "
            f"model inputs: {', '.join(names) or '(none)'}"
        )

    # model dims per input: int (static) | str (dim_param) | None (unknown)
    model_dims: dict[str, list[Any] | None] = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            model_dims[vi.name] = None
            continue
        dims: list[Any] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_value") and d.dim_value == 0:
                dims.append(0)
            elif d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        model_dims[vi.name] = dims

    # check user shapes, collect dim_param bindings
    bindings: dict[str, int] = {}
    for name, shape in user.items():
        dims = model_dims[name]
        if dims is None:
            continue
        if len(shape) != len(dims):
            raise ValueError(
                f"input {name!r}: given shape {_fmt_model_shape(list(shape))} has rank {len(shape)} "
                f"but the model declares rank {len(dims)} {_fmt_model_shape(dims)}"
            )
        for axis, (u, m) in enumerate(zip(shape, dims)):
            if isinstance(m, int) and u != m:
                raise ValueError(
                    f"input {name!r}: given shape {_fmt_model_shape(list(shape))} conflicts with "
                    f"model shape {_fmt_model_shape(dims)} at axis {axis} (fixed to {m})"
                )
            if isinstance(m, str):
                bindings.setdefault(m, u)

    resolved: dict[str, tuple[int, ...]] = {}
    for vi in inputs:
        name = vi.name
        if name in user:
            resolved[name] = user[name]
            continue
        dims = model_dims[name]
        if dims is None:
            raise ValueError(f"input {name!r} has no shape information; give its shape explicitly")
        out = []
        for axis, m in enumerate(dims):
            if isinstance(m, int):
                out.append(m)
            elif isinstance(m, str) and m in bindings:
                out.append(bindings[m])
            else:
                out.append(DEFAULT_BATCH_DIM if axis == 0 else DEFAULT_OTHER_DIM)
        resolved[name] = tuple(out)
    return resolved


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"unsupported input dtype {TensorProto.DataType.Name(elem_type)} "
            f"(ml_dtypes may be required): {_one_line(e)}"
        ) from e


def make_inputs(
    model: ModelLike,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded random inputs for every real input of ``model`` (see module doc).

    ``input_shapes`` maps input name -> shape (key ``""`` = the only input, as
    produced by :func:`parse_input_shapes`).  Dynamic dims not given default
    to 1 on axis 0 and 32 elsewhere.  Raises ValueError when a given shape
    disagrees with the model's static dims/rank or names an unknown input.
    """
    m = _load_graph_only(model)
    inputs = _real_inputs(m.graph)
    for vi in inputs:
        if vi.type.WhichOneof("value") != "tensor_type":
            raise ValueError(f"input {vi.name!r} is not a tensor; only tensor inputs are supported")
    shapes = _resolve_shapes(inputs, input_shapes or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in inputs:
        et = vi.type.tensor_type.elem_type
        shape = shapes[vi.name]
        if et in _FLOAT_TYPES:
            dtype = _np_dtype(et)
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif et in _INT_TYPES:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(_np_dtype(et))
        elif et == TensorProto.BOOL:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            name = TensorProto.DataType.Name(et) if et in TensorProto.DataType.values() else str(et)
            raise ValueError(f"input {vi.name!r}: unsupported dtype {name} for random inputs")
    return feeds


# --------------------------------------------------------------------------- running


def _session_options(intra_op_threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    if intra_op_threads is not None:
        so.intra_op_num_threads = int(intra_op_threads)
    return so


def _has_external_refs(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import _get_all_tensors

    return any(uses_external_data(t) for t in _get_all_tensors(model))


def _to_ortvalue(arr: Any) -> ort.OrtValue:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind == "V":  # ml_dtypes (bfloat16, float8...): ORT needs the ONNX type
        onnx_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        raw = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, onnx_type)
    return ort.OrtValue.ortvalue_from_numpy(arr)


def _from_ortvalue(value: ort.OrtValue) -> np.ndarray:
    try:
        # a copy: an output that is also a graph input is a view of the caller's input buffer
        return np.array(value.numpy(), copy=True)
    except RuntimeError:
        # e.g. bfloat16 / float8 outputs: copy the raw CPU buffer and view it.
        type_name = value.data_type()  # "tensor(bfloat16)"
        if not (type_name.startswith("tensor(") and type_name.endswith(")")):
            raise
        enum = TensorProto.DataType.Value(type_name[len("tensor(") : -1].upper())
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(enum))
        shape = tuple(value.shape())
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf = ctypes.string_at(value.data_ptr(), nbytes) if nbytes else b""
        return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


def _run_session(source: Any, inputs: Mapping[str, Any], intra_op_threads: int | None) -> dict[str, np.ndarray]:
    try:
        sess = ort.InferenceSession(
            source, _session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # noqa: BLE001 - ORT raises many pybind exception types
        raise VerifyError(f"onnxruntime could not create a session: {_one_line(e)}") from e
    try:
        feeds = {k: _to_ortvalue(v) for k, v in inputs.items()}
        names = [o.name for o in sess.get_outputs()]
        values = sess.run_with_ort_values(names, feeds)
        return {n: _from_ortvalue(v) for n, v in zip(names, values)}
    except VerifyError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VerifyError(f"onnxruntime run failed: {_one_line(e)}") from e


def run(
    model: ModelLike,
    inputs: Mapping[str, Any],
    *,
    intra_op_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` with onnxruntime on CPU, optimisations disabled.

    ``model`` is a ModelProto or a path.  A ModelProto larger than
    :data:`PROTOBUF_SIZE_LIMIT` is saved (as a copy) to a temporary directory
    with external data and loaded from there; the directory is removed
    afterwards.  A ModelProto that still *references* unloaded external data
    cannot be resolved (no base directory) and raises VerifyError; pass the
    path instead.  Any ORT failure raises VerifyError with a one-line message.
    Returns ``{output name: array}`` in the model's output order.
    """
    if not isinstance(model, onnx.ModelProto):
        return _run_session(os.fspath(model), inputs, intra_op_threads)

    if _has_external_refs(model):
        raise VerifyError(
            "model references external data that is not loaded; pass the model path "
            "or load it with onnx.load(..., load_external_data=True)"
        )
    size = estimated_size(model)  # ByteSize() would serialize the whole model (and fails past 2 GB)
    if size <= PROTOBUF_SIZE_LIMIT:
        return _run_session(model.SerializeToString(), inputs, intra_op_threads)

    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # save_model(save_as_external_data=True) mutates its argument
        try:
            # not save_model(save_as_external_data=True, location=...): onnx refuses when a file of
            # that name exists in the current directory
            for t in copy.graph.initializer:
                if t.HasField("raw_data") and len(t.raw_data) >= 1024:
                    set_external_data(t, "model.onnx.data")
            onnx.save_model(copy, path)
        except Exception as e:  # noqa: BLE001
            raise VerifyError(f"could not save large model for onnxruntime: {_one_line(e)}") from e
        finally:
            del copy
        return _run_session(path, inputs, intra_op_threads)


# --------------------------------------------------------------------------- compare


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

    cand_graph = _load_graph_only(candidate).graph
    cand_inputs = [vi.name for vi in _real_inputs(cand_graph)]
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
