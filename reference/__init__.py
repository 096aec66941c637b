"""The PyTorch reference implementations that the benchmarks and the parity tool compare against.

Kept apart from both so that neither imports the other: ``benchmarks/``
times crp_jax against these networks, ``tools/parity.py`` checks its attacks
against torchattacks on them. Importing :mod:`reference.torch_models` needs
``torch`` (the optional ``.[bench]`` extra).
"""
