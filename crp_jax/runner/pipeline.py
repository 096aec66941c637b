"""The end-to-end run: validate, load, train (or resume), evaluate, report.

Data flows one way: config -> data -> train -> evaluate -> report. Every
check that can fail on user input runs before the first file is written.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from crp_jax import attacks, data
from crp_jax.runner import (atomic, checkpoint, config as config_lib, distributed, evaluators, meshes, provenance,
                            report, seeds, train)
from crp_jax.models import get_model


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """``config`` for one model of a comparison: ``method`` set, no comparison."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.method, c.compare_with = method, ""
  return c


def methods_of(config: ml_collections.ConfigDict) -> list[str]:
  """The models of a run: ``compare_with``'s methods, then ``method``."""
  return [*config_lib.compared_methods(config), config.method]


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            allow_config_change: bool = False) -> tuple[data.Split, data.Split]:
  """All checks on user input, then the data. Writes nothing."""
  config_lib.validate(config)
  for method in methods_of(config):
    checkpoint.check_config(os.path.join(workdir, method), method_config(config, method),
                            allow_config_change=allow_config_change)
  data_dir = config.tfds_data_dir or None
  train_split = data.load_split(config.dataset, "train", data_dir=data_dir)
  config_lib.check_sizes(config, train_split.num_examples)
  return train_split, data.load_split(config.dataset, "test", data_dir=data_dir)


class Trained(NamedTuple):
  """A trained model: its config, module and eval-mode variables."""
  config: ml_collections.ConfigDict
  model: Any
  variables: Any


def model_for(config: ml_collections.ConfigDict, num_classes: int):
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  return get_model(config.model, num_classes, dtype=dtype)


def train_one(config: ml_collections.ConfigDict, workdir: str, train_split: data.Split, *,
              mesh: jax.sharding.Mesh, progress: bool = True) -> tuple[Trained, dict[str, Any]]:
  """Trains one model per ``config`` in ``workdir``, resuming if it holds a checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  atomic.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  model = model_for(config, train_split.num_classes)
  start = time.perf_counter()
  state = train.fit(config, workdir, model, train_split, mesh, progress=progress)
  info = {"steps": int(state.step), "seconds": time.perf_counter() - start, "devices": int(mesh.devices.size)}
  return Trained(config, model, state.variables()), info


#: The folder in a model's workdir where its evaluation keeps each batch's results until it is written.
EVAL_STATE_DIR = "evaluation_state"


def as_model(trained: Trained, workdir: str | None = None) -> evaluators.Model:
  """``trained`` as the evaluation plan takes it: module, variables, eval config, the run's eval key, and
  where its evaluation keeps its progress (``<workdir>/evaluation_state``)."""
  return evaluators.Model(trained.model, trained.variables, trained.config.eval,
                          seeds.run_keys(trained.config.seed)["eval"],
                          None if workdir is None else os.path.join(workdir, EVAL_STATE_DIR))


def evaluate_all(entries: dict[str, Trained], test: data.Split, *, mesh: jax.sharding.Mesh,
                 progress: bool = True, only: tuple[str, ...] | None = None,
                 workdirs: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
  """Each model's ``evaluation`` record: its config's evaluation plan (``only``: those evaluators), transfer
  between the models. With ``workdirs`` (model name -> its folder) an evaluation killed midway resumes
  from the batches it had finished; :func:`drop_eval_state` removes them once the outputs are written."""
  models = {n: as_model(t, (workdirs or {}).get(n)) for n, t in entries.items()}
  return evaluators.evaluate_models(models, test, mesh=mesh, progress=progress, only=only)


def drop_eval_state(workdirs: dict[str, str]) -> None:
  """Removes the models' evaluation progress (:data:`EVAL_STATE_DIR`): their outputs are written."""
  if distributed.is_writer():
    for d in workdirs.values():
      shutil.rmtree(os.path.join(d, EVAL_STATE_DIR), ignore_errors=True)


def result_record(trained: Trained, training: dict[str, Any], evaluation: dict[str, Any],
                  command: str) -> dict[str, Any]:
  return {"config": trained.config.to_dict(), **provenance.stamp(command), "training": training,
          "evaluation": evaluation}


