"""The indicators of attack failure: each has a model that trips it and one that does not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks

KEY = jax.random.key(0)


def band(x):
  """1-D, label 0: misclassified only for x in (0.55, 0.6); the gradient points at 0.575 from both sides."""
  return jnp.concatenate([jnp.zeros_like(x), 100.0 * (0.025 - jnp.abs(x - 0.575))], axis=1)


def ramp(threshold):
  """1-D, label 0: misclassified for x > threshold; the gradient always points up."""
  return lambda x: jnp.concatenate([jnp.zeros_like(x), 10.0 * (x - threshold)], axis=1)


X, Y = jnp.array([[0.5]]), jnp.array([0])


def test_silent_success_trips_when_pgd_walks_out_of_a_misclassified_band():
  # 0.5 -> 0.56 (misclassified) -> 0.62 (correct again): the last iterate hides the success.
  tripped = attacks.silent_success(band, X, Y, key=KEY, eps=0.2, step_size=0.06, num_steps=2, random_start=False)
  assert not tripped.passed and tripped.examples.tolist() == [0]
  # Three steps end back inside the band; a ramp is monotone: nothing silent.
  assert attacks.silent_success(band, X, Y, key=KEY, eps=0.2, step_size=0.06, num_steps=3,
                                random_start=False).passed
  assert attacks.silent_success(ramp(0.7), X, Y, key=KEY, eps=0.3, step_size=0.06, num_steps=5,
                                random_start=False).passed


def test_incomplete_optimisation_trips_while_the_loss_still_rises():
  slow = attacks.incomplete_optimisation(ramp(0.9), X, Y, key=KEY, eps=0.3, step_size=0.01, num_steps=10,
                                         random_start=False)
  assert not slow.passed and slow.examples.tolist() == [0]
  # Big steps reach the ε boundary in three steps; the loss is flat over the last ones.
  assert attacks.incomplete_optimisation(ramp(0.9), X, Y, key=KEY, eps=0.3, step_size=0.1, num_steps=10,
                                         random_start=False).passed
  with pytest.raises(ValueError, match="window"):
    attacks.incomplete_optimisation(ramp(0.9), X, Y, key=KEY, eps=0.3, step_size=0.1, num_steps=4, window=4)


def test_unstable_predictions_trip_on_a_randomised_and_on_a_jagged_model():
  rng = np.random.default_rng(0)
  x = jnp.full((8, 1), 0.5)
  randomised = lambda z: ramp(0.5)(z) + jnp.asarray(rng.normal(size=(len(z), 2)), jnp.float32)
  assert not attacks.unstable_predictions(randomised, x, key=KEY).passed
  jagged = lambda z: jnp.concatenate([jnp.zeros_like(z), 1e4 * (z - 0.5 - 1e-5)], axis=1)
  assert not attacks.unstable_predictions(jagged, x, key=KEY).passed
  assert attacks.unstable_predictions(ramp(0.9), x, key=KEY).passed


def test_autoattack_reports_the_indicators_with_indices_into_x():
  x = jnp.array([[0.1], [0.5], [0.95], [0.5]])
  y = jnp.array([0, 0, 0, 1])   # example 3 (label 1) is misclassified clean: never attacked
  r = attacks.autoattack(band, x, y, key=KEY, eps=0.2, custom=["apgd-ce"], log=None, indicators=True,
                         apgd_steps=20)
  assert r.clean.tolist() == [True, True, True, False]
  assert [i.name for i in r.indicators] == ["silent success", "incomplete optimisation", "unstable predictions"]
  assert all(set(i.examples.tolist()) <= {0, 1, 2} for i in r.indicators)
  assert attacks.autoattack(band, x, y, key=KEY, eps=0.2, custom=["apgd-ce"], log=None).indicators == ()


@pytest.mark.parametrize("spec", [
    attacks.AttackSpec("fgsm", eps=0.1),
    attacks.AttackSpec("pgd", eps=0.1, step_size=0.02, steps=5, restarts=2),
    attacks.AttackSpec("apgd", eps=0.1, steps=5, restarts=2),
    attacks.AttackSpec("apgd_t", eps=0.1, steps=5, num_targets=3, loss="dlr"),
    attacks.AttackSpec("fab", eps=0.1, steps=4, num_targets=2, restarts=2),
    attacks.AttackSpec("fab", eps=0.1, steps=4),
    attacks.AttackSpec("square", eps=0.1, steps=12),
], ids=lambda s: f"{s.kind}-{s.num_targets}")
def test_the_compute_an_attack_reports_is_the_forward_passes_it_runs(spec):
  """Rows through logits_fn, divided by the batch, equal forwards + gradients (FAB untargeted: + gradients / C)."""
  classes, batch = 5, 3
  w = jax.random.normal(jax.random.key(1), (2 * 2 * 1, classes))
  rows = [0]

  def logits_fn(x):
    jax.debug.callback(lambda n: rows.__setitem__(0, rows[0] + int(n)), jnp.asarray(x.shape[0]))
    return x.reshape(x.shape[0], -1) @ w

  x = jax.random.uniform(jax.random.key(2), (batch, 2, 2, 1))
  y = jnp.argmax(logits_fn(x), 1)
  rows[0] = 0
  jax.block_until_ready(attacks.run_attack(spec, logits_fn, x, y, key=KEY, early_stop=False))
  c = attacks.cost(spec, classes)
  backward_per_forward = classes if spec.kind == "fab" and not spec.num_targets else 1
  assert rows[0] / batch == c.forwards + c.gradients / backward_per_forward


def test_autoattack_reports_what_each_attack_may_spend():
  w = jnp.array([[1., -1., 0.], [-1., 1., 0.]])
  x, y = jnp.array([[0.55, 0.45], [0.9, 0.1]]), jnp.array([0, 0])
  r = attacks.autoattack(lambda x: x @ w, x, y, key=KEY, eps=0.1, norm="l2", custom=["apgd-ce", "fab-t"], log=None,
                         apgd_steps=10, fab_steps=10, num_targets=9)
  assert r.compute()["apgd-ce"] == {"forwards": 0, "gradients": 11, "examples": 2, "total_forwards": 0,
                                    "total_gradients": 22}
  # FAB-T's targets are capped at C − 1 = 2; it runs on the one example APGD-CE left.
  assert r.compute()["fab-t"]["gradients"] == 2 * 10 and r.compute()["fab-t"]["examples"] == 1


def test_malt_targets_the_closest_linearised_boundary_not_the_highest_logit():
  # Logits (6, 5, 4, 0) at x, label 0. Class 1 is AutoAttack's first target, but its boundary is far
  # (gap 1, ‖∇(z₁ − z₀)‖₁ = 11: 0.091); class 2's is closer (gap 2, ‖∇(z₂ − z₀)‖₁ = 110: 0.018).
  def logits_fn(z):
    return jnp.stack([10 * z[:, 0], z[:, 1] + 4.7, 100 * z[:, 2] - 36.0, z[:, 3]], axis=1)

  x, y = jnp.array([[0.6, 0.3, 0.4, 0.0]]), jnp.array([0])
  np.testing.assert_allclose(logits_fn(x)[0], [6, 5, 4, 0], atol=1e-5)
  from crp_jax.attacks import _core, _fab   # pylint: disable=g-import-not-at-top
  assert _core.top_other_classes(logits_fn(x), y, 1).tolist() == [[1]]
  assert _fab.malt_targets(logits_fn, x, y, 3, "linf").tolist() == [[2, 1, 3]]
  spec = attacks.AttackSpec("apgd_t", eps=0.01, steps=5, num_targets=1, loss="dlr", targeting="malt")
  assert attacks.cost(spec, 4).gradients == 6 + 4
  with pytest.raises(ValueError, match="targeting"):
    attacks.AttackSpec("apgd_t", targeting="closest")


def test_l2_square_stays_in_the_ball_and_breaks_what_a_linear_model_allows():
  """A linear model's L2 distance to its boundary is |w·x + b| / ‖w‖: Square breaks none beyond ε, most within ε/2."""
  kw, kx = jax.random.split(jax.random.key(0))
  w = jax.random.normal(kw, (64,))
  w = w / jnp.linalg.norm(w)
  x = 0.3 + 0.4 * jax.random.uniform(kx, (64, 8, 8, 1))
  b = -float(jnp.median(x.reshape(64, -1) @ w)) - 0.3

  def logits_fn(z):
    s = z.reshape(z.shape[0], -1) @ w + b
    return jnp.stack([-s, s], axis=1)

  y = jnp.argmax(logits_fn(x), 1)
  distance = np.asarray(jnp.abs(x.reshape(64, -1) @ w + b))
  eps = 0.5
  x_adv = jax.jit(lambda x, y, k: attacks.square(logits_fn, x, y, key=k, eps=eps, norm="l2", num_queries=300))(
      x, y, KEY)
  assert float(jnp.max(jnp.linalg.norm((x_adv - x).reshape(64, -1), axis=1))) <= eps * (1 + 1e-6)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  broken = np.asarray(jnp.argmax(logits_fn(x_adv), 1) != y)
  assert not broken[distance > eps].any()
  assert (distance < eps / 2).sum() >= 10 and broken[distance < eps / 2].mean() >= 0.9
  assert [s.name for s in attacks.autoattack_attacks("standard", eps=eps, norm="l2")][-1] == "square"


def test_check_7_flags_exactly_the_examples_an_iterate_broke_and_the_last_iterate_missed():
  from crp_jax.runner.evaluators import masking  # pylint: disable=g-import-not-at-top
  best = np.array([True, False, False, True])
  assert masking.check_silent_success(np.array([True, False, False, True]), best, 10).passed
  flagged = masking.check_silent_success(np.array([True, True, False, True]), best, 10)
  assert not flagged.passed and "1 example(s)" in flagged.detail and "examples 1 of" in flagged.detail
