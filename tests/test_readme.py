"""The README's quick start is the tool's real output: its first command is run (but for the install) and
the sample report it shows is compared line by line with a fresh run; the timing, and the last digits
of the float32 errors (onnxruntime's kernels differ between CPUs), are the only things not compared."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a torch export

ROOT = Path(__file__).parents[1]
TIMING = re.compile(r", \d+\.\d+ s\)")


def _quick_start() -> tuple[list[list[str]], list[str]]:
    """The first command's parts after ``pip install`` and the sample report's lines."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    commands = [body.strip() for lang, body in blocks if lang == "bash"]
    assert len(commands) >= 2 and commands[1] == "python -m pytest -q"
    parts = [shlex.split(p) for p in commands[0].split("&&")]
    assert parts[0][:3] == ["pip", "install", "-e"], parts[0]
    report = next(body for lang, body in blocks if lang == "")
    return parts[1:], report.rstrip("\n").splitlines()


def _verification_row(line: str) -> tuple[list[str], float, float, float]:
    """A verification table row without its errors: (other fields, max abs, allowed, max rel)."""
    f = line.split()
    return f[:2] + f[5:], float(f[2]), float(f[3]), float(f[4])


def test_quick_start_report_is_the_tools_output(tmp_path):
    commands, readme = _quick_start()
    assert [c[:2] for c in commands] == [["python", "-m"], ["onnxrep", "optimize"]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    export = subprocess.run([sys.executable, *commands[0][1:]], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert export.returncode == 0, export.stderr
    run = subprocess.run([sys.executable, "-m", "onnxrep.cli", *commands[1][1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    fresh = run.stdout.rstrip("\n").splitlines()
    assert len(fresh) == len(readme), "\n".join(fresh)
    in_verification = False
    for mine, theirs in zip(fresh, readme):
        if theirs.startswith(("tensor ", "PASSED")):
            in_verification = theirs.startswith("tensor ")  # the table's rows are between these lines
        elif in_verification and not theirs.startswith("------"):
            fields, abs_err, allowed, rel_err = _verification_row(mine)
            assert fields == _verification_row(theirs)[0]
            assert allowed == pytest.approx(_verification_row(theirs)[2], rel=1e-3)
            assert 0 <= abs_err <= allowed and 0 <= rel_err <= 1e-5
            continue
        assert TIMING.sub(", T s)", mine) == TIMING.sub(", T s)", theirs)
