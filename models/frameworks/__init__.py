"""Reference networks written in other frameworks than PyTorch, exported by their own ONNX exporters.

One module per framework (``keras_nets`` with tf2onnx, ``paddle_nets`` with paddle2onnx, ``flax_nets``
with jax2onnx), each with the same API::

    NETWORKS: tuple[str, ...]            # ("repvgg", "acnet")
    OPSETS: tuple[int, ...]              # the opsets exported and tested: (13, 17)
    LAYOUT: str                          # the input layout, "NHWC" or "NCHW"
    INPUT_HW: tuple[int, int]            # the spatial size a static export states (32, 32)
    def export_pair(network, out_dir, *, opset=13, seed=0, dynamic_spatial=False)
        -> tuple[Path, Path]             # (training form, hand-fused deploy form), same seeded weights
    def predict(network, inputs, *, seed=0)
        -> tuple[list, list]             # the framework's own outputs of both forms on each input

The training form has RepVGG / ACNet blocks (stride-2 stages with the framework's 'same' padding,
grouped convs, BN with random running statistics); the deploy form is fused by hand in that
framework, for ``INPUT_HW`` (exact on every size whose stride-2 blocks see even sizes). Both have a
dynamic batch dimension; ``dynamic_spatial=True`` makes the spatial dims dynamic too. The frameworks
are the ``frameworks`` extra; onnxrep itself imports none of them, and neither does this package's
``__init__``. TensorFlow and PaddlePaddle crash each other in one process: ``python -m
models.frameworks FRAMEWORK OUT_DIR`` makes one framework's files in a process of its own.
"""
