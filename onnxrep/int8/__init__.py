"""INT8: what a model loses to W8A8 quantization, measured, and the equalization that may reduce it.

``measure`` (onnxruntime's static quantizer on calibration inputs: the error of each scheme against the
float model) and ``equalization`` (``--equalize``: cross-layer equalization, kept only at the strongest
strength under which no measured error grows). The rule itself is ``rules/equalize_cross_layer.py``.
"""
from .equalization import equalize_measured, measured
from .measure import SCHEMES, Int8Error, calibration_inputs, format_int8, int8_errors

__all__ = ["Int8Error", "SCHEMES", "calibration_inputs", "equalize_measured", "format_int8", "int8_errors", "measured"]
