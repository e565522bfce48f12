"""The runs of a verification: which inputs the reference is run on, and its outputs there.

A *run* is one set of inputs. By default there is one: seeded random values (``inputs.make_inputs``).
There are more when the user gives samples (``--inputs FILE.npz``: every sample is a run) or when
the graph branches on a scalar input (``choices.branch_values``: each value it is compared with, then
one that is none of them; one input varied at a time, the others at their first value). Given values
(``--input-value``) replace the random ones and are never varied.

The reference runs first. At the default sizes (or the given ones) the runs it cannot run are left
out (named in the result); when it runs none, the sizes of ``choices.size_attempts`` are tried in
order, the first where every run works is kept (else the one where the most do), and when none
works a one-line VerifyError names the inputs to give and the flags that give them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from . import choices, runnable
from .given import checked_values, npz_samples
from .inputs import (InputShapeError, ModelLike, VerifyError, _resolve_shapes, describe_inputs, load_graph_only,
                     make_inputs, real_inputs, user_shapes)
from .result import run_label
from .sessions import run


@dataclass
class Run:
    """One set of inputs (``feeds``), what it is (``label``: ``{"sample": i}``, ``{"values": {...}}``),
    and the reference's outputs on it (``part``: the part of the reference run, when not all)."""
    feeds: dict
    label: dict
    outputs: dict | None = None
    part: Any = None


@dataclass
class Chosen:
    runs: list[Run]
    skipped: dict[str, str] = field(default_factory=dict)  # run label -> why the reference cannot run it
    notes: list[str] = field(default_factory=list)


def shapes_text(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{k}:{'x'.join(map(str, s)) or 'scalar'}" for k, s in shapes.items())


def _short(error: Exception) -> str:
    """The useful end of an onnxruntime error: its last ``Status Message:`` without the failed check's
    source location, at most 160 characters."""
    text = str(error).rsplit("Status Message: ", 1)[-1].strip()
    text = text.rsplit(" was false. ", 1)[-1]
    return text if len(text) <= 160 else text[:157] + "..."


def reference_outputs(reference: ModelLike, full: Callable[[], onnx.ModelProto], feeds: Mapping[str, Any],
                      seed: int) -> tuple[dict, Any]:
    """The reference's outputs on ``feeds``, and the part of it onnxruntime ran (None: the whole)."""
    try:
        return run(reference, feeds), None
    except VerifyError as exc:
        part = runnable.run_partial(full(), feeds, exc, seed)
        return part.outputs, part


def _samples(model: onnx.ModelProto, inputs: Any, shapes: Mapping) -> list[dict] | None:
    if inputs is None:
        return None
    if isinstance(inputs, (str, os.PathLike)):
        return npz_samples(model, os.fspath(inputs), shapes, complete=False, error=InputShapeError)
    if isinstance(inputs, Mapping):
        return [dict(inputs)]
    return [dict(s) for s in inputs]


def _variants(values: Mapping[str, list]) -> list[dict]:
    """Each input at its first value, then one input varied at a time."""
    if not values:
        return [{}]
    first = {k: v[0] for k, v in values.items()}
    out = [first]
    for k, vs in values.items():
        out += [{**first, k: v} for v in vs[1:]]
    return out


def choose(reference: ModelLike, full: Callable[[], onnx.ModelProto], *, input_shapes=None, seed: int = 0,
           inputs: Any = None, input_values: Mapping[str, Any] | None = None) -> Chosen:
    """The runs of a verification, with the reference's outputs (module doc)."""
    model = load_graph_only(reference)
    real = real_inputs(model.graph)
    shapes = user_shapes(real, input_shapes or {})
    samples = _samples(model, inputs, shapes)
    names = {vi.name for vi in real}
    covered = {n for n in (samples[0] if samples else {}) if n in names}
    for name in covered:
        shapes.setdefault(name, tuple(np.shape(samples[0][name])))
    given = checked_values(model, input_values or {})
    first = _resolve_shapes(real, shapes)
    free = [vi.name for vi in choices.scalar_inputs(real) if vi.name not in given and vi.name not in shapes]
    branching = choices.branch_values(model, free) if free else {}

    def runs_at(at: Mapping[str, tuple]) -> list[Run]:
        base = make_inputs(model, at, seed) if covered != names else {}  # samples of every input: as given
        for name, arr in given.items():
            base[name] = np.array(np.broadcast_to(arr, at[name]))
        values = {}
        for name, vs in branching.items():
            drawn = base[name].ravel()[0].item()
            values[name] = vs + [v for v in [drawn if drawn not in vs else _outside(vs)] if v not in vs]
        out = []
        for i, sample in enumerate(samples or [{}]):
            for variant in _variants(values):
                feeds = {**base, **sample}
                for name, v in variant.items():
                    feeds[name] = np.full(at[name], v, dtype=base[name].dtype)
                label = {"values": {**{k: _plain(a) for k, a in given.items()}, **variant}}
                if samples and len(samples) > 1:
                    label["sample"] = i
                out.append(Run(feeds, label))
        return out

    def attempt(at, stop_early: bool) -> tuple[list[Run], dict, Exception | None]:
        ok, failed, first_error = [], {}, None
        for r in runs_at(at):
            try:
                r.outputs, r.part = reference_outputs(reference, full, r.feeds, seed)
                ok.append(r)
            except VerifyError as exc:
                failed[run_label(r.label)] = _short(exc)
                first_error = first_error or exc
                if stop_early:
                    break
        return ok, failed, first_error

    ok, failed, error = attempt(first, stop_early=False)
    if ok:
        return Chosen(ok, failed)
    attempts = choices.size_attempts(model, first, list(shapes))
    best = None
    for at in attempts[1:]:
        got, lost, _ = attempt(at, stop_early=True)
        if got and not lost:
            return Chosen(got, {}, [_retry_note(first, error, at)])
        if got and (best is None or len(got) > len(best[1])):
            best = (at, got)
    if best is not None:
        got, lost, _ = attempt(best[0], stop_early=False)
        if got:
            return Chosen(got, lost, [_retry_note(first, error, best[0])])
    raise VerifyError(_give_up(real, first, error, len(attempts) > 1, shapes, given))


def _outside(values: list) -> Any:
    """A value that is none of ``values`` (bools: there may be none)."""
    if all(isinstance(v, bool) for v in values):
        return next((b for b in (False, True) if b not in values), values[0])
    return max(values) + 1


def _plain(arr: np.ndarray) -> Any:
    return arr.item() if arr.size == 1 else arr.ravel()[0].item()


def _retry_note(first, error, at) -> str:
    return (f"the reference cannot run at {shapes_text(first)} ({_short(error)}); verified at "
            f"{shapes_text(at)}")


def _give_up(real, first, error, retried: bool, fixed, given) -> str:
    """One line: the reference's error, the sizes tried, the inputs to give and the flags to give them."""
    dynamic = [vi for vi in real if vi.name not in fixed
               and any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)]
    scalars = [vi for vi in choices.scalar_inputs(real) if vi.name not in given and vi.name not in fixed]
    tried = f"at {shapes_text(first)}" + (", then with the dynamic dims not given at 32 to 512" if retried else "")
    asks = []
    if dynamic:
        asks.append(f"give the sizes of {describe_inputs(dynamic)} with --input-shape NAME:D1xD2...")
    if scalars:
        asks.append(f"the values of {describe_inputs(scalars, types=True)} with --input-value NAME=V")
    ask = ", ".join(asks + ["or samples with --inputs FILE.npz"]) if asks else "check the inputs given"
    return f"reference model: cannot run {tried} ({_short(error)}); {ask}"
