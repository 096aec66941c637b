"""The masking report: it FLAGs a shattered-gradient model and PASSes an honest one,
and the strong protocol breaks a standard LeNet."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crp_jax import attacks, data
from crp_jax.runner import evaluators, train, meshes
from crp_jax.runner.evaluators import batches
from crp_jax.models import get_model
from crp_jax.runner import config as base


def eval_cfg(**kw):
  """A small strong protocol: cheap enough for CI, strong enough for these models."""
  cfg = base.eval_config(eps=0.3, step_size=0.01)
  cfg.update(dict(batch_size=100, attack_subset=100, apgd_steps=25, num_targets=3, square_queries=200,
                  sweep_steps=(5, 10, 20), sweep_apgd_steps=(10, 25), sweep_restarts=3,
                  eps_sweep_steps=10, unbounded_steps=30, noise_samples=10))
  cfg.update(kw)
  return cfg


class Quantized(nn.Module):
  """A model with a quantising input layer: its input gradient is zero almost everywhere."""
  inner: nn.Module

  def __call__(self, x, *, train=False):
    return self.inner(jnp.round(x * 4) / 4, train=train)


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.relu(nn.Dense(128)(x.reshape(len(x), -1)))
    return nn.Dense(10)(x)


def fit(model, images, labels, steps, key):
  params = model.init(key, to_f(images[:1]))
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt

  for i in range(steps):
    sl = slice((i * 128) % 3968, (i * 128) % 3968 + 128)
    params, opt = step(params, opt, to_f(images[sl]), labels[sl])
  return params


def to_f(images):
  return data.to_float(jnp.asarray(images))


@pytest.fixture(scope="module")
def mnist():
  return data.load_split("mnist5k", "train"), data.load_split("mnist5k", "test")


def run_report(model, variables, test, cfg):
  mesh = meshes.make_mesh(jax.devices()[:2])
  plan = evaluators.build_plan(cfg)
  measured = evaluators.measure(plan, evaluators.Model(model, variables, cfg, jax.random.key(0)), test,
                                mesh=mesh, progress=False)
  summary = next(e for e in plan if e.name == "strong").summarize(measured, 10)
  return summary, {ch["name"]: ch for ch in summary["checks"]}


@pytest.fixture(scope="module")
def mlp(mnist):
  train_split, _ = mnist
  return fit(MLP(), train_split.images, train_split.labels, 150, jax.random.key(1))


def test_masked_model_is_flagged(mnist, mlp):
  _, test = mnist
  summary, checks = run_report(Quantized(MLP()), {"params": {"inner": mlp["params"]}}, test, eval_cfg())
  assert summary["accuracy"]["clean"] > 0.8
  for name in ("6a input gradients are not zero", "2c unbounded attack (ε=1) reaches 0%",
               "4a Square never beats white-box"):
    assert not checks[name]["passed"], checks[name]
  assert summary["num_flags"] >= 3


def test_honest_model_passes_monotonicity(mnist, mlp):
  _, test = mnist
  summary, checks = run_report(MLP(), mlp, test, eval_cfg())
  assert summary["accuracy"]["clean"] > 0.8
  for name in ("1a PGD accuracy vs steps", "1b APGD-CE accuracy vs steps", "1c PGD-5 accuracy vs restarts",
               "2a PGD-10 accuracy vs ε", "2c unbounded attack (ε=1) reaches 0%",
               "6a input gradients are not zero", "6b the model outputs logits, not probabilities"):
    assert checks[name]["passed"], checks[name]
  assert summary["num_flags"] == 0, [c for c in summary["checks"] if not c["passed"]]


@pytest.fixture(scope="module")
def lenet(mnist):
  train_split, _ = mnist
  params = fit(_Apply(get_model("lenet")), train_split.images, train_split.labels, 60, jax.random.key(2))
  return {"params": params["params"]["model"]}


class _Apply(nn.Module):
  """LeNet under the two-argument ``apply`` of :func:`fit`."""
  model: nn.Module

  def __call__(self, x):
    return self.model(x, train=False)


def test_standard_lenet_breaks_under_the_strong_protocol(mnist, lenet):
  _, test = mnist
  model = get_model("lenet")
  subset = batches.take(test, batches.subset_indices(test.num_examples, 48))
  logits_fn = lambda z: model.apply(lenet, z, train=False)
  out = jax.jit(lambda x, y, k: attacks.strong_eval(logits_fn, x, y, key=k, eps=0.3, apgd_steps=25,
                                                    num_targets=2, square_queries=100))(
      to_f(subset.images), jnp.asarray(subset.labels), jax.random.key(0))
  assert float(out["accuracy"]["clean"]) > 0.9
  assert float(out["accuracy"]["worst_case"]) <= 0.05, out["accuracy"]


@pytest.mark.slow
def test_standard_lenet_full_report(mnist, lenet):
  _, test = mnist
  cfg = eval_cfg(apgd_steps=100, num_targets=9, square_queries=1000, sweep_steps=(10, 20, 50, 100, 200),
                 sweep_apgd_steps=(25, 100), eps_sweep_steps=50, unbounded_steps=100, noise_samples=100)
  summary, checks = run_report(get_model("lenet"), lenet, test, cfg)
  assert summary["worst_case"] <= 0.05, summary["accuracy"]
  for name in ("1a PGD accuracy vs steps", "2a PGD-50 accuracy vs ε", "6a input gradients are not zero"):
    assert checks[name]["passed"], checks[name]


def test_check_6a_flags_zero_gradients_and_only_reports_saturated_ones():
  from crp_jax.runner.evaluators.masking import gradient_checks  # pylint: disable=g-import-not-at-top
  grads = np.ones((100, 3)) * np.array([1.0, -20.0, -5.0])   # (‖∇‖₁, logit row sum, min logit)
  grads[:5, 0] = 1e-12                                    # saturated, not zero: the signs still point
  six_a = gradient_checks(grads, 0.0)[0]
  assert six_a.passed and "0.0% of examples have ‖∇ₓ loss‖₁ = 0 (5.0% have a saturated" in six_a.detail
  grads[:2, 0] = 0.0                                      # exactly zero: a sign attack cannot move
  assert not gradient_checks(grads, 0.0)[0].passed
  assert not gradient_checks(np.where(np.arange(100)[:, None] < 5, 1e-12, grads), 1e-8)[0].passed
