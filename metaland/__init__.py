"""metaland: reproducible loss-landscape studies of gradient-based meta-learning.

The package is functional at its core: models are evaluated with ``torch.func.functional_call``
on parameter dicts, inner loops are pure functions of (params, task), and the probes operate on
the same functions, so the landscape probed is exactly the one trained. See ``../DESIGN.md`` of
the project for the DAG and ``README.md`` for the two commands.
"""

__version__ = "0.1.0"