def robustbench_entries(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Model name -> its RobustBench-shaped entry, for the models whose strong protocol ran AutoAttack."""
  out = {}
  for name, r in results.items():
    auto = (r["evaluation"].get("strong") or {}).get("autoattack")
    if not auto:
      continue
    c, strong = r["config"], r["evaluation"]["strong"]
    out[name] = attacks.robustbench_entry(
        clean_accuracy=r["evaluation"]["paper"]["clean_accuracy"], robust_accuracy=auto["robust_accuracy"],
        eps=c["eval"]["eps"], norm="linf", version=auto["version"], attacks=auto["attacks"],
        n_examples=r["evaluation"]["paper"]["num_attacked"],
        checks_failed=[ch["name"] for ch in strong["checks"] if not ch["passed"]],
        name=name, dataset=c["dataset"], architecture=c["model"],
        footnote=f"crp_jax, method {c['method']}, seed {c['seed']}; clean accuracy on the whole test split, "
                 f"AutoAttack on {r['evaluation']['paper']['num_attacked']} test examples")
  return out


def write_robustbench(folder: str, results: dict[str, dict[str, Any]]) -> None:
  """``robustbench-<model>.json`` in ``folder`` for each model AutoAttack evaluated."""
  for name, entry in robustbench_entries(results).items():
    atomic.write_json(os.path.join(folder, f"robustbench-{name.replace(os.sep, '_')}.json"), entry)


def write_outputs(workdir: str, results: dict[str, dict[str, Any]], command: str) -> str:
  """``results.json``, ``report.md``, ``robustness.png`` and the RobustBench entries of a set of models."""
  atomic.write_json(os.path.join(workdir, "results.json"), results if len(results) > 1 else next(iter(results.values())))
  write_robustbench(workdir, results)
  text = report.markdown_report(results, command)
  atomic.atomic_write_text(os.path.join(workdir, "report.md"), text)
  report.plot_curves(results, os.path.join(workdir, "robustness.png"))
  return text


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
        allow_config_change: bool = False, command: str = "") -> str:
  """Trains and evaluates each method of ``config``; returns the report.

  Each model lives in ``<workdir>/<method>/`` with its own ``config.json``,
  ``metrics.jsonl``, ``results.json`` and ``report.md``; the side-by-side
  comparison goes to ``<workdir>/report.md`` and ``<workdir>/results.json``.
  In a multi-process run every process calls it with the same arguments
  (checked first); process 0 writes the files, and all return after they
  are written.
  """
  distributed.agree("config and workdir", [config.to_dict(), workdir, allow_config_change])
  train_split, test = prepare(config, workdir, allow_config_change=allow_config_change)
  atomic.remove_stale_temps(workdir)
  mesh, train_mesh = meshes.make_mesh(), meshes.make_train_mesh()
  entries, training = {}, {}
  for m in methods_of(config):
    entries[m], training[m] = train_one(method_config(config, m), os.path.join(workdir, m), train_split,
                                        mesh=train_mesh, progress=progress)
  dirs = {m: os.path.join(workdir, m) for m in entries}
  final = evaluate_all(entries, test, mesh=mesh, progress=progress, workdirs=dirs)
  results = {m: result_record(entries[m], training[m], final[m], command) for m in entries}
  for m in entries:
    write_outputs(os.path.join(workdir, m), {m: results[m]}, command)
  atomic.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  text = write_outputs(workdir, results, command)
  drop_eval_state(dirs)
  distributed.sync("crp_jax-run-written")
  return text


def model_dirs(workdir: str) -> dict[str, str]:
  """Model folders under ``workdir``: itself if it holds ``config.json`` and
  checkpoints, else its subfolders that do (the per-method folders of a run)."""
  def is_model(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "config.json")) and os.path.isdir(os.path.join(d, "checkpoints"))
  if is_model(workdir):
    return {os.path.basename(os.path.normpath(workdir)): workdir}
  subs = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
  found = {s: os.path.join(workdir, s) for s in subs if is_model(os.path.join(workdir, s))}
  if not found:
    raise checkpoint.CheckpointError(f"no trained model in {workdir}: expected config.json and "
                                     "checkpoints/ there or in its subfolders")
  return found


def named_model_dirs(workdirs: list[str]) -> dict[str, str]:
  """Every model folder under ``workdirs``, each under a distinct name.

  A model is named by its folder (``crp``), or by its path where two share
  a folder name (``runs/a/crp`` and ``runs/b/crp``), so no model is dropped.
  The same folder given twice is one model.
  """
  found = [os.path.normpath(d) for w in workdirs for d in model_dirs(w).values()]
  found = list(dict.fromkeys(found))
  base = [os.path.basename(d) for d in found]
  return {(b if base.count(b) == 1 else d): d for b, d in zip(base, found)}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The saved config of the model in ``workdir``, with fields added since at their defaults."""
  return ml_collections.ConfigDict(checkpoint.with_new_fields(atomic.read_json(os.path.join(workdir, "config.json"))))


def load_trained(workdir: str, eval_overrides: dict[str, Any] | None = None) -> Trained:
  """The latest checkpoint of the model in ``workdir``, with its saved config.

  ``eval_overrides`` replaces fields of ``config.eval`` (they do not affect
  the trained weights); a dict updates a nested group field by field
  (``{"certify": {"sigma": 0.25}}``).
  """
  config = load_config(workdir)
  for k, v in (eval_overrides or {}).items():
    if isinstance(v, dict):
      config.eval[k].update(v)
    else:
      config.eval[k] = v
  config_lib.validate(config)
  info = data.dataset_info(config.dataset)
  model = model_for(config, info.num_classes)
  tx = train.make_optimizer(train.TrainSpec.from_config(config), 1)
  template = train.create_state(model, tx, seeds.run_keys(config.seed)["init"], info.image_shape)
  ckpt = checkpoint.Checkpointer(workdir, config.max_checkpoints)
  state = ckpt.restore_latest(template)
  ckpt.close()
  if state is None:
    raise checkpoint.CheckpointError(f"no checkpoint in {workdir}/checkpoints")
  return Trained(config, model, state.variables())


class Saved(NamedTuple):
  """Saved models loaded for evaluation: their folders and trained models by name, and their test split."""
  dirs: dict[str, str]
  entries: dict[str, Trained]
  test: data.Split


def load_saved(workdirs: list[str], eval_overrides: dict[str, Any] | None = None) -> Saved:
  """Every model under ``workdirs`` (:func:`named_model_dirs`), with ``eval_overrides``, and their test split.

  Raises :class:`~crp_jax.runner.config.ConfigError` for models of different datasets.
  """
  dirs = named_model_dirs(workdirs)
  entries = {name: load_trained(d, eval_overrides) for name, d in dirs.items()}
  datasets = {t.config.dataset for t in entries.values()}
  if len(datasets) > 1:
    raise config_lib.ConfigError(f"models of different datasets cannot be compared: {sorted(datasets)}")
  first = next(iter(entries.values())).config
  return Saved(dirs, entries, data.load_split(first.dataset, "test", data_dir=first.tfds_data_dir or None))


def evaluate_saved(workdirs: list[str], *, eval_overrides: dict[str, Any] | None = None,
                   progress: bool = True, command: str = "") -> str:
  """Re-evaluates saved models (their evaluation plan, transfer between them) and writes
  ``evaluation.json``/``.md``/``.png`` beside the first."""
  distributed.agree("models and evaluation settings", [workdirs, eval_overrides])
  saved = load_saved(workdirs, eval_overrides)
  final = evaluate_all(saved.entries, saved.test, mesh=meshes.make_mesh(), progress=progress,
                       workdirs=saved.dirs)
  results = {n: result_record(t, {"steps": None, "seconds": 0.0, "workdir": saved.dirs[n]}, final[n], command)
             for n, t in saved.entries.items()}
  out = workdirs[0]
  atomic.write_json(os.path.join(out, "evaluation.json"), results)
  text = report.markdown_report(results, command)
  atomic.atomic_write_text(os.path.join(out, "evaluation.md"), text)
  report.plot_curves(results, os.path.join(out, "evaluation.png"))
  write_robustbench(out, results)
  drop_eval_state(saved.dirs)
  distributed.sync("crp_jax-evaluation-written")
  return text


def add_evaluations(workdir: str, config: ml_collections.ConfigDict, names: tuple[str, ...], *,
                    progress: bool = True, command: str = "") -> dict[str, Any]:
  """Runs the evaluators ``names`` of ``config``'s plan on the finished one-model run in ``workdir`` and
  adds their sections to its ``results.json`` and ``report.md``; returns the new record.

  The attacks' keys come from the run's eval key and each spec's key path,
  as in :func:`run`, so a section added later has the same bits as one
  measured with the run. The record's ``config.eval`` gains those
  evaluators' fields (:data:`~crp_jax.runner.evaluators.EVALUATORS`), and
  ``added_evaluations`` says what was added, by which code.
  """
  distributed.agree("run and evaluators to add", [workdir, config.to_dict(), list(names)])
  record = atomic.read_json(os.path.join(workdir, "results.json"))
  trained = load_trained(os.path.join(workdir, config.method), eval_overrides=config.eval.to_dict())
  test = data.load_split(config.dataset, "test", data_dir=config.tfds_data_dir or None)
  sections = evaluate_all({config.method: trained}, test, mesh=meshes.make_mesh(), progress=progress,
                          only=names)[config.method]
  record["evaluation"].update(sections)
  for name in names:
    for field in evaluators.EVALUATORS[name].fields:
      record["config"]["eval"][field] = config.eval.to_dict()[field]
  record.setdefault("added_evaluations", []).append({"evaluators": list(names), **provenance.stamp(command)})
  write_outputs(os.path.join(workdir, config.method), {config.method: record}, record["command"])
  write_outputs(workdir, {config.method: record}, record["command"])
  distributed.sync("crp_jax-evaluations-added")
  return record
