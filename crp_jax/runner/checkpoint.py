"""Orbax checkpoints in the workdir, with config checks, integrity manifests and safe fallback.

Orbax writes each step into a temporary folder and renames it when done,
so a kill during a save leaves the previous step usable; leftover
temporary folders are removed when a run restarts. Orbax does not checksum
what it reads (a truncated or altered data file can load without error),
so after each save a manifest of every file's size and sha256 is written
into the step folder and checked before that step is restored. A step that
fails the check is moved aside and the previous one is used, with a warning.

``config.json`` beside the checkpoints says what run they belong to:
resuming with a different config is refused and the differing fields are
named.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from typing import Any, Iterable

import jax
import ml_collections
import orbax.checkpoint as ocp

from crp_jax.runner import atomic, distributed
from crp_jax.runner.config import ADVERSARIAL_METHODS, SAFE_TO_CHANGE, base_config

#: The integrity manifest inside each step folder.
MANIFEST_NAME = "crp_manifest.json"
#: Where unusable steps are moved, beside ``checkpoints/``.
QUARANTINE_DIR = "corrupt_checkpoints"
#: The problem of a step without a manifest: a kill between orbax's rename
#: and the manifest, or a deleted manifest. Such a step is skipped like a
#: save that never finished; it alone never stops a run.
INCOMPLETE = f"no {MANIFEST_NAME} (the save was interrupted, or the file was deleted)"


class CheckpointError(ValueError):
  """A checkpoint or workdir that cannot be used for this run."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"eval": {"eps": 0.3}}`` -> ``{"eval.eps": 0.3}``; lists for tuples."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def without_unread(config: dict[str, Any]) -> dict[str, Any]:
  """``config`` less the fields its method never reads: ``adversary`` outside adversarial training.

  So a CRP run is the same run whatever ``adversary`` holds (and runs saved
  before the field existed keep their fingerprints and workdirs).
  """
  if config.get("method") in ADVERSARIAL_METHODS:
    return config
  return {k: v for k, v in config.items() if k != "adversary"}


#: Training fields added after runs were saved and fingerprinted, with the default that trains as
#: before: at that value a field is left out of :func:`training_fields`, so those runs keep their
#: fingerprints and workdirs.
LATER_FIELDS: dict[str, Any] = {"adversary.eps_warmup_epochs": 0.0}


