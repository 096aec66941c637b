"""Reliability: kill and resume exactly, config changes, corrupt checkpoints, divergence,
whole output files, safe loading.

Most checks run in-process on one tiny finished run (a module fixture);
those about exit codes and one-line errors run the CLI in a subprocess.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import jax
import ml_collections
import numpy as np
import pytest

from crp_jax.runner import checkpoint, atomic, pipeline
from crp_jax.runner.checkpoint import Checkpointer, CheckpointError
from tools import kill_resume
from experiments.configs import get_config
from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_TINY = ("--config.compare_with=", "--config.method=crp", "--config.num_perturbations=1",
            "--config.train_subset=64", "--config.batch_size=16", "--config.epochs=1",
            "--config.checkpoint_every_steps=2", "--config.log_every_steps=2",
            "--config.eval.attack_subset=8", "--config.eval.batch_size=8", "--config.eval.pgd_steps=(1,)",
            "--config.eval.extra_step_size=0", "--config.eval.strong=false", "--progress=false")


def tiny_config() -> ml_collections.ConfigDict:
  """CLI_TINY as a config: 8 steps of CRP on 64 digits, a checkpoint every 2 steps."""
  c = get_config("mnist5k")
  c.compare_with, c.method, c.num_perturbations, c.train_subset = "", "crp", 1, 64
  c.batch_size, c.epochs, c.checkpoint_every_steps, c.log_every_steps = 16, 1, 2, 2
  c.eval.attack_subset, c.eval.batch_size, c.eval.pgd_steps = 8, 8, (1,)
  c.eval.extra_step_size, c.eval.strong = 0.0, False
  return c


def cli(workdir, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  env = cli_server.without_device_count(os.environ)
  env.update(CRP_CPU_DEVICES="2")
  return cli_server.run("experiments.run", [f"--workdir={workdir}", *args], env=env, timeout=timeout)


def read_state(workdir: str) -> dict:
  """The newest checkpoint of ``workdir``'s crp model as ``{path: numpy array}``."""
  return kill_resume.load_final_state(workdir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
  """A finished tiny run (in-process, 4 fake devices)."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  pipeline.run(tiny_config(), workdir, progress=False)
  return workdir


@pytest.fixture
def run_copy(finished, tmp_path) -> str:
  target = str(tmp_path / "run")
  shutil.copytree(finished, target)
  return target


# --- 1. kill anywhere, resume exactly -------------------------------------------------------


def _kill_resume(kills: int, tmp_path) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "tools.kill_resume", f"--kills={kills}", "--seed=0", "--jobs=2",
         f"--root={tmp_path}"]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)


def test_kill_and_resume_is_bit_identical_at_two_kill_points(tmp_path):
  proc = _kill_resume(2, tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "uninterrupted rerun" in proc.stdout and "2/2 bit-identical" in proc.stdout, proc.stdout
  assert proc.stdout.count("SIGKILL") >= 2, proc.stdout


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical_at_ten_kill_points(tmp_path):
  proc = _kill_resume(10, tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "10/10 bit-identical" in proc.stdout, proc.stdout


def _fake_run(workdir: str, value: float, seconds: float, accuracy: float) -> None:
  ckpt = Checkpointer(os.path.join(workdir, "crp"))
  ckpt.save(16, {"params": {"w": np.array([value, 1.0], np.float32)}, "step": np.int32(16)})
  ckpt.close()
  atomic.write_json(os.path.join(workdir, "results.json"),
                {"config": {}, "command": "x", "training": {"seconds": seconds, "steps": 16},
                 "evaluation": {"accuracy": {"clean": accuracy}}})
  atomic.atomic_write_text(os.path.join(workdir, "crp", "metrics.jsonl"),
                       json.dumps({"step": 2, "loss": 1.0, "steps_per_sec": seconds}) + "\n")


def test_kill_resume_comparison_detects_one_flipped_bit_and_ignores_timing(tmp_path):
  ref, same, sign, acc = (str(tmp_path / n) for n in ("ref", "same", "sign", "acc"))
  _fake_run(ref, 0.0, seconds=1.0, accuracy=0.5)
  _fake_run(same, 0.0, seconds=9.0, accuracy=0.5)
  _fake_run(sign, -0.0, seconds=1.0, accuracy=0.5)  # equal as numbers, one bit apart
  _fake_run(acc, 0.0, seconds=1.0, accuracy=0.625)
  assert kill_resume.compare(ref, same) == []
  assert kill_resume.compare(ref, sign) == ["checkpoint arrays differ: params/w"]
  assert kill_resume.compare(ref, acc) == ["results.json differs"]


def test_an_interrupted_save_leaves_the_previous_step_and_its_tmp_dir_is_removed(tmp_path):
  state = {"w": np.arange(4.0, dtype=np.float32)}
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(2, state)
  ckpt.close()
  # What a SIGKILL during orbax's write of step 4 leaves behind.
  partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp"
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "half_written").write_bytes(b"\0" * 10)
  again = Checkpointer(str(tmp_path))
  assert again.steps() == [2]
  np.testing.assert_array_equal(again.restore_latest(state)["w"], state["w"])
  again.save(4, {"w": state["w"] + 1})
  assert again.steps() == [2, 4] and not glob.glob(str(tmp_path / "checkpoints" / "*tmp*"))


def test_stale_temp_files_of_killed_atomic_writes_are_removed(tmp_path):
  (tmp_path / ".tmp-abc123metrics.jsonl").write_text("half")
  (tmp_path / "metrics.jsonl").write_text("{}\n")
  assert atomic.remove_stale_temps(str(tmp_path)) == [".tmp-abc123metrics.jsonl"]
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


# --- 2. resuming with a different config ----------------------------------------------------


def _saved(tmp_path, config) -> str:
  workdir = str(tmp_path / "w")
  atomic.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  return workdir


def test_resume_with_another_config_is_refused_and_names_exactly_the_changed_fields(tmp_path):
  workdir = _saved(tmp_path, tiny_config())
  changed = tiny_config()
  changed.learning_rate, changed.epochs = 0.01, 3
  with pytest.raises(CheckpointError) as e:
    checkpoint.check_config(workdir, changed)
  message = str(e.value)
  assert "\n" not in message and workdir in message
  fields = re.search(r"Differing fields: (.*)", message).group(1)
  assert fields == "epochs: 1 -> 3; learning_rate: 0.001 -> 0.01"


def test_eval_only_changes_need_allow_config_change(tmp_path):
  workdir = _saved(tmp_path, tiny_config())
  changed = tiny_config()
  changed.eval.pgd_steps, changed.log_every_steps = (2, 3), 4
  with pytest.raises(CheckpointError, match=r"add --allow_config_change"):
    checkpoint.check_config(workdir, changed)
  checkpoint.check_config(workdir, changed, allow_config_change=True)


def test_allow_config_change_does_not_permit_training_fields(tmp_path):
  workdir = _saved(tmp_path, tiny_config())
  changed = tiny_config()
  changed.eval.eps, changed.num_perturbations = 0.1, 2
  with pytest.raises(CheckpointError) as e:
    checkpoint.check_config(workdir, changed, allow_config_change=True)
  assert "num_perturbations: 1 -> 2" in str(e.value) and "eval.eps" not in str(e.value)


def test_allowed_eval_change_reevaluates_without_retraining(run_copy):
  before = read_state(run_copy)
  config = tiny_config()
  config.eval.pgd_steps = (2,)
  pipeline.run(config, run_copy, progress=False, allow_config_change=True)
  result = atomic.read_json(os.path.join(run_copy, "results.json"))
  assert set(result["evaluation"]["paper"]["accuracy"]) == {"clean", "fgsm", "pgd2"}
  assert kill_resume.state_diffs(before, read_state(run_copy)) == []
  assert atomic.read_json(os.path.join(run_copy, "crp", "config.json"))["eval"]["pgd_steps"] == [2]


# --- 3. corrupt checkpoints -----------------------------------------------------------------


def _damage(step_dir: str, how: str) -> None:
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
           if os.path.isfile(f) and checkpoint.MANIFEST_NAME not in f]
  biggest = max(files, key=os.path.getsize)
  if how == "truncate":
    os.truncate(biggest, os.path.getsize(biggest) // 2)
  elif how == "delete":
    os.remove(biggest)
  elif how == "flip_bit":
    data = bytearray(open(biggest, "rb").read())
    data[len(data) // 2] ^= 1
    with open(biggest, "wb") as f:
      f.write(data)
  elif how == "no_manifest":
    os.remove(os.path.join(step_dir, checkpoint.MANIFEST_NAME))


@pytest.mark.parametrize("how", ["truncate", "delete", "flip_bit", "no_manifest"])
def test_a_damaged_latest_step_falls_back_to_the_previous_one_with_a_warning(tmp_path, how):
  state = {"w": np.arange(1000, dtype=np.float32)}
  ckpt = Checkpointer(str(tmp_path), max_to_keep=3)
  ckpt.save(2, state)
  ckpt.save(4, {"w": state["w"] * 2})
  _damage(ckpt.step_dir(4), how)
  again = Checkpointer(str(tmp_path), max_to_keep=3)
  with pytest.warns(UserWarning, match=r"step 4: .*moved to .*corrupt_checkpoints; using step 2"):
    restored = again.restore_latest(state)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert again.steps() == [2] and os.listdir(tmp_path / "corrupt_checkpoints") == ["4"]
  again.save(4, {"w": state["w"] * 2})  # the resumed run can save that step again
  assert again.steps() == [2, 4]


def test_no_usable_step_raises_and_moves_nothing(tmp_path):
  state = {"w": np.arange(1000, dtype=np.float32)}
  ckpt = Checkpointer(str(tmp_path), max_to_keep=3)
  for step in (2, 4):
    ckpt.save(step, state)
    _damage(ckpt.step_dir(step), "truncate")
  with pytest.raises(CheckpointError, match=r"no usable checkpoint .*step 4: .*step 2: .*truncated"):
    Checkpointer(str(tmp_path)).restore_latest(state)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_an_only_step_without_manifest_is_an_unfinished_save_and_training_starts_afresh(tmp_path):
  state = {"w": np.arange(1000, dtype=np.float32)}
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(2, state)
  _damage(ckpt.step_dir(2), "no_manifest")
  with pytest.warns(UserWarning, match=r"step 2: no crp_manifest.json .*; starting from step 0"):
    assert Checkpointer(str(tmp_path)).restore_latest(state) is None
  assert os.listdir(tmp_path / "corrupt_checkpoints") == ["2"]


def test_run_with_a_truncated_latest_step_resumes_from_the_previous_and_ends_identical(finished, run_copy):
  ckpt_dir = os.path.join(run_copy, "crp", "checkpoints")
  latest = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  _damage(os.path.join(ckpt_dir, str(latest)), "truncate")
  with pytest.warns(UserWarning, match=f"step {latest}: .* using step {latest - 2}"):
    pipeline.run(tiny_config(), run_copy, progress=False)
  assert kill_resume.state_diffs(read_state(finished), read_state(run_copy)) == []
  assert kill_resume.results(finished) == kill_resume.results(run_copy)
  assert kill_resume.metrics(finished) == kill_resume.metrics(run_copy)


def test_cli_with_every_step_corrupt_stops_with_one_line_and_exit_2(run_copy):
  ckpt_dir = os.path.join(run_copy, "crp", "checkpoints")
  for step in os.listdir(ckpt_dir):
    _damage(os.path.join(ckpt_dir, step), "truncate")
  proc = cli(run_copy, *CLI_TINY)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: no usable checkpoint in "), proc.stderr[-3000:]
  assert "truncated" in lines[0] and "Traceback" not in proc.stderr


# --- 4. divergence --------------------------------------------------------------------------


def test_divergence_stops_with_exit_3_and_keeps_a_finite_checkpoint(tmp_path):
  """SGD at lr 10 with weight decay 1 multiplies the weights by about -9 each step: NaN at step 4."""
  workdir = str(tmp_path / "run")
  proc = cli(workdir, *CLI_TINY, "--config.optimizer=sgd", "--config.learning_rate=10",
             "--config.weight_decay=1")
  lines = proc.stderr.splitlines()
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert re.match(r"error: training diverged: loss=nan .* before step 4; the last good checkpoint "
                  r"\(step 2\) is kept in .*; rerun in a new --workdir with a lower "
                  r"config.learning_rate$", lines[0]), lines[0]
  state = read_state(workdir)
  assert state["checkpoint_step"] == 2
  assert all(np.isfinite(v).all() for k, v in state.items() if isinstance(v, np.ndarray))
  assert not glob.glob(os.path.join(workdir, "**", "results.json"), recursive=True)
  logged = [json.loads(l)["step"] for l in open(os.path.join(workdir, "crp", "metrics.jsonl"))]
  assert logged == [2]


# --- 5. results are never half-written ------------------------------------------------------


def test_a_crash_during_evaluation_leaves_the_previous_results_intact(run_copy, monkeypatch):
  outputs = [p for p in glob.glob(os.path.join(run_copy, "**", "*"), recursive=True)
             if os.path.basename(p) in ("results.json", "report.md")]
  before = {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in outputs}
  assert len(before) == 4

  def crash(*args, **kwargs):
    raise RuntimeError("evaluation crashed")

  monkeypatch.setattr(pipeline, "evaluate_all", crash)
  with pytest.raises(RuntimeError, match="evaluation crashed"):
    pipeline.run(tiny_config(), run_copy, progress=False)
  assert {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in outputs} == before


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
  path = tmp_path / "results.json"
  atomic.write_json(str(path), {"old": 1})
  module, name = failing.split(".")

  def boom(*args, **kwargs):
    raise OSError("disk gone")

  monkeypatch.setattr(f"{module}.{name}", boom)
  with pytest.raises(OSError, match="disk gone"):
    atomic.write_json(str(path), {"new": 2})
  monkeypatch.undo()
  assert atomic.read_json(str(path)) == {"old": 1}
  assert os.listdir(tmp_path) == ["results.json"]


SOURCES = [p for d in ("crp_jax", "experiments", "tools") for p in glob.glob(os.path.join(ROOT, d, "**", "*.py"),
                                                                             recursive=True)]
# Writes that bypass crp_jax/runner/atomic.py's atomic helpers.
NON_ATOMIC = re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]|\.write_text\(|\.write_bytes\(|json\.dump\(|"
                        r"np\.save|savefig\((?!buf)|\.to_csv\(|shutil\.copy")
# Loading that can run code from a file.
UNSAFE_LOAD = re.compile(r"\bpickle\b|cloudpickle|\bdill\b|\bmarshal\b|\bshelve\b|allow_pickle\s*=\s*True|"
                         r"yaml\.load\(|yaml\.unsafe_load|torch\.load\((?![^)]*weights_only\s*=\s*True)|"
                         r"np\.load\((?![^)]*allow_pickle\s*=\s*False)|jnp\.load\(|(?<![.\w])(eval|exec)\(")


def _offending(pattern: re.Pattern, files: list[str], exempt: tuple[str, ...] = ()) -> list[str]:
  hits = []
  for path in files:
    if path.endswith(exempt):
      continue
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
      code = line.split("#", 1)[0]
      if pattern.search(code) and "# non-atomic:" not in line:
        hits.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
  return hits


def test_every_output_file_is_written_through_the_atomic_helpers():
  helpers = (os.path.join("crp_jax", "runner", "atomic.py"), os.path.join("crp_jax", "_files.py"))
  assert _offending(NON_ATOMIC, SOURCES, exempt=helpers) == []


def test_nothing_loads_files_unsafely():
  assert SOURCES and _offending(UNSAFE_LOAD, SOURCES) == []


def test_the_scanners_catch_what_they_look_for(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("import pickle\nx = np.load(f)\ny = np.load(f, allow_pickle=True)\n"
                 "open(p, 'w').write(s)\nfig.savefig(path)\nok = np.load(f, allow_pickle=False)\n"
                 "z = eval(text)\nnet = net.eval()\n")
  assert len(_offending(UNSAFE_LOAD, [str(bad)])) == 4
  assert len(_offending(NON_ATOMIC, [str(bad)])) == 2


def test_a_run_saved_before_a_field_existed_resumes_with_its_default(tmp_path):
  workdir = tmp_path / "old"
  workdir.mkdir()
  config = tiny_config()
  saved = config.to_dict()
  del saved["objective"]                       # a config.json written before config.objective existed
  atomic.write_json(str(workdir / "config.json"), saved)
  checkpoint.check_config(str(workdir), config)   # the default (extended_set) is the old behaviour
  config.objective = "ball_loss"
  with pytest.raises(CheckpointError, match="objective: 'extended_set' -> 'ball_loss'"):
    checkpoint.check_config(str(workdir), config)
