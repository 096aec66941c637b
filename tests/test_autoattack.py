"""Tests of FAB/FAB-T and AutoAttack (crp_jax.attacks.fab, autoattack, run_in_order) and the pipeline's use of them.

The must-succeed tests follow Zimmermann et al. 2022, as in
``test_attacks_strong.py``: on linear models where an adversarial example
provably exists in the ball (and, for FAB, where the distance to the
nearest one is known in closed form), the attack must find it for every
example.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import optimize

from crp_jax import attacks
from crp_jax.attacks import _autoattack, _fab
from crp_jax.runner import config as config_lib
from crp_jax.runner.evaluators.strong import AUTOATTACK_KEY, STRONG_KEY, StrongProtocol
from test_attacks import _norm, linear_problem, mnist_mlp  # noqa: F401  (mnist_mlp is a fixture)
from test_attacks_strong import linear_multiclass
from tests import cli_server


# ----------------------------------------------------------------------------- the projection


def _solver_distance(t, w, r, norm):
  """min ‖d‖ s.t. w·d = r, 0 ≤ t + d ≤ 1, by scipy (an LP for L∞, a QP for L2)."""
  d = t.size
  bounds = [(-t[i], 1 - t[i]) for i in range(d)]
  if norm == "linf":
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    res = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d),
                           A_eq=np.r_[w, 0.0][None], b_eq=[r], bounds=bounds + [(0, None)])
    assert res.status == 0
    return res.fun
  res = optimize.minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, method="SLSQP",
                          constraints=[{"type": "eq", "fun": lambda v: w @ v - r}], bounds=bounds,
                          options={"ftol": 1e-12, "maxiter": 500})
  assert res.success
  return np.sqrt(res.fun)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_smallest_step_onto_the_hyperplane_inside_the_box(norm):
  rng = np.random.default_rng(0)
  t = rng.uniform(0, 1, (12, 6)).astype(np.float32)
  w = rng.normal(size=(12, 6)).astype(np.float32)
  r = (0.3 * rng.normal(size=12)).astype(np.float32)
  d = np.asarray(_fab.project_to_hyperplane(jnp.asarray(t), jnp.asarray(w), jnp.asarray(r), norm, 0.0, 1.0))
  np.testing.assert_allclose(np.sum(w * d, axis=1), r, atol=1e-5)
  assert np.all((t + d >= -1e-6) & (t + d <= 1 + 1e-6))
  got = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
  want = [_solver_distance(t[i].astype(np.float64), w[i].astype(np.float64), float(r[i]), norm) for i in range(12)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_projection_moves_to_the_box_face_when_the_hyperplane_is_out_of_reach():
  t, w = jnp.array([[0.5, 0.5]]), jnp.array([[1.0, -1.0]])
  # w·d is at most 0.5 + 0.5 = 1 inside the box: r = 3 is out of reach.
  d = _fab.project_to_hyperplane(t, w, jnp.array([3.0]), "linf", 0.0, 1.0)
  np.testing.assert_allclose(d, [[0.5, -0.5]])
  np.testing.assert_allclose(_fab.project_to_hyperplane(t, w, jnp.array([0.0]), "l2", 0.0, 1.0), [[0.0, 0.0]])


# ----------------------------------------------------------------------------- FAB


def _true_distance(logits_fn, x, y, norm):
  """Distance to the nearest misclassified point of a linear model (the box does not bind)."""
  flat = x.reshape(x.shape[0], -1)
  jac = np.asarray(jax.vmap(jax.jacobian(lambda v: logits_fn(v[None])[0]))(flat))  # (N, C, D)
  z = np.asarray(logits_fn(x))
  n = np.arange(len(y))
  gaps = z[n, y][:, None] - z  # (N, C)
  diff = jac[n, y][:, None, :] - jac
  dual = np.abs(diff).sum(-1) if norm == "linf" else np.linalg.norm(diff, axis=-1)
  dist = gaps / np.where(dual > 0, dual, np.inf)
  dist[n, y] = np.inf
  return dist.min(1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.2)])
@pytest.mark.parametrize("num_targets", [4, 0])
def test_fab_is_a_minimum_norm_attack_on_a_linear_model(norm, eps, num_targets):
  logits_fn, x, y = linear_multiclass(norm, eps)
  r = jax.jit(lambda x, y, k: attacks.fab_with_info(logits_fn, x, y, key=k, eps=None, norm=norm, num_steps=20,
                                                     num_targets=num_targets))(x, y, jax.random.key(0))
  true = _true_distance(logits_fn, x, y, norm)
  assert not np.any(np.asarray(attacks.correct(logits_fn, r.x_adv, y)))  # every example broken
  got = np.asarray(_norm(r.x_adv - x, norm))
  np.testing.assert_allclose(got, np.asarray(r.norm), rtol=1e-5)
  assert np.all(got >= true * (1 - 1e-3))  # nothing closer exists
  assert np.all(got <= true * 1.05), (got / true).max()  # and FAB finds the nearest one


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.2)])
def test_fab_t_finds_provable_adversarial_within_eps_and_stops_early_with_the_same_bits(norm, eps):
  logits_fn, x, y = linear_multiclass(norm, eps)
  run = lambda early: jax.jit(lambda x, y, k: attacks.fab_with_info(
      logits_fn, x, y, key=k, eps=eps, norm=norm, num_steps=50, num_targets=9, restarts=2,
      early_stop=early))(x, y, jax.random.key(1))
  fast, full = run(True), run(False)
  for a, b in zip(fast, full):
    np.testing.assert_array_equal(a, b)
  assert not np.any(np.asarray(attacks.correct(logits_fn, fast.x_adv, y)))
  assert np.all(_norm(fast.x_adv - x, norm) <= eps + 1e-5)
  assert np.all((fast.x_adv >= 0) & (fast.x_adv <= 1))


def test_fab_returns_x_where_nothing_within_eps_and_leaves_misclassified_points(mnist_mlp):
  logits_fn, x, y = mnist_mlp
  x, y = x[:32], y[:32]
  x_adv = attacks.fab(logits_fn, x, y, key=jax.random.key(0), eps=1e-4, num_steps=5, num_targets=2)
  np.testing.assert_array_equal(x_adv, x)  # nothing that close
  wrong = (y + 1) % 10
  np.testing.assert_array_equal(attacks.fab(logits_fn, x, wrong, key=jax.random.key(0), eps=0.1,
                                            num_steps=3, num_targets=2), x)


def test_fab_refuses_restarts_without_eps():
  logits_fn, x, y = linear_problem("linf", 0.1)
  with pytest.raises(ValueError, match="restarts > 1"):
    attacks.fab_with_info(logits_fn, x, y, key=jax.random.key(0), eps=None, restarts=2)


# ----------------------------------------------------------------------------- AutoAttack


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.2)])
def test_each_attack_of_standard_breaks_every_example_it_should(norm, eps):
  # C = 4 with one way to fool each example, so every loss and target leads to it.
  logits_fn, x, y = linear_problem(norm, eps, extra_classes=2)
  names = [s.name for s in attacks.autoattack_attacks("standard", eps=eps, norm=norm)]
  assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]   # Square in L∞ and in L2, as AutoAttack's
  for name in names:
    r = attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=eps, norm=norm, custom=[name],
                           log=None, apgd_steps=20, fab_steps=20, square_queries=500)
    assert np.all(_norm(jnp.asarray(r.x_adv) - x, norm) <= eps + 1e-5), name
    if name == "square" and norm == "l2":
      # These examples need a perturbation within 5-20% of the optimal one along w: L2 random search
      # does not find it in 500 queries (test_indicators' L2 Square test checks what it must break).
      assert r.clean_accuracy == 1.0, name
      continue
    assert r.clean_accuracy == 1.0 and r.robust_accuracy == 0.0, name
    assert not np.any(np.asarray(attacks.correct(logits_fn, jnp.asarray(r.x_adv), y))), name


def test_standard_is_never_above_any_of_its_attacks_alone(mnist_mlp):
  logits_fn, x, y = mnist_mlp
  x, y = x[:96], y[:96]
  budgets = dict(apgd_steps=10, fab_steps=10, num_targets=3, square_queries=100)
  run = lambda **kw: attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=0.06, log=None,
                                        batch_size=64, **budgets, **kw)
  standard = run(version="standard")
  after = list(standard.accuracy_after().values())
  assert after == sorted(after, reverse=True) and after[-1] == standard.robust_accuracy
  assert 0.0 < standard.robust_accuracy < standard.clean_accuracy  # the comparison means something
  alone = {s.name: run(custom=[s.name]).robust_accuracy for s in standard.attacks}
  assert all(standard.robust_accuracy <= a for a in alone.values()), (standard.robust_accuracy, alone)
  # Each attack ran on exactly the examples still robust before it.
  robust_before = [int(standard.clean.sum())] + [int(r.sum()) for r in standard.chain.robust_after.values()][:-1]
  assert list(standard.chain.attacked.values()) == robust_before
  broken = ~standard.robust & standard.clean
  assert not np.any(np.asarray(attacks.correct(logits_fn, jnp.asarray(standard.x_adv), y))[broken])
  np.testing.assert_array_equal(standard.x_adv[standard.robust], np.asarray(x)[standard.robust])


def test_plus_runs_its_six_attacks_in_autoattack_order():
  logits_fn, x, y = linear_problem("linf", 0.1, extra_classes=2)
  r = attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=0.1, version="plus", log=None,
                         apgd_steps=5, fab_steps=5, square_queries=20, restarts=2)
  assert [s.name for s in r.attacks] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
  assert r.attacks[0].restarts == 2 and r.attacks[2].num_targets == 0
  assert r.robust_accuracy == 0.0
  assert r.budgets() == {"apgd-ce": 10, "apgd-dlr": 10, "fab": 10, "square": 20, "apgd-t": 15, "fab-t": 15}


def test_run_in_order_attacks_only_the_examples_still_robust():
  asked = []

  def run(spec, idx):
    asked.append((spec.name, idx.tolist()))
    breaks = {"a": {1}, "b": {2, 3}}[spec.name]
    return np.array([i not in breaks for i in idx]), np.full((idx.size, 1), float(ord(spec.name)))

  specs = (attacks.AttackSpec("clean", name="a"), attacks.AttackSpec("clean", name="b"))
  broken = {}
  chain = _autoattack.run_in_order(specs, np.array([True, True, True, False]), run,
                               on_broken=lambda idx, pts: broken.update(zip(idx.tolist(), pts[:, 0])))
  assert asked == [("a", [0, 1, 2]), ("b", [0, 2])]
  np.testing.assert_array_equal(chain.robust_after["a"], [True, False, True, False])
  np.testing.assert_array_equal(chain.robust_after["b"], [True, False, False, False])
  assert chain.attacked == {"a": 3, "b": 2} and broken == {1: ord("a"), 2: ord("b")}


def test_checks_catch_probabilities_randomness_and_zero_gradients():
  logits_fn, x, y = linear_problem("linf", 0.1, extra_classes=2)
  ok = {c.name: c.passed for c in _autoattack.model_checks(logits_fn, x, y)}
  assert ok == {"deterministic": True, "logits": True, "zero gradients": True}
  probs = {c.name: c.passed for c in _autoattack.model_checks(lambda v: jax.nn.softmax(logits_fn(v)), x, y)}
  assert not probs["logits"]
  calls = []

  def noisy(v):
    calls.append(None)
    return logits_fn(v) + 1e-3 * len(calls)

  assert not {c.name: c.passed for c in _autoattack.model_checks(noisy, x, y)}["deterministic"]
  flat = lambda v: logits_fn(jnp.round(v))  # a step function: zero input gradient everywhere
  zero = [c for c in _autoattack.model_checks(flat, x, y) if c.name == "zero gradients"][0]
  assert not zero.passed and zero.detail.startswith(f"{len(y)} of {len(y)}")


def test_square_check_flags_square_breaking_what_white_box_missed():
  specs = (attacks.AttackSpec("apgd", name="apgd-ce"), attacks.AttackSpec("square", name="square"))
  chain = _autoattack.Chain({"apgd-ce": np.array([True, True]), "square": np.array([True, False])}, {}, {})
  (check,) = _autoattack.square_check(specs, chain)
  assert not check.passed and "1 examples" in check.detail
  chain = _autoattack.Chain({"apgd-ce": np.array([True, False]), "square": np.array([True, False])}, {}, {})
  assert _autoattack.square_check(specs, chain)[0].passed


def test_bad_versions_and_custom_lists_are_refused():
  logits_fn, x, y = linear_problem("linf", 0.1, extra_classes=2)
  call = lambda **kw: attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=0.1, log=None, **kw)
  with pytest.raises(ValueError, match="unknown AutoAttack version"):
    call(version="fast")
  with pytest.raises(ValueError, match="version='rand' attacks a randomised model"):
    call(version="rand")   # rand needs the model's draws (attacks.eot)
  with pytest.raises(ValueError, match="unknown attack 'pgd'"):
    call(custom=["pgd"])
  with pytest.raises(ValueError, match="twice"):
    call(custom=["fab-t", "fab-t"])


def test_robustbench_entry_has_robustbench_fields():
  logits_fn, x, y = linear_problem("linf", 0.1, extra_classes=2)
  r = attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=0.1, custom=["fab-t"], log=None,
                         fab_steps=5)
  entry = r.robustbench_entry(name="linear", dataset="toy")
  assert {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
          "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote"} <= set(entry)
  assert entry["clean_acc"] == "100.00" and entry["autoattack_acc"] == "0.00"
  assert entry["name"] == "linear" and entry["attacks"] == ["fab-t"] and entry["n_examples"] == len(y)


# ----------------------------------------------------------------------------- the pipeline


def _eval_cfg(**kw) -> ml_collections.ConfigDict:
  cfg = config_lib.base_config().eval
  cfg.update(kw)
  return cfg


def test_strong_protocol_reuses_its_attacks_and_keys_the_others_apart():
  strong = StrongProtocol(_eval_cfg())
  assert [s.name for s in strong.chain] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert (strong.chain[0], strong.chain[1], strong.chain[3]) == (strong.apgd_ce, strong.apgd_t, strong.square)
  assert strong.chain[2].kind == "fab" and strong.chain[2].key_path == (AUTOATTACK_KEY, 3)
  assert all(s.key_path[0] == STRONG_KEY for s in strong.specs)  # sweeps keep their keys
  assert StrongProtocol(_eval_cfg(autoattack="")).chain == ()
  plus = StrongProtocol(_eval_cfg(autoattack="plus")).chain
  assert [s.name for s in plus] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
  assert plus[0].restarts == 5 and plus[0].key_path == (AUTOATTACK_KEY, 0)


def test_eval_autoattack_is_validated():
  c = config_lib.base_config()
  c.eval.autoattack = "rand"
  with pytest.raises(config_lib.ConfigError, match="eval.autoattack='rand'"):
    config_lib.validate(c)
  c.eval.autoattack, c.eval.fab_steps = "standard", 0
  with pytest.raises(config_lib.ConfigError, match="eval.fab_steps"):
    config_lib.validate(c)


def test_at_eps_zero_every_attack_runs_on_every_clean_example():
  # What the benchmark row relies on for fixed work on both sides.
  logits_fn, x, y = linear_problem("linf", 0.1, extra_classes=2)
  r = attacks.autoattack(logits_fn, x, y, key=jax.random.key(0), eps=0.0, log=None, apgd_steps=2, fab_steps=2,
                         square_queries=4)
  assert r.robust_accuracy == r.clean_accuracy == 1.0
  assert r.chain.attacked == {"apgd-ce": len(y), "apgd-t": len(y), "fab-t": len(y), "square": len(y)}
  np.testing.assert_array_equal(r.x_adv, x)


_TINY_RUN = ["--progress=false", "--config.epochs=1", "--config.train_subset=128", "--config.num_perturbations=2",
             "--config.compare_with=", "--config.eval.attack_subset=16", "--config.eval.pgd_steps=(2,)",
             "--config.eval.batch_size=16", "--config.eval.extra_step_size=0", "--config.eval.strong=False",
             "--config.eval.sweep_steps=(2,)", "--config.eval.sweep_apgd_steps=()", "--config.eval.sweep_restarts=1",
             "--config.eval.eps_sweep_steps=2", "--config.eval.unbounded_steps=2", "--config.eval.noise_samples=2"]


def test_evaluate_runs_autoattack_on_a_saved_checkpoint(tmp_path):
  import json
  import os
  env = {**os.environ, "CRP_CPU_DEVICES": "2"}
  run = lambda module, *a: cli_server.run(module, a, env=env, timeout=900)
  p = run("experiments.run", f"--workdir={tmp_path}", *_TINY_RUN)
  assert p.returncode == 0, p.stderr[-3000:]
  model = tmp_path / "crp"
  assert not list(model.glob("robustbench-*.json"))  # the strong protocol was off
  p = run("experiments.evaluate", f"--workdir={model}", "--strong=autoattack-standard", "--config.eval.apgd_steps=2",
          "--config.eval.fab_steps=2", "--config.eval.num_targets=2", "--config.eval.square_queries=5",
          "--progress=false")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| after FAB-T (2 steps, 2 targets) |" in p.stdout
  strong = json.loads((model / "evaluation.json").read_text())["crp"]["evaluation"]["strong"]
  auto = strong["autoattack"]
  assert auto["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and auto["version"] == "standard"
  assert strong["worst_case"] == auto["robust_accuracy"] == auto["robust_after"]["square"]
  entry = json.loads((model / "robustbench-crp.json").read_text())
  assert entry["autoattack_acc"] == f"{100 * auto['robust_accuracy']:.2f}" and entry["dataset"] == "mnist5k"
  p = run("experiments.evaluate", f"--workdir={model}", "--strong=bogus")
  assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--strong=bogus" in p.stderr
