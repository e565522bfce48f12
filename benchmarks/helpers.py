"""What the benchmark scripts share: tables, the git revision, the machine's CPU and load."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def md_table(header, rows) -> str:
    """A Markdown table (``|`` inside a cell escaped)."""
    out = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def text_table(header, rows) -> str:
    """An aligned plain-text table with a dashed rule under the header (onnxrep's report formatter)."""
    from onnxrep.tables import text_table as lines
    return "\n".join(lines([[str(c) for c in header]] + [[str(c) for c in r] for r in rows]))


def git_revision(root: Path = ROOT, paths: tuple[str, ...] = ("onnxrep", "models")) -> str:
    """``abc1234``, with a note when ``paths`` have uncommitted changes; ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (f" with uncommitted changes in {', '.join(p + '/' for p in paths)}" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def forms_table(forms: dict, latency: dict, base: str, columns) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: one row per model form, ``columns`` ``(title, stats -> cell)`` of its
    ``graph_stats``, then its latency and the change against form ``base``."""
    from onnxrep.graph.stats import graph_stats
    header = ["form", *(title for title, _ in columns), "latency ms median [p10–p90]", f"vs {base}"]
    rows = []
    for name, model in forms.items():
        stats = graph_stats(model)
        rows.append([name, *(cell(stats) for _, cell in columns), latency[name].cell(),
                     f"{100 * (latency[name].median / latency[base].median - 1):+.1f}%"])
    return header, rows


def timing_stamp(command: str, rounds: int, shape) -> str:
    """The first line of a benchmark section: the command, date, revision, CPU, timing method, input."""
    import datetime
    return (f"`{command}` ({datetime.date.today().isoformat()}, onnxrep at {git_revision()}, {cpu_model()}, "
            f"1 onnxruntime thread, {rounds} interleaved rounds, input {'x'.join(map(str, shape))}).")


def write_section(md_path: Path, heading: str, body: str) -> None:
    """Replace (or append at the end) the level-2 section ``heading`` of ``md_path``; everything else
    is kept byte for byte. A section runs from its heading to the next level-2 heading (or the end)."""
    import re

    text = md_path.read_text() if md_path.exists() else ""
    section = heading + "\n\n" + body.strip() + "\n"
    m = re.search("^" + re.escape(heading) + "[ \t]*$", text, flags=re.M)
    if m is None:
        md_path.write_text((text.rstrip("\n") + "\n\n" if text.strip() else "") + section)
        return
    nxt = re.search(r"^## ", text[m.end():], flags=re.M)
    rest = text[m.end() + nxt.start():] if nxt else ""
    md_path.write_text(text[:m.start()] + section + ("\n" + rest if rest else ""))
