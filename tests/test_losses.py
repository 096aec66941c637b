"""ball_loss: Eq. 8 as a per-example loss that composes with jit, grad and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from crp_jax import ball_loss
from crp_jax.perturbations import make_delta, perturb

KEY = jax.random.key(0)
B, D, C = 6, 8, 3
X = jax.random.uniform(jax.random.key(1), (B, D))
Y = jnp.arange(B) % C
IDS = jnp.arange(10, 10 + B)
W = jax.random.normal(jax.random.key(2), (D, C))


def make_loss_fn(w):
  return lambda x, y: optax.softmax_cross_entropy_with_integer_labels(jnp.tanh(x @ w), y)


def ball(w, x=X, y=Y, ids=IDS, **kw):
  kw = {"num_perturbations": 4, "eps": 0.3, **kw}
  return ball_loss(make_loss_fn(w), x, y, key=KEY, example_ids=ids, **kw)


def test_k1_eps0_is_the_point_loss():
  np.testing.assert_allclose(ball(W, num_perturbations=1, eps=0.0), make_loss_fn(W)(X, Y), rtol=1e-6)


def test_matches_the_explicit_average_of_eq8():
  k = 4
  manual = np.mean([make_loss_fn(W)(perturb(X, make_delta(IDS, jnp.full(B, j), (D,), key=KEY, eps=0.3)), Y)
                    for j in range(k)], axis=0)
  np.testing.assert_allclose(ball(W, num_perturbations=k), manual, rtol=1e-5)


def test_include_clean_averages_in_the_clean_loss():
  k = 4
  with_clean = ball(W, include_clean=True, num_perturbations=k)
  expected = (k * ball(W, num_perturbations=k) + make_loss_fn(W)(X, Y)) / (k + 1)
  np.testing.assert_allclose(with_clean, expected, rtol=1e-5)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_jit_agrees(distribution):
  jitted = jax.jit(lambda w: ball(w, distribution=distribution))
  np.testing.assert_allclose(jitted(W), ball(W, distribution=distribution), rtol=1e-6)


def test_gradients():
  check_grads(lambda w: ball(w).sum(), (W,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
  check_grads(lambda x: ball(W, x=x, clip=None).sum(), (X,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)


def test_vmap_over_examples():
  def one(x, y, i):
    return ball(W, x=x[None], y=y[None], ids=i[None])[0]
  np.testing.assert_allclose(jax.vmap(one)(X, Y, IDS), ball(W), rtol=1e-6)


def test_invariant_to_batch_order():
  perm = np.array([3, 0, 5, 1, 4, 2])
  np.testing.assert_allclose(ball(W, x=X[perm], y=Y[perm], ids=IDS[perm]), ball(W)[perm], rtol=1e-6)


def test_variable_epochs_differ():
  assert not np.allclose(ball(W, epoch=0), ball(W, epoch=1))


def test_rejects_k_below_one():
  with pytest.raises(ValueError, match="num_perturbations"):
    ball(W, num_perturbations=0)


# ----------------------------------------------------------------------------- Eq. 8 and Eq. 9


def test_ball_loss_is_the_mean_of_pair_losses_with_the_same_delta():
  from crp_jax import pair_loss  # pylint: disable=g-import-not-at-top
  for include_clean in (False, True):
    draws = ([-1] if include_clean else []) + list(range(4))
    pairs = np.mean([pair_loss(make_loss_fn(W), X, Y, key=KEY, example_ids=IDS,
                               draw_ids=jnp.full(B, j), eps=0.3) for j in draws], axis=0)
    np.testing.assert_allclose(ball(W, include_clean=include_clean), pairs, rtol=1e-6)


@pytest.mark.parametrize("include_clean", [False, True])
def test_full_epoch_pair_loss_mean_equals_the_mean_ball_loss(include_clean):
  """The trainer's extended set (Eq. 9), one shuffled epoch of pairs, vs ball_loss over the split (Eq. 8)."""
  from crp_jax import extended_set, pair_loss  # pylint: disable=g-import-not-at-top
  k, m = 3, B
  pairs = extended_set.epoch_pairs(0, 0, m, k, include_clean)
  assert len(pairs.example_index) == m * (k + int(include_clean))
  rows = pair_loss(make_loss_fn(W), X[pairs.example_index], Y[pairs.example_index], key=KEY,
                   example_ids=IDS[pairs.example_index], draw_ids=jnp.asarray(pairs.draw_id), eps=0.3)
  np.testing.assert_allclose(rows.mean(), ball(W, num_perturbations=k, include_clean=include_clean).mean(),
                             rtol=1e-6)


def test_has_aux_returns_the_loss_fns_aux_of_the_whole_call():
  def loss_fn(x, y):
    return make_loss_fn(W)(x, y), x.shape[0]
  loss, rows = ball_loss(loss_fn, X, Y, key=KEY, example_ids=IDS, num_perturbations=4, eps=0.3,
                         include_clean=True, has_aux=True)
  np.testing.assert_array_equal(loss, ball(W, include_clean=True))
  assert rows == 5 * B


# ----------------------------------------------------------------------------- draws_per_chunk

CHUNKS = [1, 2, 3, 4, 7]   # K = 4: one draw a call, uneven last chunks (3), one chunk (4), above K [+1] (7)


