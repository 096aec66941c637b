"""End-to-end: tfds datasets (mocked), sharding, resume and the default CLI job."""

import json
import os
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from crp_jax import cpu, data
from crp_jax.runner import pipeline, train, meshes, seeds
from crp_jax.models import get_model
from crp_jax.runner.config import base_config
from experiments.configs import get_config
from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = ("config.json", "metrics.jsonl", "results.json", "report.md")


def tiny(config, **overrides):
  """Shrinks any config to a few steps and a small evaluation."""
  config.compare_with = ""
  config.epochs, config.batch_size, config.num_perturbations = 1, 16, 2
  config.log_every_steps, config.checkpoint_every_steps = 2, 12
  config.eval.attack_subset, config.eval.batch_size, config.eval.pgd_steps = 8, 8, (2,)
  config.eval.strong = False
  for k, v in overrides.items():
    config[k] = v
  return config


@pytest.mark.parametrize("dataset", ["mnist", "svhn", "cifar10"])
def test_tfds_dataset_trains_under_mock_data(dataset, tmp_path, monkeypatch):
  # Mock data looks unprepared to tfds; say the network is up so no probe runs.
  monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: True)
  config = tiny(get_config(dataset, "small"), model="lenet", train_subset=0)
  with tfds.testing.mock_data(num_examples=48):
    pipeline.run(config, str(tmp_path), progress=False)
  out = tmp_path / config.method
  for name in OUTPUTS:
    assert (out / name).exists(), name
  result = json.loads((out / "results.json").read_text())
  assert result["training"]["steps"] == 48 * 3 // 16
  assert result["training"]["devices"] == 1 and result["device_count"] == 4   # make_train_mesh on a CPU
  assert result["evaluation"]["paper"]["num_test"] == 48
  assert set(result["evaluation"]["paper"]["accuracy"]) >= {"clean", "fgsm", "pgd2"}


def _fit(tmp_path, name, devices, **kw):
  config = tiny(base_config(), method="crp", train_subset=128, **kw.pop("overrides", {}))
  split = data.load_split("mnist5k", "train")
  mesh = meshes.make_mesh(jax.devices()[:devices])
  return train.fit(config, str(tmp_path / name), get_model("lenet"), split, mesh, progress=False, **kw)


def test_one_and_four_devices_agree(tmp_path):
  one = _fit(tmp_path, "one", 1)
  four = _fit(tmp_path, "four", 4)
  assert int(one.step) == int(four.step) == 128 * 3 // 16
  # Float rounding only: each device sums its shard's gradient, then the all-reduce sums the four. Under
  # the XLA:CPU convolution flag that `import crp_jax` applies (Eigen kernels; the CLI always ran with
  # it), 1 of 3.2M parameters differed by 2.7e-5 after 24 Adam steps (2e-5 passed without the flag).
  # 5e-5 is 5% of one Adam step at lr 1e-3.
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=1e-4)


def test_train_mesh_is_one_device_per_process_on_a_cpu_only(monkeypatch):
  assert meshes.make_mesh().devices.size == 4
  assert meshes.make_train_mesh().devices.tolist() == [jax.devices()[0]]
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")   # accelerators train on every device
  assert meshes.make_train_mesh().devices.size == 4


