"""Test setup: 4 fake CPU devices so sharding is tested on a laptop, strict numerics."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# The CLI runs of the tests share one compilation cache, away from ~/.cache.
os.environ.setdefault("CRP_COMPILATION_CACHE", tempfile.mkdtemp(prefix="crp-test-xla-cache-"))
# The suite checks results, not speed, and most of its time is XLA compiling small programs: at
# XLA's backend optimisation level 0 (JAX's jax_disable_most_optimizations, inherited by the CLI
# subprocesses) they compile in about half the time. The CLI, the studies and benchmarks/ run
# fully optimised; `pytest -m slow` runs the long checks the same way as the suite.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
