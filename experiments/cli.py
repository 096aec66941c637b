"""Shared plumbing of the entry points: device setup, flag pre-parsing, help, user errors.

Every command (``python -m experiments.run|study|evaluate|certify``) runs
under ``absl.app.run`` (:func:`run`): ``-h``/``--help`` lists its flags with
their help, ``--helpfull`` every flag. One spelling per setting: a config
field is ``--config.<field>=value`` in every command that uses a config
(``evaluate`` and ``certify`` take the ``eval.*`` fields), and
``--config=path.py[:arg]`` loads your own config file (its
``get_config(arg)``), as flax and big_vision do. An override whose value
does not fit the field's type is refused, and a flag of an older spelling
says the new one.

A user error (bad flag, bad config value, missing data, unusable
checkpoint or workdir) prints one line to stderr and exits with status 2,
before anything is written. A diverged run exits with status 3, a full or
read-only disk with 4, Ctrl-C with 130 (in each case the last checkpoint is
kept and the same command resumes).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import errno
import importlib.util
import os
import sys
from typing import Any, Callable, Iterator, NoReturn

from absl import app, flags

USAGE_EXIT = 2
DIVERGED_EXIT = 3
IO_EXIT = 4
INTERRUPTED_EXIT = 130


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
  """Prints ``error: message`` as one line on stderr and exits with ``code``."""
  line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(code)


def setup_process(module: str) -> None:
  """:func:`crp_jax.runner.process.setup_entry_point` (call it first in ``__main__``), errors in one line."""
  from crp_jax.runner import process  # pylint: disable=g-import-not-at-top
  try:
    process.setup_entry_point(module, sys.argv[1:])
  except ValueError as e:
    fail(str(e))


def define_distributed_flags() -> None:
  """The flags of a multi-process launch (:class:`crp_jax.runner.distributed.Launch`), for every entry point."""
  flags.DEFINE_bool("distributed", False, "Join a multi-process run, letting JAX detect the cluster (Cloud TPU, "
                    "SLURM, Open MPI, Kubernetes); implied by the three flags below or JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run.")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.", lower_bound=1)
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.", lower_bound=0)


def start_distributed() -> bool:
  """Joins the multi-process run the flags ask for (call it first in ``main``); one line on stderr says so.

  Returns whether this process writes the outputs and shows progress: process 0 of a
  multi-process run, or the only process.
  """
  from crp_jax.runner import distributed  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  launch = distributed.Launch(f.distributed, f.coordinator_address, f.num_processes, f.process_id)
  with user_errors():
    if launch.wanted(os.environ):
      print(f"joining a multi-process run (coordinator {launch.coordinator_address or 'from the environment'})",
            file=sys.stderr, flush=True)
    if distributed.initialize(launch):
      import jax  # pylint: disable=g-import-not-at-top
      print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of "
            f"{jax.device_count()} {jax.devices()[0].platform} devices; process 0 writes the outputs",
            file=sys.stderr, flush=True)
    return distributed.is_writer()


def flag_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=v`` or ``--name v`` in ``argv`` (the last one wins), before flags are defined."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def pre_parse(argv: list[str], datasets: tuple[str, ...], presets: tuple[str, ...], *,
              default_dataset: str = "mnist5k", config_fn=None, check_overrides: bool = True) -> tuple[str, str]:
  """Reads ``--dataset`` and ``--preset`` before the config flag is defined from them.

  Also refuses an empty ``--workdir=`` and (with ``check_overrides``) checks
  that every ``--config.`` override names a field of that config, of its
  type (``config_fn(dataset, preset)``, default :func:`experiments.configs.get_config`).
  """
  given = {name: flag_value(argv, name) for name in ("dataset", "preset")}
  values = {"dataset": default_dataset if given["dataset"] is None else given["dataset"],
            "preset": "small" if given["preset"] is None else given["preset"]}
  for name, choices in (("dataset", datasets), ("preset", presets)):
    if values[name] not in choices:
      fail(f"--{name}={values[name]!r}: unknown; choose one of {', '.join(choices)}")
  if any(arg == "--workdir=" or (arg == "--workdir" and argv[i + 1:i + 2] == [""])
         for i, arg in enumerate(argv)):
    fail("--workdir='': empty (an unset shell variable?); give a folder, or omit the flag for the default")
  if check_overrides:
    if config_fn is None:
      from experiments.configs import get_config as config_fn  # pylint: disable=g-import-not-at-top
    check_config_overrides(argv, config_fn(values["dataset"], values["preset"]))
  return values["dataset"], values["preset"]


def apply_shorthands(config, **values):
  """Copies ``--method`` style shorthands into the config (they win over its defaults)."""
  for name, value in values.items():
    if value is not None:
      config[name] = value
  return config


def default_workdir(config, preset_config, preset: str = "small") -> str:
  """``runs/<dataset>-<methods>-seed<seed>[-<preset>][-<changed fields>]``.

  Every training field that differs from ``preset_config`` (the preset the
  run started from) is in the name, as ``field=value`` or, when that gets
  long, as the training fingerprint; so runs that differ in training never
  share a default workdir (K = 1, 5, 10, or uniform vs Gaussian, say).
  """
  from crp_jax.runner import checkpoint  # pylint: disable=g-import-not-at-top
  from crp_jax.runner.config import compared_methods  # pylint: disable=g-import-not-at-top
  methods = "-vs-".join([config.method, *compared_methods(config)])
  named = ("dataset", "method", "compare_with", "seed")
  ours, ref = checkpoint.training_fields(config.to_dict()), checkpoint.training_fields(preset_config.to_dict())
  changed = [f"{k}={ours[k]}" for k in ours if k not in named and ours.get(k) != ref.get(k)]
  suffix = "-".join(changed)
  if len(suffix) > 60 or not all(c.isalnum() or c in "=._-" for c in suffix):
    suffix = checkpoint.training_fingerprint(config.to_dict())
  parts = [f"{config.dataset}-{methods}-seed{config.seed}"] + ([preset] if preset != "small" else []) + (
      [suffix] if suffix else [])
  return os.path.join("runs", "-".join(parts))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns the library's user-facing errors into one line and an exit status."""
  from crp_jax.runner.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from crp_jax.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
  from crp_jax.data import DataError  # pylint: disable=g-import-not-at-top
  from crp_jax.runner.train import DivergenceError  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (ConfigError, DataError, CheckpointError) as e:
    fail(str(e))
  except DivergenceError as e:
    fail(str(e), DIVERGED_EXIT)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
      fail(f"cannot write {e.filename or 'the outputs'}: {e.strerror}; rerun the same command to resume",
           IO_EXIT)
    if e.filename is None:  # not a file the user named or we write: a bug, so keep its traceback
      raise
    fail(f"cannot use {e.filename}: {e.strerror}")
  except KeyboardInterrupt:
    fail("interrupted; rerun the same command to resume from the last checkpoint", INTERRUPTED_EXIT)


