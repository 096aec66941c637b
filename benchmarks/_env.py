"""Process-level CPU settings of the benchmarks, and a description of the machine.

Two settings are made before the process starts (they cannot be changed
from inside a running one), by re-executing it once:

* ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: glibc then asks for transparent
  huge pages on the large blocks it maps. XLA's CPU runtime allocates each
  program's temporary buffer afresh per execution (a LeNet step on 2 devices
  maps 2 x 42 MB), and on this VM every 4 KiB first-touch page fault costs
  about 5 µs: some 20,000 faults, about half of a LeNet step. With huge pages
  that drops to a few hundred. glibc before 2.35 ignores the tunable.
* ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``:
  convolutions go to XLA's Eigen kernels instead of YNNPACK (dots, reductions
  and elementwise fusions stay on YNNPACK). YNNPACK's weight-gradient
  convolution is up to 10x slower than Eigen's on 3x3 kernels over 32x32 maps
  (ResNet-18's first stage), while its forward is no faster.

Neither changes any result beyond float rounding: the first is a memory
allocation policy, the second picks another kernel for the same convolution.
The device count is not set here: :func:`experiments.cli.setup_devices` does
it, as for the real command line.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

HUGETLB = "glibc.malloc.hugetlb=1"
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
_MARK = "CRP_BENCH_ENV"


def tuned_env(environ: Mapping[str, str]) -> dict[str, str]:
  """``environ`` plus the tuned settings (kept if already there)."""
  env = dict(environ)
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
  if HUGETLB not in tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables + [HUGETLB])
  flags = env.get("XLA_FLAGS", "").split()
  env["XLA_FLAGS"] = " ".join(flags + [f for f in XLA_CPU_FLAGS if f not in flags])
  return env


def reexec_tuned(module: str, argv: list[str]) -> None:
  """Re-executes ``python -m module argv`` once with :func:`tuned_env`; returns in the child."""
  if os.environ.get(_MARK) == "1":
    return
  env = tuned_env(os.environ)
  env[_MARK] = "1"
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


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
