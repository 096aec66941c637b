"""The L1 threat model: the exact projection, L1-APGD, FAB and Square in L1, and AutoAttack's L1 version.

The models are linear, so the smallest L1 perturbation that fools each
example is known in closed form: the coordinates with the largest weight
move first, each as far as the box lets it (:func:`l1_distance`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks
from crp_jax.attacks import _core, _fab

SHAPE, EPS = (4, 5, 1), 1.0


def l1_distance(w: np.ndarray, x: np.ndarray, y: int) -> float:
  """Smallest ‖δ‖₁ with ``x + δ`` in ``[0, 1]`` that flips the two-class model ``(s, −s)``, ``s = w·(x − ½)``."""
  s = float(w @ (x - 0.5))
  g = w * np.sign(s)   # the margin 2|s| falls by 2 g·δ when δ moves against it
  room = np.where(g > 0, x, 1 - x)
  need, total = abs(s), 0.0
  for i in np.argsort(-np.abs(g)):
    if abs(g[i]) * room[i] >= need:
      return total + need / abs(g[i])
    total, need = total + room[i], need - abs(g[i]) * room[i]
  return np.inf


@pytest.fixture(scope="module")
def linear():
  """A 20-pixel two-class linear model, 64 inputs in [0.2, 0.8], and each input's exact L1 distance."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=int(np.prod(SHAPE))).astype(np.float32)
  xs = rng.uniform(0.2, 0.8, size=(64, w.size)).astype(np.float32)
  y = ((xs - 0.5) @ w < 0).astype(np.int32)
  dist = np.array([l1_distance(w, xi, int(yi)) for xi, yi in zip(xs, y)])

  def logits_fn(x):
    s = (x.reshape(x.shape[0], -1) - 0.5) @ jnp.asarray(w)
    return jnp.stack([s, -s], axis=1)

  return logits_fn, jnp.asarray(xs.reshape((-1,) + SHAPE)), jnp.asarray(y), dist


def _bisection_projection(d, lower, upper, eps):
  """The projection onto the L1 ball and the box by bisection on the soft threshold λ (float64)."""
  a, room = np.abs(d), np.maximum(np.where(d > 0, upper, -lower), 0)
  g = lambda lam: np.clip(a - lam, 0, room).sum()
  lo, hi = 0.0, a.max() + 1.0
  if g(0.0) <= eps:
    return np.sign(d) * np.minimum(a, room)
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if g(mid) > eps else (lo, mid)
  return np.sign(d) * np.clip(a - hi, 0, room)


