"""Adversarial training (PGD-AT, TRADES): the inner attacks, the train step, resume, and that it buys robustness."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crp_jax import adversarial, attacks, data
from crp_jax.data import to_float
from crp_jax.models import get_model
from crp_jax.runner import checkpoint, train, meshes, seeds
from crp_jax.runner.config import ConfigError, base_config, validate

EPS = 0.1


def _spec(method, **adversary):
  return train.TrainSpec(method=method, batch_size=64, adversary=train.AdversarySpec(
      **{"eps": EPS, "steps": 5, "step_size": 0.025, "beta": 6.0, **adversary}))


def _steps(spec, split, num_steps, start=None):
  """``num_steps`` train steps of ``spec`` from the seed-0 init (or ``start``) on ``split``'s first examples."""
  model = get_model("lenet")
  tx = optax.adam(1e-3)
  keys = seeds.run_keys(0)
  state = start or train.create_state(model, tx, keys["init"], split.image_shape)
  objective = train.make_objective(spec, keys["perturbations"], 10, keys["adversary"])
  step = train.jit_train_step(train.make_train_step(model, tx, objective, keys["dropout"]),
                              meshes.make_mesh(jax.devices()[:1]))
  for i in range(num_steps):
    sl = slice(i * 64 % 1024, i * 64 % 1024 + 64)
    batch = {"image": split.images[sl], "label": split.labels[sl], "example_id": split.ids[sl],
             "draw_id": np.full(64, -1, np.int32)}
    state, metrics = step(state, batch)
  return model, state, metrics


@pytest.fixture(scope="module")
def split():
  return data.load_split("mnist5k", "train")


@pytest.fixture(scope="module")
def trained(split):
  """A standard LeNet after 40 steps, and a batch of digits it was trained on."""
  model, state, _ = _steps(_spec("standard"), split, 40)
  logits_fn = jax.jit(lambda x: model.apply(state.variables(), x, train=False))
  return logits_fn, to_float(split.images[:128]), jnp.asarray(split.labels[:128])


def test_pgd_at_points_raise_the_loss_and_stay_in_the_ball_and_the_box(trained):
  logits_fn, x, y = trained
  x_adv = adversarial.pgd_at_inputs(logits_fn, x, y, key=jax.random.key(1), eps=EPS, step_size=0.025,
                                    num_steps=10)
  clean, adv = attacks.get_loss("ce")(logits_fn(x), y), attacks.get_loss("ce")(logits_fn(x_adv), y)
  assert float(adv.mean()) > 2 * float(clean.mean())
  assert float(jnp.mean(adv > clean)) > 0.95
  assert float(jnp.abs(x_adv - x).max()) <= EPS + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_trades_points_raise_the_kl_to_the_clean_prediction_and_stay_in_the_ball(trained):
  logits_fn, x, _ = trained
  x_adv = adversarial.trades_inputs(logits_fn, x, key=jax.random.key(1), eps=EPS, step_size=0.025,
                                    num_steps=10)
  start = jnp.clip(x + adversarial.TRADES_START_STD * jax.random.normal(jax.random.key(1), x.shape), 0, 1)
  kl = lambda z: adversarial.kl_divergence(logits_fn(x), logits_fn(z))
  assert float(kl(x_adv).mean()) > 100 * float(kl(start).mean()) > 0
  assert float(jnp.abs(x_adv - x).max()) <= EPS + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_trades_loss_is_the_clean_cross_entropy_plus_beta_kl():
  z, z_adv, y = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([[0.0, 1.0, 0.0]]), jnp.array([0])
  p, q = jax.nn.softmax(z), jax.nn.softmax(z_adv)
  expected = -jnp.log(p[0, 0]) + 6.0 * jnp.sum(p * jnp.log(p / q))
  np.testing.assert_allclose(adversarial.trades_loss(z, z_adv, y, beta=6.0), [expected], rtol=1e-6)


@pytest.mark.parametrize("method,adversary", [("pgd_at", {"eps": 0.0}), ("trades", {"beta": 0.0})],
                         ids=["pgd_at_eps0", "trades_beta0"])
