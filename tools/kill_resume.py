r"""Kills a small training run anywhere, resumes it, and checks it ends bit-identical.

  python -m tools.kill_resume --kills=10 --seed=0
  python -m tools.kill_resume --kills=5 --phase=evaluation   # every kill inside the evaluation

First a reference run (``python -m experiments.run`` with a tiny config: 16
steps, a checkpoint every 2) and an uninterrupted rerun, which must already
match it. Then, for each of ``--kills`` kill points drawn from ``--seed``,
the same command in a fresh workdir is SIGKILLed, restarted (sometimes
killed again) and left to finish. A kill lands at a random time (anywhere:
imports, compilation, training, evaluation, writing the outputs), right
after a step is logged but before it is saved, or while orbax writes a
checkpoint (the script watches for its temporary folder). The finished run
must match the reference bit for bit: every array of the final checkpoint
(parameters, optimiser and BatchNorm state, step), every line of
``metrics.jsonl`` but its speed, and ``results.json`` but its timing and
command; no temporary file may be left. One line per kill point, then
``N/N bit-identical``; exit status 1 if anything differs.

The runs share a persistent XLA compilation cache, filled by the reference
run, so restarts do not pay for compilation again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags, logging

from crp_jax.runner.checkpoint import QUARANTINE_DIR
from crp_jax.runner.pipeline import EVAL_STATE_DIR



def define_flags() -> None:
  """The command-line flags; defined only when run as a script, so tests can import this module."""
  flags.DEFINE_integer("kills", 10, "Number of kill points.")
  flags.DEFINE_integer("seed", 0, "Seed of the kill points.")
  flags.DEFINE_string("root", None, "Folder for the runs; default a temp folder, deleted afterwards.")
  flags.DEFINE_string("model", "lenet", "Model of the small run (resnet18 exercises BatchNorm state).")
  flags.DEFINE_integer("devices", 2, "CPU devices of each run (CRP_CPU_DEVICES).")
  flags.DEFINE_bool("compilation_cache", True, "Share a persistent XLA compilation cache between runs.")
  flags.DEFINE_integer("jobs", 1, "Kill points run at the same time.")
  flags.DEFINE_enum("phase", "any", ["any", "evaluation"],
                    "any: kills anywhere (time, log, save); evaluation: every kill lands inside the evaluation "
                    "(the strong protocol and AutoAttack at small budgets on), right after it saved a batch.")


#: The run under test: 16 steps of CRP training with a checkpoint every 2 steps, then a small evaluation.
RUN_FLAGS: tuple[str, ...] = (
    "--dataset=mnist5k", "--config.compare_with=", "--config.method=crp",
    "--config.num_perturbations=1", "--config.train_subset=128", "--config.batch_size=32",
    "--config.epochs=2", "--config.checkpoint_every_steps=2", "--config.log_every_steps=2",
    "--config.max_checkpoints=2", "--config.eval.attack_subset=32", "--config.eval.batch_size=32",
    "--config.eval.pgd_steps=(1,)", "--config.eval.extra_step_size=0", "--config.eval.strong=false",
    "--progress=false")
#: Added with --phase=evaluation: the strong protocol and AutoAttack standard at small budgets, so the
#: evaluation saves many batches (eval.batch_size 8 on 32 examples) for the kills to land between.
EVAL_FLAGS: tuple[str, ...] = (
    "--config.eval.strong=true", "--config.eval.autoattack=standard", "--config.eval.batch_size=8",
    "--config.eval.apgd_steps=5", "--config.eval.fab_steps=5", "--config.eval.num_targets=2",
    "--config.eval.square_queries=20", "--config.eval.sweep_steps=(2,4)", "--config.eval.sweep_apgd_steps=(2,)",
    "--config.eval.sweep_restarts=1", "--config.eval.eps_sweep_steps=2", "--config.eval.unbounded_steps=2",
    "--config.eval.noise_samples=2")
TOTAL_STEPS, EVERY = 16, 2  # 128 examples x 2 (clean + 1 draw) / 32 per batch x 2 epochs
#: Fields of results.json that legitimately differ between runs.
VOLATILE = ("training.seconds", "command")
TMP_MARK = "orbax-checkpoint-tmp"
POLL_S = 0.002


@dataclasses.dataclass(frozen=True)
class Kill:
  """Where one SIGKILL lands, as a fraction ``u`` in [0, 1) of the remaining run.

  * ``time``: ``u`` times the reference run's duration after the start
    (anywhere: imports, data, compilation, training, evaluation, writing);
  * ``log``: right after ``metrics.jsonl`` logs a step, before its checkpoint;
  * ``save``: while orbax writes a step's checkpoint (its temporary folder exists);
  * ``eval``: right after the evaluation saved a batch's results (a new file
    in ``crp/evaluation_state``), the ``u``-quantile of the batches it still
    has to save.

  The step of ``log`` and ``save`` is the ``u``-quantile of the steps the
  run still has to save, so a second kill after a restart still lands.
  """
  mode: str
  u: float


def plan(rng: random.Random, phase: str = "any") -> list[Kill]:
  """One or two kills, each of a random mode (``eval`` only with ``phase="evaluation"``)."""
  count = 1 if rng.random() < 0.6 else 2
  modes = ("eval",) if phase == "evaluation" else ("time", "log", "save")
  return [Kill(rng.choice(modes), rng.random()) for _ in range(count)]


@dataclasses.dataclass(frozen=True)
class Runner:
  """Starts ``experiments.run`` on ``model`` with the runs' environment."""
  env: dict[str, str]
  model: str
  extra: tuple[str, ...] = ()

  @classmethod
  def create(cls, root: str, model: str, devices: int, cache: bool, extra: tuple[str, ...] = ()) -> "Runner":
    """``devices`` CPU devices, and the compilation cache under ``root`` if ``cache``."""
    env = dict(os.environ, CRP_CPU_DEVICES=str(devices))
    xla = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(xla)
    if cache:
      env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(root, "xla_cache"),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    else:  # no shared cache: a kill during a cache write must not touch later runs
      env["CRP_COMPILATION_CACHE"] = ""
    return cls(env, model, extra)

  def command(self, workdir: str) -> list[str]:
    return [sys.executable, "-m", "experiments.run", f"--workdir={workdir}",
            f"--config.model={self.model}", *RUN_FLAGS, *self.extra]

  def start(self, workdir: str) -> subprocess.Popen:
    """Starts the run in ``workdir``; its output goes to ``<workdir>.log``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(workdir + ".log", "a") as log:  # non-atomic: the run's console log
      return subprocess.Popen(self.command(workdir), env=self.env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=repo)


class RunFailed(RuntimeError):
  """A run that should have finished exited with an error."""


def finish(proc: subprocess.Popen, workdir: str) -> None:
  if proc.wait() != 0:
    raise RunFailed(f"the run in {workdir} exited with {proc.returncode}; see {workdir}.log")


def tmp_dirs(ckpt_dir: str) -> list[str]:
  try:
    return sorted(n for n in os.listdir(ckpt_dir) if TMP_MARK in n)
  except FileNotFoundError:
    return []


def saved_steps(ckpt_dir: str) -> list[int]:
  return sorted(int(n) for n in _listdir(ckpt_dir) if n.isdigit())


def logged_step(metrics_path: str) -> int:
  try:
    with open(metrics_path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return -1
  return json.loads(lines[-1])["step"] if lines else -1


def eval_files(workdir: str) -> list[str]:
  """The batch results the evaluation of the run in ``workdir`` has saved so far."""
  return [n for n in _listdir(os.path.join(workdir, "crp", EVAL_STATE_DIR)) if n.endswith(".npz")]


def target_step(when: Kill, ckpt_dir: str) -> int | None:
  """The step a ``log`` or ``save`` kill waits for, or ``None`` if no save is left."""
  done = max(saved_steps(ckpt_dir), default=0)
  left = [s for s in range(EVERY, TOTAL_STEPS + 1, EVERY) if s > done]
  return left[int(when.u * len(left))] if left else None


class Watcher:
  """Tells when a run reaches a kill point, ignoring what earlier (killed) runs left behind."""

  def __init__(self, when: Kill, workdir: str, duration: float, eval_batches: int = 0):
    self.workdir = workdir
    self.ckpt_dir = os.path.join(workdir, "crp", "checkpoints")
    self.metrics_path = os.path.join(workdir, "crp", "metrics.jsonl")
    if when.mode == "eval":
      done = len(eval_files(workdir))
      self.step = done + 1 + int(when.u * (eval_batches - done)) if eval_batches > done else None
    else:
      self.step = None if when.mode == "time" else target_step(when, self.ckpt_dir)
    self.when = when if self.step is not None else Kill("time", when.u)
    self.deadline = time.monotonic() + when.u * duration
    self.start_ns = time.time_ns()
    self.stale = set(tmp_dirs(self.ckpt_dir))  # an interrupted save's folder, until orbax removes it

  def reached(self) -> bool:
    if self.when.mode == "time":
      return time.monotonic() >= self.deadline
    if self.when.mode == "eval":
      return len(eval_files(self.workdir)) >= self.step
    if self.when.mode == "log":
      return _mtime_ns(self.metrics_path) > self.start_ns and logged_step(self.metrics_path) >= self.step
    current = set(tmp_dirs(self.ckpt_dir))
    self.stale &= current
    return any(n.startswith(f"{self.step}.") for n in current - self.stale)

  def describe(self) -> str:
    return {"time": "at a random time",
            "log": f"after the log of step {self.step}",
            "eval": f"after the evaluation saved batch {self.step}",
            "save": f"during the save of step {self.step}"}[self.when.mode]


def _mtime_ns(path: str) -> int:
  try:
    return os.stat(path).st_mtime_ns
  except FileNotFoundError:
    return 0


def kill(proc: subprocess.Popen, when: Kill, workdir: str, duration: float, eval_batches: int = 0) -> str:
  """SIGKILLs ``proc`` where ``when`` says; returns where it landed."""
  watcher = Watcher(when, workdir, duration, eval_batches)
  t0 = time.monotonic()
  while proc.poll() is None:
    if watcher.reached():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return f"SIGKILL {watcher.describe()} at {time.monotonic() - t0:.1f} s ({landing(watcher.ckpt_dir)})"
    time.sleep(POLL_S)
  return f"no kill ({watcher.when.mode}): the run finished first"


def landing(ckpt_dir: str) -> str:
  steps = saved_steps(ckpt_dir)
  left = tmp_dirs(ckpt_dir)
  where = f"last checkpoint: step {steps[-1]}" if steps else "no checkpoint yet"
  return where + (f"; {left[0]} left behind" if left else "")


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def load_final_state(workdir: str) -> dict[str, Any]:
  """Every array of the newest checkpoint, as numpy, keyed by its path in the tree."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(workdir, "crp", "checkpoints")
  step = max(int(n) for n in _listdir(ckpt_dir) if n.isdigit())
  path = os.path.join(ckpt_dir, str(step), "default")
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return {"checkpoint_step": step, **_flat(state)}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}/").items()}
  if isinstance(tree, (list, tuple)):
    return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}/").items()}
  return {prefix.rstrip("/"): tree}


