"""Orbax checkpoints in the workdir, with config checks and safe fallback.

Orbax writes each step into a temporary folder and renames it when done,
so a kill during a save leaves the previous step usable. ``config.json``
beside the checkpoints says what run they belong to: resuming with a
different config is refused and the differing fields are named.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable

import jax
import ml_collections
import orbax.checkpoint as ocp

from crp_jax import io

#: Fields that may change between a run and its resumption with
#: ``allow_config_change``: they do not affect the training trajectory.
SAFE_TO_CHANGE: tuple[str, ...] = ("eval.", "log_every_steps", "checkpoint_every_steps",
                                   "max_checkpoints", "tfds_data_dir", "progress")


class CheckpointError(ValueError):
  """A checkpoint that cannot be used for this run."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"eval": {"eps": 0.3}}`` -> ``{"eval.eps": 0.3}``; lists for tuples."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Fields whose values differ, as ``field: saved -> current`` strings."""
  a, b = flatten(saved), flatten(current)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _unsafe(diffs: Iterable[str]) -> list[str]:
  return [d for d in diffs if not d.split(":")[0].startswith(SAFE_TO_CHANGE)]


def check_config(workdir: str, config: ml_collections.ConfigDict, *,
                 allow_config_change: bool = False) -> None:
  """Refuses to reuse a workdir whose saved ``config.json`` differs from ``config``.

  With ``allow_config_change`` only the fields in :data:`SAFE_TO_CHANGE`
  may differ. Writes nothing.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    saved = io.read_json(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from None
  diffs = config_diff(saved, config.to_dict())
  bad = _unsafe(diffs) if allow_config_change else diffs
  if bad:
    hint = "" if allow_config_change else " (eval-only changes are allowed with --allow_config_change)"
    raise CheckpointError(f"workdir {workdir} holds a run with another config; use another --workdir "
                          f"or the same config. Differing fields: {'; '.join(bad)}{hint}")


class Checkpointer:
  """Periodic train-state checkpoints under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(state))
      self._manager.wait_until_finished()

  def restore_latest(self, template: Any) -> Any | None:
    """The newest restorable state shaped like ``template``, or ``None`` if none exists.

    A corrupt newest step (a truncated or missing file) is skipped with a
    warning and the previous one is tried; if none loads, raises.
    """
    steps = self.steps()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    errors = []
    for step in reversed(steps):
      try:
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many types for bad files; report them all
        errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable; trying an older one")
    if errors:
      raise CheckpointError(f"no usable checkpoint in {self.directory} ({'; '.join(errors)}); "
                            "delete the folder to start afresh")
    return None

  def close(self) -> None:
    self._manager.close()
