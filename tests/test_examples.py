"""examples/: ball_loss in a user's Flax + optax step with BatchNorm and a hinge loss (examples/ball_loss_batchnorm.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples import ball_loss_batchnorm as example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K1 = example.NUM_PERTURBATIONS + 1   # the K draws and the clean copy


def test_training_lowers_the_loss_and_updates_the_batch_stats():
  state, losses = example.train(12)
  assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
  start = example.create_state(key=jax.random.split(jax.random.key(0))[0]).batch_stats
  for old, new in zip(jax.tree.leaves(start), jax.tree.leaves(state.batch_stats)):
    assert old.shape == new.shape and not np.allclose(old, new)


@pytest.fixture(scope="module")
def batch():
  x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
  return x, jnp.arange(16) % 10, jnp.arange(100, 116), jax.random.key(2)


def step(draws_per_chunk, batch):
  x, y, ids, key = batch
  return example.train_step(example.create_state(key=jax.random.key(0)), x, y, ids, key=key,
                            draws_per_chunk=draws_per_chunk)


def test_one_chunk_of_all_draws_is_the_unchunked_step(batch):
  (whole, loss), (one, loss_one) = step(None, batch), step(K1, batch)
  np.testing.assert_allclose(loss_one, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves((whole.params, whole.batch_stats)), jax.tree.leaves((one.params, one.batch_stats))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_chunks_average_their_running_statistics(batch):
  """3 chunks of 3 draws: the mean of the chunks' running means is the unchunked one (the BatchNorm is the
  first normalisation); the running variance tracks the within-chunk variance, which is no larger."""
  whole, chunked = step(None, batch)[0].batch_stats["BatchNorm_0"], step(3, batch)[0].batch_stats["BatchNorm_0"]
  np.testing.assert_allclose(chunked["mean"], whole["mean"], rtol=1e-5, atol=1e-6)
  assert np.all(chunked["var"] <= whole["var"] + 1e-6) and not np.allclose(chunked["var"], whole["var"])


def test_runs_as_a_module():
  run = lambda *args: subprocess.run([sys.executable, "-m", "examples.ball_loss_batchnorm", *args], cwd=ROOT,
                                     capture_output=True, text=True, timeout=120)
  ok = run("--steps=2", "--draws_per_chunk=4")
  assert ok.returncode == 0 and "step   1  ball hinge loss" in ok.stdout, ok.stderr
  bad = run("--draws_per_chunk=0")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ") and not bad.stdout
