"""The benchmarks' description of the machine and versions.

The process settings (huge pages for glibc's large blocks, Eigen instead of
YNNPACK for single convolutions) are the entry points' own, defined and
explained in :mod:`experiments.process`; the harness re-executes itself with
them, as ``python -m experiments.run`` does, unless ``--plain`` is given.
The device count is set by :func:`experiments.cli.setup_devices`, as for
the real command line.
"""

from __future__ import annotations

import os
import platform

from experiments.process import HUGETLB, XLA_CPU_FLAGS, reexec_tuned, tuned_env  # noqa: F401


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def memory_gib() -> float | None:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError, AttributeError):
    return None


def load_average() -> str:
  try:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
  except OSError:
    return "n/a"


def versions() -> dict[str, str]:
  """Versions of the packages whose speed is measured."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}
  for name in ("torch", "torchattacks"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = "not installed"
  out["glibc"] = "-".join(platform.libc_ver())
  return out
