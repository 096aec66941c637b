"""Per-example randomness: an example's draws, and so its result, do not depend on its batch.

A linear model evaluated one row at a time (``lax.map``: every row runs the
same one-row program) has batch-invariant logits and gradients, so every attack of AutoAttack's ``standard`` and
``plus`` (and of its L1 ``standard``) must give the same bits per example at batch sizes 1, 7 and 64,
through the library (chunks keyed by ``example_keys``) and through
``autoattack``'s driver, and on 1 or 4 devices. FAB is the exception: its
own arithmetic (the projections) is compiled per shape by XLA and moves its
points by up to an ulp between batch sizes, so for FAB the verdicts must
agree and the points within 1e-6. LeNet's convolutions are not
batch-invariant in the last bits, so there the draws must agree and the
count of verdicts that differ is printed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from crp_jax import attacks, models
from crp_jax.attacks import _core

N, SHAPE, C, EPS = 64, (6, 6, 1), 10, 0.03
L1_EPS = 0.5
BUDGETS = dict(apgd_steps=8, fab_steps=8, num_targets=3, square_queries=40, restarts=2)


@pytest.fixture(scope="module")
def dense():
  """A linear model, one row at a time (batch-invariant), on data it classifies correctly; ε breaks some."""
  kw, kx = jax.random.split(jax.random.key(3))
  w = jax.random.normal(kw, (int(np.prod(SHAPE)), C))
  # A batched x @ w is not batch-invariant inside a larger program (XLA tiles it per shape).
  logits_fn = lambda x: jax.lax.map(lambda row: row.reshape(-1) @ w, x)
  x = jax.random.uniform(kx, (N,) + SHAPE)
  y = jnp.argmax(logits_fn(x), axis=1)
  return logits_fn, x, y


def _specs() -> list[attacks.AttackSpec]:
  table = {s.name: s for v in ("standard", "plus") for s in attacks.autoattack_attacks(v, eps=EPS, **BUDGETS)}
  extra = [attacks.AttackSpec("pgd", eps=EPS, step_size=0.02, steps=5, restarts=2, name="pgd"),
           attacks.AttackSpec("noise", eps=EPS, steps=4, name="noise")]
  return list(table.values()) + extra


def _assert_same(spec, got, want, verdict, msg):
  if spec.kind != "fab":
    np.testing.assert_array_equal(got, want, err_msg=msg)
    return
  np.testing.assert_array_equal(verdict(got), verdict(want), err_msg=msg)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=msg)


def _run_in_chunks(spec, logits_fn, x, y, key, size):
  fn = jax.jit(lambda x, y, k: attacks.run_attack(spec, logits_fn, x, y, key=k))
  out = []
  for start in range(0, len(x), size):
    ids = jnp.arange(start, min(start + size, len(x)))
    out.append(np.asarray(fn(x[ids], y[ids], attacks.example_keys(key, ids))))
  return np.concatenate(out)


def test_every_attack_gives_the_same_bits_per_example_at_batch_1_7_and_64(dense):
  logits_fn, x, y = dense
  key = jax.random.key(11)
  verdict = lambda points: np.asarray(jnp.argmax(logits_fn(points), 1) == y)
  broken_by = {}
  for spec in _specs():
    whole = _run_in_chunks(spec, logits_fn, x, y, key, N)
    for size in (1, 7):
      _assert_same(spec, _run_in_chunks(spec, logits_fn, x, y, key, size), whole, verdict,
                   f"{spec.name} at batch {size}")
    broken_by[spec.name] = int(np.sum(~verdict(whole)))
  # The comparison means something: the attacks move points and break some examples, not all.
  assert all(0 < b < N for name, b in broken_by.items() if name != "noise"), broken_by


def test_l1_attacks_give_the_same_bits_per_example_at_batch_1_7_and_64(dense):
  logits_fn, x, y = dense
  key = jax.random.key(12)
  verdict = lambda points: np.asarray(jnp.argmax(logits_fn(points), 1) == y)
  for spec in attacks.autoattack_attacks("standard", eps=L1_EPS, norm="l1", **BUDGETS):
    whole = _run_in_chunks(spec, logits_fn, x, y, key, N)
    for size in (1, 7):
      _assert_same(spec, _run_in_chunks(spec, logits_fn, x, y, key, size), whole, verdict,
                   f"L1 {spec.name} at batch {size}")
    assert 0 < np.sum(~verdict(whole)) < N, spec.name


def test_autoattack_gives_the_same_bits_at_any_batch_size(dense):
  logits_fn, x, y = dense
  for version in ("plus",):   # every attack of standard is in plus (standard's APGD-CE: one restart of plus')
    runs = [attacks.autoattack(logits_fn, x, y, key=jax.random.key(5), eps=EPS, version=version,
                               batch_size=size, log=None, **BUDGETS) for size in (64, 7, 1)]
    for r in runs[1:]:
      np.testing.assert_allclose(r.x_adv, runs[0].x_adv, rtol=0, atol=1e-6)   # FAB-T's points: see above
      for name, robust in runs[0].chain.robust_after.items():
        np.testing.assert_array_equal(r.chain.robust_after[name], robust, err_msg=f"{version} {name}")
    assert 0 < runs[0].robust_accuracy < runs[0].clean_accuracy


def test_one_and_four_devices_give_the_same_bits(dense):
  assert jax.device_count() >= 4, "the suite runs with 4 fake CPU devices (conftest.py)"
  logits_fn, x, y = dense
  key = attacks.example_keys(jax.random.key(2), jnp.arange(N))
  verdict = lambda points: np.asarray(jnp.argmax(logits_fn(points), 1) == y)
  for spec in _specs():
    outs = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
      mesh = Mesh(np.array(devices), ("data",))
      data, keys = NamedSharding(mesh, P("data")), NamedSharding(mesh, P("data"))
      fn = jax.jit(lambda x, y, k: attacks.run_attack(spec, logits_fn, x, y, key=k),
                   in_shardings=(data, data, keys), out_shardings=data)
      outs.append(np.asarray(fn(x, y, key)))
    _assert_same(spec, outs[1], outs[0], verdict, spec.name)


def test_lenet_draws_agree_across_batches_and_differing_verdicts_are_counted(capsys):
  module = models.LeNet(num_classes=10)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
  logits_fn = lambda z: module.apply(variables, z, train=False)
  x = jax.random.uniform(jax.random.key(1), (N, 28, 28, 1))
  y = jnp.argmax(logits_fn(x), axis=1)
  key = jax.random.key(4)
  starts = lambda ids: _core.starts(attacks.example_keys(key, ids), x[ids], 0.3, "linf", (0.0, 1.0), 2)
  whole = np.asarray(starts(jnp.arange(N)))
  parts = np.concatenate([np.asarray(starts(jnp.arange(s, min(s + 7, N)))) for s in range(0, N, 7)])
  np.testing.assert_array_equal(parts, whole)
  spec = attacks.AttackSpec("pgd", eps=0.02, step_size=0.005, steps=5, name="pgd")
  verdict = lambda size: np.argmax(logits_fn(_run_in_chunks(spec, logits_fn, x, y, key, size)), 1) == y
  differ = {size: int(np.sum(verdict(size) != verdict(N))) for size in (1, 7)}
  with capsys.disabled():
    print(f"\nLeNet, PGD-5 at eps 0.02 on {N} examples: verdicts that differ from batch {N}: {differ}")


def test_a_wrong_number_of_per_example_keys_is_refused(dense):
  logits_fn, x, y = dense
  with pytest.raises(ValueError, match="key: 3 per-example keys for 64 examples"):
    attacks.pgd(logits_fn, x, y, key=attacks.example_keys(jax.random.key(0), jnp.arange(3)), eps=0.1,
                step_size=0.01, num_steps=2)
