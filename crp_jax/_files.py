"""Atomic files for the library and the runner: a file appears whole or not at all.

A write goes to a temporary file in the target's folder (prefix
:data:`TEMP_PREFIX`), is flushed and renamed over the target; a crash or
SIGKILL mid-write leaves the previous file intact and at worst a stray
temporary file, which :func:`remove_stale_temps` deletes. The runner's
:mod:`crp_jax.runner.atomic` adds the rule that only process 0 writes.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np

#: Prefix of the temporary files renamed into place.
TEMP_PREFIX = ".tmp-"


def write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` via a temporary file in the same folder, flushed, then renamed."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
  try:
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_dir(folder)


def write_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes ``arrays`` as one ``.npz`` file, atomically (read it with ``np.load(path, allow_pickle=False)``)."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  write_bytes(path, buf.getvalue())


def _fsync_dir(folder: str) -> None:
  """Makes a rename in ``folder`` durable across a power loss (best effort)."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def remove_stale_temps(folder: str) -> list[str]:
  """Deletes the temporary files a killed write left in ``folder``; returns their names."""
  if not os.path.isdir(folder):
    return []
  stale = sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)
                 and os.path.isfile(os.path.join(folder, n)))
  for name in stale:
    os.remove(os.path.join(folder, name))
  return stale
