"""The studies' evaluators (flatness, saturation, ε curve) on tiny models whose answer is known, and provenance."""

from __future__ import annotations

import os
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import crp_jax
from crp_jax.data import Split
from crp_jax.runner import config as config_lib, evaluators, meshes, provenance


class Constant(nn.Module):
  """Logits that do not depend on the input: class 0 ahead by ``margin``."""
  margin: float = 3.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    bias = self.param("bias", lambda k: jnp.zeros((10,)).at[0].set(self.margin))
    return jnp.zeros((x.shape[0], 10)) + bias[None]


class Saturated(nn.Module):
  """A linear model whose class 0 wins by about ``margin``: softmax rounds to exactly 1 in float32."""
  margin: float = 30.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    flat = x.reshape(x.shape[0], -1)
    kernel = self.param("kernel", lambda k: 0.01 * jax.random.normal(k, (flat.shape[1], 10)))
    return flat @ kernel + jnp.zeros((1, 10)).at[0, 0].set(self.margin)


def _split(n: int = 16) -> Split:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
  return Split(images=images, labels=np.zeros(n, np.int32), ids=np.arange(n, dtype=np.int32), num_classes=10,
               image_shape=(8, 8, 1))


def _eval_cfg(**fields):
  cfg = config_lib.eval_config(eps=0.3, step_size=0.05)
  cfg.strong, cfg.pgd_steps, cfg.batch_size, cfg.attack_subset, cfg.apgd_steps = False, (5,), 8, 0, 5
  for k, v in fields.items():
    cfg[k] = v
  return cfg


def _sections(module, cfg, test):
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  model = evaluators.Model(module, variables, cfg, jax.random.key(1))
  return evaluators.evaluate_models({"m": model}, test, mesh=meshes.make_mesh(), progress=False)["m"]


def test_flatness_of_a_constant_model_is_zero():
  cfg = _eval_cfg()
  cfg.flatness.draws, cfg.flatness.eps = 4, 0.3
  out = _sections(Constant(), cfg, _split())
  assert out["flatness"]["mean"] == 0.0 and out["flatness"]["variance"] == 0.0
  assert out["flatness"]["num_examples"] == 16 and out["flatness"]["draws"] == 4


def test_flatness_of_an_input_dependent_model_is_not_zero():
  cfg = _eval_cfg()
  cfg.flatness.draws, cfg.flatness.eps = 4, 0.3
  out = _sections(Saturated(margin=0.0), cfg, _split())
  assert out["flatness"]["variance"] > 0.0


def test_clipped_probability_loss_has_an_exactly_zero_gradient_on_a_saturated_linear_model():
  out = _sections(Saturated(), _eval_cfg(saturation=True), _split())["saturation"]
  assert out["zero_gradient"] == {"ce": 0.0, "prob_ce": 1.0}
  # No gradient, no move: every attack under the clipped loss leaves the clean accuracy; the stable loss moves.
  assert out["clean_subset"] == 1.0
  assert all(out["accuracy"][n] == 1.0 for n in ("fgsm-prob_ce", "pgd5-prob_ce", "bim5-prob_ce"))


def test_saturation_stable_rows_are_the_paper_protocols_own_numbers():
  sections = _sections(Saturated(margin=0.5), _eval_cfg(saturation=True), _split())
  paper, sat = sections["paper"]["accuracy"], sections["saturation"]["accuracy"]
  assert sat["fgsm-ce"] == paper["fgsm"] and sat["pgd5-ce"] == paper["pgd5"]
  assert set(sat) == {f"{a}-{loss}" for a in ("fgsm", "pgd5", "bim5") for loss in ("ce", "prob_ce")}


def test_eps_curve_of_a_constant_model_is_flat_at_clean_accuracy():
  out = _sections(Constant(), _eval_cfg(eps_curve=(0.1, 0.2, 0.4)), _split())["eps_curve"]
  assert out["eps"] == [0.1, 0.2, 0.4] and out["pgd20"] == [1.0] * 3 and out["apgd"] == [1.0] * 3


