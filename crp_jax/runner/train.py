"""CRP training: a pure, data-parallel train step over the extended set (Eq. 9).

``train_step(state, batch) -> (state, metrics)`` is jitted over a 1-D
``Mesh`` named ``data``: the batch is split along it, parameters and
optimiser state are replicated, and XLA inserts the gradient all-reduce.
The method (standard, constant or variable perturbations) is one small
function, :func:`make_perturb_fn`, applied to the batch inside the step.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from crp_jax import extended_set
from crp_jax.runner import config as config_lib, atomic
from crp_jax.data import Split, to_float
from crp_jax.perturbations import make_delta, perturb

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
PerturbFn = Callable[[jax.Array, Batch, jax.Array], jax.Array]


class TrainState(struct.PyTreeNode):
  """Everything a run needs to continue: the step, parameters, BN and optimiser state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict[str, Any]:
    """The Flax variables dict for ``model.apply`` in eval mode."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def make_train_mesh() -> Mesh:
  """The mesh the pipeline trains on: all devices, except one per process on the CPU backend.

  The CPU devices of one process are slices of the same cores
  (``jax_num_cpu_devices``), and XLA:CPU already spreads one device's
  convolutions over all of them; two devices add an all-reduce and a second
  copy of the Adam update. On 2 cores a ResNet-18 crp step ran 9–11% faster
  on one device than sharded over two, LeNet's 3–7%
  (``python -m benchmarks.train_probe mesh --model=resnet18``). Attacks, with
  many steps per batch and no optimizer, stay on :func:`make_mesh`.
  """
  if jax.default_backend() != "cpu":
    return make_mesh()
  return make_mesh([jax.local_devices(process_index=p)[0] for p in range(jax.process_count())])


def run_keys(seed: int) -> dict[str, jax.Array]:
  """Independent keys of a run: init, perturbation set, dropout, evaluation.

  The init key uses the ``rbg`` generator: threefry makes XLA compile one
  hash per parameter tensor, which costs seconds on a CPU (7 s vs 1.3 s for
  LeNet). The perturbation set keeps threefry, whose ``fold_in`` gives the
  same bits for any batch or device layout.
  """
  root = jax.random.key(seed)
  keys = {name: jax.random.fold_in(root, i) for i, name in enumerate(("perturbations", "dropout", "eval"))}
  keys["init"] = jax.random.key(seed, impl="rbg")
  return keys


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Constant, cosine decay to 0, or step decay (×0.1 at 50% and 75% of training)."""
  lr = config.learning_rate
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  if config.lr_schedule == "step":
    bounds = {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1}
    return optax.piecewise_constant_schedule(lr, bounds)
  return optax.constant_schedule(lr)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Adam (MNIST, SVHN) or SGD with Nesterov momentum (CIFAR-10), with optional weight decay."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.optimizer == "adam":
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(schedule, momentum=config.momentum, nesterov=True))


def create_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                 image_shape: tuple[int, ...]) -> TrainState:
  """The initial state; jitted because eager Flax init is slow on a CPU."""

  @jax.jit
  def init(key: jax.Array) -> TrainState:
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

  return init(key)


def make_perturb_fn(config: ml_collections.ConfigDict, key: jax.Array,
                    image_shape: tuple[int, ...], steps_per_epoch: int) -> PerturbFn:
  """The training method as a function ``(x, batch, step) -> inputs``.

  * ``standard``: the clean inputs (Table 7 A);
  * ``crp``: ``x_i + δ_ij`` with constant δ (the paper's method, G);
  * ``variable``: ``x_i + δ_ij^{(epoch)}`` drawn anew each epoch (B–E).

  Pairs with draw id −1 are the clean examples of the extended set.
  """
  if config.method == "standard":
    return lambda x, batch, step: x
  clip = (0.0, 1.0) if config.clip_perturbed else None

  def perturbed(x: jax.Array, batch: Batch, step: jax.Array) -> jax.Array:
    epoch = step // steps_per_epoch if config.method == "variable" else None
    delta = make_delta(key, batch["example_id"], batch["draw_id"], image_shape,
                       eps=config.perturbation_eps, distribution=config.distribution, epoch=epoch)
    return perturb(x, delta, clip=clip)

  return perturbed


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, perturb_fn: PerturbFn,
                    dropout_key: jax.Array) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure step: cross-entropy on one batch of the extended set."""

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    x = perturb_fn(to_float(batch["image"]), batch, state.step)
    rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                    train=True, mutable=["batch_stats"], rngs=rngs)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((new_state.params, batch_stats))
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "grad_norm": grad_norm, "nonfinite": (~finite).astype(jnp.int32)}
    return new_state, metrics

  return train_step


def all_finite(tree: Any) -> jax.Array:
  """Whether every element of every floating-point leaf of ``tree`` is finite."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """``train_step`` jitted over ``mesh``: batch on ``data``, state replicated and donated."""
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(train_step, in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                 donate_argnums=0)


def host_batches(split: Split, config: ml_collections.ConfigDict, num_examples: int,
                 start_step: int, total_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Host batches of the extended set: uint8 images and indices, never δ.

  The per-step host work is one gather of ``batch_size`` images, whatever K.
  """
  num_perturbed, include_clean = extended_set.layout(config.method, config.num_perturbations,
                                                     config.include_clean)
  pairs = extended_set.iterate_pairs(config.seed, num_examples, num_perturbed, include_clean,
                                     config.batch_size, start_step, total_steps)
  for step, pair in pairs:
    i = pair.example_index
    yield step, {"image": split.images[i], "label": split.labels[i],
                 "example_id": split.ids[i], "draw_id": pair.draw_id}