@pytest.mark.parametrize("include_clean", [False, True])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_equals_unchunked(chunk, include_clean):
  whole = ball(W, include_clean=include_clean)
  np.testing.assert_allclose(ball(W, include_clean=include_clean, draws_per_chunk=chunk), whole, rtol=1e-6)
  jitted = jax.jit(lambda w: ball(w, include_clean=include_clean, draws_per_chunk=chunk))
  np.testing.assert_allclose(jitted(W), jax.jit(lambda w: ball(w, include_clean=include_clean))(W),
                             rtol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_gradients_equal_unchunked(chunk):
  grad = lambda **kw: jax.grad(lambda w: ball(w, include_clean=True, **kw).sum())(W)
  np.testing.assert_allclose(grad(draws_per_chunk=chunk), grad(), rtol=1e-5, atol=1e-7)
  check_grads(lambda w: ball(w, draws_per_chunk=chunk).sum(), (W,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)
  check_grads(lambda x: ball(W, x=x, clip=None, draws_per_chunk=chunk).sum(), (X,), order=1,
              modes=("rev",), atol=1e-2, rtol=1e-2)


def batch_norm_loss_fn(x, y):
  """A point loss that normalises over the rows of its call, as train-mode BatchNorm does; aux: the call's mean."""
  z = (x - x.mean(axis=0, keepdims=True)) / (x.std(axis=0, keepdims=True) + 1.0)
  return make_loss_fn(W)(z, y), {"mean": x.mean(axis=0), "rows": jnp.asarray(x.shape[0])}


@pytest.mark.parametrize("include_clean", [False, True])
def test_chunks_normalise_per_chunk_and_stack_their_aux(include_clean):
  """With batch statistics, chunk 0..n is one call on its draws (the last filled up with draws K, K+1, ...)."""
  k, chunk = 4, 3
  draws = ([-1] if include_clean else []) + list(range(k))
  chunks = [draws[:3], draws[3:] + list(range(k, k + 6 - len(draws)))]
  refs = [pair_loss_rows(batch_norm_loss_fn, d) for d in chunks]
  rows = jnp.concatenate([r[0].reshape(chunk, B) for r in refs])[:len(draws)]
  loss, aux = ball_loss(batch_norm_loss_fn, X, Y, key=KEY, example_ids=IDS, num_perturbations=k, eps=0.3,
                        include_clean=include_clean, has_aux=True, draws_per_chunk=chunk)
  np.testing.assert_allclose(loss, rows.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(aux["mean"], jnp.stack([r[1]["mean"] for r in refs]), rtol=1e-6)
  np.testing.assert_array_equal(aux["rows"], [chunk * B, chunk * B])
  whole, whole_aux = ball_loss(batch_norm_loss_fn, X, Y, key=KEY, example_ids=IDS, num_perturbations=k,
                               eps=0.3, include_clean=include_clean, has_aux=True)
  assert not np.allclose(loss, whole)   # the normalisation differs: this loss_fn's rows are not independent
  np.testing.assert_array_equal(whole_aux["rows"], len(draws) * B)


def pair_loss_rows(loss_fn, draws):
  """One call of ``loss_fn`` on every example at each of ``draws`` (draw-major), through ``pair_loss``."""
  from crp_jax import pair_loss  # pylint: disable=g-import-not-at-top
  n = len(draws)
  return pair_loss(loss_fn, jnp.tile(X, (n, 1)), jnp.tile(Y, n), key=KEY, example_ids=jnp.tile(IDS, n),
                   draw_ids=jnp.repeat(jnp.asarray(draws), B), eps=0.3)


def test_one_chunk_has_a_chunk_axis_of_one():
  _, aux = ball_loss(batch_norm_loss_fn, X, Y, key=KEY, example_ids=IDS, num_perturbations=4, eps=0.3,
                     has_aux=True, draws_per_chunk=10)
  _, whole = ball_loss(batch_norm_loss_fn, X, Y, key=KEY, example_ids=IDS, num_perturbations=4, eps=0.3,
                       has_aux=True)
  assert aux["mean"].shape == (1, D)
  np.testing.assert_allclose(aux["mean"][0], whole["mean"], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_rejects_a_bad_draws_per_chunk(bad):
  with pytest.raises(ValueError, match="draws_per_chunk must be None or an int >= 1"):
    ball(W, draws_per_chunk=bad)


def test_chunks_bound_the_compiled_memory_of_the_gradient():
  """XLA's buffer plan for value_and_grad: one chunk's activations at a time, not all K draws'."""
  w1 = jnp.zeros((D, 512))
  def temp_bytes(chunk):
    def objective(w1):
      loss_fn = lambda x, y: optax.softmax_cross_entropy_with_integer_labels(jnp.tanh(x @ w1)[:, :C], y)
      return ball_loss(loss_fn, X, Y, key=KEY, example_ids=IDS, num_perturbations=64, eps=0.3,
                       draws_per_chunk=chunk).sum()
    return jax.jit(jax.value_and_grad(objective)).lower(w1).compile().memory_analysis().temp_size_in_bytes
  activations = 64 * B * 512 * 4
  assert temp_bytes(None) >= activations
  assert temp_bytes(2) < activations / 8
