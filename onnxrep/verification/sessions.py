"""Running a model in onnxruntime (CPU, graph optimizations off) from a ModelProto or a path.

A ModelProto over the protobuf limit (``graph.io.PROTOBUF_LIMIT``) goes to onnxruntime through a
temporary copy with external data; every failure is a one-line ``VerifyError``.
"""
from __future__ import annotations

import ctypes
import os
import tempfile
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.external_data_helper import uses_external_data

from ..graph import io
from ..graph.io import first_line
from .inputs import ModelLike, VerifyError
from ..graph.stats import estimated_size


def _session_options(intra_op_threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4  # errors reach the caller as VerifyError: none on stderr
    if intra_op_threads is not None:
        so.intra_op_num_threads = int(intra_op_threads)
    return so


def _has_external_refs(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import _get_all_tensors

    return any(uses_external_data(t) for t in _get_all_tensors(model))


def _to_ortvalue(arr: Any) -> ort.OrtValue:
    arr = np.asarray(arr, order="C")  # not np.ascontiguousarray: it makes a 0-d (scalar) input 1-d
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
        raise VerifyError(f"onnxruntime could not create a session: {first_line(e)}") from e
    try:
        feeds = {k: _to_ortvalue(v) for k, v in inputs.items()}
        names = [o.name for o in sess.get_outputs()]
        values = sess.run_with_ort_values(names, feeds)
        return {n: _from_ortvalue(v) for n, v in zip(names, values)}
    except VerifyError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VerifyError(f"onnxruntime run failed: {first_line(e)}") from e


def run(
    model: ModelLike,
    inputs: Mapping[str, Any],
    *,
    intra_op_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` with onnxruntime on CPU, optimisations disabled.

    ``model`` is a ModelProto or a path.  A ModelProto larger than
    ``graph.io.PROTOBUF_LIMIT`` is saved (as a copy) to a temporary directory
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
    if size <= io.PROTOBUF_LIMIT:
        return _run_session(model.SerializeToString(), inputs, intra_op_threads)

    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the external-data writer marks the tensors it moves
        try:
            io.save_with_external_data(copy, path, "model.onnx.data")
        except Exception as e:  # noqa: BLE001
            raise VerifyError(f"could not save large model for onnxruntime: {first_line(e)}") from e
        finally:
            del copy
        return _run_session(path, inputs, intra_op_threads)
