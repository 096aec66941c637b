"""The run config: its schema (every field and its default), validation, and what may change on resume.

Configs are ``ml_collections.ConfigDict`` objects: :func:`base_config` and
:func:`eval_config` give every field with a neutral default, and the
dataset configs of ``experiments/configs`` (``get_config(preset)``) set the
paper's values on top. :func:`validate` checks every field a run depends on
*before* anything is written, so a typo costs seconds and never touches a
workdir. Datasets and models are named by their registries
(:data:`crp_jax.data.DATASET_NAMES`, :data:`crp_jax.models.MODEL_NAMES`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

from crp_jax import certify
from crp_jax.data import DATASET_NAMES
from crp_jax.extended_set import OBJECTIVES
from crp_jax.perturbations import DISTRIBUTIONS

#: The datasets a run can name: the data registry's.
DATASETS: tuple[str, ...] = DATASET_NAMES
#: ``small``: sized for a CPU; ``paper``: the paper's settings (§4.1); ``short``: the paper's
#: protocol at a length that answers "does CRP keep any robustness under AutoAttack?" in about a
#: GPU-hour per table (SVHN and CIFAR-10 only); ``control``: the positive control, PGD-AT beside
#: standard and CRP (``experiments/configs``); ``control_paper``: the control at the paper's MNIST
#: radius and length, PGD-AT and TRADES beside standard (MNIST only).
PRESETS: tuple[str, ...] = ("small", "paper", "short", "control", "control_paper")
#: The presets a study (``python -m experiments.study``) runs at.
STUDY_PRESETS: tuple[str, ...] = ("small", "paper", "short")
#: The datasets with a ``short`` preset (the GPU datasets).
SHORT_DATASETS: tuple[str, ...] = ("svhn", "cifar10")
#: The datasets with a ``control_paper`` preset (the paper's ε = 0.3 is MNIST's).
CONTROL_PAPER_DATASETS: tuple[str, ...] = ("mnist", "mnist5k")
#: The strong protocol's ε sweep, as multiples of ``eval.eps``.
EPS_GRID_FACTORS: tuple[float, ...] = (1 / 3, 2 / 3, 1.0, 4 / 3, 2.0)
METHODS: tuple[str, ...] = ("standard", "crp", "variable", "pgd_at", "trades")
#: The methods that train on points of an inner attack (``config.adversary``, :mod:`crp_jax.adversarial`).
ADVERSARIAL_METHODS: tuple[str, ...] = ("pgd_at", "trades")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
#: Fields that may change between a run and its resumption with
#: ``allow_config_change``: they do not affect the training trajectory.
SAFE_TO_CHANGE: tuple[str, ...] = ("eval.", "log_every_steps", "checkpoint_every_steps",
                                   "max_checkpoints", "tfds_data_dir")
#: Above this a run diverges at once with any of our optimisers; the cap
#: catches typos such as 1e3 for 1e-3.
MAX_LEARNING_RATE: float = 10.0


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with neutral defaults; the dataset configs of ``experiments/configs`` start here."""
  c = ml_collections.ConfigDict()
  c.dataset = "mnist5k"
  c.model = "lenet"
  # The training method: standard (Table 7 A), crp (constant, the paper's G),
  # variable (drawn anew each epoch, B–E), or the adversarially trained
  # baselines pgd_at (Madry et al.) and trades (Zhang et al.).
  c.method = "crp"
  # Other methods trained and reported beside `method`, comma-separated
  # ('standard' or 'standard,crp'; '' for none).
  c.compare_with = ""
  c.distribution = "uniform"
  c.num_perturbations = 10
  c.perturbation_eps = 0.3
  c.include_clean = True
  # How the draws reach the loss: extended_set (Eq. 9, batches of (i, j) pairs)
  # or ball_loss (Eq. 8, batches of examples, all K draws each): crp_jax.losses.
  c.objective = "extended_set"
  c.clip_perturbed = True
  c.seed = 0
  c.epochs = 1
  c.batch_size = 128
  c.train_subset = 0  # 0: the whole train split
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.lr_schedule = "constant"
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.dtype = "float32"
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.max_checkpoints = 2
  c.tfds_data_dir = ""
  c.adversary = adversary_config(eps=0.3, steps=40, step_size=0.01)
  c.eval = eval_config(eps=0.3, step_size=1 / 255)
  return c


