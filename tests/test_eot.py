"""EOT and AutoAttack's rand version: a randomised model that an attack on one draw under-breaks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks

D, A = 64, 10.0


def _randomised():
  """Margin ``w·x' + b + A ξ (v·x')`` with ``ξ = ±1`` per draw and ``v ⟂ w``: in expectation a linear model,
  but one draw's gradient points mostly along ``±v``, which does not move the expected margin."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  w = jnp.zeros(D).at[:32].set(jax.random.normal(k1, (32,)))
  v = jnp.zeros(D).at[32:].set(jax.random.normal(k2, (32,)))
  w, v = w / jnp.linalg.norm(w), v / jnp.linalg.norm(v)
  x = 0.4 + 0.2 * jax.random.uniform(k3, (64, 8, 8, 1))
  centred = lambda z: z.reshape(z.shape[0], -1) - 0.5
  b = -float(jnp.median(centred(x) @ w))

  def model(z, key):
    xi = jax.random.rademacher(key, (z.shape[0],), jnp.float32)
    s = centred(z) @ w + b + A * xi * (centred(z) @ v)
    return jnp.stack([-s, s, jnp.full_like(s, -10.0)], axis=1)   # a third class, for the DLR loss

  judge = attacks.eot(model, key=jax.random.key(99), draws=400)   # the expected model, nearly
  y = jnp.argmax(judge(x), 1)
  return model, judge, x, y


@pytest.fixture(scope="module")
def randomised():
  return _randomised()


def test_an_attack_on_one_draw_under_breaks_what_eot_breaks(randomised):
  model, judge, x, y = randomised
  broken = {}
  for draws in (1, 20):
    f = attacks.eot(model, key=jax.random.key(5), draws=draws)
    x_adv = attacks.apgd(f, x, y, key=jax.random.key(1), eps=0.3, norm="l2", num_steps=50)
    broken[draws] = int(jnp.sum(jnp.argmax(judge(x_adv), 1) != y))
  # Measured here: 21 broken through one draw, 29 through 20 (the loss averaged over the draws).
  assert broken[20] >= broken[1] + 5, broken


def test_autoattack_rand_runs_the_two_apgds_on_an_eot_model_and_refuses_a_plain_one(randomised):
  model, _, x, y = randomised
  f = attacks.eot(model, key=jax.random.key(5), draws=20)
  r = attacks.autoattack(f, x, y, key=jax.random.key(0), eps=0.05, norm="l2", version="rand", log=None,
                         apgd_steps=20)
  assert [s.name for s in r.attacks] == ["apgd-ce", "apgd-dlr"]
  assert 0.0 < r.robust_accuracy < r.clean_accuracy
  with pytest.raises(ValueError, match="logits_fn: version='rand'"):
    attacks.autoattack(lambda z: model(z, jax.random.key(0)), x, y, key=jax.random.key(0), eps=0.3,
                       version="rand", log=None)
  with pytest.raises(ValueError, match="draws=0"):
    attacks.eot(model, key=jax.random.key(0), draws=0)
  np.testing.assert_allclose(np.asarray(f(x)), np.asarray(jnp.mean(f.all_logits(x), 0)))
