"""Which edit broke verification: bisection over the edits of an optimization run.

A run's edits are deterministic and made in order (``report.edits``), and ``optimize(...,
edit_limit=k)`` makes only the first ``k``. If the model verifies after ``lo`` edits and fails after
``hi``, the edit that first makes it fail lies in ``(lo, hi]``: halving that interval finds it in
``log2(edits)`` runs of optimize + verify, and names its rule and node.
"""
from __future__ import annotations

from typing import Callable, Iterable

import onnx

from ..optimizer import optimize
from ..rule import Rule


def find_culprit(model: onnx.ModelProto, edits: list[tuple[str, str]], passes: Callable[[onnx.ModelProto], bool],
                 *, rules: Iterable[Rule] | None = None, include_defaults: bool = True, max_sweeps: int = 8,
                 progress: Callable[[str], None] | None = None) -> dict | None:
    """The first edit after which ``passes(optimized model)`` is False, as ``{"rule", "node", "edit",
    "edits"}``; ``None`` when the model fails even with no edit (the failure is not a rewrite's).

    ``edits`` are the full (failing) run's; ``passes`` is called about ``log2(len(edits)) + 1`` times.
    """
    rules = list(rules or [])

    def ok(limit: int) -> bool:
        if progress:
            progress(f"finding the edit that broke verification: trying the first {limit} of {len(edits)}")
        out, _ = optimize(model, rules, include_defaults=include_defaults, max_sweeps=max_sweeps, edit_limit=limit)
        return passes(out)

    if not edits or not ok(0):
        return None
    lo, hi = 0, len(edits)  # passes after lo edits, fails after hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    rule, node = edits[hi - 1]
    return {"rule": rule, "node": node, "edit": hi, "edits": len(edits)}
