"""Per-dataset configs, each a ``get_config(preset)`` returning a ConfigDict.

``paper`` holds the paper's hyperparameters (§4.1); ``small`` is sized for a
CPU. Any field can be overridden with ``--config.field=value``. The schema
(every field, its default and its validation) is the library's:
:mod:`crp_jax.runner.config`.
"""

from __future__ import annotations

import importlib

import ml_collections

from crp_jax.runner.config import DATASETS, PRESETS


def get_config(dataset: str, preset: str = "small") -> ml_collections.ConfigDict:
  """The config of ``dataset`` at ``preset``; unknown names raise ``ValueError``."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  return importlib.import_module(f"experiments.configs.{dataset}").get_config(preset)
