"""The folds' budget: a fold may not store more than it frees, over the whole run.

A fold replaces nodes by the constants they compute: it adds those constants and frees the stored
constants (initializers, Constant nodes) that only its nodes read. Each folding rule keeps a run-wide
balance of elements and of bytes added minus freed (in its record's memory, so across every graph of
the model: If / Loop bodies read their outer graph's constants), and a fold that would take either
balance above zero is declined with what it would add. A constant read elsewhere too stays, so
folding ``Slice(W)`` in both branches of an If would store ``W`` twice; ``Cast(W_int8) * scale`` is as
many elements in four times the bytes.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import GraphContext

_ELEMENTS, _BYTES = "parameters added by folds", "bytes added by folds"


def freed(ctx: GraphContext, group: Sequence[gs.Node]) -> tuple[int, int]:
    """Elements and bytes of the stored constants that only the nodes of ``group`` read: they go with it."""
    members = {id(n) for n in group}
    elements = nbytes = 0
    seen = set()
    for node in group:
        for t in node.inputs:
            if ctx.is_absent(t) or id(t) in seen:
                continue
            seen.add(id(t))
            info = ctx.stored_constant_info(t)
            if info is not None and not ctx.is_graph_output(t) and all(id(c) in members for c in t.outputs):
                n = int(np.prod(info[0]))
                elements += n
                nbytes += n * np.dtype(info[1]).itemsize
    return elements, nbytes


def charge(ctx: GraphContext, at: gs.Node, results: Iterable[np.ndarray], group: Sequence[gs.Node]) -> bool:
    """Whether the fold of ``group`` into ``results`` fits the running rule's budget; if so it is charged,
    else declined at ``at`` with what it would add."""
    results = [np.asarray(r) for r in results]
    gone, gone_bytes = freed(ctx, group)
    added = sum(r.size for r in results) - gone
    added_bytes = sum(r.nbytes for r in results) - gone_bytes
    memory = ctx.record.memory
    balance, balance_bytes = memory.get(_ELEMENTS, 0), memory.get(_BYTES, 0)
    if balance + added > 0:
        ctx.decline(at, f"would add {added:,} parameters: the constants it reads are read elsewhere too "
                        f"(folds so far freed {-balance:,} more than they added)")
        return False
    if balance_bytes + added_bytes > 0:
        ctx.decline(at, f"would add {added_bytes:,} bytes: its result is stored in a wider type than the "
                        f"constants it reads (int8 weights dequantized to float32; folds so far freed "
                        f"{-balance_bytes:,} bytes more than they added)")
        return False
    memory[_ELEMENTS], memory[_BYTES] = balance + added, balance_bytes + added_bytes
    return True
