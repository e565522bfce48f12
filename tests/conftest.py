"""Make ``import onnxrep``, ``import models`` and the test helpers (``checks``, ``onnx_builders``, ...)
work from every test folder when pytest is run from the repo root."""
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(_TESTS), _TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)
