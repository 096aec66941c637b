"""Entry points: ``python -m experiments.run`` and ``python -m experiments.evaluate``."""
