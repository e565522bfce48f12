"""Loading and saving models: one-line errors, external data, atomic writes.

Saving never leaves a partial file behind: the model (and its external data file, when the
model is over the 2 GB protobuf limit or came with external data) is written into a hidden
temporary folder next to the destination, and renamed into place only by ``commit()``, after
verification.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data, uses_external_data

PROTOBUF_LIMIT = 2_000_000_000 - 64 * 1024 * 1024


class InputError(Exception):
    """The input model cannot be used (missing, not ONNX, invalid, missing external data)."""


class OutputError(Exception):
    """The output cannot be written (same path as the input, folder missing or read-only, disk full)."""


def first_line(exc) -> str:
    """The first non-empty line of ``str(exc)`` (the type name of an exception without a message)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return exc if isinstance(exc, str) else type(exc).__name__


def save_with_external_data(model: onnx.ModelProto, path: str | os.PathLike, data_name: str) -> None:
    """Save ``model`` to ``path`` with its tensors of 1 KiB or more in ``data_name`` beside it
    (marks those tensors of ``model`` as external)."""
    # not onnx.save_model(save_as_external_data=True, location=...): it refuses to write when a file
    # named like `location` exists in the *current directory*
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= 1024:
            set_external_data(t, data_name)
    onnx.save_model(model, str(path))


def proto_size(model: onnx.ModelProto) -> int:
    """The model's size estimated from its tensors' dims (never serializes it)."""
    from .stats import estimated_size
    return estimated_size(model)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(uses_external_data(t) for t in model.graph.initializer)


def load_model(path: str | os.PathLike, check: bool = True) -> tuple[onnx.ModelProto, bool]:
    """Load ``path`` with its external data; raise ``InputError`` with a one-line reason.

    Returns the model and whether the file kept tensors in external data.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not an ONNX file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise InputError(f"{p}: empty file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{p}: not an ONNX model ({first_line(exc)})") from None
    if not model.HasField("graph") or not len(model.opset_import) or model.ir_version <= 0:
        raise InputError(f"{p}: not an ONNX model (no graph, opset or IR version)")
    external = has_external_data(model)
    if external:
        for t in model.graph.initializer:
            if uses_external_data(t):
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc is None or not (p.parent / loc).is_file():
                    raise InputError(f"{p}: external data file '{loc}' of tensor '{t.name}' is missing")
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise InputError(f"{p}: cannot load external data ({first_line(exc)})") from None
    if check:
        try:
            _check(model, p)
        except Exception as exc:
            raise InputError(f"{p}: invalid ONNX model: {first_line(exc)}") from None
    return model, external


def _check(model: onnx.ModelProto, path: Path) -> None:
    """The ONNX checker; default-domain ops ONNX does not define (TensorRT plugins) are checked
    as custom-domain ones (``foreign.stubbed``), everything else as usual."""
    from .foreign import stubbed, unregistered_nodes

    if not unregistered_nodes(model):
        onnx.checker.check_model(str(path))
        return
    with stubbed(model):
        if proto_size(model) <= PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
            return
        from onnx.onnx_cpp2py_export import checker as c_checker

        ctx = c_checker.CheckerContext()  # too large for an in-memory check: node by node
        ctx.ir_version = model.ir_version
        ctx.opset_imports = {i.domain: i.version for i in model.opset_import}
        for node in model.graph.node:
            onnx.checker.check_node(node, ctx)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


class PendingOutput:
    """A model written to a temporary folder beside ``dest``; ``commit`` renames it into place."""

    def __init__(self, model: onnx.ModelProto, dest: str | os.PathLike, external_data: bool | None = None):
        self.dest = Path(dest)
        folder = self.dest.parent if str(self.dest.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(f"{self.dest}: folder '{folder}' does not exist")
        if self.dest.is_dir():
            raise OutputError(f"{self.dest}: is a directory")
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=".onnxrep-", dir=folder))
        except OSError as exc:
            raise OutputError(f"{self.dest}: cannot write to '{folder}' ({exc.strerror})") from None
        if external_data is None:
            external_data = has_external_data(model) or proto_size(model) > PROTOBUF_LIMIT
        self.data_name = self.dest.name + ".data" if external_data else None
        self.path = self.tmp / self.dest.name
        try:
            if self.data_name:
                save_with_external_data(model, self.path, self.data_name)
            else:
                with open(self.path, "wb") as f:
                    f.write(model.SerializeToString())
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.dest}: cannot write ({exc.strerror or first_line(exc)})") from None
        except Exception as exc:
            self.discard()
            raise OutputError(f"{self.dest}: cannot write ({first_line(exc)})") from None

    def commit(self) -> Path:
        try:
            if self.data_name:
                os.replace(self.tmp / self.data_name, self.dest.parent / self.data_name)
            os.replace(self.path, self.dest)
        except OSError as exc:
            raise OutputError(f"{self.dest}: cannot write ({exc.strerror})") from None
        finally:
            self.discard()
        return self.dest

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def save_model(model: onnx.ModelProto, dest: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``dest`` atomically."""
    return PendingOutput(model, dest, external_data).commit()
