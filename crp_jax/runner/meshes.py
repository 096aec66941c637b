"""The device meshes of a run: a 1-D ``data`` mesh for attacks and evaluation, and the one training uses."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def make_train_mesh() -> Mesh:
  """The mesh the pipeline trains on: all devices, except one per process on the CPU backend.

  The CPU devices of one process are slices of the same cores
  (``jax_num_cpu_devices``), and XLA:CPU already spreads one device's
  convolutions over all of them; two devices add an all-reduce and a second
  copy of the Adam update. On 2 cores a ResNet-18 crp step ran 9–11% faster
  on one device than sharded over two, LeNet's 3–7%
  (``python -m benchmarks.probes.train_probe mesh --model=resnet18``). Attacks, with
  many steps per batch and no optimizer, stay on :func:`make_mesh`.
  """
  if jax.default_backend() != "cpu":
    return make_mesh()
  return make_mesh([jax.local_devices(process_index=p)[0] for p in range(jax.process_count())])
