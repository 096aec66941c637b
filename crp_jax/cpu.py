"""CPU settings for XLA:CPU: options per executable, and process-wide ones on request. Importing changes nothing.

Measured in a plain process on a 2-core VM (``python -m benchmarks.plain``;
``benchmarks/results.md``, plain-process table). None changes a result
beyond float rounding (a different convolution kernel sums in a different
order; the heap cap keeps the bits).

* **Eigen for single convolutions**, XLA's option
  ``xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: single
  convolutions go to Eigen instead of YNNPACK, whose 5x5 convolutions and
  their gradients are 2-3x slower on this CPU (LeNet's second convolution:
  39 vs 100 ms at batch 256; a user's ``ball_loss`` step 3.3x faster).
* **A heap cap**, ``xla_multiheap_size_constraint_per_heap``: XLA:CPU packs an
  execution's temporaries into one block, and glibc serves a block over
  32 MiB with a fresh ``mmap`` at every run, so every page faults again. The
  cap keeps the heaps under that threshold, with the same bits. As a global
  flag it cost the ``ball_loss`` step 14% and the CLI's ResNet-18 step 19%
  (2026-12-01, ``benchmarks/results.md``), so it is given only to an
  executable whose temporaries lie where it helped (:func:`heap_split_options`).

Both are XLA options of one executable (``compiler_options``), so they go
where an executable is compiled, not into the process:

* :func:`compile_for_cpu` ``(jitted, *args)``: the one call for a step of
  your own; ``crp_jax.runner.train.fit`` compiles its step with it, and
  :func:`crp_jax.attacks.autoattack` its attacks.
* :func:`compiler_options` for ``jax.jit(f, compiler_options=...)`` where
  the shapes vary (no heap cap then: it needs the compiled sizes).

``import crp_jax`` sets nothing: no environment variable, no JAX config, no
print (optax, flax and equinox do the same). The entry points
(``python -m experiments.*``) set process-wide settings for their own process
(:mod:`crp_jax.runner.process`): the same convolution option as an
``XLA_FLAGS`` flag, and huge pages. :func:`configure_cpu` is the same for a
script of yours, called before its first JAX computation, and with
``retain_freed_memory=True`` it makes glibc's malloc keep freed memory
(opt-in: it changes how the whole process, PyTorch included, uses memory).

The options exist in jaxlib 0.10 (XLA refuses an unknown option), so other
jaxlib versions get none; ``CRP_JAX_CPU_TUNING=0`` or ``CRP_PLAIN_PROCESS=1``
in the environment turns them off.
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

#: XLA's option (``compiler_options`` key, or ``XLA_FLAGS`` flag) that picks the ops YNNPACK fuses.
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
#: As a flag: XLA's default list without single convolutions.
FLAGS = (f"--{YNN_OPTION}=-individual_convolution",)
#: The same list as a per-executable option, which takes the full list (XLA refuses the flag's "-" edit
#: there): jaxlib 0.10's default, {INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE} (read from its serialised
#: DebugOptions), without the convolution. ``tests/test_cpu.py`` checks that it compiles what the flag does.
YNN_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
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
    status: the XLA flag: ``"added"``, ``"present"`` (already in ``XLA_FLAGS``)
      or ``"unsupported"`` (another jaxlib).
    malloc: ``"default"`` (not asked for), ``"retain"`` (set),
      ``"accelerator"`` (a JAX accelerator plugin is installed) or ``"not_glibc"``.
  """
  added: tuple[str, ...]
  flags: tuple[str, ...]
  status: str
  malloc: str = "default"

  @property
  def active(self) -> bool:
    """Whether the XLA flags are in ``XLA_FLAGS`` (in effect if no JAX backend had started)."""
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
                  version: str | None = None, malloc: Callable[[], str] = keep_freed_memory) -> CpuSettings:
  """Process-wide CPU settings for a script of yours: :data:`FLAGS` into ``XLA_FLAGS``, malloc on request.

  XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend (the first
  ``jax.devices()``, array or compiled call), so call it before that; later
  it changes the variable and nothing else. Idempotent; prints nothing; a
  value of the flag already in ``XLA_FLAGS`` stays. Nothing in crp_jax calls
  it: the entry points set the same flag when they start
  (:mod:`crp_jax.runner.process`), and :func:`compile_for_cpu` gives it to one
  executable without touching the process.

  Args:
    environ: the environment to change (``os.environ``).
    retain_freed_memory: also set glibc's malloc to keep freed memory (module doc).
    version: the jaxlib version (default: the installed one).
    malloc: sets malloc and returns its status (default: :func:`keep_freed_memory`).
  """
  env = os.environ if environ is None else environ
  flags = flags_for(jaxlib_version() if version is None else version)
  memory = malloc() if retain_freed_memory else "default"
  if not flags:
    return CpuSettings((), flags, "unsupported", memory)
  missing = missing_flags(env.get("XLA_FLAGS", ""), flags)
  if not missing:
    return CpuSettings((), flags, "present", memory)
  env["XLA_FLAGS"] = with_flags(env.get("XLA_FLAGS", ""), flags)
  return CpuSettings(missing, flags, "added", memory)


