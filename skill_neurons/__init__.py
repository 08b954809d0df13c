"""The ``skill-neurons`` command and its tools (the top layer): the CLI, sweeps, the report, prompt import.

Nothing in ``lightning_modules``, ``datamodules`` or ``callbacks`` imports this package (tests/test_layers.py)."""
