"""CPU settings for crp_jax in any process: an XLA flag at import, a heap cap per executable, malloc on request.

Measured in a plain process on a 2-core VM (``python -m benchmarks.plain``;
``benchmarks/results.md``, plain-process table). None changes a result
beyond float rounding (a different convolution kernel sums in a different
order; the heap cap keeps the bits); the test suite runs with the flag.

* **The XLA flag** ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``,
  applied by ``import crp_jax``: single convolutions go to Eigen instead of
  YNNPACK, whose 5x5 convolutions and their gradients are 2-3x slower on this
  CPU (LeNet's second convolution: 39 vs 100 ms at batch 256; a user's
  ``ball_loss`` step 3.3x faster). XLA reads ``XLA_FLAGS`` once, when JAX
  starts its first backend (the first ``jax.devices()``, array or compiled
  call), not at ``import jax``; so the flag is added to
  ``os.environ["XLA_FLAGS"]`` only if no backend has started. It exists in
  jaxlib 0.10 only, and XLA aborts on an unknown flag, so other jaxlib
  versions get nothing.
* **glibc's malloc keeping freed memory** (``mallopt(M_MMAP_MAX, 0)`` and an
  infinite ``M_TRIM_THRESHOLD``), only with
  ``configure_cpu(retain_freed_memory=True)``: the same faults for every
  block over 32 MiB, XLA's or not. The CLI's LeNet step at batch 128 took
  15,100 faults and 52-54 ms of system time per step (162-185 ms); with
  the setting, 1,100-1,900 faults, 4-8 ms and 147-151 ms
  (``python -m benchmarks.probes.fault_probe``). It is not
  applied at import: it changes how the whole process, PyTorch included,
  uses memory (freed memory is reused, not returned to the kernel), and in
  the plain-process benchmark it sped PyTorch's large-batch steps up more
  than ours. Only with glibc on Linux, and not when a JAX accelerator plugin
  (CUDA, ROCm, TPU) is installed: there the host is not where the work is.
* **A heap cap for one executable** (:func:`compile_for_cpu`, which
  ``crp_jax.runner.train.fit`` uses for its step): XLA's
  ``xla_multiheap_size_constraint_per_heap`` keeps the temporary heaps under
  glibc's mmap threshold, so the faults above stop for XLA alone, with the
  same bits. As a global ``XLA_FLAGS`` flag it cost the ``ball_loss`` step
  14% and the CLI's ResNet-18 step 19% (2026-12-01, ``benchmarks/results.md``),
  so it is given per executable (``compiler_options``), and only in the size
  window where it helped (:func:`heap_split_options`).

``import crp_jax`` applies the flag (:func:`on_import`) and prints one line
saying so. ``CRP_JAX_CPU_TUNING`` controls this:

* unset: apply it and say so once;
* ``1``: apply it silently (the entry points set this);
* ``0``: apply nothing (so does ``CRP_PLAIN_PROCESS=1``).

If JAX had already started a backend on the CPU, the line says the flag
could not be applied and how to get it: :func:`configure_cpu`, called before
any JAX computation, applies it whatever the environment says.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any, Callable, Mapping, MutableMapping

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
ENV = "CRP_JAX_CPU_TUNING"
PLAIN = "CRP_PLAIN_PROCESS"
_JAXLIB = "0.10."
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4     # glibc's malloc.h
_INT_MAX = 2**31 - 1
#: Per-executable XLA option (``compiler_options``) that caps each temporary heap's size.
HEAP_OPTION = "xla_multiheap_size_constraint_per_heap"
MMAP_THRESHOLD_MAX = 32 * 2**20   # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
HEAP_BYTES = 30 * 2**20
HEAP_SPLIT_MAX = 128 * 2**20


@dataclasses.dataclass(frozen=True)
class CpuSettings:
  """What :func:`configure_cpu` did.

  Attributes:
    added: flags appended to ``XLA_FLAGS`` by this call.
    flags: the flags this jaxlib gets (empty where none is known to help).
    status: the XLA flag: ``"added"``, ``"present"`` (already in ``XLA_FLAGS``),
      ``"opted_out"``, ``"unsupported"`` (another jaxlib) or ``"too_late"`` (a
      backend had started).
    malloc: ``"default"`` (not asked for), ``"retain"`` (set), ``"opted_out"``,
      ``"accelerator"`` (a JAX accelerator plugin is installed) or ``"not_glibc"``.
  """
  added: tuple[str, ...]
  flags: tuple[str, ...]
  status: str
  malloc: str = "default"

  @property
  def active(self) -> bool:
    """Whether the XLA flags are in effect in this process."""
    return self.status in ("added", "present")


def jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def flags_for(version: str) -> tuple[str, ...]:
  """The flags for jaxlib ``version``: :data:`FLAGS` on 0.10.x, none elsewhere."""
  return FLAGS if version.startswith(_JAXLIB) else ()


def _name(flag: str) -> str:
  return flag.split("=", 1)[0]


def missing_flags(xla_flags: str, flags: tuple[str, ...]) -> tuple[str, ...]:
  """Those of ``flags`` whose name ``xla_flags`` does not set (a value the user chose stays theirs)."""
  have = {_name(f) for f in xla_flags.split()}
  return tuple(f for f in flags if _name(f) not in have)


def with_flags(xla_flags: str, flags: tuple[str, ...]) -> str:
  """``xla_flags`` with each of ``flags`` appended unless it already sets that flag (to any value)."""
  return " ".join(xla_flags.split() + list(missing_flags(xla_flags, flags)))


def backends_started() -> bool:
  """Whether JAX has started a backend (after which ``XLA_FLAGS`` is not read again)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def accelerator_plugin() -> bool:
  """Whether a JAX accelerator plugin is installed (CUDA/ROCm register ``jax_plugins``; TPU is ``libtpu``)."""
  return bool(importlib.metadata.entry_points(group="jax_plugins")) or importlib.util.find_spec("libtpu") is not None


