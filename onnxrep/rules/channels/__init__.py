"""Dead-channel elimination's parts (``rules/dead_channels.py`` is the rule): ``slots`` (how each op moves
channels: the slot an input channel lands in) and ``values`` (the constant each dead channel carries
through the graph, and the components of channels that must go together)."""
