"""The benchmarks' process setup, command-line plumbing and description of the machine and versions.

The process settings (huge pages for glibc's large blocks, Eigen instead of
YNNPACK for single convolutions) are the entry points' own, defined and
explained in :mod:`crp_jax.runner.process`; the harness re-executes itself with
them, as ``python -m experiments.run`` does, unless ``--plain`` is given.
The device count is the real command line's (:func:`crp_jax.runner.process.setup_devices`).
The benchmark's own addition is the allocator (:func:`allocator_preload`):
tcmalloc when installed, for both contenders.

Every benchmark and probe is an absl program (``app.run``) whose bad flag
or argument ends it with one line on stderr and status 2
(:func:`parse_flags`, :func:`usage_error`), as ``experiments/cli.py`` does
for the real command line; the benchmarks do not import ``experiments``.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from typing import Mapping, NoReturn, Sequence

from absl import flags, logging

from crp_jax.runner import process
from crp_jax.runner.process import HUGETLB, XLA_CPU_FLAGS, reexec_tuned, tuned_env  # noqa: F401

USAGE_EXIT = 2


def usage_error(message: str) -> NoReturn:
  """Prints ``error: message`` as one line on stderr and exits with status 2."""
  print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


def selected_rows(argv: Sequence[str], rows_flag: str, known: Sequence[str]) -> list[str]:
  """The rows a ``--rows`` flag names, in its order; a stray argument or an unknown row is a usage error."""
  if len(argv) > 1:
    usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  names = [n for n in rows_flag.split(",") if n]
  unknown = set(names) - set(known)
  if unknown:
    usage_error(f"--rows: unknown rows {sorted(unknown)}; choose from {','.join(known)}")
  return names


def parse_flags(argv: Sequence[str]) -> list[str]:
  """``app.run``'s parser: absl's flags from ``argv`` (program name first), a bad one in one line.

  Returns the arguments that are not flags, program name first. absl
  logging goes to warnings unless ``--verbosity`` is given (``app.run``
  would log at INFO, and orbax and tfds chatter there).
  """
  try:
    rest = flags.FLAGS(list(argv))
  except flags.Error as e:
    usage_error(str(e).splitlines()[0])
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  return rest


def setup_devices() -> None:
  """The command line's devices (:func:`crp_jax.runner.process.setup_devices`); a bad value in one line."""
  try:
    process.setup_devices()
  except ValueError as e:
    usage_error(str(e))


def setup_process(module: str) -> None:
  """What a probe sets first in its main, as the command line does (:func:`process.setup_entry_point`)."""
  try:
    process.setup_entry_point(module, sys.argv[1:])
  except ValueError as e:
    usage_error(str(e))


TCMALLOC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                 "/usr/local/lib")


def find_tcmalloc(dirs: tuple[str, ...] = TCMALLOC_DIRS) -> str | None:
  """The path of gperftools' ``libtcmalloc_minimal.so.4`` (or ``libtcmalloc.so.4``), if installed."""
  for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
    for d in dirs:
      hits = glob.glob(os.path.join(d, name))
      if hits:
        return hits[0]
  return None


def allocator_preload(choice: str, found: str | None) -> str | None:
  """What to ``LD_PRELOAD`` for ``--allocator`` (``auto``, ``tcmalloc``, ``glibc``); ``None``: glibc malloc.

  With glibc's malloc, the two frameworks in one process hand each other's
  freed pages back to the kernel, and whichever runs next pays to fault them
  in again (2.5–3 s of system time per ResNet-18 step for crp_jax after
  torch; for torch after crp_jax under jemalloc). tcmalloc keeps freed memory
  in the process, and each runs as fast as alone; see benchmarks/results.md.
  """
  if choice == "glibc" or (choice == "auto" and found is None):
    return None
  if found is None:
    raise SystemExit("--allocator=tcmalloc: libtcmalloc_minimal.so.4 not found "
                     "(apt install libtcmalloc-minimal4), or pass --allocator=glibc")
  return found


def allocator_env(choice: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """The ``LD_PRELOAD`` that gives the re-executed harness the ``--allocator`` it asks for (or nothing)."""
  preload = allocator_preload(choice, find_tcmalloc())
  if preload is None:
    return {}
  return {"LD_PRELOAD": " ".join(filter(None, [environ.get("LD_PRELOAD", ""), preload]))}


def loaded_allocator() -> str:
  """``tcmalloc``/``jemalloc`` if mapped into this process, else ``glibc malloc``."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:
    return "unknown"
  return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), "glibc malloc")


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


def versions(references: Sequence[str] = ("torch", "torchattacks")) -> dict[str, str]:
  """Versions of the packages whose speed is measured: JAX's stack, then the ``references``."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}
  for name in references:
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = "not installed"
  out["glibc"] = "-".join(platform.libc_ver())
  return out
