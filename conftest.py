"""Test setup: 4 fake CPU devices so sharding is tested on a laptop, strict numerics."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# The CLI runs of the tests share one compilation cache, away from ~/.cache.
os.environ.setdefault("CRP_COMPILATION_CACHE", tempfile.mkdtemp(prefix="crp-test-xla-cache-"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# The default suite runs on two xdist workers (pyproject's addopts). A module's tests stay on one
# worker, so a module-scoped fixture (a trained model, a finished run) is built once; the modules
# below have no costly shared fixture, so their slow tests spread over both workers.
SPREAD = frozenset({"test_notebooks.py", "test_study.py"})


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  import pytest  # pylint: disable=import-outside-toplevel
  for item in items:
    if item.path.name not in SPREAD:
      item.add_marker(pytest.mark.xdist_group(item.path.name))
