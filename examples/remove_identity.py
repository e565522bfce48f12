"""A pass: Identity(x) = x, so every reader of an Identity's output can read x instead.

    onnxrep optimize in.onnx out.onnx --rules-from examples/remove_identity.py
"""
from onnxrep import Pass


class RemoveIdentity(Pass):
    """Identity(x) = x: its readers read x (an Identity that writes a graph output stays)."""
    name = "remove-identity"

    def run(self, ctx):
        for node in ctx.nodes("Identity"):
            ctx.remove(node)  # one rewrite; declined (with the reason) for a graph output
