"""The region collapse's parts (``rules/collapse_linear.py`` is the rule): ``plans`` (the exact forms of a
region and how they combine), ``costs`` (what each form costs, and the choice) and ``write`` (the chosen
form written back as nodes)."""
