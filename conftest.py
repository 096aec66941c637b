"""Test setup: 4 fake CPU devices so sharding is tested on a laptop, strict numerics."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# The CLI runs of the tests share one compilation cache, away from ~/.cache.
os.environ.setdefault("CRP_COMPILATION_CACHE", tempfile.mkdtemp(prefix="crp-test-xla-cache-"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
