"""§4.1's black-box setting between saved models: the one measurement that needs several models at once.

Each model is attacked with the paper protocol's FGSM and PGD-n examples
crafted on every other model (:func:`crp_jax.runner.evaluators.transfer`,
keyed by the first model's eval key, on its attacked subset). The result
file holds every (source, target) accuracy, not only the averages a table
shows, and is written atomically; an existing file for the same models
and settings is read, not measured again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from crp_jax import data
from crp_jax.runner import atomic, distributed, evaluators, meshes, pipeline, provenance
from crp_jax.runner.evaluators.paper import PaperProtocol


def settings(models: dict[str, str], sources: tuple[str, ...] | None = None) -> dict[str, Any]:
  """What the file's numbers depend on: the model folders (in order; the first keys the attacks), the
  sources, and the attacks, subset and batch size of the first model's eval config."""
  cfg = pipeline.load_config(next(iter(models.values()))).eval
  return {"models": dict(models), "sources": list(models if sources is None else sources),
          "attacks": [dataclasses.asdict(s) for s in PaperProtocol(cfg).transfer_specs],
          "attack_subset": cfg.attack_subset, "batch_size": cfg.batch_size}


def measure(models: dict[str, str], out_path: str, *, sources: tuple[str, ...] | None = None,
            progress: bool = True, command: str = "") -> dict[str, Any]:
  """The black-box accuracies among ``models`` (name -> model folder), written to ``out_path``.

  Examples are crafted on every model, or on those named in ``sources``
  (Table 8: a standard and an adversarially trained model), and evaluated
  on every other model.

  Returns ``{"accuracy": {target: {attack: {source: accuracy}}}, "mean": {target: {attack: mean over
  sources}}, "labels", "num_examples", "settings", ...provenance}``; with an existing file of the same
  :func:`settings`, that file's record.
  """
  wanted = settings(models, sources)
  if os.path.isfile(out_path):
    saved = atomic.read_json(out_path)
    if saved.get("settings") == json.loads(json.dumps(wanted)):
      return saved
  distributed.agree("black-box models", [wanted])
  entries = {name: pipeline.load_trained(d) for name, d in models.items()}
  first = next(iter(entries.values())).config
  test = data.load_split(first.dataset, "test", data_dir=first.tfds_data_dir or None)
  plan = (PaperProtocol(first.eval),)
  crossed = evaluators.transfer(plan, {n: pipeline.as_model(t) for n, t in entries.items()}, test,
                                mesh=meshes.make_mesh(), progress=progress, sources=sources)
  accuracy = {t: {spec.name: {src: float(v.mean()) for src, v in by_source.items()}
                  for spec, by_source in by_spec.items() if by_source} for t, by_spec in crossed.items()}
  record = {"settings": wanted, "accuracy": accuracy,
            "mean": {t: {a: float(np.mean(list(v.values()))) for a, v in by_attack.items()}
                     for t, by_attack in accuracy.items()},
            "labels": {s.name: s.label for s in plan[0].transfer_specs},
            "num_examples": int(min(first.eval.attack_subset or test.num_examples, test.num_examples)),
            **provenance.stamp(command)}
  atomic.write_json(out_path, record)
  distributed.sync("crp_jax-black-box-written")
  return atomic.read_json(out_path)
