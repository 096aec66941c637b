"""Throughput benchmarks: ``python -m benchmarks.run`` (the table), ``benchmarks.probes`` (the notes' probes)."""

import os

# The commands' settings are theirs to state (crp_jax.runner.process): import crp_jax applies its CPU
# settings (crp_jax.cpu) without its one-line notice.
os.environ.setdefault("CRP_JAX_CPU_TUNING", "1")
