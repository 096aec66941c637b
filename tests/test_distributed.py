"""Multi-process runs: two local CPU processes (one device each) against one process with two devices.

The CLI runs are a 32-step CRP LeNet run on 128 mnist5k digits with a
small evaluation (clean, FGSM, PGD-1); a saved model is then evaluated
again with the strong protocol at a tiny budget (APGD-CE, APGD-T, Square).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from crp_jax import perturbations
from crp_jax.runner import atomic, distributed, pipeline, train, seeds
from crp_jax.runner.config import ConfigError
from tests import cli_server
from tools import compare_checkpoints, compare_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")
RUN_FLAGS = (
    "--dataset=mnist5k", "--config.compare_with=", "--config.method=crp", "--config.num_perturbations=1",
    "--config.train_subset=128", "--config.batch_size=32", "--config.epochs=4",
    "--config.checkpoint_every_steps=2", "--config.log_every_steps=2", "--config.max_checkpoints=100",
    "--config.eval.attack_subset=32", "--config.eval.batch_size=32", "--config.eval.pgd_steps=(1,)",
    "--config.eval.extra_step_size=0", "--config.eval.apgd_steps=2", "--config.eval.square_queries=4",
    "--config.eval.num_targets=2", "--config.eval.autoattack=", "--config.eval.sweep_steps=(1,2)",
    "--config.eval.sweep_apgd_steps=(2,)", "--config.eval.sweep_restarts=1", "--config.eval.eps_grid=(0.15,0.3)",
    "--config.eval.eps_sweep_steps=2", "--config.eval.strong=false", "--progress=false")
TOTAL_STEPS = 32  # 128 examples x (clean + 1 draw) / 32 per batch x 4 epochs
TIMEOUT_S = 400


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(devices: int) -> dict[str, str]:
  env = cli_server.without_device_count(os.environ)   # not conftest's 4 fake devices
  return {**env, "CRP_CPU_DEVICES": str(devices), "PYTHONPATH": ROOT}


def launch(module_args: list[str], processes: int) -> list[subprocess.Popen]:
  """``python -m ...`` as ``processes`` processes of one run (one CPU device each), or one process with two."""
  port = free_port()
  procs = []
  for i in range(processes):
    extra = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
             f"--process_id={i}"] if processes > 1 else []
    procs.append(subprocess.Popen([sys.executable, "-m", *module_args, *extra], cwd=ROOT,
                                  env=env_for(1 if processes > 1 else 2), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
  """Waits for every process; all must exit 0. Returns their ``(stdout, stderr)``."""
  out = []
  try:
    for p in procs:
      out.append(p.communicate(timeout=TIMEOUT_S))
  finally:
    for p in procs:
      p.kill()
  for p, (o, e) in zip(procs, out):
    assert p.returncode == 0, e[-3000:]
  return out


def run_cli(workdir, processes: int) -> list[tuple[str, str]]:
  return finish(launch(["experiments.run", *RUN_FLAGS, f"--workdir={workdir}"], processes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same run in one process (two devices) and in two processes (one device each)."""
  root = tmp_path_factory.mktemp("distributed")
  logs = {"one": run_cli(root / "one", 1), "two": run_cli(root / "two", 2)}
  return root, logs


def params(workdir) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(pipeline.load_trained(str(workdir)).variables)]


def files_under(folder) -> set[str]:
  return {os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs}


def test_two_processes_train_like_one(runs):
  root, _ = runs
  one, two = params(root / "one" / "crp"), params(root / "two" / "crp")
  # Gradients are summed across the processes by gloo instead of inside one device: rounding only.
  # The tolerance is test_pipeline's 1-vs-4-device one.
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)
  result = json.loads((root / "two" / "crp" / "results.json").read_text())
  assert result["process_count"] == 2 and result["device_count"] == 2
  assert result["training"]["steps"] == TOTAL_STEPS and result["training"]["devices"] == 2


def test_two_processes_evaluate_like_one(runs):
  root, _ = runs
  one, two = (json.loads((root / w / "crp" / "results.json").read_text()) for w in ("one", "two"))
  lines, shared, _ = compare_results.diff(one, two)
  assert not lines and shared >= 8, lines
  assert set(two["evaluation"]["paper"]["accuracy"]) >= {"clean", "fgsm", "pgd1"}


def test_two_processes_evaluate_a_saved_model_exactly_as_one(runs, tmp_path):
  """The same weights, evaluated by 2 processes x 1 device and by 1 process x 2 devices: equal bits."""
  root, _ = runs
  results = {}
  for processes in (2, 1):
    model = tmp_path / str(processes) / "crp"
    shutil.copytree(root / "one" / "crp", model)
    finish(launch(["experiments.evaluate", f"--workdir={model}", "--strong=apgd-square", "--progress=false"],
                  processes))
    results[processes] = json.loads((model / "evaluation.json").read_text())
  lines, shared, _ = compare_results.diff(results[1], results[2])
  assert not lines and shared > 40, lines
  strong = next(iter(results[2].values()))["evaluation"]["strong"]
  assert 0 <= strong["worst_case"] <= strong["accuracy"]["apgd-ce"] and strong["checks"]


