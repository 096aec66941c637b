"""Test setup: 4 fake CPU devices so sharding is tested on a laptop, strict numerics."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
