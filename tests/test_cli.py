"""One CLI: every ``python -m experiments.*`` command has ``--help``, one spelling per setting, typed overrides.

Each bad invocation prints one line on stderr (``error: ...``) and exits 2
before anything is written; the help exits 0 and lists the command's flags
with their help text. None of these cases trains or loads anything, so they
run as forks of one server that has imported what every command imports
(:mod:`tests.cli_server`): the whole matrix takes seconds.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("run", "study", "evaluate", "certify")
#: command -> flags its -h must list (its own and the shared ones).
HELP_FLAGS = {
    "run": ("--dataset", "--preset", "--workdir", "--progress", "--config", "--coordinator_address"),
    "study": ("--study", "--seeds", "--progress", "--config", "--num_processes"),
    "evaluate": ("--workdir", "--strong", "--progress", "--config", "--process_id"),
    "certify": ("--workdir", "--rows", "--progress", "--config", "--distributed"),
}
BAD = (
    ("run", ("--config.eval.pgd_steps=20",), "--config.eval.pgd_steps=20: the field is a tuple"),
    ("run", ("--config.epochs=2.5",), "--config.epochs=2.5: the field is an integer"),
    ("run", ("--config.eval.strong=maybe",), "--config.eval.strong=maybe: the field is a bool"),
    ("run", ("--config.learning_rate=fast",), "--config.learning_rate=fast: the field is a number"),
    ("run", ("--config.epoch=2",), "config has no field 'epoch'; did you mean epochs"),
    ("run", ("--config=/nonexistent/cfg.py",), "--config=/nonexistent/cfg.py: no such file"),
    ("run", ("--workdir=a,b",), "--workdir=a,b: run writes one folder"),
    ("run", ("--progres",), "Unknown command line flag 'progres'"),
    ("study", ("--study=table1", "--config.eval.pgd_steps=7"), "--config.eval.pgd_steps=7: the field is a tuple"),
    ("study", ("--study=nope",), "--study='nope': unknown"),
    ("evaluate", ("--workdir=x", "--apgd_steps=2"), "--apgd_steps: renamed; use --config.eval.apgd_steps=2"),
    ("evaluate", ("--workdir=x", "--certify_sigma=0.25"),
     "--certify_sigma: renamed; use --config.eval.certify.sigma=0.25"),
    ("evaluate", ("--workdir=x", "--config.epochs=2"), "--config.epochs: evaluate changes only the eval.* fields"),
    ("evaluate", ("--workdir=x", "--config.eval.square_queries=many"), "the field is an integer"),
    ("evaluate", (), "Flag --workdir must have a value other than None"),
    ("certify", ("--workdir=x", "--sigma=0.5"), "--sigma: renamed; use --config.eval.certify.sigma=0.5"),
    ("certify", ("--workdir=x", "--radii=0,1"), "--radii: renamed; use --config.eval.certify.radii=0,1"),
    ("certify", ("--workdir=x",), "--config.eval.certify.sigma=0.0: must be > 0"),
    ("certify", ("--workdir=x", "--config.eval.pgd_steps=(1,)"), "certify takes only the eval.certify.* fields"),
)


def _run(command: str, *args: str) -> subprocess.CompletedProcess:
  return cli_server.run(f"experiments.{command}", args)


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, str], subprocess.CompletedProcess]:
  cases = [(c, h) for c in COMMANDS for h in ("-h", "--help", "--helpfull")]
  return {case: _run(*case) for case in cases}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(helps, command):
  short, long, full = (helps[command, h] for h in ("-h", "--help", "--helpfull"))
  for p in (short, long, full):
    assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
  assert short.stdout == long.stdout
  assert f"python -m experiments.{command}" in short.stdout.splitlines()[0]
  for flag in HELP_FLAGS[command]:
    line = next((l for l in short.stdout.splitlines() if l.strip().startswith((flag + ":", "--[no]" + flag[2:] + ":"))),
                None)
    assert line is not None and len(line.split(":", 1)[1].strip()) > 3, (flag, short.stdout)
  assert "--xla_" not in short.stdout and "--verbosity" in full.stdout and len(full.stdout) > len(short.stdout)


def test_progress_defaults_agree(helps):
  for command in COMMANDS:
    text = helps[command, "-h"].stdout
    after = text[text.index("--[no]progress:"):]
    assert "(default: 'true')" in after.split("--", 2)[1], (command, after[:300])


@pytest.fixture(scope="module")
def bad() -> dict[tuple[str, tuple[str, ...]], subprocess.CompletedProcess]:
  return {(c, a): _run(c, *a) for c, a, _ in BAD}


@pytest.mark.parametrize("command, args, message", BAD, ids=[f"{c}:{' '.join(a) or 'none'}" for c, a, _ in BAD])
def test_bad_flags_are_one_line_and_exit_2(bad, command, args, message):
  p = bad[command, args]
  assert p.returncode == 2, p.stderr[-2000:]
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr[-2000:]
  assert "Traceback" not in p.stderr


def test_a_users_config_file_with_its_argument(tmp_path):
  cfg = tmp_path / "my_config.py"
  cfg.write_text("from experiments.configs import get_config as base\n\n"
                 "def get_config(arg='small'):\n"
                 "  c = base('mnist5k', arg)\n"
                 "  c.epochs = 7\n"
                 "  return c\n")
  p = _run("run", f"--config={cfg}:small", "--config.eval.pgd_steps=20", "--workdir=x")
  assert p.returncode == 2 and "--config.eval.pgd_steps=20: the field is a tuple" in p.stderr, p.stderr[-2000:]
  p = _run("run", f"--config={cfg}:nope", "--workdir=x")
  assert p.returncode == 2 and p.stderr.startswith(f"error: --config={cfg}:nope: ValueError"), p.stderr[-2000:]
  p = _run("run", f"--config={cfg}", "--config.bogus=1", "--workdir=x")
  assert p.returncode == 2 and "config has no field 'bogus'" in p.stderr, p.stderr[-2000:]