def config_overrides(argv: list[str], flag_name: str = "config") -> dict[str, str | None]:
  """``{"a.b": value}`` of each ``--config.a.b=value`` (or ``--config.a.b value``) in ``argv``; the last wins."""
  prefix, out = f"--{flag_name}.", {}
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg.startswith(prefix):
      path, eq, value = arg[len(prefix):].partition("=")
      out[path] = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  return out


def check_config_overrides(argv: list[str], config, flag_name: str = "config") -> None:
  """Fails in one line on a ``--config.a.b=...`` naming no field of ``config``, or of the wrong type.

  Call it before ``config_flags.DEFINE_config_dict``, which would otherwise
  raise a bare ``AttributeError`` while defining the override flags, and
  would read ``--config.eval.pgd_steps=20`` (a tuple field) as ``(20,)``.
  """
  for path, value in config_overrides(argv, flag_name).items():
    field = _check_path(config, path, flag_name)
    if value is not None:
      _check_type(f"--{flag_name}.{path}", field, value)


def _check_path(config, path: str, flag_name: str) -> Any:
  node, parts = config, path.split(".")
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join([flag_name, *parts[:i]])
      close = difflib.get_close_matches(part, keys, n=3)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      fail(f"--{flag_name}.{path}: {where} has no field {part!r}{hint}")
    node = node[part]
  return node


