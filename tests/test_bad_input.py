"""Bad input never hurts: each malformed ``python -m experiments.run`` fails fast and cleanly.

Every case must print exactly one line on stderr (``error: ...``) naming the
bad value, exit with status 2, print no traceback, and leave its workdir
exactly as it was (no new, changed or removed file or folder). Cases that
need a previous run share one tiny run made once per module.

Each case is a fork of one server that has imported what the command
imports (:mod:`tests.cli_server`), so a case costs its own work, not an
interpreter start; the one that drops root's permissions runs as a real
subprocess, since only an ``exec`` applies the dropped capabilities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 2  # CRP_CPU_DEVICES of every run: odd batch sizes are bad input
TINY_RUN = ("--config.compare_with=", "--config.method=crp", "--config.num_perturbations=1",
            "--config.train_subset=64", "--config.batch_size=32", "--config.epochs=1",
            "--config.checkpoint_every_steps=2", "--config.eval.attack_subset=8",
            "--config.eval.batch_size=8", "--config.eval.pgd_steps=(1,)",
            "--config.eval.extra_step_size=0", "--config.eval.strong=false", "--progress=false")
# An unreachable HTTPS proxy: the data layer's network probe fails at once, and
# nothing can download even on a machine with internet.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}


@dataclasses.dataclass(frozen=True)
class Case:
  """One malformed invocation.

  ``workdir`` names how the workdir is made: ``fresh`` (absent), ``run``
  (a copy of the finished tiny run), or a key of :data:`SETUPS`.
  ``names`` must appear in the error line; ``{home}`` in ``args`` is the
  case's own folder.
  """
  id: str
  args: tuple[str, ...]
  names: tuple[str, ...]
  workdir: str = "fresh"
  env: tuple[tuple[str, str], ...] = ()
  drop_dac: bool = False  # run without root's permission override


CASES: tuple[Case, ...] = (
    Case("unknown_dataset_flag", ("--dataset=imagenet",), ("imagenet",)),
    Case("unknown_dataset_field", ("--config.dataset=imagenet",), ("config.dataset", "imagenet")),
    Case("unknown_method", ("--config.method=adversarial",), ("config.method", "adversarial")),
    Case("unknown_method_shorthand", ("--method=adversarial",), ("adversarial",)),
    Case("unknown_model", ("--config.model=vgg16",), ("config.model", "vgg16")),
    Case("unknown_preset", ("--preset=huge",), ("huge",)),
    Case("eps_negative", ("--config.perturbation_eps=-0.1",), ("perturbation_eps", "-0.1")),
    Case("eps_above_one", ("--config.perturbation_eps=1.5",), ("perturbation_eps", "1.5")),
    Case("eval_eps_negative", ("--config.eval.eps=-0.01",), ("eval.eps", "-0.01")),
    Case("eval_eps_above_one", ("--config.eval.eps=2.0",), ("eval.eps", "2.0")),
    Case("k_zero", ("--config.num_perturbations=0",), ("num_perturbations", "0")),
    Case("k_not_integer", ("--config.num_perturbations=2.5",), ("num_perturbations", "2.5")),
    Case("batch_negative", ("--config.batch_size=-8",), ("batch_size", "-8")),
    Case("batch_not_divisible", ("--config.batch_size=33",), ("batch_size", "33", f"{DEVICES} devices")),
    Case("pgd_steps_zero", ("--config.eval.pgd_steps=(0,)",), ("eval.pgd_steps", "0")),
    Case("pgd_steps_negative", ("--config.eval.pgd_steps=(10,-5)",), ("eval.pgd_steps", "-5")),
    Case("unknown_field", ("--config.epoch=3",), ("config.epoch", "epochs")),
    Case("unknown_nested_field", ("--config.eval.epss=0.1",), ("config.eval.epss", "eps")),
    Case("wrong_type_int", ("--config.epochs=abc",), ("config.epochs", "abc")),
    Case("wrong_type_bool", ("--config.include_clean=maybe",), ("config.include_clean", "maybe")),
    Case("learning_rate_nan", ("--config.learning_rate=nan",), ("learning_rate", "nan")),
    Case("learning_rate_too_big", ("--config.learning_rate=1e3",), ("learning_rate", "1000")),
    Case("seed_negative", ("--config.seed=-1",), ("seed", "-1")),
    Case("max_checkpoints_zero", ("--config.max_checkpoints=0",), ("max_checkpoints", "0")),
    Case("compare_with_itself", ("--config.method=crp", "--config.compare_with=crp"), ("compare_with", "crp")),
    Case("compare_with_unknown", ("--config.compare_with=standard,madry",), ("compare_with", "madry")),
    Case("adversary_eps_negative", ("--method=pgd_at", "--config.adversary.eps=-0.1"), ("adversary.eps", "-0.1")),
    Case("adversary_steps_zero", ("--method=pgd_at", "--config.adversary.steps=0"), ("adversary.steps", "0")),
    Case("adversary_beta_negative", ("--method=trades", "--config.adversary.beta=-1"), ("adversary.beta", "-1")),
    Case("certify_sigma_negative", ("--config.eval.certify.sigma=-0.25",), ("eval.certify.sigma", "-0.25")),
    Case("certify_alpha_one", ("--config.eval.certify.sigma=0.25", "--config.eval.certify.alpha=1.0"),
         ("eval.certify.alpha", "1.0")),
    Case("stray_argument", ("stray",), ("stray",)),
    Case("cpu_devices_not_integer", (), ("CRP_CPU_DEVICES", "abc"), env=(("CRP_CPU_DEVICES", "abc"),)),
    # Were the empty workdir taken for the default, the bad method would stop the run.
    Case("workdir_empty", ("--workdir=", "--config.method=adversarial"), ("--workdir=''", "empty")),
    Case("workdir_is_a_file", (), ("not a directory",), workdir="file"),
    Case("workdir_under_a_file", (), ("not a directory",), workdir="under_file"),
    Case("workdir_unwritable", (), ("not readable and writable",), workdir="locked", drop_dac=True),
    # Root may write anywhere by the permission bits, but procfs and sysfs refuse new entries.
    Case("workdir_in_procfs", (), ("/proc", "refuses new folders"), workdir="procfs"),
    Case("workdir_in_sysfs", (), ("/sys", "refuses new folders"), workdir="sysfs"),
    Case("tfds_unavailable_offline", ("--dataset=svhn", "--tfds_data_dir={home}/tfds"),
         ("svhn_cropped", "network is unreachable"),
         workdir="empty_tfds", env=tuple(OFFLINE.items())),
    Case("checkpoint_of_another_model", TINY_RUN + ("--config.model=resnet18",),
         ("model", "'lenet' -> 'resnet18'"), workdir="run"),
    Case("resume_with_other_learning_rate", TINY_RUN + ("--config.learning_rate=0.01",),
         ("learning_rate", "0.001 -> 0.01"), workdir="run"),
    Case("allow_config_change_is_not_enough", TINY_RUN + ("--allow_config_change", "--config.seed=1"),
         ("seed", "0 -> 1", "only eval"), workdir="run"),
    Case("corrupt_config_json", TINY_RUN, ("config.json",), workdir="run_bad_config"),
    Case("checkpoints_without_config_json", TINY_RUN, ("no config.json",), workdir="run_no_config"),
    Case("batch_larger_than_epoch", ("--config.batch_size=8192", "--config.compare_with=",
                                     "--config.num_perturbations=1"), ("batch_size", "8192")),
)


def _cases() -> list[Case]:
  return [c.values[0] if hasattr(c, "values") else c for c in CASES]


def _tree(path: str) -> dict[str, Any] | None:
  """Every file and folder under ``path``: (size, mtime, sha256) or ``dir``; ``None`` if absent."""
  if not os.path.lexists(path):
    return None
  if not os.path.isdir(path):
    return {".": _file_state(path)}
  out = {}
  for root, dirs, files in os.walk(path):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), path)] = ("dir", os.stat(os.path.join(root, d)).st_mtime_ns)
    for f in files:
      out[os.path.relpath(os.path.join(root, f), path)] = _file_state(os.path.join(root, f))
  return out


def _file_state(path: str) -> tuple[int, int, str]:
  with open(path, "rb") as f:
    return os.path.getsize(path), os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest()


def _env(case: Case) -> dict[str, str]:
  env = cli_server.without_device_count(os.environ)
  env["CRP_CPU_DEVICES"] = str(DEVICES)
  env.update(case.env)
  return env


# Loses root's power to ignore file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) by
# dropping them from the bounding set (PR_CAPBSET_DROP), then execs the command: a wrapper
# process, since a preexec_fn would fork this multithreaded (JAX) test process.
_DROP_DAC_AND_EXEC = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in (1, 2):\n"
    "  if libc.prctl(24, cap, 0, 0, 0):\n"
    "    raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP)')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n")


def _command(args: tuple[str, ...], workdir: str | None, drop_dac: bool) -> list[str]:
  cmd = [sys.executable, "-m", "experiments.run", *args]
  if workdir is not None:
    cmd.insert(3, f"--workdir={workdir}")
  if drop_dac and os.geteuid() == 0:
    cmd = [sys.executable, "-c", _DROP_DAC_AND_EXEC, *cmd]
  return cmd


def _run(args: tuple[str, ...], workdir: str | None, env: dict[str, str],
         drop_dac: bool = False) -> subprocess.CompletedProcess:
  if drop_dac and os.geteuid() == 0:
    return subprocess.run(_command(args, workdir, drop_dac), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  return cli_server.run("experiments.run", _command(args, workdir, False)[3:], env=env)


def _make_workdir(case: Case, home: str, finished_run: str) -> str:
  """Builds what ``case`` needs inside ``home``; returns its workdir path."""
  workdir = os.path.join(home, "work")
  if case.workdir.startswith("run"):
    shutil.copytree(finished_run, workdir)
    config = os.path.join(workdir, "crp", "config.json")
    if case.workdir == "run_bad_config":
      with open(config, "w") as f:
        f.write('{"dataset": "mnist5k", "trunc')
    elif case.workdir == "run_no_config":
      os.remove(config)
  elif case.workdir == "file":
    with open(workdir, "w") as f:
      f.write("not a folder\n")
  elif case.workdir == "under_file":
    with open(os.path.join(home, "plain"), "w") as f:
      f.write("not a folder\n")
    workdir = os.path.join(home, "plain", "work")
  elif case.workdir == "locked":
    workdir = os.path.join(home, "locked", "work")
    os.makedirs(os.path.dirname(workdir), mode=0)
  elif case.workdir in ("procfs", "sysfs"):
    workdir = f"/{case.workdir[:-2]}/crp-bad-input/work"
  elif case.workdir == "empty_tfds":
    os.makedirs(os.path.join(home, "tfds"))
  return workdir


def _can_drop_dac() -> bool:
  probe = [sys.executable, "-c", _DROP_DAC_AND_EXEC, sys.executable, "-c", "pass"]
  return os.geteuid() != 0 or subprocess.run(probe, capture_output=True, check=False).returncode == 0


def _outcome(case: Case, home: str, workdir: str) -> dict[str, Any]:
  args = tuple(a.format(home=home) for a in case.args)
  before = _tree(home)
  proc = _run(args, workdir, _env(case), case.drop_dac)
  return {"proc": proc, "before": before, "after": _tree(home)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, Any]]:
  """Runs every case once, each in its own folder, after the tiny run that some cases start from; records what each did."""
  base = str(tmp_path_factory.mktemp("bad_input"))
  finished = os.path.join(base, "_finished_run")
  made = _run(TINY_RUN, finished, _env(Case("", (), ())))
  assert made.returncode == 0, made.stderr[-3000:]
  drop_ok = _can_drop_dac()
  return {c.id: _setup_and_run(c, base, finished) for c in _cases() if drop_ok or not c.drop_dac}


def _setup_and_run(case: Case, base: str, finished_run: str) -> dict[str, Any]:
  home = os.path.join(base, case.id)
  os.makedirs(home)
  return _outcome(case, home, _make_workdir(case, home, finished_run))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_invocation_fails_cleanly(case: Case, outcomes):
  if case.id not in outcomes:
    pytest.skip("cannot drop CAP_DAC_OVERRIDE as root here, so no folder is unwritable")
  out = outcomes[case.id]
  proc = out["proc"]
  lines = proc.stderr.splitlines()
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: "), lines[0]
  for name in case.names:
    assert name in lines[0], (name, lines[0])
  assert proc.returncode == 2, (proc.returncode, lines)
  assert out["after"] == out["before"], "the workdir changed"


def test_empty_split_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  """An empty split cannot be made from the CLI without test hooks, so this runs at library level."""
  from crp_jax import data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  empty = (np.zeros((0, 28, 28, 1), np.uint8), np.zeros((0,), np.int32))
  monkeypatch.setattr(data, "_load_mnist5k", lambda split: empty)
  workdir = tmp_path / "work"
  config = get_config("mnist5k")
  config.batch_size = config.eval.batch_size = 32
  with pytest.raises(data.DataError, match="is empty"):
    pipeline.prepare(config, str(workdir))
  assert not workdir.exists()
