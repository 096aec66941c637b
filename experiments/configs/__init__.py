"""Per-dataset configs, each a ``get_config(preset)`` returning a ConfigDict.

``paper`` holds the paper's hyperparameters (§4.1); ``small`` is sized for a
CPU. Any field can be overridden with ``--config.field=value``. The schema
(every field, its default and its validation) is the library's:
:mod:`crp_jax.runner.config`.
"""

from __future__ import annotations

import importlib

import ml_collections

from crp_jax.runner.config import DATASETS, EPS_GRID_FACTORS, PRESETS, SHORT_DATASETS, STUDY_PRESETS


def get_config(dataset: str, preset: str = "small") -> ml_collections.ConfigDict:
  """The config of ``dataset`` at ``preset``; unknown names raise ``ValueError``."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  if preset == "short" and dataset not in SHORT_DATASETS:
    raise ValueError(f"preset 'short' is for the GPU datasets {', '.join(SHORT_DATASETS)}, not {dataset!r}; "
                     "use small or paper")
  config = importlib.import_module(f"experiments.configs.{dataset}").get_config(preset)
  return control(config) if preset == "control" else config


def control(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The positive control: PGD-AT trained and reported beside standard and CRP, under the same attacks.

  An evaluation that only ever prints 0 % has not shown it can see
  robustness; a Madry-trained model must come out robust, with every
  masking check passing. The attacks run at the adversary's radius
  (``eval.eps = adversary.eps``, the ε sweep scaled with it); the dataset's
  ``control`` preset (else its ``small`` one) sizes the rest.
  """
  c.method, c.compare_with = "pgd_at", "standard,crp"
  if c.eval.eps != c.adversary.eps:
    c.eval.eps = c.adversary.eps
    c.eval.eps_grid = tuple(c.adversary.eps * f for f in EPS_GRID_FACTORS)
  return c


def study_config(dataset: str, preset: str = "small") -> ml_collections.ConfigDict:
  """The base config of ``python -m experiments.study``: the dataset's preset, with

  * every PGD-n that one of the paper's tables of this dataset reports (so
    the studies that share a trained model also share its evaluation);
  * at ``small``: one epoch over 2,000 training examples in batches of 64,
    and attacks on 100 test examples with a cut strong protocol (APGD and
    FAB-T 50 steps, 3 targets, Square 500 queries, short sweeps), so that a study of
    10–30 runs fits in about 30 minutes on a 2-core CPU. These are pipeline
    checks, not the paper's numbers; ``--preset=paper`` trains at the
    paper's length.
  """
  c = get_config(dataset, preset)
  if dataset == "cifar10" and preset in ("paper", "short"):
    c.eval.pgd_steps = (7, 20, 40, 100)  # Tables 3, 6 and 7
  if preset == "small":
    c.epochs, c.batch_size, c.train_subset = 1, 64, 2000
    e = c.eval
    e.attack_subset = min(e.attack_subset or 100, 100)
    e.apgd_steps, e.fab_steps, e.num_targets, e.square_queries = 50, 50, 3, 500
    e.sweep_steps, e.sweep_apgd_steps, e.sweep_restarts = (10, 50), (), 1
    e.eps_sweep_steps, e.unbounded_steps, e.noise_samples = 10, 20, 20
  return c
