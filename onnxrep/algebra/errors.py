"""The one error the algebra raises."""


class NotRepresentable(ValueError):
    """The requested combination is not exactly one conv / affine map.

    The message is a short human-readable reason; rules surface it in ``--explain``.
    """
