"""Multi-process runs: starting ``jax.distributed``, agreeing on the config, global inputs, one writer.

A TPU pod slice or several GPU hosts are several JAX processes, each with
its own devices, running the same program (multi-controller JAX). What
changes for a run:

* **start-up** (:func:`initialize`): ``jax.distributed.initialize`` before
  any computation, from the flags, or from what JAX reads itself
  (``JAX_COORDINATOR_ADDRESS``; Cloud TPU, SLURM, Open MPI and Kubernetes
  are auto-detected). On the CPU backend collectives go through gloo.
* **agreement** (:func:`agree`): the processes compare a digest of their
  config; if any differs, every process stops with the same one-line error
  (a process that ran on alone would wait for the others forever).
* **inputs** (:func:`global_batch`): every process holds the whole host
  batch and contributes its own slice of it; the global array is the same
  whatever the process count, so δ for ``(key, i, j)`` is the same bits.
  Parameters are replicated from host values (:func:`replicate`).
* **outputs** (:func:`is_writer`): only process 0 writes files
  (:mod:`crp_jax.runner.atomic` checks it); orbax saves collectively, as
  it expects. :func:`sync` is the barrier before another process reads
  what process 0 wrote.

With one process every function here is the identity or a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from crp_jax.runner.config import ConfigError

#: The environment variable JAX reads for the coordinator when no flag gives it.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a multi-process run (the ``--distributed`` flags of the entry points).

  Attributes:
    distributed: join one even with no other field set, letting JAX detect
      the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes).
    coordinator_address: ``host:port`` of process 0 (default: JAX's
      ``JAX_COORDINATOR_ADDRESS``, or the cluster's).
    num_processes: processes in the run.
    process_id: this process, in ``[0, num_processes)``.
    timeout_s: how long to wait for the other processes at start-up.
  """
  distributed: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = 300

  def wanted(self, environ: Mapping[str, str]) -> bool:
    """Whether this is a multi-process launch: asked for, or any of its settings given."""
    given = (self.coordinator_address, self.num_processes, self.process_id)
    return self.distributed or any(v is not None for v in given) or bool(environ.get(COORDINATOR_ENV))

  def check(self) -> None:
    """Raises :class:`ConfigError` in one line on settings that cannot start."""
    n, i = self.num_processes, self.process_id
    if n is not None and n < 1:
      raise ConfigError(f"--num_processes={n}: must be >= 1")
    if i is not None and (i < 0 or (n is not None and i >= n)):
      raise ConfigError(f"--process_id={i}: must be in [0, {n if n is not None else 'num_processes'})")
    address = self.coordinator_address
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
      raise ConfigError(f"--coordinator_address={address!r}: expected host:port, e.g. 10.0.0.2:1234")


def initialize(launch: Launch, environ: Mapping[str, str] = os.environ) -> bool:
  """Starts ``jax.distributed`` if ``launch`` asks for it; call it before any JAX computation.

  Returns whether it did. A launch that cannot start (bad settings, no
  coordinator within ``launch.timeout_s``, a cluster JAX cannot detect)
  raises :class:`ConfigError` with one line.
  """
  if not launch.wanted(environ):
    return False
  launch.check()
  # Gloo is XLA:CPU's cross-process collective library; accelerators ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=launch.coordinator_address,
                               num_processes=launch.num_processes, process_id=launch.process_id,
                               initialization_timeout=launch.timeout_s)
  except (ValueError, TypeError, RuntimeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"cannot start the multi-process run: {first} (give --coordinator_address, "
                      "--num_processes and --process_id, or run under a cluster JAX detects)") from None
  return True


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 only."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier of all processes named ``name`` (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def digest(value: Any) -> np.ndarray:
  """``(2,) uint32``: the first 8 bytes of the sha256 of ``value`` as sorted JSON."""
  text = json.dumps(value, sort_keys=True, default=str)
  return np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.uint32).copy()


def agree(what: str, value: Any) -> None:
  """Raises :class:`ConfigError` on every process unless all processes hold the same ``value``."""
  if jax.process_count() == 1:
    return
  digests = np.asarray(multihost_utils.process_allgather(digest(value)))
  differ = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
  if differ:
    raise ConfigError(f"the {len(digests)} processes disagree on the {what}: process {differ[0]}'s differs "
                      "from process 0's; launch every process with the same flags and files")


def local_rows(array: np.ndarray) -> np.ndarray:
  """This process's contiguous slice of a host batch's rows (all of them with one process)."""
  per = array.shape[0] // jax.process_count()
  return array[jax.process_index() * per:(jax.process_index() + 1) * per]


def global_batch(sharding: NamedSharding, array: np.ndarray) -> jax.Array:
  """The global array of a host batch ``array`` (the same on every process), rows split along ``sharding``.

  Each process puts only its :func:`local_rows` on its own devices.
  """
  return jax.make_array_from_process_local_data(sharding, local_rows(np.asarray(array)))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` replicated on every device of ``mesh``.

  With several processes the values go through the host: an array
  committed to one process's device cannot be sent to another's.
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x: Any) -> Any:
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    return jax.device_put(np.asarray(x), sharding)

  return jax.tree.map(put, tree)
