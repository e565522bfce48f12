"""Reference networks written in other frameworks than PyTorch, exported by their own ONNX exporters.

One module per framework (``keras_nets`` with tf2onnx, ``paddle_nets`` with paddle2onnx, ``flax_nets``
with jax2onnx), each with the same API::

    NETWORKS: tuple[str, ...]            # e.g. ("repvgg", "acnet")
    OPSETS: tuple[int, ...]              # opsets the exporter can write for them, e.g. (13, 17)
    def export_pair(network, out_dir, *, opset=13, seed=0, dynamic_spatial=False)
        -> tuple[Path, Path]             # (training form, hand-fused deploy form), same seeded weights

The training form has RepVGG / ACNet blocks (stride-2 stages, grouped convs, BN with random
running statistics); the deploy form is fused by hand in that framework. Both have a dynamic batch
dimension; ``dynamic_spatial=True`` makes the spatial dims dynamic too. The frameworks are the
``frameworks`` extra; onnxrep itself imports none of them, and neither does this package's
``__init__``: import a framework's module only where that framework is installed.
"""
