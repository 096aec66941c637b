"""Atomic output files: every file we write appears whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via a temp file in the same folder and a rename.

  A crash (or SIGKILL) mid-write leaves the previous file intact, because
  ``os.replace`` is atomic on POSIX within one file system.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON line atomically by rewriting the file.

  ``metrics.jsonl`` stays small (one line per log interval), so a rewrite
  is cheap and keeps the file whole under a kill.
  """
  old = open(path).read() if os.path.exists(path) else ""
  atomic_write_text(path, old + json.dumps(record, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
  if hasattr(obj, "tolist"):
    return obj.tolist()
  if isinstance(obj, (set, tuple)):
    return list(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
