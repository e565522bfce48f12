"""The one error the algebra (and the rules reading ONNX nodes as forms) raise."""

#: what ``NotRepresentable.code`` may be: the kind of reason, stable for tests and tools to match
CODES = frozenset({
    "alignment",     # branches whose outputs do not line up (pads, crops, taps between dilated taps)
    "border",        # a border fill that cannot be proven to be a constant per channel
    "broadcast",     # a constant that is not one value per channel of the tensor it meets
    "channels",      # channel counts that do not fit (mismatch, not divisible by groups)
    "dilations",     # different dilations
    "dtype-range",   # the merged values do not fit the model's dtype (float16 past 65504, not finite)
    "dtype-precision",  # merged float16 weights under the normal range lose more than normal rounding
    "groups",        # groups that cannot be rewritten as other groups
    "not-constant",  # a weight, bias, pad or parameter that is not a constant
    "padding",       # padding whose border value the merged form cannot reproduce
    "rank",          # spatial ranks that differ, or shapes of the wrong rank
    "sequence",      # a sequence of convs that is not one conv (only 1x1 -> KxK and KxK -> 1x1 merge)
    "shape",         # a size or channel count that shape information does not give
    "strides",       # different strides
    "unsupported",   # an op, attribute or mode outside what the algebra models
})


class NotRepresentable(ValueError):
    """The requested combination is not exactly one conv / affine map.

    The message is a short human-readable reason (``--explain`` shows it); ``code`` is its kind,
    one of ``CODES``, for tests and tools (a message may be reworded, a code stays).
    """
    code = "unsupported"

    def __init__(self, message: str = "", code: str | None = None):
        super().__init__(message)
        if code is not None:
            if code not in CODES:
                raise ValueError(f"unknown NotRepresentable code {code!r}")
            self.code = code
