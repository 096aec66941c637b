"""Atomic output files: every file we write appears whole or not at all, and once.

In a multi-process run only process 0 writes
(:func:`crp_jax.runner.distributed.is_writer`); the other processes'
writes are no-ops, so each output exists in exactly one copy.
"""

from __future__ import annotations

import json
import os
from typing import Any

from crp_jax import _files
from crp_jax.runner import distributed

#: Prefix of the temporary files :func:`atomic_write_text` renames into place.
TEMP_PREFIX = _files.TEMP_PREFIX


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` via a temp file in the same folder and a rename (:func:`crp_jax._files.write_bytes`).

  A crash (or SIGKILL) mid-write leaves the previous file intact, because
  ``os.replace`` is atomic on POSIX within one file system; at worst a
  stray temp file remains, which :func:`remove_stale_temps` deletes.
  Only process 0 writes.
  """
  if distributed.is_writer():
    _files.write_bytes(path, data)


def atomic_write_text(path: str, text: str | bytes) -> None:
  """Writes ``text`` (UTF-8; bytes as they are) atomically, like :func:`atomic_write_bytes`."""
  atomic_write_bytes(path, text if isinstance(text, bytes) else text.encode("utf-8"))


def write_arrays(path: str, arrays: dict[str, Any]) -> None:
  """Writes ``arrays`` as one ``.npz`` file atomically, like :func:`atomic_write_bytes` (process 0 only)."""
  if distributed.is_writer():
    _files.write_arrays(path, arrays)


def remove_stale_temps(folder: str) -> list[str]:
  """Deletes the temp files a killed :func:`atomic_write_text` left in ``folder``.

  Only call it when no other process writes to ``folder``; only process 0
  deletes. Returns their names.
  """
  return _files.remove_stale_temps(folder) if distributed.is_writer() else []


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