def test_l1_projection_is_the_euclidean_projection_onto_ball_and_box():
  rng = np.random.default_rng(1)
  for dim in (7, 60):   # a batch per shape and radius: few compiles
    for eps in (0.05, 0.5, 3.0, 30.0):
      x = rng.uniform(0, 1, (12, dim))
      d = rng.normal(size=(12, dim)) * rng.choice([0.01, 0.3, 2.0], size=(12, 1))
      d[::3, : dim // 2] = 0.0
      got = np.asarray(_core.project_l1_box(jnp.asarray(d, jnp.float32), jnp.asarray(-x, jnp.float32),
                                            jnp.asarray(1 - x, jnp.float32), eps))
      for row in range(12):
        want = _bisection_projection(d[row], -x[row], 1 - x[row], eps)
        np.testing.assert_allclose(got[row], want, atol=2e-6, err_msg=f"dim {dim}, eps {eps}, row {row}")
      assert np.all(np.abs(got).sum(1) <= eps * (1 + 1e-6))
      assert np.all(x + got >= -1e-6) and np.all(x + got <= 1 + 1e-6)


def _check_points(logits_fn, x, y, x_adv, dist, eps):
  """Points in the ball and the box; no example beyond ε broken. Returns the broken mask."""
  assert np.all(np.asarray(_core.l1_norm(x_adv - x)) <= eps * (1 + 1e-5))
  assert np.all((np.asarray(x_adv) >= 0) & (np.asarray(x_adv) <= 1))
  broken = ~np.asarray(attacks.correct(logits_fn, x_adv, y))
  assert not np.any(broken & (dist > eps)), "broke an example whose L1 distance exceeds eps"
  return broken


@pytest.mark.parametrize("targeted", [False, True])
def test_l1_apgd_breaks_every_example_well_inside_eps(linear, targeted):
  logits_fn, x, y, dist = linear
  if targeted:   # four classes: the two real ones and two that can never win
    f = lambda z: jnp.concatenate([logits_fn(z), jnp.full((z.shape[0], 2), -50.0)], axis=1)
    x_adv = attacks.apgd_targeted(f, x, y, key=jax.random.key(0), eps=EPS, norm="l1", num_steps=100,
                                  num_targets=1)
  else:
    x_adv = attacks.apgd(logits_fn, x, y, key=jax.random.key(0), eps=EPS, norm="L1", num_steps=100)
  broken = _check_points(logits_fn, x, y, x_adv, dist, EPS)
  assert (dist < 0.8 * EPS).sum() >= 20   # the check below covers many examples
  assert np.all(broken[dist < 0.8 * EPS]), np.sort(dist[(dist < EPS) & ~broken])


def test_l1_fab_finds_the_exact_minimal_l1_perturbation(linear):
  logits_fn, x, y, dist = linear
  r = attacks.fab_with_info(logits_fn, x, y, key=jax.random.key(0), eps=None, norm="l1", num_targets=1,
                            num_steps=20)
  found = np.asarray(r.norm)
  assert np.all(found >= dist * (1 - 1e-5))   # nothing below the true distance
  np.testing.assert_allclose(found, dist, rtol=1e-2)
  assert np.all(~np.asarray(attacks.correct(logits_fn, r.x_adv, y)))


def test_l1_hyperplane_step_is_greedy_in_the_weights():
  t = jnp.array([[0.5, 0.5, 0.5]])
  w = jnp.array([[1.0, 3.0, 2.0]])
  # Progress 2: coordinate 1 gives 3 × 0.5 = 1.5, then coordinate 2 the remaining 0.5 with 0.25.
  np.testing.assert_allclose(_fab.project_to_hyperplane(t, w, jnp.array([2.0]), "l1", 0.0, 1.0),
                             [[0.0, 0.5, 0.25]], atol=1e-7)


def test_l1_square_breaks_examples_without_gradients(linear):
  logits_fn, x, y, dist = linear
  start = attacks.square(logits_fn, x, y, key=jax.random.key(0), eps=EPS, norm="l1", num_queries=2)
  x_adv = attacks.square(logits_fn, x, y, key=jax.random.key(0), eps=EPS, norm="l1", num_queries=300)
  _check_points(logits_fn, x, y, start, dist, EPS)
  broken = _check_points(logits_fn, x, y, x_adv, dist, EPS)
  close = dist < 0.5 * EPS
  assert close.sum() >= 5
  assert broken[close].sum() >= 2 * close.sum() / 3, (broken[close].sum(), close.sum())


def test_l1_pgd_stays_in_ball_and_box(linear):
  logits_fn, x, y, dist = linear
  x_adv = attacks.pgd(logits_fn, x, y, key=jax.random.key(0), eps=EPS, step_size=0.2, num_steps=20, norm="l1")
  _check_points(logits_fn, x, y, x_adv, dist, EPS)


def test_autoattack_l1_version_is_autoattacks():
  specs = attacks.autoattack_attacks("standard", eps=10.0, norm="L1")
  assert [s.name for s in specs] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert all(s.norm == "l1" for s in specs)
  apgd_ce, apgd_t, fab_t, _ = specs
  assert (apgd_ce.restarts, apgd_t.num_targets, fab_t.num_targets) == (5, 5, 9)
  assert attacks.cost(apgd_ce, 10).gradients == 5 * 103   # three radii, each starts with a gradient
  entry = attacks.robustbench_entry(clean_accuracy=0.9, robust_accuracy=0.5, eps=10.0, norm="l1", n_examples=100,
                                    version="standard", attacks=[s.name for s in specs])
  assert entry["norm"] == "L1"


def test_autoattack_l1_runs_end_to_end(linear):
  logits_fn, x, y, dist = linear
  r = attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=EPS, norm="l1", batch_size=64, log=None,
                         apgd_steps=20, fab_steps=20, num_targets=1, square_queries=50, restarts=2)
  robust = np.asarray(r.robust)
  assert not np.any(~robust & (dist > EPS))
  assert np.all(~robust[dist < 0.8 * EPS])
  assert np.all(np.asarray(_core.l1_norm(r.x_adv - x)) <= EPS * (1 + 1e-5))