@pytest.mark.skipif(not cpu.flags_for(cpu.jaxlib_version()), reason="no heap option for this jaxlib")
def test_fit_compiles_its_cpu_step_with_the_heap_cap_and_the_same_bits(tmp_path, monkeypatch):
  seen = []
  real = cpu.heap_split_options

  def spy(temp, backend, *args, **kwargs):
    seen.append(real(temp, backend, *args, **kwargs))
    return seen[-1]

  monkeypatch.setattr(cpu, "heap_split_options", spy)
  # The convolution option changes the rounding, and CRP_JAX_CPU_TUNING=0 drops it too: compare the cap alone.
  monkeypatch.setattr(cpu, "compiler_options", lambda *args, **kwargs: {})
  capped = _fit(tmp_path, "capped", 1, overrides={"batch_size": 128})
  monkeypatch.setenv("CRP_JAX_CPU_TUNING", "0")
  plain = _fit(tmp_path, "plain", 1, overrides={"batch_size": 128})
  assert seen == [{cpu.HEAP_OPTION: cpu.HEAP_BYTES}, None]   # LeNet at batch 128: 58.8 MiB of temporaries
  assert int(capped.step) == int(plain.step) == 3
  for a, b in zip(jax.tree.leaves(capped), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_gives_identical_parameters(tmp_path):
  whole = _fit(tmp_path, "whole", 2)
  half = _fit(tmp_path, "split", 2, stop_at=12)
  assert int(half.step) == 12
  resumed = _fit(tmp_path, "split", 2)
  assert int(resumed.step) == int(whole.step) == 24
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_default_job_runs_tiny_and_writes_its_outputs(tmp_path):
  cmd = [sys.executable, "-m", "experiments.run", f"--workdir={tmp_path}", "--progress=false",
         "--config.epochs=1", "--config.train_subset=128", "--config.num_perturbations=2",
         "--config.eval.attack_subset=16", "--config.eval.pgd_steps=(2,)", "--config.eval.batch_size=16",
         "--config.eval.strong=False"]
  proc = cli_server.run(cmd[2], cmd[3:], env={**os.environ, "CRP_CPU_DEVICES": "2"}, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| standard | crp |" in proc.stdout
  for method in ("standard", "crp"):
    for name in OUTPUTS:
      assert (tmp_path / method / name).exists(), (method, name)
  text = (tmp_path / "report.md").read_text()
  # White-box at the paper's η and at the extra η, and black-box at the paper's η (§4.1).
  assert text.count("PGD-2 (") == 3
  assert "paper protocol PGD: random start, last iterate" in text
  assert "| Black-box from the other models, FGSM |" in text
  assert "| Black-box from the other models, PGD-2 (η=0.003922, random start, last iterate) |" in text
  result = json.loads((tmp_path / "crp" / "results.json").read_text())["evaluation"]["paper"]
  assert set(result["black_box"]) == {"fgsm", "pgd2"} and set(result["transfer"]["pgd2"]) == {"standard"}


def test_ball_loss_objective_is_a_user_loop_over_the_public_ball_loss(tmp_path):
  """--config.objective=ball_loss trains exactly what a user's own optax loop over crp_jax.ball_loss does."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from crp_jax import ball_loss, extended_set  # pylint: disable=g-import-not-at-top
  config = tiny(base_config(), method="crp", train_subset=64, objective="ball_loss")
  split = data.load_split("mnist5k", "train")
  model = get_model("lenet")
  ours = train.fit(config, str(tmp_path), model, split, meshes.make_mesh(jax.devices()[:1]), progress=False,
                   stop_at=2)
  keys = seeds.run_keys(config.seed)
  params = model.init(keys["init"], jnp.zeros((1, 28, 28, 1)), train=False)["params"]
  tx = optax.adam(config.learning_rate)
  opt_state = tx.init(params)
  for _, pairs in extended_set.iterate_pairs(config.seed, 64, 0, True, config.batch_size, 0, 2):
    i = pairs.example_index
    x, y = data.to_float(split.images[i]), jnp.asarray(split.labels[i])

    def loss(p):
      ce = lambda xb, yb: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": p}, xb, train=True), yb)
      return ball_loss(ce, x, y, key=keys["perturbations"], example_ids=jnp.asarray(split.ids[i]),
                       num_perturbations=config.num_perturbations, eps=config.perturbation_eps,
                       include_clean=config.include_clean).mean()

    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    params = optax.apply_updates(params, updates)
  assert int(ours.step) == 2
  # Adam moves every weight by about lr = 1e-3 a step, whatever the gradient's size, so another
  # objective (other δ, no clean copy) moves weights by ~1e-3; float rounding of near-zero
  # gradients moves a few dozen by ~1e-5.
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(params)))
  assert moved < 1e-4, moved
