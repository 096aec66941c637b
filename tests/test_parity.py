"""Parity of crp_jax's attacks with torchattacks (issue 4); see ``tools/parity.py``.

The end-to-end comparison is marked ``parity`` (excluded from the default
run, about 10 minutes on 2 CPU cores) and is skipped without torch and
torchattacks (the ``.[bench]`` extra)::

    pytest -m parity tests/test_parity.py
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks
from crp_jax.runner import train
from tools import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_N = 8


def _report(ours_robust: int, theirs_robust: int, auto_robust: int, gap: float = 0.0,
            n: int = 100) -> parity.Report:
  """A report on ``n`` examples, all correct clean, with the given robust counts per side."""
  robust = lambda k: parity.Outcome(np.arange(n) < k, 1.0)
  ours = {name: robust(ours_robust) for name in ("apgd-ce", "apgd-t", "square")}
  theirs = {name: robust(theirs_robust) for name in ("apgd-ce", "apgd-t", "square")}
  return parity.Report(0.99, gap, np.ones(n, bool), ours, theirs, robust(auto_robust), 0.01)


@pytest.mark.parametrize("ours,theirs,auto,gap,n,passed", [
    (10, 10, 10, 0.0, 100, True),
    (11, 10, 10, 0.0, 100, True),    # exactly 1 point above: within the tolerance
    (14, 12, 12, 0.0, 200, True),    # the same where 0.06 + 0.01 rounds below 0.07
    (15, 12, 12, 0.0, 200, False),
    (5, 10, 10, 0.0, 100, True),     # stronger than both
    (12, 10, 20, 0.0, 100, False),   # 2 points above torchattacks' same three attacks
    (12, 20, 10, 0.0, 100, False),   # 2 points above AutoAttack
    (10, 10, 10, 1e-2, 100, False),  # the two networks disagree
])
def test_report_verdict(ours, theirs, auto, gap, n, passed):
  report = _report(ours, theirs, auto, gap, n)
  assert report.passed is passed
  assert ("PASS" if passed else "FAIL") in parity.format_report(report, parity.Budget(), "AA")


def test_worst_case_needs_clean_and_every_attack():
  clean = np.array([True, True, True, False])
  outcomes = {"a": parity.Outcome(np.array([True, False, True, True]), 0.0),
              "b": parity.Outcome(np.array([True, True, False, True]), 0.0)}
  np.testing.assert_array_equal(parity.worst_case(outcomes, clean), [True, False, False, False])


def test_train_config_lasts_the_steps_on_the_library_trainer():
  # 5000 digits at batch 128 is 39 steps an epoch: 300 steps need 8 epochs of standard training.
  config = parity.train_config(300, 5000, batch_size=128, learning_rate=1e-3, seed=0)
  assert (config.method, config.compare_with, config.dataset, config.model) == ("standard", "", "mnist5k", "lenet")
  spe, total = train.num_train_steps(train.TrainSpec.from_config(config), 5000)
  assert (spe, config.epochs) == (39, 8) and total >= 300 > total - spe


@pytest.mark.parametrize("flag,message", [
    ("--examples=2000", "error: --examples must be in [1, 1000], got 2000"),
    ("--apgd_steps=0", "error: --apgd_steps must be >= 1, got 0"),
    ("--eps=0", "error: need 0 < --eps <= 1 (--norm=linf) and --tolerance >= 0, got 0.0 and 1.0"),
    ("--protocol=autoattack --reference=pyautoattack --norm=l2 --eps=30",
     "error: need 0 < --eps <= 28 (--norm=l2) and --tolerance >= 0, got 30.0 and 1.0"),
    ("--examples=many", "error: flag --examples=many: invalid literal for int() with base 10: 'many'"),
    ("--norm=l2", "error: --reference and --norm apply to --protocol=autoattack only"),
])
def test_a_bad_flag_is_one_line_and_exit_2(flag, message):
  proc = subprocess.run([sys.executable, "-m", "tools.parity", *flag.split()], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip() == message, proc.stderr


@pytest.mark.parity
def test_our_worst_case_is_strong_eval():
  # On one batch, run_ours with key k equals strong_eval with key fold_in(k, 0).
  w = jax.random.normal(jax.random.key(1), (28 * 28, 10))
  logits_fn = lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ w
  x = jax.random.uniform(jax.random.key(2), (_N, 28, 28, 1))
  y = jnp.argmax(logits_fn(x), axis=1)
  budget, eps, key = parity.Budget(5, 3, 20), 0.006, jax.random.key(0)
  ours = {name: parity.run_ours(logits_fn, x, y, attack, key=key, batch_size=_N)
          for name, attack in parity.our_attacks(eps, budget).items()}
  strong = attacks.strong_eval(logits_fn, x, y, key=jax.random.fold_in(key, 0), eps=eps,
                               apgd_steps=budget.apgd_steps, num_targets=budget.num_targets,
                               square_queries=budget.square_queries)["correct"]
  for name, outcome in ours.items():
    np.testing.assert_array_equal(outcome.correct, strong[name], err_msg=name)
  worst = parity.worst_case(ours, np.asarray(strong["clean"]))
  np.testing.assert_array_equal(worst, strong["worst_case"])
  assert 0 < worst.sum() < _N  # some examples fall, some stand: the comparison is not vacuous


@pytest.mark.parity
def test_parity_with_torchattacks():
  pytest.importorskip("torch")
  pytest.importorskip("torchattacks")
  # eps = 0.1 leaves a standard LeNet partly robust (at 0.3 every attack gets 0%), so the
  # comparison has room to fail. Reduced budgets, the same on both sides.
  budget = parity.Budget(apgd_steps=20, num_targets=3, square_queries=300)
  report, label = parity.run_parity(examples=200, eps=0.1, train_steps=300, budget=budget,
                                    batch_size=200, tolerance=0.01)
  table = parity.format_report(report, budget, label)
  print(table)  # shown with pytest -s
  assert report.clean_test_accuracy > 0.95, table
  assert report.logit_max_abs_diff <= parity.LOGIT_TOLERANCE, table
  assert 0.05 < report.theirs_worst < report.clean.mean() - 0.05, table  # not vacuous
  assert report.passed, table


@pytest.mark.parity
def test_autoattack_parity_with_torchattacks():
  pytest.importorskip("torch")
  pytest.importorskip("torchattacks")
  budget = parity.Budget(apgd_steps=10, num_targets=3, square_queries=100)
  r = parity.run_autoattack_parity(examples=100, eps=0.1, train_steps=300, budget=budget, batch_size=100,
                                   tolerance=0.02, fab_alone_examples=50)
  table = parity.format_autoattack_report(r)
  print(table)
  assert r.logit_max_abs_diff <= parity.LOGIT_TOLERANCE, table
  assert 0.05 < r.theirs_final < r.ours.clean_accuracy - 0.05, table  # not vacuous
  assert list(r.theirs.robust_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert r.passed, table


@pytest.mark.parity
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0), ("l1", 5.0)])
def test_autoattack_parity_with_autoattacks_own_code(norm, eps):
  pytest.importorskip("torch")
  pytest.importorskip("pyautoattack")
  budget = parity.Budget(apgd_steps=10, num_targets=3, square_queries=100)
  r = parity.run_autoattack_parity(examples=100, eps=eps, train_steps=300, budget=budget, batch_size=100,
                                   tolerance=0.02, reference="pyautoattack", norm=norm)
  table = parity.format_autoattack_report(r)
  print(table)
  assert 0.05 < r.theirs_final < r.ours.clean_accuracy - 0.05, table  # not vacuous
  assert list(r.theirs.robust_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert r.passed, table


def test_differing_examples_names_what_broke_each_on_either_side():
  from types import SimpleNamespace as NS
  names = ["apgd-ce", "apgd-t", "square"]
  ours = {"apgd-ce": np.array([1, 1, 1, 0], bool), "apgd-t": np.array([1, 0, 1, 0], bool),
          "square": np.array([1, 0, 1, 0], bool)}
  theirs = {"apgd-ce": np.array([1, 1, 1, 0], bool), "apgd-t": np.array([1, 1, 1, 0], bool),
            "square": np.array([0, 1, 1, 0], bool)}
  r = NS(ours=NS(attacks=[NS(name=n) for n in names], chain=NS(robust_after=ours)),
         theirs=NS(robust_after=theirs), reference="pyautoattack")
  assert parity.differing_examples(r) == [
      "examples whose verdict differs: 2 of 4",
      "  example 0: crp_jax robust, pyautoattack square",
      "  example 1: crp_jax apgd-t, pyautoattack robust",
  ]