def test_adversarial_training_with_no_adversary_takes_the_standard_steps(split, method, adversary):
  _, standard, _ = _steps(_spec("standard"), split, 3)
  _, ours, _ = _steps(_spec(method, **adversary), split, 3)
  for a, b in zip(jax.tree.leaves(standard.params), jax.tree.leaves(ours.params)):
    if method == "pgd_at":   # x' = x exactly, so the very same computation
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:   # the second (adversarial) pass, times β = 0, changes XLA's summation order by an ulp,
      # which Adam's normalisation lifts to ~1e-7; a step with β > 0 moves parameters by > 1e-4.
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.mark.slow  # 45-70 s on 2 cores; run with pytest -m slow
def test_with_an_adversary_the_steps_differ_from_standard(split):
  _, standard, _ = _steps(_spec("standard"), split, 2)
  for method in ("pgd_at", "trades"):
    _, ours, metrics = _steps(_spec(method), split, 2)
    assert np.isfinite(float(metrics["loss"]))
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(standard.params),
                                                            jax.tree.leaves(ours.params)))
    assert diff > 1e-4, method


def _fit(tmp_path, name, **kw):
  config = base_config()
  config.method, config.train_subset, config.batch_size, config.epochs = "pgd_at", 256, 32, 1
  config.adversary.eps, config.adversary.steps, config.adversary.step_size = EPS, 3, 0.04
  config.log_every_steps, config.checkpoint_every_steps = 2, 4
  mesh = meshes.make_mesh(jax.devices()[:2])
  split = data.load_split("mnist5k", "train")
  return train.fit(config, str(tmp_path / name), get_model("lenet"), split, mesh, progress=False, **kw)


def test_resume_of_a_pgd_at_run_is_bit_identical(tmp_path):
  whole = _fit(tmp_path, "whole")
  assert int(_fit(tmp_path, "split", stop_at=4).step) == 4
  resumed = _fit(tmp_path, "split")
  assert int(resumed.step) == int(whole.step) == 8
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_tiny_pgd_at_model_is_more_robust_than_a_standard_one_trained_alike(split, trained):
  # The same 40 steps of batch 64 on the same digits from the same init; only the inputs differ.
  test = data.load_split("mnist5k", "test")
  x, y = to_float(test.images[:128]), jnp.asarray(test.labels[:128])
  model, state, _ = _steps(_spec("pgd_at", eps=0.2, step_size=0.05), split, 40)
  robust = {}
  for method, logits_fn in (("standard", trained[0]),
                            ("pgd_at", lambda x: model.apply(state.variables(), x, train=False))):
    x_adv = jax.jit(lambda x, y: attacks.pgd(logits_fn, x, y, key=jax.random.key(7), eps=0.2,
                                             step_size=0.025, num_steps=20))(x, y)
    robust[method] = float(attacks.accuracy(logits_fn, x_adv, y))
  assert robust["pgd_at"] > robust["standard"] + 0.15, robust   # measured: 0.27 vs 0.02


def test_the_adversary_fields_are_read_only_by_the_adversarial_methods():
  crp, other = base_config(), base_config()
  other.adversary.eps = 0.2
  assert checkpoint.training_fingerprint(crp.to_dict()) == checkpoint.training_fingerprint(other.to_dict())
  old = crp.to_dict()
  del old["adversary"]                          # a CRP run saved before the field existed
  assert checkpoint.training_fingerprint(old) == checkpoint.training_fingerprint(crp.to_dict())
  crp.method = other.method = "pgd_at"
  assert checkpoint.training_fingerprint(crp.to_dict()) != checkpoint.training_fingerprint(other.to_dict())
  assert train.TrainSpec.from_config(other).adversary == dataclasses.replace(train.AdversarySpec(), eps=0.2)


def test_a_warm_up_at_its_default_keeps_every_saved_runs_fingerprint():
  run = base_config()
  run.method = "pgd_at"
  old = run.to_dict()
  del old["adversary"]["eps_warmup_epochs"]     # a run saved before the field existed
  assert checkpoint.training_fingerprint(old) == checkpoint.training_fingerprint(run.to_dict())
  run.epochs, run.adversary.eps_warmup_epochs = 10, 5.0
  warm = run.to_dict()
  run.adversary.eps_warmup_epochs = 0.0
  assert checkpoint.training_fingerprint(warm) != checkpoint.training_fingerprint(run.to_dict())


