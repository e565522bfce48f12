"""Text tables: the one formatter of aligned columns that the report, verification and INT8 tables use."""
from __future__ import annotations

from typing import Iterable


def text_table(rows: list[list[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows as aligned text lines; the first row is the header, underlined; ``right``: right-aligned columns."""
    right = set(right)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