def _tuned(backend: str, environ: Mapping[str, str], version: str | None) -> bool:
  """Whether an executable for ``backend`` gets this module's options (a CPU, jaxlib 0.10, no opt-out)."""
  if environ.get(ENV) == "0" or environ.get(PLAIN) == "1" or backend != "cpu":
    return False
  return bool(flags_for(jaxlib_version() if version is None else version))


def heap_split_options(temp_bytes: int | None, backend: str, environ: Mapping[str, str] | None = None,
                       version: str | None = None) -> dict[str, int] | None:
  """The heap cap for one executable whose temporaries glibc would map afresh at every run, or ``None``.

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
  if temp_bytes is None or not _tuned(backend, env, version):
    return None
  return {HEAP_OPTION: HEAP_BYTES} if MMAP_THRESHOLD_MAX < temp_bytes <= HEAP_SPLIT_MAX else None


def compiler_options(backend: str | None = None, environ: Mapping[str, str] | None = None,
                     version: str | None = None) -> dict[str, str]:
  """The convolution option for ``jax.jit(f, compiler_options=...)`` on a CPU, or ``{}``.

  ``{YNN_OPTION: YNN_VALUE}`` (what :data:`FLAGS` sets, module doc) on a
  CPU with jaxlib 0.10, unless ``XLA_FLAGS`` already sets that
  flag (the process-wide value, the user's or an entry point's, stays) or
  ``CRP_JAX_CPU_TUNING=0``. Asks JAX for its default backend when
  ``backend`` is ``None``, so call it where JAX may start.

  Args:
    backend: the platform the executable runs on (default: JAX's default backend).
    environ: the environment (``os.environ``).
    version: the jaxlib version (default: the installed one).
  """
  env = os.environ if environ is None else environ
  if backend is None:
    import jax  # pylint: disable=g-import-not-at-top
    backend = jax.default_backend()
  if not _tuned(backend, env, version) or not missing_flags(env.get("XLA_FLAGS", ""), FLAGS):
    return {}
  return {YNN_OPTION: YNN_VALUE}


def compile_for_cpu(jitted: Any, *args: Any) -> Any:
  """``jitted.lower(*args).compile()`` with this module's XLA options where they apply: the one call for your step.

  Returns a ``jax.stages.Compiled`` for arguments of ``args``' shapes and
  shardings: a train loop calls it in place of ``jitted``. On a CPU it
  compiles with :func:`compiler_options` (Eigen convolutions), then, where
  the temporaries lie in the heap cap's window, once more with
  :func:`heap_split_options` added (about a second for the CLI's LeNet
  step). Elsewhere it is a plain compile. Changes nothing in the process.

  >>> import jax, jax.numpy as jnp
  >>> step = compile_for_cpu(jax.jit(lambda x: 2 * x), jnp.ones(3))
  >>> step(jnp.ones(3))
  Array([2., 2., 2.], dtype=float32)
  """
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  lowered = jitted.lower(*args)
  options = compiler_options(backend)
  compiled = lowered.compile(compiler_options=options or None)
  temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
  heap = heap_split_options(temp, backend)
  if not heap:
    return compiled
  return _not_written_to_cache(lambda: lowered.compile(compiler_options={**options, **heap}))


def _not_written_to_cache(compile_fn: Callable[[], Any]) -> Any:
  """``compile_fn()`` with JAX's persistent compilation cache writing nothing, then as it was.

  XLA:CPU cannot serialise an executable whose temporaries lie in several
  heaps (the heap cap's point): JAX's cache write fails with "Multiple temp
  buffer allocations found" and warns at every run. So this one executable
  is never written (it recompiles in about a second; the first compile, the
  one that measures the temporaries, is cached as usual). JAX writes an
  entry only when compiling took at least its threshold, here infinity.
  """
  import jax  # pylint: disable=g-import-not-at-top
  name = "jax_persistent_cache_min_compile_time_secs"
  before = getattr(jax.config, name)
  jax.config.update(name, float("inf"))
  try:
    return compile_fn()
  finally:
    jax.config.update(name, before)