def keep_freed_memory() -> str:
  """Sets glibc's malloc to serve large blocks from its heap and keep what is freed; returns the malloc status."""
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return "not_glibc"
  if accelerator_plugin():
    return "accelerator"
  libc = ctypes.CDLL(None)
  ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
  return "retain" if ok else "not_glibc"


def configure_cpu(environ: MutableMapping[str, str] | None = None, *, retain_freed_memory: bool = False,
                  version: str | None = None, started: Callable[[], bool] = backends_started,
                  malloc: Callable[[], str] = keep_freed_memory, opt_out: bool = False) -> CpuSettings:
  """Adds :data:`FLAGS` to ``XLA_FLAGS`` if still possible, and with ``retain_freed_memory`` sets malloc.

  Call it before the first JAX computation; ``import crp_jax`` does, without
  ``retain_freed_memory`` (see the module doc). Idempotent. Returns what it
  did; prints nothing.

  Args:
    environ: the environment to change (``os.environ``).
    retain_freed_memory: also set glibc's malloc to keep freed memory (module doc).
    version: the jaxlib version (default: the installed one).
    started: whether a JAX backend has started (default: :func:`backends_started`).
    malloc: sets malloc and returns its status (default: :func:`keep_freed_memory`).
    opt_out: respect ``CRP_JAX_CPU_TUNING=0`` and ``CRP_PLAIN_PROCESS=1`` (the import-time call does).
  """
  env = os.environ if environ is None else environ
  flags = flags_for(jaxlib_version() if version is None else version)
  if opt_out and (env.get(ENV) == "0" or env.get(PLAIN) == "1"):
    return CpuSettings((), flags, "opted_out", "opted_out")
  memory = malloc() if retain_freed_memory else "default"
  if not flags:
    return CpuSettings((), flags, "unsupported", memory)
  missing = missing_flags(env.get("XLA_FLAGS", ""), flags)
  if not missing:
    return CpuSettings((), flags, "present", memory)
  if started():
    return CpuSettings((), flags, "too_late", memory)
  env["XLA_FLAGS"] = with_flags(env.get("XLA_FLAGS", ""), flags)
  return CpuSettings(missing, flags, "added", memory)