def _check_type(flag: str, field: Any, value: str) -> None:
  """Fails unless ``value`` (the command-line text) reads as ``field``'s type."""
  if isinstance(field, (tuple, list)):
    if not value.strip().startswith(("(", "[")):
      example = f"'({value},)'" if value else "'()'"
      fail(f"{flag}={value}: the field is a tuple (default {tuple(field)}); write {flag}={example}")
    return
  if isinstance(field, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      fail(f"{flag}={value}: the field is a bool; write true or false")
    return
  kind = {int: "an integer", float: "a number"}.get(type(field))
  if kind is None:
    return
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = None
  if kind == "a number":   # nan and inf read as numbers too; the config's validation judges them
    try:
      parsed = float(value)
    except ValueError:
      parsed = None
  ok = (isinstance(parsed, int) and not isinstance(parsed, bool)) or (kind == "a number" and isinstance(parsed, float))
  if not ok:
    fail(f"{flag}={value}: the field is {kind} (default {field!r})")


def load_config_file(spec: str):
  """The ``ConfigDict`` of ``--config=path.py[:arg]``: the file's ``get_config(arg)`` (or ``get_config()``).

  flax's and big_vision's spelling for a user's own config file; any
  failure is one line.
  """
  path, _, arg = spec.partition(".py:")
  path = path if path.endswith(".py") else path + ".py"
  if not os.path.isfile(path):
    fail(f"--config={spec}: no such file {path!r}; give path/to/config.py[:arg]")
  module_spec = importlib.util.spec_from_file_location("_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config")
    config = get_config(arg) if arg else get_config()
  except Exception as e:  # pylint: disable=broad-except  (a user's file: any error is theirs, in one line)
    fail(f"--config={spec}: {type(e).__name__}: {e}")
  if not hasattr(config, "keys"):
    fail(f"--config={spec}: get_config returned {type(config).__name__}, not a ConfigDict")
  return config


def config_file_arg(argv: list[str]) -> str | None:
  """The value of ``--config=path.py[:arg]`` in ``argv`` (removed from it: absl's ``--config`` is the dict)."""
  value = None
  for arg in list(argv[1:]):
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
      argv.remove(arg)
  if value == "":
    fail("--config='': empty; give path/to/config.py[:arg]")
  return value


def define_config(argv: list[str], config, what: str) -> None:
  """``--config``: ``config`` with its ``--config.<field>`` overrides checked first; ``what`` says what it is."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  check_config_overrides(argv, config)
  paths = _leaf_paths(config)
  fields = ", ".join(paths if len(paths) <= 40 else config.keys())   # a small config: every field
  config_flags.DEFINE_config_dict(
      "config", config, f"{what}. Override a field with --config.<field>=value (a tuple as '(10,20)'); "
      f"its fields: {fields}.", lock_config=True)


def _leaf_paths(config, prefix: str = "") -> list[str]:
  out = []
  for k in config.keys():
    out += _leaf_paths(config[k], f"{prefix}{k}.") if hasattr(config[k], "keys") else [prefix + k]
  return out


def check_renamed(argv: list[str], renamed: dict[str, str]) -> None:
  """Fails in one line on a flag of an older spelling (``renamed``: old name -> the new spelling)."""
  for arg in argv[1:]:
    if arg == "--":
      break
    name = arg.lstrip("-").split("=", 1)[0]
    if arg.startswith("--") and name in renamed:
      value = arg.split("=", 1)[1] if "=" in arg else "VALUE"
      fail(f"--{name}: renamed; use {renamed[name]}={value}")


HELP = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def show_help(argv: list[str]) -> None:
  """Prints the command's doc and its flags with their help (``--helpfull``: every flag), then exits 0."""
  main = sys.modules["__main__"]
  print((main.__doc__ or "").strip())
  if "--helpfull" in argv:
    print("\nflags:\n" + flags.FLAGS.get_help())
  else:
    for module in (sys.argv[0], __name__):
      text = flags.FLAGS.module_help(module)
      if text.strip():
        print(f"\n{text}")
    print("\nTry --helpfull to see every flag, absl's and JAX's too.")
  sys.exit(0)


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s parser: help on ``-h``/``--help``/``--helpfull``, a bad flag in one line (exit 2)."""
  if any(arg in HELP for arg in argv[1:]):
    show_help(argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by config_flags parsers
    fail(f"bad flag value: {type(e).__name__}: {e}")
  quiet_libraries()
  return rest


def run(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)`` with :func:`parse_flags`: ``--help`` works, a bad flag is one line."""
  app.run(main, flags_parser=parse_flags)


def quiet_libraries() -> None:
  """Hides the absl-logged warnings of tfds and orbax unless ``--verbosity`` is given.

  They are internal chatter (e.g. "Variant folder ... has no dataset_info.json")
  that would bury the one-line error; our own warnings use ``warnings``.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
