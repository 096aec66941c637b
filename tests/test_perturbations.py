"""The perturbation set is a pure function of (key, example id, draw id)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from crp_jax.perturbations import CLEAN_DRAW, make_delta, perturb

KEY = jax.random.key(42)
SHAPE = (6, 5, 1)
N = 128
IDS = jnp.arange(1000, 1000 + N, dtype=jnp.int32)
DRAWS = jnp.arange(N, dtype=jnp.int32) % 10


def reference(distribution="uniform"):
  return np.asarray(make_delta(IDS, DRAWS, SHAPE, key=KEY, eps=0.3, distribution=distribution))


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_same_bits_for_any_batch_size(batch, distribution):
  ref = reference(distribution)
  parts = [make_delta(IDS[s:s + batch], DRAWS[s:s + batch], SHAPE, key=KEY, eps=0.3,
                      distribution=distribution) for s in range(0, N, batch)]
  np.testing.assert_array_equal(np.concatenate(parts), ref)


def test_same_bits_in_shuffled_order():
  perm = np.random.default_rng(0).permutation(N)
  out = make_delta(IDS[perm], DRAWS[perm], SHAPE, key=KEY, eps=0.3)
  np.testing.assert_array_equal(np.asarray(out), reference()[perm])


def test_same_bits_jitted():
  fn = jax.jit(lambda i, j: make_delta(i, j, SHAPE, key=KEY, eps=0.3))
  np.testing.assert_array_equal(np.asarray(fn(IDS, DRAWS)), reference())


@pytest.mark.parametrize("num_devices", [1, 4])
def test_same_bits_on_sharded_mesh(num_devices):
  assert len(jax.devices()) >= 4, "conftest must fake 4 CPU devices"
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  fn = jax.jit(lambda i, j: make_delta(i, j, SHAPE, key=KEY, eps=0.3),
               in_shardings=(sharding, sharding), out_shardings=sharding)
  out = fn(jax.device_put(IDS, sharding), jax.device_put(DRAWS, sharding))
  assert len(out.sharding.device_set) == num_devices
  np.testing.assert_array_equal(np.asarray(out), reference())


def test_pairs_differ_across_examples_and_draws():
  d = make_delta(jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 0, 1]), SHAPE, key=KEY, eps=0.3)
  flat = np.asarray(d).reshape(4, -1)
  for a in range(4):
    for b in range(a + 1, 4):
      assert not np.array_equal(flat[a], flat[b]), (a, b)


def test_other_key_gives_other_set():
  other = make_delta(IDS, DRAWS, SHAPE, key=jax.random.key(43), eps=0.3)
  assert not np.array_equal(np.asarray(other), reference())


def test_clean_draw_is_zero():
  d = make_delta(jnp.array([5, 5]), jnp.array([CLEAN_DRAW, 0]), SHAPE, key=KEY, eps=0.3)
  assert np.all(np.asarray(d[0]) == 0) and np.any(np.asarray(d[1]) != 0)


@pytest.mark.parametrize("eps", [0.3, 16 / 255])
def test_uniform_statistics(eps):
  d = np.asarray(make_delta(jnp.arange(512), jnp.zeros(512, jnp.int32), (28, 28, 1), key=KEY, eps=eps))
  assert np.abs(d).max() <= eps
  assert abs(d.mean()) < 0.01 * eps
  np.testing.assert_allclose(d.std(), eps / np.sqrt(3), rtol=0.01)
  assert d.min() < -0.99 * eps and d.max() > 0.99 * eps


def test_gaussian_statistics():
  d = np.asarray(make_delta(jnp.arange(512), jnp.zeros(512, jnp.int32), (28, 28, 1),
                            key=KEY, eps=0.3, distribution="gaussian"))
  assert abs(d.mean()) < 0.003
  np.testing.assert_allclose(d.std(), 0.3, rtol=0.01)


def test_variable_mode_changes_with_epoch_constant_does_not():
  def draw(epoch):
    return np.asarray(make_delta(IDS, DRAWS, SHAPE, key=KEY, eps=0.3, epoch=epoch))
  assert not np.array_equal(draw(0), draw(1))
  np.testing.assert_array_equal(draw(3), draw(3))
  assert not np.array_equal(draw(0), reference())
  np.testing.assert_array_equal(draw(None), reference())


def test_epoch_may_be_traced():
  fn = jax.jit(lambda e: make_delta(IDS, DRAWS, SHAPE, key=KEY, eps=0.3, epoch=e))
  np.testing.assert_array_equal(np.asarray(fn(2)), np.asarray(
      make_delta(IDS, DRAWS, SHAPE, key=KEY, eps=0.3, epoch=2)))


def test_bad_arguments():
  with pytest.raises(ValueError, match="laplace"):
    make_delta(IDS, DRAWS, SHAPE, key=KEY, eps=0.3, distribution="laplace")
  with pytest.raises(ValueError, match="one length"):
    make_delta(IDS, DRAWS[:3], SHAPE, key=KEY, eps=0.3)


def test_perturb_clips_unless_disabled():
  x = jnp.array([[0.0, 0.5, 1.0]])
  d = jnp.array([[-0.2, 0.2, 0.2]])
  np.testing.assert_allclose(perturb(x, d), [[0.0, 0.7, 1.0]])
  np.testing.assert_allclose(perturb(x, d, clip=None), [[-0.2, 0.7, 1.2]])
