"""Per-dataset configs, each a ``get_config(preset)`` returning a ConfigDict.

``paper`` holds the paper's hyperparameters (§4.1); ``small`` is sized for a
CPU. Any field can be overridden with ``--config.field=value``. The schema
(every field, its default and its validation) is the library's:
:mod:`crp_jax.runner.config`.
"""

from __future__ import annotations

import importlib

import ml_collections

from crp_jax.runner.config import (CONTROL_PAPER_DATASETS, DATASETS, EPS_GRID_FACTORS, PRESETS, SHORT_DATASETS,
                                   STUDY_PRESETS)


def get_config(dataset: str, preset: str = "small") -> ml_collections.ConfigDict:
  """The config of ``dataset`` at ``preset``; unknown names raise ``ValueError``."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  if preset == "short" and dataset not in SHORT_DATASETS:
    raise ValueError(f"preset 'short' is for the GPU datasets {', '.join(SHORT_DATASETS)}, not {dataset!r}; "
                     "use small or paper")
  if preset == "control_paper" and dataset not in CONTROL_PAPER_DATASETS:
    raise ValueError(f"preset 'control_paper' is for {', '.join(CONTROL_PAPER_DATASETS)} (the paper's ε = 0.3 "
                     f"is MNIST's), not {dataset!r}; use control")
  module = importlib.import_module(f"experiments.configs.{dataset}")
  if preset == "control_paper":
    return control_paper(module.get_config("paper"))
  config = module.get_config(preset)
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


def control_paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The positive control at the paper's MNIST radius and length: PGD-AT and TRADES beside standard.

  LeNets trained for the paper's 50 epochs against an inner attack at
  ε = 0.3 (PGD-10 of step 0.05 with a random start: a quarter of Madry et
  al.'s 40 steps of 0.01, with the same reach, so that a CPU trains them in
  about half an hour each; TRADES' β = 6), then evaluated with the same plan
  as the CRP runs of the paper-length tables: the paper's protocol and the
  whole strong protocol (AutoAttack standard: APGD-CE, APGD-T and FAB-T with
  9 targets, Square with 1,000 queries) on 500 test digits, with every
  masking check. An evaluation that
  reports 0 % for CRP must report clearly more here. PGD-AT does not train
  at this radius from the first step (its loss stays at ln 10): train it with
  ``--config.compare_with= --config.adversary.eps_warmup_epochs=10``, ε
  growing from 0 over the first 10 epochs (``results/control/mnist5k-paper``).
  """
  c = control(c)
  c.compare_with = "trades,standard"
  c.adversary.steps, c.adversary.step_size = 10, 0.05
  e = c.eval
  e.attack_subset, e.sweep_restarts, e.sweep_steps, e.square_queries = 500, 1, (10, 50, 100), 1000
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