def training_fields(config: dict[str, Any]) -> dict[str, Any]:
  """The flattened fields of ``config`` that shape the trained weights (all but :data:`SAFE_TO_CHANGE`,
  the fields its method never reads and :data:`LATER_FIELDS` at their defaults)."""
  return {k: v for k, v in sorted(flatten(without_unread(config)).items())
          if not k.startswith(SAFE_TO_CHANGE) and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def training_fingerprint(config: dict[str, Any], length: int = 8) -> str:
  """A short hex digest of :func:`training_fields`: equal exactly when the training runs are the same.

  Two configs that differ in any field outside :data:`SAFE_TO_CHANGE` get
  different digests (up to a hash collision, 1 in 16**length); configs that
  differ only in evaluation or logging fields share one, so they share a
  workdir and its trained weights.
  """
  text = json.dumps(training_fields(with_new_fields(config)), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Fields whose values differ, as ``field: saved -> current`` strings."""
  a, b = flatten(saved), flatten(current)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _unsafe(diffs: Iterable[str]) -> list[str]:
  return [d for d in diffs if not d.split(":")[0].startswith(SAFE_TO_CHANGE)]


def check_workdir(workdir: str, label: str = "workdir") -> None:
  """Raises :class:`CheckpointError` unless ``workdir`` is, or can become, a writable folder.

  Leaves nothing behind: it inspects ``workdir`` or, if absent, its nearest
  existing ancestor, where it also makes and removes an empty folder: the
  permission bits cannot tell, since root may write anywhere by them, yet
  ``/proc`` and ``/sys`` refuse every new entry. (An existing workdir is
  left untouched; ``os.access`` already sees a read-only mount there.)
  """
  path = os.path.abspath(workdir)
  while not os.path.lexists(path):
    path = os.path.dirname(path)
  what = "the workdir" if path == os.path.abspath(workdir) else f"its ancestor {path}"
  if not os.path.isdir(path):
    raise CheckpointError(f"cannot use {label} {workdir}: {what} is not a directory")
  if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
    raise CheckpointError(f"cannot use {label} {workdir}: {what} is not readable and writable")
  if path == os.path.abspath(workdir):
    return
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".crp-write-probe-", dir=path))
  except OSError as e:
    raise CheckpointError(f"cannot use {label} {workdir}: {what} refuses new folders ({e.strerror})") from e


def check_config(workdir: str, config: ml_collections.ConfigDict, *,
                 allow_config_change: bool = False) -> None:
  """Refuses a workdir that cannot hold this run, or holds a run with another config.

  With ``allow_config_change`` only the fields in :data:`SAFE_TO_CHANGE`
  may differ from the saved ``config.json``. Writes nothing.
  """
  check_workdir(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.lexists(path):
    if os.path.lexists(os.path.join(workdir, "checkpoints")):
      raise CheckpointError(f"workdir {workdir} holds checkpoints but no config.json, so they cannot "
                            "be matched to this config; use another --workdir")
    return
  try:
    saved = atomic.read_json(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from None
  if not isinstance(saved, dict):
    raise CheckpointError(f"cannot read {path}: not a JSON object")
  diffs = config_diff(without_unread(with_new_fields(saved)), without_unread(config.to_dict()))
  _refuse_changes(workdir, diffs, allow_config_change)


def with_new_fields(saved: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
  """``saved`` plus the schema's fields it lacks, at their defaults.

  A field the schema gained after a run was saved (``objective``, say) has
  a default that keeps the old behaviour, so a run saved without it is the
  same run.
  """
  schema = base_config().to_dict() if schema is None else schema
  out = dict(saved)
  for key, default in schema.items():
    if key not in out:
      out[key] = default
    elif isinstance(default, dict) and isinstance(out[key], dict):
      out[key] = with_new_fields(out[key], default)
  return out


def _refuse_changes(workdir: str, diffs: list[str], allow_config_change: bool) -> None:
  unsafe = _unsafe(diffs)
  bad = unsafe if allow_config_change else diffs
  if not bad:
    return
  if allow_config_change:
    hint = " (--allow_config_change permits only eval and logging fields)"
  elif not unsafe:
    hint = " (these fields do not affect training: add --allow_config_change to resume)"
  else:
    hint = ""
  raise CheckpointError(f"workdir {workdir} holds a run with another config; use another --workdir "
                        f"or the same config. Differing fields: {'; '.join(bad)}{hint}")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def file_digests(folder: str) -> dict[str, list[Any]]:
  """``{relative path: [size, sha256]}`` of every file under ``folder`` but the manifest."""
  out = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel != MANIFEST_NAME:
        out[rel] = [os.path.getsize(path), _sha256(path)]
  return out


def write_manifest(folder: str) -> None:
  """Records the size and sha256 of each file of a finished step folder (process 0 only)."""
  if not distributed.is_writer():
    return
  atomic.write_json(os.path.join(folder, MANIFEST_NAME), {"files": file_digests(folder)})


def verify_manifest(folder: str) -> str | None:
  """``None`` if every file of ``folder`` matches its manifest, else what is wrong."""
  try:
    files = atomic.read_json(os.path.join(folder, MANIFEST_NAME))["files"]
  except FileNotFoundError:
    return INCOMPLETE
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"unreadable {MANIFEST_NAME}: {e}"
  for rel, (size, digest) in sorted(files.items()):
    path = os.path.join(folder, rel)
    if not os.path.isfile(path):
      return f"{rel} is missing"
    if os.path.getsize(path) != size:
      return f"{rel} has {os.path.getsize(path)} bytes, not {size} (truncated?)"
    if _sha256(path) != digest:
      return f"{rel} does not match its sha256"
  return None


class Checkpointer:
  """Periodic train-state checkpoints under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """The finished steps on disk, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` as ``step`` (unless that step exists), then its manifest."""
    if step in self.steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()
    write_manifest(self.step_dir(step))

  def restore_latest(self, template: Any) -> Any | None:
    """The newest intact state shaped like ``template``, or ``None`` to start afresh.

    A step that fails its manifest or does not restore is moved to
    ``<workdir>/corrupt_checkpoints/`` with a warning, and the previous one
    is tried. If steps are corrupt and none is usable, raises
    :class:`CheckpointError` and moves nothing; if the only steps are
    incomplete saves (no manifest), they are moved and ``None`` returned.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    bad: list[tuple[int, str]] = []
    for step in reversed(self.steps()):
      problem = verify_manifest(self.step_dir(step))
      if problem is None:
        try:
          state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types for bad files; report them all
          problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      if problem is None:
        self._set_aside(bad, f"using step {step} instead")
        return state
      bad.append((step, problem))
    if any(problem != INCOMPLETE for _, problem in bad):
      raise CheckpointError(f"no usable checkpoint in {self.directory} ({_describe(bad)}); "
                            "move or delete that folder to start afresh")
    self._set_aside(bad, "starting from step 0")
    return None

  def _set_aside(self, bad: list[tuple[int, str]], outcome: str) -> None:
    """Moves the unusable steps out of orbax's folder, with a warning."""
    if not bad:
      return
    target = os.path.join(self.workdir, QUARANTINE_DIR)
    if distributed.is_writer():
      os.makedirs(target, exist_ok=True)
      for step, _ in bad:
        os.replace(self.step_dir(step), _free_name(os.path.join(target, str(step))))
    self._manager.reload()
    warnings.warn(f"unusable checkpoint ({_describe(bad)}) moved to {target}; {outcome}",
                  stacklevel=3)

  def close(self) -> None:
    self._manager.close()


def _describe(bad: list[tuple[int, str]]) -> str:
  return "; ".join(f"step {step}: {problem}" for step, problem in bad)


def _free_name(path: str) -> str:
  """``path``, or ``path-1``, ``path-2``... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.lexists(candidate):
    n += 1
    candidate = f"{path}-{n}"
  return candidate