def to_device(batches: Iterator[tuple[int, dict[str, np.ndarray]]], mesh: Mesh,
              prefetch: int = 2) -> Iterator[tuple[int, Batch]]:
  """Puts host batches on the mesh ``prefetch`` steps ahead, so copies overlap compute.

  Each process contributes its own slice of the global batch
  (``make_array_from_process_local_data``), which is what multi-host needs.
  """
  sharding = NamedSharding(mesh, P("data"))
  queue: list[tuple[int, Batch]] = []

  def put(step: int, batch: dict[str, np.ndarray]) -> tuple[int, Batch]:
    local = {k: _process_slice(v) for k, v in batch.items()}
    return step, {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

  for item in batches:
    queue.append(put(*item))
    if len(queue) > prefetch:
      yield queue.pop(0)
  yield from queue


def _process_slice(array: np.ndarray) -> np.ndarray:
  per = array.shape[0] // jax.process_count()
  return array[jax.process_index() * per:(jax.process_index() + 1) * per]


def num_train_steps(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
  """``(steps per epoch, total steps)`` of a run over the extended set."""
  num_perturbed, include_clean = extended_set.layout(config.method, config.num_perturbations,
                                                     config.include_clean)
  spe = extended_set.steps_per_epoch(num_examples * (num_perturbed + int(include_clean)), config.batch_size)
  return spe, spe * config.epochs


def summarize_metrics(metrics: list[Metrics]) -> dict[str, float]:
  """Means of summed device metrics, fetched once per log interval."""
  fetched = jax.device_get(metrics)
  out = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "nonfinite"}
  out["nonfinite_steps"] = int(sum(int(m["nonfinite"]) for m in fetched))
  return out



class DivergenceError(RuntimeError):
  """The loss or the gradients became NaN or inf."""


def fit(config: ml_collections.ConfigDict, workdir: str, model: nn.Module, split: Split, mesh: Mesh,
        *, progress: bool = True, stop_at: int | None = None) -> TrainState:
  """Trains ``model`` on ``split`` per ``config``, resuming from ``workdir`` when it holds a checkpoint.

  Metrics are fetched only every ``log_every_steps`` (and before each
  checkpoint, so a diverged state is never saved). ``stop_at`` ends the
  run early at that step, with a checkpoint, as a preemption would.
  Returns the final state.
  """
  from crp_jax.runner.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  keys = run_keys(config.seed)
  num_examples = min(config.train_subset or split.num_examples, split.num_examples)
  config_lib.check_sizes(config, split.num_examples)
  spe, total = num_train_steps(config, num_examples)
  tx = make_optimizer(config, total)
  end = total if stop_at is None else min(stop_at, total)
  atomic.remove_stale_temps(workdir)
  ckpt = Checkpointer(workdir, config.max_checkpoints)
  state = create_state(model, tx, keys["init"], split.image_shape)
  state = ckpt.restore_latest(state) or state
  start = int(state.step)
  _truncate_metrics(workdir, start)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  perturb_fn = make_perturb_fn(config, keys["perturbations"], split.image_shape, spe)
  step_fn = jit_train_step(make_train_step(model, tx, perturb_fn, keys["dropout"]), mesh)
  logger = _Logger(workdir, spe, ckpt)
  bar = tqdm(total=total, initial=start, disable=not progress, desc=f"train {config.method}",
             unit="step", dynamic_ncols=True)
  for step, batch in to_device(host_batches(split, config, num_examples, start, end), mesh):
    state, metrics = step_fn(state, batch)
    logger.pending.append(metrics)
    done = step + 1
    saving = done % config.checkpoint_every_steps == 0 or done == end
    if saving or done % config.log_every_steps == 0:
      bar.set_postfix(logger.log(done))
    if saving:
      ckpt.save(done, state)
    bar.update(1)
  bar.close()
  ckpt.close()
  return state


class _Logger:
  """Fetches the pending device metrics, checks them and appends to ``metrics.jsonl``."""

  def __init__(self, workdir: str, steps_per_epoch: int, ckpt: Any):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.spe, self.ckpt = steps_per_epoch, ckpt
    self.pending: list[Metrics] = []
    self.clock = time.perf_counter()

  def log(self, step: int) -> dict[str, str]:
    summary = summarize_metrics(self.pending)
    now = time.perf_counter()
    summary["steps_per_sec"] = len(self.pending) / max(now - self.clock, 1e-9)
    self.pending, self.clock = [], now
    if summary["nonfinite_steps"]:
      last = self.ckpt.steps()
      raise DivergenceError(
          f"training diverged: loss={summary['loss']} grad_norm={summary['grad_norm']} in the "
          f"{summary['nonfinite_steps']} step(s) before step {step}; the last good checkpoint "
          f"({'step ' + str(last[-1]) if last else 'none'}) is kept in {self.ckpt.directory}; "
          "rerun in a new --workdir with a lower config.learning_rate")
    atomic.append_jsonl(self.path, {"step": step, "epoch": step / self.spe, **summary})
    return {"loss": f"{summary['loss']:.4f}", "acc": f"{summary['accuracy']:.3f}"}


def _truncate_metrics(workdir: str, step: int) -> None:
  """Drops metric lines past ``step``: a resumed run logs those steps again."""
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    lines = [l for l in open(path).read().splitlines() if l and json.loads(l)["step"] <= step]
    atomic.atomic_write_text(path, "".join(l + "\n" for l in lines))