def adversary_config(*, eps: float, steps: int, step_size: float, beta: float = 6.0,
                     eps_warmup_epochs: float = 0.0) -> ml_collections.ConfigDict:
  """The inner attack of ``pgd_at`` and ``trades``: L∞ radius, PGD steps and step size, TRADES' β, and
  the epochs over which ε and the step grow linearly from 0 (0: none).

  Read only by the adversarial methods (other methods' runs do not depend on it).
  """
  return ml_collections.ConfigDict({"eps": eps, "steps": steps, "step_size": step_size, "beta": beta,
                                    "eps_warmup_epochs": eps_warmup_epochs})


def compared_methods(config: ml_collections.ConfigDict) -> list[str]:
  """The methods of ``config.compare_with``, in order."""
  return [m.strip() for m in config.compare_with.split(",") if m.strip()]


def eval_config(*, eps: float, step_size: float) -> ml_collections.ConfigDict:
  """The evaluation fields at radius ``eps`` with the paper's PGD step ``step_size``."""
  e = ml_collections.ConfigDict()
  e.eps = eps
  e.step_size = step_size  # the paper's PGD step η
  e.pgd_steps = (20, 100)
  # The paper's PGD is Madry et al.'s, with a random start: §2 calls BIM "PGD without the random
  # starts", and Eq. 4 takes the gradient at x + δ. False runs BIM (PGD from x). Either way the
  # paper's PGD returns its last iterate (AttackSpec.last_iterate).
  e.random_start = True
  e.restarts = 1
  e.extra_step_size = 0.0  # > 0: also run PGD with this η (random start, last iterate)
  e.batch_size = 256  # a power of two: divisible by any power-of-two device count
  e.attack_subset = 1000  # test examples attacked (clean accuracy uses the whole split)
  # The strong protocol (AutoAttack-style worst case) and the masking checks.
  e.strong = True
  e.apgd_steps = 100
  e.num_targets = 9  # APGD-T target classes (capped at classes - 1)
  e.square_queries = 5000
  # AutoAttack (attacks.autoattack): "standard" adds FAB-T after APGD-CE and APGD-T, each run on the
  # examples still robust, and reports AutoAttack's number; "plus" its plus version; "" only the three.
  e.autoattack = "standard"
  e.fab_steps = 100
  e.sweep_steps = (10, 20, 50, 100, 200)  # PGD, step 2.5·ε/n, random start
  e.sweep_apgd_steps = (25, 100)
  e.sweep_restarts = 5
  e.eps_grid = tuple(eps * f for f in EPS_GRID_FACTORS)
  e.eps_sweep_steps = 50
  e.unbounded_steps = 100
  e.noise_samples = 100
  e.masking_tolerance = 0.005  # accuracy noise allowed before a check FLAGs
  # Check 6a flags an input gradient at or below this L1 norm: 0 means exactly zero, the only
  # gradient that blinds the sign-based attacks (a saturated but non-zero CE gradient still points
  # the right way; diagnostics.gradient_checks).
  e.zero_grad_threshold = 0.0
  # Certified L2 accuracy by randomized smoothing (evaluators.certified), on when sigma > 0.
  e.certify = certify_config()
  # The studies' extra evaluators, off by default (a study turns on what its table needs):
  # loss flatness around test examples (draws > 0), the saturation test, accuracy against ε (a grid).
  e.flatness = flatness_config()
  e.saturation = False
  e.eps_curve = ()
  return e


def flatness_config() -> ml_collections.ConfigDict:
  """``eval.flatness`` (:mod:`crp_jax.runner.evaluators.flatness`): draws per test example (0: off) and δ's law."""
  return ml_collections.ConfigDict({"draws": 0, "eps": 0.3, "distribution": "uniform"})


def certify_config() -> ml_collections.ConfigDict:
  """``eval.certify``: randomized smoothing's CERTIFY (:mod:`crp_jax.runner.evaluators.certified`).

  Off while ``sigma`` is 0 (every preset: at the paper's n = 100,000 it
  costs ``num_examples · (n0 + n)`` forward passes); else the noise std σ.
  """
  c = ml_collections.ConfigDict()
  c.sigma = 0.0
  c.n0, c.n, c.alpha = certify.DEFAULT_N0, certify.DEFAULT_N, certify.DEFAULT_ALPHA
  c.batch_size = certify.DEFAULT_BATCH_SIZE  # noisy samples per example per step
  c.num_examples = 500  # a fixed subset of the test split (0: all)
  c.radii = certify.DEFAULT_RADII
  c.seed = 0  # the noise's seed, the same for every model (as in experiments.certify)
  return c


