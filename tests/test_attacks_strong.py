"""Tests of APGD, APGD-T, Square and strong_eval (crp_jax.attacks).

The attack-must-succeed tests follow Zimmermann et al. 2022 ("Increasing
Confidence in Adversarial Robustness Evaluations"): on a linear model where
an adversarial example provably exists in the ball, the attack must find it
for every example.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks
from crp_jax.attacks import _apgd, _core
from test_attacks import (  # noqa: F401  (mnist_mlp is a fixture)
    SHAPE, _norm, linear_problem, mnist_mlp, mlp_apply, mlp_init)


def linear_multiclass(norm, eps, n=16, num_classes=5, seed=0, slack=0.02):
  """Linear logits ``(x − ½) W`` on 4x4x1 inputs where each example provably has an adversarial.

  For classes ``y, j`` the worst case over the ε ball of ``z_y − z_j`` is
  ``(w_y − w_j)·(x − ½) − ε‖w_y − w_j‖_*`` (dual norm; the box never binds
  as ``x ∈ [0.3, 0.7]`` and ``ε ≤ 0.2``). Examples are kept if it is below
  ``−slack`` for some ``j`` (the ``n`` closest to ``−slack``, the hardest);
  labels are the clean predictions.
  """
  rng = np.random.default_rng(seed)
  d = int(np.prod(SHAPE))
  w = rng.normal(size=(d, num_classes)).astype(np.float32)
  xs = rng.uniform(0.3, 0.7, size=(50 * n, d)).astype(np.float32)
  z = (xs - 0.5) @ w
  y = z.argmax(1)
  diff = w[:, y].T[:, :, None] - w[None]  # (N, d, C): w_y − w_j
  dual = np.abs(diff).sum(1) if norm == "linf" else np.linalg.norm(diff, axis=1)
  worst = z[np.arange(len(y)), y][:, None] - z - eps * dual
  worst[np.arange(len(y)), y] = np.inf
  feasible = np.flatnonzero(worst.min(1) < -slack)
  keep = feasible[np.argsort(-worst.min(1)[feasible])][:n]  # the n hardest
  assert keep.size == n
  logits_fn = lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ jnp.asarray(w)
  return logits_fn, jnp.asarray(xs[keep].reshape((n,) + SHAPE)), jnp.asarray(y[keep].astype(np.int32))


def _assert_all_fooled(logits_fn, x, x_adv, y, eps, norm):
  assert np.all(attacks.correct(logits_fn, x, y))
  assert not np.any(attacks.correct(logits_fn, x_adv, y))
  assert np.all(_norm(x_adv - x, norm) <= eps + 1e-5)
  assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))


@pytest.mark.parametrize("norm,eps,loss", [("linf", 0.1, "ce"), ("linf", 0.1, "dlr"), ("l2", 0.2, "ce")])
def test_apgd_finds_provable_adversarial(norm, eps, loss):
  # One way to fool each example (C = 3 for DLR, the third class is constant),
  # so every untargeted loss points to it; see linear_multiclass for APGD-T.
  logits_fn, x, y = linear_problem(norm, eps, extra_classes=1)
  x_adv = attacks.apgd(logits_fn, x, y, key=jax.random.key(0), eps=eps, norm=norm, num_steps=20,
                       loss=loss)
  _assert_all_fooled(logits_fn, x, x_adv, y, eps, norm)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.2)])
def test_apgd_targeted_finds_provable_adversarial(norm, eps):
  logits_fn, x, y = linear_multiclass(norm, eps)
  # num_targets=9 is capped at C − 1 = 4.
  x_adv = attacks.apgd_targeted(logits_fn, x, y, key=jax.random.key(0), eps=eps, norm=norm,
                                num_steps=10, num_targets=9)
  _assert_all_fooled(logits_fn, x, x_adv, y, eps, norm)


def test_square_finds_provable_adversarial_within_budget():
  logits_fn, x, y = linear_multiclass("linf", 0.1, num_classes=3)
  x_adv, queries = attacks.square_with_info(logits_fn, x, y, key=jax.random.key(0), eps=0.1,
                                            num_queries=300)
  _assert_all_fooled(logits_fn, x, x_adv, y, 0.1, "linf")
  assert np.all((queries >= 2) & (queries <= 300))


def test_square_respects_budget_and_ball(mnist_mlp):
  logits_fn, x, y = mnist_mlp
  x, y = x[:64], y[:64]
  x_adv, queries = jax.jit(lambda x, y, key: attacks.square_with_info(
      logits_fn, x, y, key=key, eps=0.05, num_queries=40))(x, y, jax.random.key(0))
  assert np.all(_norm(x_adv - x, "linf") <= 0.05 + 1e-6)
  assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))
  robust = np.asarray(attacks.correct(logits_fn, x_adv, y))
  clean = np.asarray(attacks.correct(logits_fn, x, y))
  assert queries.max() <= 40
  np.testing.assert_array_equal(queries[robust], 40)  # the robust ones spend all
  np.testing.assert_array_equal(queries[~clean], 1)  # misclassified: the clean query only
  assert robust.sum() < clean.sum()  # and it does fool some


def test_apgd_not_weaker_than_pgd100(mnist_mlp):
  logits_fn, x, y = mnist_mlp
  x, y, eps = x[:128], y[:128], 0.08

  @jax.jit
  def accuracies(x, y, key):
    x_pgd = attacks.pgd(logits_fn, x, y, key=key, eps=eps, step_size=eps / 10, num_steps=100)
    x_apgd = attacks.apgd(logits_fn, x, y, key=key, eps=eps, num_steps=100)
    return [attacks.accuracy(logits_fn, x_k, y) for x_k in (x, x_pgd, x_apgd)]

  clean, pgd_acc, apgd_acc = accuracies(x, y, jax.random.key(0))
  assert 0.0 < pgd_acc < clean  # ε leaves something to find
  assert apgd_acc <= pgd_acc


@pytest.fixture(scope="module")
def tiny():
  params = mlp_init(jax.random.key(0), [16, 32, 5])
  x = jax.random.uniform(jax.random.key(1), (8,) + SHAPE).at[:, 0].set(0.0).at[:, 1].set(1.0)
  logits_fn = lambda x: mlp_apply(params, x)
  return logits_fn, x, jnp.argmax(logits_fn(x), axis=1)


@pytest.mark.parametrize("attack", [attacks.apgd, attacks.apgd_targeted])
@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.0)])
def test_apgd_stays_in_ball_and_box_and_eps_zero_changes_nothing(tiny, attack, norm, eps):
  logits_fn, x, y = tiny
  targets = {"num_targets": 2} if attack is attacks.apgd_targeted else {}
  run = jax.jit(lambda eps: attack(logits_fn, x, y, key=jax.random.key(0), eps=eps, norm=norm,
                                   num_steps=5, restarts=2, **targets))
  x_adv = run(eps)
  assert x_adv.shape == x.shape
  assert np.all(_norm(x_adv - x, norm) <= eps + 1e-5)
  assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))
  np.testing.assert_array_equal(run(0.0), x)


def test_checkpoint_halves_where_the_loss_stalled():
  b = 4
  state = _apgd._State(
      x=jnp.zeros((b, 1)), x_prev=jnp.zeros((b, 1)), grad=jnp.zeros((b, 1)), loss=jnp.zeros(b),
      step=jnp.ones(b), x_max=jnp.ones((b, 1)), grad_max=jnp.ones((b, 1)),
      loss_max=jnp.array([1.0, 1.0, 1.0, 2.0]),
      best=_core.Best.empty(jnp.zeros((b, 1))),
      increases=jnp.array([2, 8, 8, 8]),  # condition 1 with ρ·window = 7.5: only example 0
      loss_max_at_check=jnp.array([0.0, 0.0, 1.0, 1.0]),
      halved_at_check=jnp.array([False, False, False, True]))
  # Example 2: f_max unchanged and η unchanged since the last checkpoint (condition 2).
  out = _apgd._checkpoint(state, jnp.array(True), 10.0, 0.75)
  np.testing.assert_array_equal(out.step, [0.5, 1.0, 0.5, 1.0])
  np.testing.assert_array_equal(out.x[:, 0], [1.0, 0.0, 1.0, 0.0])  # restart from x_max
  np.testing.assert_array_equal(out.increases, 0)
  np.testing.assert_array_equal(out.halved_at_check, [True, False, True, False])
  untouched = _apgd._checkpoint(state, jnp.array(False), 10.0, 0.75)
  np.testing.assert_array_equal(untouched.step, state.step)


def test_dlr_losses_are_shift_and_scale_invariant():
  logits = jax.random.normal(jax.random.key(0), (6, 5))
  y, t = jnp.arange(6) % 5, (jnp.arange(6) + 1) % 5
  for loss in (_core.dlr_loss, lambda z, y: _core.dlr_targeted_loss(z, y, t)):
    np.testing.assert_allclose(loss(3.0 * logits + 1.0, y), loss(logits, y), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="at least 4 classes"):
    _core.dlr_targeted_loss(logits[:, :3], y % 3, t % 3)


def test_strong_eval_is_jittable_and_worst_case_is_the_and(tiny):
  logits_fn, x, y = tiny
  run = jax.jit(lambda x, y, key: attacks.strong_eval(
      logits_fn, x, y, key=key, eps=0.1, apgd_steps=3, num_targets=2, square_queries=10))
  out = run(x, y, jax.random.key(0))
  c = {k: np.asarray(v) for k, v in out["correct"].items()}
  assert set(c) == {"clean", "apgd-ce", "apgd-t", "square", "worst_case"}
  np.testing.assert_array_equal(c["worst_case"],
                                c["clean"] & c["apgd-ce"] & c["apgd-t"] & c["square"])
  for name, acc in out["accuracy"].items():
    np.testing.assert_allclose(acc, c[name].mean())
    assert out["accuracy"]["worst_case"] <= acc


def test_steps_until_done_stops_at_the_first_all_done_step():
  body = lambda i, c: c + 1
  done = lambda c: jnp.full((4,), c >= 3)
  assert int(_core.steps_until_done(10, body, jnp.int32(0), done)) == 3
  assert int(_core.steps_until_done(10, body, jnp.int32(0), done, early_stop=False)) == 10
  assert int(_core.steps_until_done(2, body, jnp.int32(0), done)) == 2


EARLY_STOP_ATTACKS = {
    "pgd": lambda f, x, y, k, stop: attacks.pgd(f, x, y, key=k, eps=0.15, step_size=0.02,
                                                num_steps=30, restarts=2, early_stop=stop),
    "apgd": lambda f, x, y, k, stop: attacks.apgd(f, x, y, key=k, eps=0.15, num_steps=30,
                                                  early_stop=stop),
    "apgd_targeted": lambda f, x, y, k, stop: attacks.apgd_targeted(
        f, x, y, key=k, eps=0.15, num_steps=20, num_targets=3, early_stop=stop),
    "square": lambda f, x, y, k, stop: attacks.square(f, x, y, key=k, eps=0.15, num_queries=300,
                                                      early_stop=stop),
}


@pytest.mark.parametrize("name", list(EARLY_STOP_ATTACKS))
def test_early_stop_returns_the_same_bits(name):
  # Every example is breakable (so the loop does stop early) and the
  # result must not change at all, x_adv included (transfer uses it).
  logits_fn, x, y = linear_multiclass("linf", 0.15, slack=0.3)
  attack = EARLY_STOP_ATTACKS[name]
  run = jax.jit(lambda x, y, k, stop: attack(logits_fn, x, y, k, stop), static_argnums=3)
  fast, full = run(x, y, jax.random.key(0), True), run(x, y, jax.random.key(0), False)
  assert not np.any(attacks.correct(logits_fn, fast, y))
  np.testing.assert_array_equal(fast, full)