def notice(settings: CpuSettings, environ: Mapping[str, str]) -> str | None:
  """The one line ``import crp_jax`` prints for ``settings``, or ``None`` (nothing to say, or ``CRP_JAX_CPU_TUNING=1``)."""
  if environ.get(ENV) == "1":
    return None
  if settings.status == "added":
    return f"crp_jax: added {' '.join(settings.added)} to XLA_FLAGS (faster CPU convolutions; {ENV}=0 opts out)"
  if settings.status == "too_late" and _on_cpu():
    return (f"crp_jax: JAX started before `import crp_jax`, so XLA_FLAGS lacks {' '.join(settings.flags)} "
            "(CPU convolutions 2-3x faster): import crp_jax first, or call crp_jax.configure_cpu() "
            f"before any JAX computation; {ENV}=0 silences this")
  return None


def _on_cpu() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() == "cpu"


def heap_split_options(temp_bytes: int | None, backend: str, environ: Mapping[str, str] | None = None,
                       version: str | None = None) -> dict[str, int] | None:
  """XLA options for one executable whose temporaries glibc would map afresh at every run, or ``None``.

  XLA:CPU packs an execution's temporaries into one block; over glibc's
  largest mmap threshold (:data:`MMAP_THRESHOLD_MAX`) that block is a fresh
  ``mmap`` each run and every page faults on first touch (module doc). With
  ``xla_multiheap_size_constraint_per_heap`` at :data:`HEAP_BYTES` the same
  buffers go into heaps under the threshold, which glibc reuses; the
  results are bit-identical (``tests/test_cpu.py``). Given only where it
  helped (``python -m benchmarks.probes.options_probe``): a CPU executable on
  jaxlib 0.10 with ``temp_bytes`` in (32, 128] MiB. In a plain process the
  CLI's LeNet step ran 27% faster alone at batch 128 (58.8 MiB) and 15% at
  256 (80.6 MiB); larger temporaries hold buffers above the heap size, and
  the cap cost 10-18% (LeNet at batch 512 and 1,024: 161 and 322 MiB); the
  ResNet-18 step (947 MiB) was slower with it too. ``benchmarks/results.md`` has the
  tables. ``CRP_JAX_CPU_TUNING=0`` opts out.

  Args:
    temp_bytes: the executable's temporaries (``memory_analysis().temp_size_in_bytes``).
    backend: the platform it runs on (``"cpu"``, ``"gpu"``, ...).
    environ: the environment for the opt-out (``os.environ``).
    version: the jaxlib version (default: the installed one).
  """
  env = os.environ if environ is None else environ
  if env.get(ENV) == "0" or env.get(PLAIN) == "1" or backend != "cpu" or temp_bytes is None:
    return None
  if not flags_for(jaxlib_version() if version is None else version):
    return None
  return {HEAP_OPTION: HEAP_BYTES} if MMAP_THRESHOLD_MAX < temp_bytes <= HEAP_SPLIT_MAX else None


def compile_for_cpu(jitted: Any, *args: Any) -> Any:
  """``jitted.lower(*args).compile()``, compiled again with :func:`heap_split_options` where they apply.

  Returns a ``jax.stages.Compiled`` for arguments of ``args``' shapes and
  shardings: a train loop calls it in place of ``jitted``. The second
  compile happens only when JAX's default backend is the CPU and the
  temporaries lie in the size window (about a second for the CLI's LeNet step).
  """
  import jax  # pylint: disable=g-import-not-at-top
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
  options = heap_split_options(temp, jax.default_backend())
  return lowered.compile(compiler_options=options) if options else compiled


def on_import() -> CpuSettings:
  """What ``import crp_jax`` runs: :func:`configure_cpu` with the opt-outs, and its :func:`notice` on stderr."""
  settings = configure_cpu(opt_out=True)
  line = notice(settings, os.environ)
  if line:
    print(line, file=sys.stderr, flush=True)
  return settings
