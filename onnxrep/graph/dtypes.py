"""ONNX element types by kind (one definition for the shape skeleton and the random inputs)."""
from onnx import TensorProto as T

FLOAT_TYPES = frozenset({T.FLOAT, T.DOUBLE, T.FLOAT16, T.BFLOAT16, T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2,
                         T.FLOAT8E5M2FNUZ})
INT_TYPES = frozenset({T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.UINT64})
