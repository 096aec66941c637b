"""Process-level settings of the entry points, made before JAX starts.

Two CPU settings speed up XLA:CPU without changing any result beyond float
rounding (measured in ``benchmarks/results.md``):

* ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: glibc asks for transparent huge
  pages on its large blocks. XLA maps each program's temporary buffer afresh
  per execution, and every 4 KiB first-touch page fault costs about 5 µs on
  a small VM (20,000 faults in a LeNet step). glibc reads it at process
  start only, so :func:`reexec_tuned` re-executes the command once.
* ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: single
  convolutions go to Eigen instead of YNNPACK, whose weight gradients of 3x3
  kernels are up to 10x slower (ResNet-18's first stage). The flag and the
  jaxlib versions that get it are the library's (:mod:`crp_jax.cpu`, which
  gives it per executable elsewhere; ``import crp_jax`` sets nothing); the
  re-executed command has it from the start, for every executable.

And a persistent compilation cache (:func:`setup_compilation_cache`), so a
second model of the same shapes, or the same command run again, loads its
attacks and train step instead of compiling them.

``CRP_PLAIN_PROCESS=1`` turns all three off.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

from crp_jax import cpu

HUGETLB = "glibc.malloc.hugetlb=1"
XLA_CPU_FLAGS = cpu.FLAGS
_MARK = "CRP_TUNED_PROCESS"
PLAIN = cpu.PLAIN


def tuned_env(environ: Mapping[str, str]) -> dict[str, str]:
  """``environ`` plus the tuned settings (kept if already there)."""
  env = dict(environ)
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
  if HUGETLB not in tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables + [HUGETLB])
  flags = cpu.flags_for(cpu.jaxlib_version())
  if flags:
    env["XLA_FLAGS"] = cpu.with_flags(env.get("XLA_FLAGS", ""), flags)
  return env


def reexec_tuned(module: str, argv: list[str], extra: Mapping[str, str] | None = None) -> None:
  """Re-executes ``python -m module argv`` once with :func:`tuned_env` and ``extra``; returns in the child.

  Only on Linux with glibc (elsewhere the settings mean nothing), and not
  with ``CRP_PLAIN_PROCESS=1``.
  """
  if os.environ.get(_MARK) == "1" or os.environ.get(PLAIN) == "1":
    return
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return
  env = {**tuned_env(os.environ), **(extra or {})}
  env[_MARK] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def cpu_device_count(override: str | None) -> int:
  """``override`` (``CRP_CPU_DEVICES``) as a positive integer, else the largest power of two <= the cores.

  The power of two keeps the usual batch sizes divisible on, say, a 6-core
  machine. Raises ``ValueError`` with a one-line message on a bad override.
  """
  if override is None:
    return 1 << ((os.cpu_count() or 1).bit_length() - 1)
  try:
    count = int(override)
  except ValueError:
    count = 0
  if count < 1:
    raise ValueError(f"CRP_CPU_DEVICES={override!r}: must be an integer >= 1")
  return count


def setup_devices(environ: Mapping[str, str] = os.environ) -> None:
  """One XLA CPU device per core (:func:`cpu_device_count`), so the batch is sharded; before JAX starts.

  It only affects the CPU backend (an accelerator stays the default
  device). The entry points and the benchmarks both call it, so both run
  on the same devices.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", cpu_device_count(environ.get("CRP_CPU_DEVICES")))


def compilation_cache_dir(environ: Mapping[str, str]) -> str | None:
  """``CRP_COMPILATION_CACHE`` (empty: off), else ``$XDG_CACHE_HOME/crp_jax/jax`` or ``~/.cache/...``."""
  if environ.get(PLAIN) == "1":
    return None
  if "CRP_COMPILATION_CACHE" in environ:
    return environ["CRP_COMPILATION_CACHE"] or None
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "crp_jax", "jax")


def setup_compilation_cache(environ: Mapping[str, str] = os.environ) -> str | None:
  """Points JAX's persistent compilation cache at :func:`compilation_cache_dir`.

  Leaves a ``JAX_COMPILATION_CACHE_DIR`` set by the user alone, and skips a
  folder it cannot create or write (the cache is an optimisation only).
  Returns the folder in use, or ``None``.
  """
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return environ["JAX_COMPILATION_CACHE_DIR"]
  path = compilation_cache_dir(environ)
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  if not os.access(path, os.W_OK):
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  # Programs that take under half a second to compile are not worth a file.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def setup_entry_point(module: str, argv: list[str]) -> None:
  """Everything a command (``python -m module argv``) sets before JAX starts; call it first.

  Re-executes the command once with :func:`tuned_env`, then sets the CPU
  device count (:func:`setup_devices`) and the persistent compilation
  cache. The entry points and the benchmarks both start here, so both run
  under the same settings. Raises ``ValueError`` on a bad ``CRP_CPU_DEVICES``.
  """
  reexec_tuned(module, argv)
  setup_devices()
  setup_compilation_cache()
