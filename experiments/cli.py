"""Shared plumbing of the entry points: device setup, flag pre-parsing, user errors.

A user error (bad flag, bad config value, missing data, unusable
checkpoint) prints one line to stderr and exits with status 2, before
anything is written. A diverged run exits with status 3.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, NoReturn

from absl import flags

USAGE_EXIT = 2
DIVERGED_EXIT = 3


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def setup_devices() -> None:
  """One XLA CPU device per core, so the batch is sharded over the cores.

  It only affects the CPU backend (an accelerator stays the default device)
  and must run before JAX initialises; ``CRP_CPU_DEVICES`` overrides it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  count = int(os.environ.get("CRP_CPU_DEVICES", os.cpu_count() or 1))
  jax.config.update("jax_num_cpu_devices", max(count, 1))


def pre_parse(argv: list[str], datasets: tuple[str, ...], presets: tuple[str, ...]) -> tuple[str, str]:
  """Reads ``--dataset`` and ``--preset`` before the config flag is defined from them."""
  values = {"dataset": "mnist5k", "preset": "small"}
  for i, arg in enumerate(argv[1:], 1):
    for name in values:
      if arg.startswith(f"--{name}="):
        values[name] = arg.split("=", 1)[1]
      elif arg == f"--{name}" and i + 1 < len(argv):
        values[name] = argv[i + 1]
  for name, choices in (("dataset", datasets), ("preset", presets)):
    if values[name] not in choices:
      fail(f"--{name}={values[name]!r}: unknown; choose one of {', '.join(choices)}")
  return values["dataset"], values["preset"]


def apply_shorthands(config, **values):
  """Copies ``--method`` style shorthands into the config (they win over its defaults)."""
  for name, value in values.items():
    if value is not None:
      config[name] = value
  return config


def default_workdir(config) -> str:
  methods = f"{config.method}-vs-{config.compare_with}" if config.compare_with else config.method
  return os.path.join("runs", f"{config.dataset}-{methods}-seed{config.seed}")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns the library's user-facing errors into one line and an exit status."""
  from crp_jax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from crp_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from crp_jax.data import DataError  # pylint: disable=g-import-not-at-top
  from crp_jax.train import DivergenceError  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (ConfigError, DataError, CheckpointError) as e:
    fail(str(e))
  except DivergenceError as e:
    fail(str(e), DIVERGED_EXIT)
  except PermissionError as e:
    fail(f"cannot write {e.filename}: {e.strerror}")


def run(main: Callable[[list[str]], None]) -> None:
  """Parses the flags, reporting a bad one in one line (exit 2) instead of a usage dump."""
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  main(argv)