def test_the_warm_up_grows_the_radius_linearly_and_starts_from_the_clean_loss():
  adv = train.AdversarySpec(eps=0.3, steps=3, step_size=0.1, eps_warmup_epochs=2.0)
  scales = [float(adv.scale(jnp.int32(t), 10)) for t in (0, 5, 10, 20, 35)]
  assert scales == [0.0, 0.25, 0.5, 1.0, 1.0]
  assert train.AdversarySpec().scale(jnp.int32(0), 10) == 1.0   # no warm-up: the constant radius
  w = jax.random.normal(jax.random.key(0), (4, 3))
  x = jax.random.uniform(jax.random.key(1), (6, 4))
  batch = {"label": jnp.arange(6) % 3}
  logits = lambda z: z @ w
  point_loss = lambda z, y: (optax.softmax_cross_entropy_with_integer_labels(logits(z), y), None)
  spec = train.TrainSpec(method="pgd_at", adversary=adv)
  with pytest.raises(ValueError, match="steps_per_epoch"):   # the warm-up's length has no default
    train.adversarial_objective(spec, jax.random.key(2))
  objective = train.adversarial_objective(spec, jax.random.key(2), steps_per_epoch=10)
  clean, _ = point_loss(x, batch["label"])
  at = lambda t: objective(point_loss, x, batch, jnp.int32(t), logits)[0]
  np.testing.assert_array_equal(at(0), clean)   # ε = 0 at the first step: x' = x exactly
  assert float(at(5).mean()) > float(clean.mean()) and float(at(20).mean()) > float(at(5).mean())


@pytest.mark.parametrize("field,value,match", [
    ("adversary.eps", -0.1, r"adversary.eps=-0.1"), ("adversary.steps", 0, r"adversary.steps=0"),
    ("adversary.beta", -1.0, r"adversary.beta=-1.0"), ("adversary.step_size", 0.0, r"adversary.step_size=0.0"),
    ("adversary.eps_warmup_epochs", -1.0, r"adversary.eps_warmup_epochs=-1.0"),
    ("adversary.eps_warmup_epochs", 2.0, r"adversary.eps_warmup_epochs=2.0: must lie in \[0.0, 1.0\]"),
    ("compare_with", "standard,pgd", r"unknown method 'pgd'"),
    ("compare_with", "standard,standard", r"names a method twice")])
def test_bad_adversary_and_comparison_fields_are_refused(field, value, match):
  config = base_config()
  node, name = (config.adversary, field.split(".")[1]) if "." in field else (config, field)
  node[name] = value
  with pytest.raises(ConfigError, match=match):
    validate(config, num_devices=1)


def test_the_control_preset_trains_pgd_at_beside_standard_and_crp_at_the_adversarys_eps():
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  for dataset in ("mnist5k", "mnist", "svhn", "cifar10"):
    c = get_config(dataset, "control")
    validate(c, num_devices=1)
    assert (c.method, c.compare_with) == ("pgd_at", "standard,crp")
    assert c.eval.eps == c.adversary.eps and max(c.eval.eps_grid) >= 2 * c.adversary.eps - 1e-9


def test_the_paper_control_trains_pgd_at_and_trades_at_the_papers_eps_and_length_on_mnist_only():
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  for dataset in ("mnist5k", "mnist"):
    c = get_config(dataset, "control_paper")
    validate(c, num_devices=1)
    assert (c.method, c.compare_with, c.epochs) == ("pgd_at", "trades,standard", 50)
    assert c.adversary.eps == c.eval.eps == 0.3 and c.adversary.steps * c.adversary.step_size >= c.adversary.eps
    assert c.eval.strong and c.eval.num_targets == 9 and c.eval.apgd_steps == 100
  for dataset in ("svhn", "cifar10"):
    with pytest.raises(ValueError, match="control_paper"):
      get_config(dataset, "control_paper")


@pytest.mark.slow  # 45-70 s on 2 cores; run with pytest -m slow
def test_a_three_model_run_reports_them_side_by_side(tmp_path):
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  c = get_config("mnist5k", "control")
  c.train_subset, c.epochs, c.batch_size, c.num_perturbations = 64, 1, 32, 1
  c.adversary.steps, c.log_every_steps = 2, 1
  c.eval.attack_subset, c.eval.batch_size, c.eval.pgd_steps, c.eval.strong = 8, 8, (2,), False
  text = pipeline.run(c, str(tmp_path), progress=False)
  assert "| Setting | standard | crp | pgd_at |" in text
  assert "pgd_at: PGD-2 at ε=0.1, step" in text
  for m in ("standard", "crp", "pgd_at"):
    assert (tmp_path / m / "results.json").exists()
