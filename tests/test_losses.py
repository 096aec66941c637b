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
  manual = np.mean([make_loss_fn(W)(perturb(X, make_delta(KEY, IDS, jnp.full(B, j), (D,), eps=0.3)), Y)
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
