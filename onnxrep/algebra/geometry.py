"""Per-axis geometry of a conv window: output lengths and the pads of 'same' padding.

A conv with kernel ``k``, stride ``s``, dilation ``d`` and pads ``(p_b, p_e)`` on ``L`` pixels has
``floor((L + p_b + p_e - d (k - 1) - 1) / s) + 1`` outputs, i.e. ``floor((L - 1 + e) / s) + 1`` with
the *slack* ``e = p_b + p_e - d (k - 1)``.
"""
from __future__ import annotations


def slack(kernel: int, dilation: int, begin: int, end: int) -> int:
    """``e = p_b + p_e - d (k - 1)``: what the output length depends on besides ``L`` and ``s``."""
    return begin + end - dilation * (kernel - 1)


def output_length(length: int, stride: int, slack: int) -> int:
    """Outputs of a conv of slack ``e`` on ``L`` pixels: ``floor((L - 1 + e) / s) + 1``."""
    return (length - 1 + slack) // stride + 1


def same_pads(length: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """``(p_b, p_e)`` of ONNX ``auto_pad=SAME_UPPER`` (``upper``) or ``SAME_LOWER`` on ``L`` pixels.

    The output has ``ceil(L / s)`` pixels and the total pad is
    ``max((ceil(L / s) - 1) s + d (k - 1) + 1 - L, 0)``; SAME_UPPER puts the odd pixel at the end
    (TensorFlow's 'same'), SAME_LOWER at the beginning. With ``s = 1`` it does not depend on ``L``.
    """
    out = -(-length // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - length, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)