def test_process_zero_writes_every_output_once_and_whole(runs):
  root, logs = runs
  one, two = root / "one", root / "two"
  ours = {f for f in files_under(two) if "/checkpoints/" not in f}
  assert ours == {f for f in files_under(one) if "/checkpoints/" not in f}
  assert not [f for f in files_under(two) if os.path.basename(f).startswith(atomic.TEMP_PREFIX)]
  for f in ours:
    if f.endswith(".json"):
      json.loads((two / f).read_text())
  lines = (two / "crp" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == list(range(2, TOTAL_STEPS + 1, 2))
  steps = sorted(int(s) for s in os.listdir(two / "crp" / "checkpoints"))
  assert steps == list(range(2, TOTAL_STEPS + 1, 2))
  for s in steps:
    assert (two / "crp" / "checkpoints" / str(s) / "crp_manifest.json").exists()
  (out0, err0), (out1, err1) = logs["two"]
  assert "# Robustness report" in out0 and "Robustness report" not in out1   # process 0 prints it
  assert "process 1 of 2" in err1 and "process 0 of 2" in err0


def test_two_processes_killed_mid_run_resume_to_the_same_parameters(runs, tmp_path):
  root, _ = runs
  workdir = tmp_path / "killed"
  ckpts = workdir / "crp" / "checkpoints"
  procs = launch(["experiments.run", *RUN_FLAGS, f"--workdir={workdir}"], 2)
  deadline = time.monotonic() + TIMEOUT_S
  while not (ckpts / "6" / "crp_manifest.json").exists():
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint 6"
    time.sleep(0.002)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()
  saved = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
  assert saved[-1] < TOTAL_STEPS, f"the run finished before the kill: {saved}"
  before = (workdir / "crp" / "metrics.jsonl").read_text().splitlines()
  run_cli(workdir, 2)
  (arrays, same, worst), = compare_checkpoints.compare(str(root / "two"), str(workdir)).values()
  assert same == arrays > 0 and worst == 0.0
  after = (workdir / "crp" / "metrics.jsonl").read_text().splitlines()
  kept = [l for l in before if json.loads(l)["step"] <= max(s for s in saved)]
  assert after[:len(kept)] == kept      # resumed: the lines before the kill (with their timings) are kept
  uninterrupted = (root / "two" / "crp" / "metrics.jsonl").read_text().splitlines()
  strip = lambda ls: [{k: v for k, v in json.loads(l).items() if k != "steps_per_sec"} for l in ls]
  assert strip(after) == strip(uninterrupted)


def test_perturbations_are_the_same_bits_for_any_process_count(tmp_path):
  port = free_port()
  two = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / "two.npy"), "2", str(i), str(port), "1"],
                          cwd=ROOT, env=env_for(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
         for i in range(2)]
  one = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / "one.npy"), "1", "0", "0", "2"],
                          cwd=ROOT, env=env_for(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  finish(two)
  finish(one)
  from tests.multiprocess_worker import fake_split   # pylint: disable=g-import-not-at-top
  split, spec = fake_split(), train.TrainSpec(num_perturbations=3, batch_size=16, seed=5)
  key = seeds.run_keys(spec.seed)["perturbations"]
  direct = np.stack([np.asarray(perturbations.make_delta(b["example_id"], b["draw_id"], split.image_shape,
                                                         key=key, eps=0.3))
                     for _, b in train.host_batches(split, spec, split.num_examples, 0, 6)])
  a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
  assert a.shape == (6, 16, 4, 4, 1) and np.abs(a).max() > 0
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, direct)


@pytest.mark.parametrize("flag, message", [
    ("--num_processes=0", "num_processes"),
    ("--process_id=-1", "process_id"),
    ("--num_processes=2 --process_id=2", "--process_id=2: must be in [0, 2)"),
    ("--coordinator_address=localhost --num_processes=2 --process_id=0", "expected host:port"),
])
def test_bad_launch_flags_are_one_line_and_exit_2(flag, message, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.run", f"--workdir={tmp_path / 'w'}",
                         *flag.split()], cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert len([l for l in proc.stderr.splitlines() if l.startswith("error:")]) == 1
  assert not (tmp_path / "w").exists()


def test_processes_with_different_configs_stop_with_one_line(tmp_path):
  port = free_port()
  procs = []
  for i, seed in enumerate((0, 1)):
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *RUN_FLAGS, f"--config.seed={seed}",
         f"--workdir={tmp_path / 'w'}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=ROOT, env=env_for(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2, err[-2000:]
    assert "disagree on the config" in err and "Traceback" not in err
  assert not (tmp_path / "w").exists()


def test_launch_settings():
  assert not distributed.Launch().wanted({})
  assert distributed.Launch().wanted({distributed.COORDINATOR_ENV: "10.0.0.2:1234"})
  assert distributed.Launch(num_processes=2).wanted({}) and distributed.Launch(distributed=True).wanted({})
  assert not distributed.initialize(distributed.Launch(), {})
  with pytest.raises(ConfigError, match="host:port"):
    distributed.Launch(coordinator_address="10.0.0.2").check()
  distributed.Launch(coordinator_address="10.0.0.2:1234", num_processes=2, process_id=1).check()


def test_single_process_helpers_are_identities():
  distributed.agree("config", {"a": 1})
  distributed.sync("nothing")
  rows = np.arange(12).reshape(6, 2)
  np.testing.assert_array_equal(distributed.local_rows(rows), rows)
  assert distributed.is_writer()
  assert not np.array_equal(distributed.digest({"a": 1}), distributed.digest({"a": 2}))
  np.testing.assert_array_equal(distributed.digest({"a": 1, "b": 2}), distributed.digest({"b": 2, "a": 1}))


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(distributed, "is_writer", lambda: False)
  atomic.write_json(str(tmp_path / "a.json"), {"x": 1})
  atomic.append_jsonl(str(tmp_path / "m.jsonl"), {"step": 1})
  (tmp_path / f"{atomic.TEMP_PREFIX}left").write_text("x")
  assert atomic.remove_stale_temps(str(tmp_path)) == []
  assert sorted(os.listdir(tmp_path)) == [f"{atomic.TEMP_PREFIX}left"]
