"""Atomic output files: every file we write appears whole or not at all, and once.

In a multi-process run only process 0 writes
(:func:`crp_jax.runner.distributed.is_writer`); the other processes'
writes are no-ops, so each output exists in exactly one copy.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from crp_jax.runner import distributed

#: Prefix of the temporary files :func:`atomic_write_text` renames into place.
TEMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` via a temp file in the same folder and a rename.

  A crash (or SIGKILL) mid-write leaves the previous file intact, because
  ``os.replace`` is atomic on POSIX within one file system; at worst a
  stray temp file remains, which :func:`remove_stale_temps` deletes.
  Only process 0 writes.
  """
  if not distributed.is_writer():
    return
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


def atomic_write_text(path: str, text: str | bytes) -> None:
  """Writes ``text`` (UTF-8; bytes as they are) atomically, like :func:`atomic_write_bytes`."""
  atomic_write_bytes(path, text if isinstance(text, bytes) else text.encode("utf-8"))


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
  """Deletes the temp files a killed :func:`atomic_write_text` left in ``folder``.

  Only call it when no other process writes to ``folder``; only process 0
  deletes. Returns their names.
  """
  if not distributed.is_writer() or not os.path.isdir(folder):
    return []
  stale = sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)
                 and os.path.isfile(os.path.join(folder, n)))
  for name in stale:
    os.remove(os.path.join(folder, name))
  return stale


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented, key-sorted JSON, atomically."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str) -> Any:
  """The JSON value in ``path``; raises ``OSError`` or ``ValueError`` on a bad file."""
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON line atomically by rewriting the file.

  ``metrics.jsonl`` stays small (one line per log interval), so a rewrite
  is cheap and keeps the file whole under a kill.
  """
  old = ""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = f.read()
  atomic_write_text(path, old + json.dumps(record, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
  if hasattr(obj, "tolist"):
    return obj.tolist()
  if isinstance(obj, (set, tuple)):
    return list(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
