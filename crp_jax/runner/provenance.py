"""Where an output came from: the code, the command, the library versions and the devices.

One writer for every file a run or a study writes (``results.json``,
``evaluation.json``, ``study.json``, ``report.md``, certification's JSON):
:func:`stamp` gives the fields, :func:`line` the sentence a markdown file
ends with. The code is the package version and, when ``crp_jax`` is
imported from a git checkout, the commit and whether the tree had
uncommitted changes (``dirty``); from an installed wheel there is no
commit, and the version says which release it was.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax


def _git(root: str, *args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout


def code() -> dict[str, Any]:
  """``{"crp_jax": version, "commit": sha or None, "dirty": bool or None}`` of the imported package."""
  import crp_jax  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(crp_jax.__file__)))
  commit = dirty = None
  if os.path.exists(os.path.join(root, ".git")):
    head = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    commit = head.strip() if head else None
    dirty = None if status is None else bool(status.strip())
  return {"crp_jax": crp_jax.__version__, "commit": commit, "dirty": dirty}


def versions() -> dict[str, str]:
  """The versions of the libraries a number depends on."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import crp_jax  # pylint: disable=g-import-not-at-top
  return {"crp_jax": crp_jax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__, "orbax": ocp.__version__, "numpy": np.__version__,
          "python": platform.python_version()}


def command_line() -> str:
  """This process's command as a user would type it (``python -m module args`` for an entry point)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", *sys.argv[:1]]
  return shlex.join(head + sys.argv[1:])


def stamp(command: str = "") -> dict[str, Any]:
  """The provenance fields of an output: ``command``, ``code``, ``versions`` and the devices."""
  return {"command": command or command_line(), "code": code(), "versions": versions(),
          "device_count": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
          "process_count": jax.process_count()}


def line(record: dict[str, Any]) -> str:
  """One markdown sentence of a :func:`stamp`: the code, the libraries and the devices."""
  c, v = record.get("code") or {}, record.get("versions") or {}
  commit = c.get("commit")
  where = (f"commit {commit[:12]}{' with uncommitted changes' if c.get('dirty') else ''}" if commit
           else "an installed package (no git checkout)")
  return (f"Code: crp_jax {c.get('crp_jax', '?')}, {where}; jax {v.get('jax', '?')}, jaxlib {v.get('jaxlib', '?')}, "
          f"flax {v.get('flax', '?')}; {record.get('device_count', '?')} × {record.get('device_kind', '?')}.")