class ConfigError(ValueError):
  """A config value a run cannot use; the message names the field and value."""


def _fail(field: str, value: Any, why: str) -> None:
  raise ConfigError(f"config.{field}={value!r}: {why}")


def _int_at_least(config: ml_collections.ConfigDict, field: str, low: int) -> None:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    _fail(field, value, f"must be an integer >= {low}")


def _number_in(config: ml_collections.ConfigDict, field: str, low: float, high: float,
               *, open_low: bool = False) -> None:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(field, value, "must be a finite number")
  if value < low or value > high or (open_low and value == low):
    _fail(field, value, f"must lie in {'(' if open_low else '['}{low}, {high}]")


def _one_of(config: ml_collections.ConfigDict, field: str, choices: tuple[str, ...]) -> None:
  value = _get(config, field)
  if value not in choices:
    _fail(field, value, f"unknown; choose one of {', '.join(choices)}")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _steps_list(config: ml_collections.ConfigDict, field: str, *, allow_empty: bool = False) -> None:
  value = _get(config, field)
  if not isinstance(value, (tuple, list)) or (not value and not allow_empty) or any(
      isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
    _fail(field, value, f"must be a {'' if allow_empty else 'non-empty '}list of integers >= 1")


def _numbers_list(config: ml_collections.ConfigDict, field: str, low: float, high: float) -> None:
  value = _get(config, field)
  if not isinstance(value, (tuple, list)) or not value or any(
      isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high
      for v in value):
    _fail(field, value, f"must be a non-empty list of numbers in [{low}, {high}]")


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Raises :class:`ConfigError` naming the first bad field of ``config``."""
  from crp_jax.models import MODEL_NAMES  # pylint: disable=g-import-not-at-top
  _one_of(config, "dataset", DATASET_NAMES)
  _one_of(config, "model", MODEL_NAMES)
  _one_of(config, "method", METHODS)
  _validate_compare_with(config)
  _one_of(config, "distribution", DISTRIBUTIONS)
  _one_of(config, "objective", OBJECTIVES)
  _one_of(config, "optimizer", OPTIMIZERS)
  _one_of(config, "lr_schedule", SCHEDULES)
  _one_of(config, "dtype", DTYPES)
  _number_in(config, "perturbation_eps", 0.0, 1.0)
  _int_at_least(config, "num_perturbations", 1)
  _int_at_least(config, "seed", 0)
  _int_at_least(config, "epochs", 1)
  _int_at_least(config, "batch_size", 1)
  _int_at_least(config, "train_subset", 0)
  _int_at_least(config, "log_every_steps", 1)
  _int_at_least(config, "checkpoint_every_steps", 1)
  _int_at_least(config, "max_checkpoints", 1)
  _number_in(config, "learning_rate", 0.0, MAX_LEARNING_RATE, open_low=True)
  _number_in(config, "momentum", 0.0, 1.0)
  _number_in(config, "weight_decay", 0.0, 1.0)
  _validate_adversary(config)
  _validate_eval(config)
  devices = jax.device_count() if num_devices is None else num_devices
  for field in ("batch_size", "eval.batch_size"):
    if _get(config, field) % devices:
      _fail(field, _get(config, field), f"must be divisible by the {devices} devices of the mesh")


def _validate_compare_with(config: ml_collections.ConfigDict) -> None:
  if not isinstance(config.compare_with, str):
    _fail("compare_with", config.compare_with, "must be a comma-separated list of methods")
  methods = compared_methods(config)
  for m in methods:
    if m not in METHODS:
      _fail("compare_with", config.compare_with, f"unknown method {m!r}; choose from {', '.join(METHODS)}")
  if config.method in methods:
    _fail("compare_with", config.compare_with, "must not repeat config.method (or be '' for no comparison)")
  if len(set(methods)) < len(methods):
    _fail("compare_with", config.compare_with, "names a method twice")


def _validate_adversary(config: ml_collections.ConfigDict) -> None:
  _number_in(config, "adversary.eps", 0.0, 1.0)
  _int_at_least(config, "adversary.steps", 1)
  _number_in(config, "adversary.step_size", 0.0, 1.0, open_low=True)
  _number_in(config, "adversary.beta", 0.0, 1e6)
  _number_in(config, "adversary.eps_warmup_epochs", 0.0, float(config.epochs))


def _validate_eval(config: ml_collections.ConfigDict) -> None:
  _number_in(config, "eval.eps", 0.0, 1.0)
  _number_in(config, "eval.step_size", 0.0, 1.0, open_low=True)
  _number_in(config, "eval.extra_step_size", 0.0, 1.0)
  _steps_list(config, "eval.pgd_steps")
  _int_at_least(config, "eval.batch_size", 1)
  _int_at_least(config, "eval.attack_subset", 0)
  _int_at_least(config, "eval.restarts", 1)
  if config.eval.get("strong"):
    _validate_strong(config)
  if "certify" in config.eval and config.eval.certify.sigma != 0:
    _validate_certify(config)
  _validate_study_evaluators(config)


def _validate_study_evaluators(config: ml_collections.ConfigDict) -> None:
  """``eval.flatness``, ``eval.saturation`` and ``eval.eps_curve``, where present."""
  e = config.eval
  if "flatness" in e:
    _int_at_least(config, "eval.flatness.draws", 0)
    _number_in(config, "eval.flatness.eps", 0.0, 1.0)
    _one_of(config, "eval.flatness.distribution", DISTRIBUTIONS)
  if "saturation" in e and not isinstance(e.saturation, bool):
    _fail("eval.saturation", e.saturation, "must be True or False")
  if "eps_curve" in e and e.eps_curve:
    _numbers_list(config, "eval.eps_curve", 0.0, 1.0)


def _validate_certify(config: ml_collections.ConfigDict) -> None:
  """``eval.certify``'s sizes are integers; then CERTIFY's own argument checks, named as config fields."""
  c = config.eval.certify
  for name, low in (("n0", 1), ("n", 1), ("batch_size", 1), ("num_examples", 0), ("seed", 0)):
    _int_at_least(config, f"eval.certify.{name}", low)
  _numbers_list(config, "eval.certify.radii", 0.0, math.inf)
  try:
    certify.check_arguments(sigma=c.sigma, alpha=c.alpha, batch_size=c.batch_size, n0=c.n0, n=c.n)
  except ValueError as e:
    raise ConfigError(f"config.eval.certify.{e}") from e


#: ``eval.autoattack``: AutoAttack's version run by the strong protocol, or "" for none.
AUTOATTACK_VERSIONS: tuple[str, ...] = ("standard", "plus", "")

#: The strong protocol's fields (``crp_jax.runner.evaluators.masking``), checked when present.
_STRONG_INTS: tuple[tuple[str, int], ...] = (
    ("apgd_steps", 1), ("num_targets", 1), ("square_queries", 1), ("fab_steps", 1), ("sweep_restarts", 1),
    ("eps_sweep_steps", 1), ("unbounded_steps", 1), ("noise_samples", 1))


def _validate_strong(config: ml_collections.ConfigDict) -> None:
  present = lambda name: name in config.eval
  for name, low in _STRONG_INTS:
    if present(name):
      _int_at_least(config, f"eval.{name}", low)
  if present("autoattack") and config.eval.autoattack not in AUTOATTACK_VERSIONS:
    _fail("eval.autoattack", config.eval.autoattack,
          f"must be one of {', '.join(repr(v) for v in AUTOATTACK_VERSIONS)}")
  if present("sweep_steps"):
    _steps_list(config, "eval.sweep_steps")
  if present("sweep_apgd_steps"):
    _steps_list(config, "eval.sweep_apgd_steps", allow_empty=True)
  if present("eps_grid"):
    _numbers_list(config, "eval.eps_grid", 0.0, 1.0)
  if present("masking_tolerance"):
    _number_in(config, "eval.masking_tolerance", 0.0, 1.0)
  if present("zero_grad_threshold"):
    _number_in(config, "eval.zero_grad_threshold", 0.0, 1.0)


def check_sizes(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
  """Raises :class:`ConfigError` if one batch exceeds an epoch of the extended set.

  Needs the size of the training split, so it runs once the data is loaded
  (and still before anything is written).
  """
  from crp_jax import extended_set  # pylint: disable=g-import-not-at-top
  examples = min(config.train_subset or num_train_examples, num_train_examples)
  for method in [config.method, *compared_methods(config)]:
    draws, clean = extended_set.layout(method, config.num_perturbations, config.include_clean,
                                       config.objective)
    pairs = examples * (draws + int(clean))
    if config.batch_size > pairs:
      _fail("batch_size", config.batch_size, f"exceeds the {pairs} examples of an epoch of the {method} "
            f"training set ({examples} examples x {draws + int(clean)}); lower it or raise train_subset")