def state_diffs(ref: dict[str, Any], got: dict[str, Any]) -> list[str]:
  """Names of the arrays that differ in dtype, shape or any bit."""
  out = [k for k in sorted(set(ref) ^ set(got))]
  for k in sorted(set(ref) & set(got)):
    a, b = ref[k], got[k]
    if hasattr(a, "tobytes") and hasattr(b, "tobytes"):
      same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
      same = type(a) is type(b) and a == b
    if not same:
      out.append(k)
  return out


def _drop(obj: Any, dotted: str) -> None:
  head, _, rest = dotted.partition(".")
  if isinstance(obj, dict) and head in obj:
    if rest:
      _drop(obj[head], rest)
    else:
      del obj[head]


def results(workdir: str) -> dict[str, Any]:
  """``results.json`` without the fields that legitimately differ."""
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    out = json.load(f)
  for record in ([out] if "config" in out else out.values()):  # one model, or one per method
    for field in VOLATILE:
      _drop(record, field)
  return out


def metrics(workdir: str) -> list[dict[str, Any]]:
  """``metrics.jsonl`` lines without their speed."""
  with open(os.path.join(workdir, "crp", "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return [{k: v for k, v in line.items() if k != "steps_per_sec"} for line in lines]


def leftovers(workdir: str) -> list[str]:
  """Temporary files or folders that should not outlive a finished run."""
  return [os.path.relpath(os.path.join(d, n), workdir) for d, dirs, files in os.walk(workdir)
          for n in dirs + files if TMP_MARK in n or n.startswith(".tmp-")]


def compare(ref_dir: str, workdir: str) -> list[str]:
  """What differs between the finished run in ``workdir`` and the reference."""
  problems = []
  bad = state_diffs(load_final_state(ref_dir), load_final_state(workdir))
  if bad:
    problems.append(f"checkpoint arrays differ: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
  if metrics(ref_dir) != metrics(workdir):
    problems.append("metrics.jsonl differs")
  if results(ref_dir) != results(workdir):
    problems.append("results.json differs")
  if leftovers(workdir):
    problems.append(f"leftover temporary files: {', '.join(leftovers(workdir))}")
  if os.path.isdir(os.path.join(workdir, "crp", EVAL_STATE_DIR)):
    problems.append(f"{EVAL_STATE_DIR} left behind")
  return problems


def kill_point(index: int, kills: list[Kill], root: str, ref_dir: str, runner: Runner,
               duration: float, eval_batches: int = 0) -> bool:
  """Runs one kill point to the end; prints its line; returns whether it matched."""
  workdir = os.path.join(root, f"kill{index}")
  events = [kill(runner.start(workdir), k, workdir, duration, eval_batches) for k in kills]
  try:
    finish(runner.start(workdir), workdir)
    problems = compare(ref_dir, workdir)
  except RunFailed as e:
    problems = [str(e)]
  if os.path.isdir(os.path.join(workdir, "crp", QUARANTINE_DIR)):
    events.append(f"a step was set aside: see {workdir}.log")
  verdict = "bit-identical" if not problems else "DIFFERS: " + "; ".join(problems)
  print(f"kill point {index}: {' | '.join(events)} -> resumed to the end: {verdict}", flush=True)
  return not problems


def baseline(root: str, runner: Runner) -> tuple[str, float, list[str], int]:
  """The reference run, then an uninterrupted rerun compared with it.

  The rerun is the baseline for bit-identity and, with the compilation cache
  now warm, gives the duration that ``time`` kills span. Returns the
  reference folder, that duration, what differs in the rerun and how many
  batch results the reference's evaluation saved.
  """
  ref_dir = os.path.join(root, "reference")
  proc, seen = runner.start(ref_dir), 0
  while proc.poll() is None:   # how many batches the evaluation saves, for the eval kills
    seen = max(seen, len(eval_files(ref_dir)))
    time.sleep(POLL_S)
  finish(proc, ref_dir)
  print(f"reference: {' '.join(['python', *runner.command(ref_dir)[1:]])}", flush=True)
  rerun = os.path.join(root, "rerun")
  t0 = time.monotonic()
  finish(runner.start(rerun), rerun)
  duration = time.monotonic() - t0
  problems = compare(ref_dir, rerun)
  print(f"uninterrupted rerun ({duration:.0f} s): {'; '.join(problems) or 'bit-identical'}; "
        f"the evaluation saved {seen} batch results", flush=True)
  return ref_dir, duration, problems, seen


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  root = f.root or tempfile.mkdtemp(prefix="kill_resume-")
  os.makedirs(root, exist_ok=True)
  runner = Runner.create(root, f.model, f.devices, f.compilation_cache,
                         EVAL_FLAGS if f.phase == "evaluation" else ())
  ref_dir, duration, problems, batches = baseline(root, runner)
  rng = random.Random(f.seed)
  plans = [plan(rng, f.phase) for _ in range(f.kills)]
  with concurrent.futures.ThreadPoolExecutor(max(f.jobs, 1)) as pool:
    same = sum(pool.map(lambda ik: kill_point(ik[0] + 1, ik[1], root, ref_dir, runner, duration, batches),
                        enumerate(plans)))
  print(f"{same}/{f.kills} bit-identical")
  if not f.root:
    shutil.rmtree(root, ignore_errors=True)
  sys.exit(0 if same == f.kills and not problems else 1)


if __name__ == "__main__":
  define_flags()
  logging.set_verbosity(logging.ERROR)
  app.run(main)
