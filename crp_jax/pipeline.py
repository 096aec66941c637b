"""The end-to-end run: validate, load, train (or resume), evaluate, report.

Data flows one way: config -> data -> train -> evaluate -> report. Every
check that can fail on user input runs before the first file is written.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from crp_jax import checkpoint, config as config_lib, data, evaluate, io, report, train
from crp_jax.models import get_model


def versions() -> dict[str, str]:
  import crp_jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return {"crp_jax": crp_jax.__version__, "jax": jax.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "orbax": ocp.__version__, "numpy": np.__version__,
          "python": platform.python_version()}


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """``config`` for one model of a comparison: ``method`` set, no comparison."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.method, c.compare_with = method, ""
  return c


def methods_of(config: ml_collections.ConfigDict) -> list[str]:
  return [config.compare_with, config.method] if config.compare_with else [config.method]


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            allow_config_change: bool = False) -> tuple[data.Split, data.Split]:
  """All checks on user input, then the data. Writes nothing."""
  config_lib.validate(config)
  for method in methods_of(config):
    checkpoint.check_config(os.path.join(workdir, method), method_config(config, method),
                            allow_config_change=allow_config_change)
  data_dir = config.tfds_data_dir or None
  return (data.load_split(config.dataset, "train", data_dir=data_dir),
          data.load_split(config.dataset, "test", data_dir=data_dir))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, splits: tuple[data.Split, data.Split],
                       *, mesh: jax.sharding.Mesh | None = None, progress: bool = True,
                       command: str = "") -> dict[str, Any]:
  """Trains one model per ``config`` in ``workdir`` (resuming if possible) and evaluates it."""
  mesh = train.make_mesh() if mesh is None else mesh
  train_split, test_split = splits
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  model = get_model(config.model, train_split.num_classes, dtype=dtype)
  start = time.perf_counter()
  state = train.fit(config, workdir, model, train_split, mesh, progress=progress)
  seconds = time.perf_counter() - start
  key = train.run_keys(config.seed)["eval"]
  evaluation = evaluate.paper_protocol(model, state.variables(), test_split, config.eval, key,
                                       mesh=mesh, progress=progress)
  result = {"config": config.to_dict(), "versions": versions(), "device_count": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "command": command,
            "training": {"steps": int(state.step), "seconds": seconds},
            "evaluation": {k: v for k, v in evaluation.items() if k != "correct"}}
  io.write_json(os.path.join(workdir, "results.json"), result)
  io.atomic_write_text(os.path.join(workdir, "report.md"),
                       report.markdown_report({config.method: result}, command))
  return result


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
        allow_config_change: bool = False, command: str = "") -> str:
  """Trains and evaluates each method of ``config``; returns the comparison table.

  Each model lives in ``<workdir>/<method>/``; the comparison goes to
  ``<workdir>/report.md`` and ``<workdir>/results.json``.
  """
  splits = prepare(config, workdir, allow_config_change=allow_config_change)
  mesh = train.make_mesh()
  results = {m: train_and_evaluate(method_config(config, m), os.path.join(workdir, m), splits,
                                   mesh=mesh, progress=progress, command=command)
             for m in methods_of(config)}
  io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  io.write_json(os.path.join(workdir, "results.json"), results)
  text = report.markdown_report(results, command)
  io.atomic_write_text(os.path.join(workdir, "report.md"), text)
  return text
