"""Tools that sit on top of the library and never import each other or the benchmarks.

Each is a command (e.g. ``python -m tools.parity``, ``python -m
tools.kill_resume``) built on :mod:`crp_jax` (and on :mod:`reference` for
the PyTorch side), so that removing one touches nothing else. Running
``python -m experiments.run`` as a subprocess, as ``kill_resume`` does, is
not an import.
"""
