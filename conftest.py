"""Test setup: 4 fake CPU devices so sharding is tested on a laptop, strict numerics."""

import os
import tempfile

# The suite's XLA:CPU compile flags, beside the device count: XLA:CPU's loop emitters (not its fusion
# emitters) and one codegen part per module compile small programs in about half the time, with the
# optimisation level below (python -m benchmarks.probes.compile_flags_probe). The tests' subprocesses
# keep them (tests/cli_server.py:without_device_count); the CLI, the studies and benchmarks/ do not.
TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}")
# The CLI runs of the tests share one compilation cache, away from ~/.cache.
os.environ.setdefault("CRP_COMPILATION_CACHE", tempfile.mkdtemp(prefix="crp-test-xla-cache-"))
# The suite checks results, not speed, and most of its time is XLA compiling small programs: at
# XLA's backend optimisation level 0 (JAX's jax_disable_most_optimizations, inherited by the CLI
# subprocesses) they compile in about half the time. The CLI, the studies and benchmarks/ run
# fully optimised; `pytest -m slow` runs the long checks the same way as the suite.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Each worker keeps every program it compiles in the suite's persistent cache (the CLI runs' folder), so
# a program another test compiled is loaded, not compiled again. Tests that count compiles turn it off
# (tests/test_compile_once.py, tests/test_library_inputs.py).
if os.environ["CRP_COMPILATION_CACHE"]:
  jax.config.update("jax_compilation_cache_dir", os.environ["CRP_COMPILATION_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture
def no_persistent_cache():
  """Every program of the test is compiled, none loaded from the suite's cache: for tests that count compiles."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()   # JAX decides once whether the cache is used; ask again
  yield
  jax.config.update("jax_enable_compilation_cache", before)
  compilation_cache.reset_cache()
