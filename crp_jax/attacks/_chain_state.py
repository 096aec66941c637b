"""AutoAttack's progress on disk, so that a long evaluation killed at any point resumes where it was.

A :class:`ChainState` records each finished attack (the running robust mask,
how many examples it attacked, its seconds, the points it broke) and the
chunks done of the attack in progress. It is rewritten after every chunk,
atomically (:func:`crp_jax._files.write_arrays`: a temporary file, flushed,
then renamed over the old one), so a
kill leaves either the previous state or the new one, never half of one.

Resuming gives the same bits as an uninterrupted run because every draw is
per example (:func:`~crp_jax.attacks.example_keys`): a chunk computed after
the restart is the chunk the first run would have computed. The state holds
a fingerprint of the arguments (attacks, ε, norm, batch size, key, data and
the model's clean logits); a state of other arguments is refused, not mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import jax
import numpy as np

from crp_jax import _files

FILE_NAME = "autoattack_state.npz"


class Finished(NamedTuple):
  """One finished attack: ``robust`` ``(N,)`` after it, examples attacked, seconds, the points it broke."""

  robust: np.ndarray
  attacked: int
  seconds: float
  broken: np.ndarray   # (k,) indices into the N examples
  points: np.ndarray | None   # (k, *shape), or None where the runner keeps no points


def fingerprint(*parts: object) -> str:
  """SHA-256 of ``parts``: arrays by dtype, shape and bytes (typed PRNG keys by their key data), the rest by repr."""
  h = hashlib.sha256()
  for p in parts:
    if isinstance(p, jax.Array) and jax.dtypes.issubdtype(p.dtype, jax.dtypes.prng_key):
      p = jax.random.key_data(p)
    if isinstance(p, (np.ndarray, jax.Array)):
      a = np.ascontiguousarray(np.asarray(p))
      h.update(f"{a.dtype}{a.shape}".encode())
      h.update(a.tobytes())
    else:
      h.update(repr(p).encode())
  return h.hexdigest()


class ChainState:
  """The progress of one AutoAttack run in ``folder``; see the module docstring."""

  def __init__(self, folder: str | os.PathLike, fingerprint_: str):
    self.path = os.path.join(os.fspath(folder), FILE_NAME)
    self.fingerprint = fingerprint_
    self.finished: dict[str, Finished] = {}
    self.current: str | None = None
    self.chunks: list[tuple[np.ndarray, np.ndarray | None]] = []
    self.current_seconds = 0.0

  @classmethod
  def open(cls, folder: str | os.PathLike, fingerprint_: str) -> "ChainState":
    """The state saved in ``folder`` (created if missing), or a fresh one; ``ValueError`` for another run's."""
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise ValueError(f"state_dir: {os.fspath(folder)!r} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    _files.remove_stale_temps(os.fspath(folder))   # a write a kill interrupted; the state itself is whole
    state = cls(folder, fingerprint_)
    if not os.path.exists(state.path):
      return state
    with np.load(state.path, allow_pickle=False) as f:
      meta = json.loads(str(f["meta"]))
      if meta["fingerprint"] != fingerprint_:
        raise ValueError(f"state_dir: {state.path} holds the state of an AutoAttack run with other arguments "
                         "(model, data, key, attacks, eps or batch_size); give a new folder or delete it")
      for i, (name, attacked, seconds) in enumerate(meta["finished"]):
        points = f[f"points_{i}"] if f"points_{i}" in f else None
        state.finished[name] = Finished(f[f"robust_{i}"], attacked, seconds, f[f"broken_{i}"], points)
      state.current, state.current_seconds = meta["current"], meta["current_seconds"]
      state.chunks = [(f[f"still_{c}"], f[f"chunk_{c}"] if f"chunk_{c}" in f else None)
                      for c in range(meta["chunks"])]
    return state

  def chunks_of(self, name: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The chunks already done of attack ``name`` (none unless it is the one in progress)."""
    return self.chunks if self.current == name else []

  def add_chunk(self, name: str, still: np.ndarray, points: np.ndarray | None, seconds: float) -> None:
    """Records one more chunk of attack ``name`` and saves."""
    if self.current != name:
      self.current, self.chunks, self.current_seconds = name, [], 0.0
    self.chunks.append((np.asarray(still), None if points is None else np.asarray(points)))
    self.current_seconds += seconds
    self.save()

  def finish(self, name: str, done: Finished) -> None:
    """Records attack ``name`` as finished (its chunks are dropped) and saves."""
    self.finished[name] = done
    self.current, self.chunks, self.current_seconds = None, [], 0.0
    self.save()

  def save(self) -> None:
    """Writes the state atomically: a temporary file in the same folder, flushed, renamed over the old one."""
    meta = {"fingerprint": self.fingerprint, "current": self.current, "current_seconds": self.current_seconds,
            "chunks": len(self.chunks),
            "finished": [(n, int(d.attacked), float(d.seconds)) for n, d in self.finished.items()]}
    arrays = {"meta": np.asarray(json.dumps(meta))}
    for i, d in enumerate(self.finished.values()):
      arrays[f"robust_{i}"], arrays[f"broken_{i}"] = d.robust, d.broken
      if d.points is not None:
        arrays[f"points_{i}"] = d.points
    for c, (still, points) in enumerate(self.chunks):
      arrays[f"still_{c}"] = still
      if points is not None:
        arrays[f"chunk_{c}"] = points
    _files.write_arrays(self.path, arrays)