def test_a_study_evaluator_is_added_alone_to_a_finished_run():
  base = _eval_cfg()
  saved = base.to_dict()
  wanted = _eval_cfg(saturation=True)
  assert evaluators.to_add(saved, wanted) == ("saturation",)
  assert evaluators.to_add(wanted.to_dict(), base) == ()          # a superset is finished
  wanted.eps = 0.2
  assert evaluators.to_add(saved, wanted) is None                   # a shared field: the whole plan again


def test_study_evaluator_fields_are_validated():
  c = config_lib.base_config()
  c.eval.flatness.distribution = "laplace"
  with pytest.raises(config_lib.ConfigError, match="eval.flatness.distribution"):
    config_lib.validate(c, num_devices=1)
  c = config_lib.base_config()
  c.eval.eps_curve = (0.1, 2.0)
  with pytest.raises(config_lib.ConfigError, match="eval.eps_curve"):
    config_lib.validate(c, num_devices=1)


def _git(cwd, *args):
  subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_provenance_from_a_dirty_checkout_says_so_and_from_a_plain_install_records_the_version(tmp_path,
                                                                                                monkeypatch):
  checkout = tmp_path / "checkout"
  (checkout / "crp_jax").mkdir(parents=True)
  init = checkout / "crp_jax" / "__init__.py"
  init.write_text("# stand-in\n")
  _git(checkout, "init", "-q")
  _git(checkout, "-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
  _git(checkout, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x")
  sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
  monkeypatch.setattr(crp_jax, "__file__", str(init))
  assert provenance.code() == {"crp_jax": crp_jax.__version__, "commit": sha, "dirty": False}
  init.write_text("# changed\n")
  assert provenance.code()["dirty"] is True
  site = tmp_path / "site-packages" / "crp_jax"
  site.mkdir(parents=True)
  monkeypatch.setattr(crp_jax, "__file__", str(site / "__init__.py"))
  assert provenance.code() == {"crp_jax": crp_jax.__version__, "commit": None, "dirty": None}
  stamp = provenance.stamp("python -m experiments.run")
  assert stamp["command"] == "python -m experiments.run" and {"jax", "jaxlib", "flax"} <= set(stamp["versions"])
  assert "an installed package" in provenance.line(stamp)


@pytest.mark.parametrize("dataset", ["svhn", "cifar10"])
def test_short_preset_keeps_the_papers_protocol_and_trains_on_mock_data(dataset, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from crp_jax import data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  from experiments.configs import get_config, study_config  # pylint: disable=g-import-not-at-top
  paper, short = study_config(dataset, "paper"), study_config(dataset, "short")
  # The protocol is the paper's: K, law, bound, optimizer, attacks; only the length, network and subset differ.
  for field in ("num_perturbations", "distribution", "perturbation_eps", "optimizer", "learning_rate",
                "include_clean"):
    assert short[field] == paper[field], field
  assert short.eval.pgd_steps == paper.eval.pgd_steps and short.eval.eps == paper.eval.eps
  assert short.eval.autoattack == "standard" and short.eval.attack_subset == 1000
  assert short.epochs < paper.epochs / 10 and short.model == "resnet18"
  with pytest.raises(ValueError, match="preset 'short' is for the GPU datasets"):
    get_config("mnist5k", "short")
  monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: True)   # mock_data's download is a no-op
  c = short
  # LeNet instead of ResNet-18: the same code path through data, training and evaluation, compiled in seconds.
  c.model, c.train_subset, c.batch_size, c.epochs, c.tfds_data_dir = "lenet", 16, 16, 1, str(tmp_path)
  c.num_perturbations = 1
  c.eval.attack_subset, c.eval.batch_size, c.eval.pgd_steps, c.eval.strong = 8, 8, (2,), False
  c.compare_with = ""
  with tfds.testing.mock_data(num_examples=16):
    pipeline.run(c, str(tmp_path / "run"), progress=False)
  assert os.path.isfile(tmp_path / "run" / "results.json")
