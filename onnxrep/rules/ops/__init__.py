"""How the rules read ONNX ops: ``linear`` (Conv, BatchNormalization, Gemm, per-channel affines, pads and
crops read as algebra forms, and the attributes rules write back) and ``views`` (ops that only relabel a
tensor's elements: Reshape, Flatten, Squeeze, Unsqueeze, Identity)."""
