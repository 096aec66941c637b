"""CRP training: a pure, data-parallel train step over the extended set (Eq. 9) or the ball loss (Eq. 8).

``train_step(state, batch) -> (state, metrics)`` is jitted over a 1-D
``Mesh`` named ``data``: the batch is split along it, parameters and
optimiser state are replicated, and XLA inserts the gradient all-reduce.
The method (standard, constant or variable perturbations) and the
objective are one small function, :func:`make_objective`, built on the
library's own :func:`~crp_jax.losses.pair_loss` and
:func:`~crp_jax.losses.ball_loss`. Only :func:`fit` reads the run's
ConfigDict; everything else takes a :class:`TrainSpec`.
"""

from __future__ import annotations

import dataclasses
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

from crp_jax import adversarial, cpu, extended_set, losses
from crp_jax.runner import config as config_lib, atomic, distributed, seeds
from crp_jax.data import Split, to_float

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
#: ``point_loss(x, y) -> ((rows,) losses, aux)``: the model's cross-entropy and what the step keeps.
PointLoss = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]
#: ``objective(point_loss, x, batch, step, attack_logits) -> ((batch,) losses, aux)``; ``attack_logits``
#: is the model in eval mode at the step's parameters, for adversarial training's inner attack.
Objective = Callable[[PointLoss, jax.Array, Batch, jax.Array, Callable[[jax.Array], jax.Array]],
                     tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class AdversarySpec:
  """The inner attack of ``pgd_at`` and ``trades`` (``config.adversary``): L∞ radius, PGD steps and step, TRADES β.

  ``eps_warmup_epochs``: over the first that many epochs ε and the step grow
  linearly from 0 to their values (0: the full radius from the first step).
  """
  eps: float = 0.3
  steps: int = 40
  step_size: float = 0.01
  beta: float = 6.0
  eps_warmup_epochs: float = 0.0

  def scale(self, step: jax.Array, steps_per_epoch: int) -> jax.Array | float:
    r"""The warm-up factor of training step ``step``: :math:`\min(1, t / (w \cdot \text{steps per epoch}))`."""
    if self.eps_warmup_epochs == 0:
      return 1.0
    return jnp.minimum(1.0, step.astype(jnp.float32) / (self.eps_warmup_epochs * steps_per_epoch))


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """What a training run computes: the method, its objective and the optimiser (the config's training fields).

  ``objective`` picks how the K constant draws enter the loss:
  ``"extended_set"`` samples batches of ``(i, j)`` pairs from the shuffled
  extended set of Eq. 9 (``M·(K + clean)`` pairs an epoch, each row one
  perturbed copy); ``"ball_loss"`` samples batches of examples and takes
  :func:`~crp_jax.losses.ball_loss` of each (Eq. 8: all K draws of a row,
  and the clean copy, in one step). Both see every pair once an epoch with
  the same δ; their full-epoch mean losses agree (``tests/test_losses.py``).
  """
  method: str = "crp"
  objective: str = "extended_set"
  num_perturbations: int = 10
  include_clean: bool = True
  distribution: str = "uniform"
  perturbation_eps: float = 0.3
  clip_perturbed: bool = True
  seed: int = 0
  epochs: int = 1
  batch_size: int = 128
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  momentum: float = 0.9
  weight_decay: float = 0.0
  adversary: AdversarySpec = AdversarySpec()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "TrainSpec":
    """The training fields of a run config."""
    fields = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name != "adversary"}
    return cls(**fields, adversary=AdversarySpec(**config.adversary.to_dict()))

  def layout(self) -> tuple[int, bool]:
    """``(perturbed draws, clean included)`` of the host's pairs (:func:`extended_set.layout`)."""
    return extended_set.layout(self.method, self.num_perturbations, self.include_clean, self.objective)


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


def learning_rate_schedule(spec: TrainSpec, total_steps: int) -> optax.Schedule:
  """Constant, cosine decay to 0, or step decay (×0.1 at 50% and 75% of training)."""
  lr = spec.learning_rate
  if spec.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  if spec.lr_schedule == "step":
    bounds = {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1}
    return optax.piecewise_constant_schedule(lr, bounds)
  return optax.constant_schedule(lr)


def make_optimizer(spec: TrainSpec, total_steps: int) -> optax.GradientTransformation:
  """Adam (MNIST, SVHN) or SGD with Nesterov momentum (CIFAR-10), with optional weight decay."""
  schedule = learning_rate_schedule(spec, total_steps)
  if spec.optimizer == "adam":
    return optax.adamw(schedule, weight_decay=spec.weight_decay)
  return optax.chain(optax.add_decayed_weights(spec.weight_decay),
                     optax.sgd(schedule, momentum=spec.momentum, nesterov=True))


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


def make_objective(spec: TrainSpec, key: jax.Array, steps_per_epoch: int,
                   adversary_key: jax.Array | None = None) -> Objective:
  """The training method as ``objective(point_loss, x, batch, step, attack_logits) -> ((batch,) losses, aux)``.

  * ``standard``: the point loss of the clean inputs (Table 7 A);
  * ``crp``: constant δ_ij (the paper's method, G); ``variable``: δ_ij drawn
    anew each epoch (B–E), by folding in ``step // steps_per_epoch``;
  * ``pgd_at``, ``trades``: adversarial training (:func:`adversarial_objective`),
    with the attack keyed by ``fold_in(adversary_key, step)``.

  With ``spec.objective == "extended_set"`` each row is one pair
  ``(batch["example_id"], batch["draw_id"])`` and its loss is
  :func:`~crp_jax.losses.pair_loss` (draw −1 is the clean example); with
  ``"ball_loss"`` each row is an example and its loss is
  :func:`~crp_jax.losses.ball_loss` over its K draws (and the clean copy
  with ``include_clean``). δ takes the shape of the batch's rows.
  """
  if spec.method == "standard":
    return lambda point_loss, x, batch, step, attack_logits: point_loss(x, batch["label"])
  if spec.method in config_lib.ADVERSARIAL_METHODS:
    if adversary_key is None:
      raise ValueError(f"method {spec.method!r} needs an adversary_key")
    return adversarial_objective(spec, adversary_key, steps_per_epoch)
  common = dict(key=key, eps=spec.perturbation_eps, distribution=spec.distribution,
                clip=(0.0, 1.0) if spec.clip_perturbed else None)

  def objective(point_loss: PointLoss, x: jax.Array, batch: Batch, step: jax.Array, attack_logits):
    del attack_logits
    epoch = step // steps_per_epoch if spec.method == "variable" else None
    if spec.objective == "ball_loss":
      return losses.ball_loss(point_loss, x, batch["label"], example_ids=batch["example_id"],
                              num_perturbations=spec.num_perturbations,
                              include_clean=spec.include_clean, epoch=epoch, has_aux=True, **common)
    return losses.pair_loss(point_loss, x, batch["label"], example_ids=batch["example_id"],
                            draw_ids=batch["draw_id"], epoch=epoch, **common)

  return objective


def adversarial_objective(spec: TrainSpec, key: jax.Array, steps_per_epoch: int | None = None) -> Objective:
  """PGD-AT (the point loss at Madry's PGD-k point) or TRADES (clean loss + β·KL to TRADES' point).

  The inner attack runs on ``attack_logits``, the model in eval mode at
  the step's parameters, and its points carry no gradient; the loss runs
  in training mode (:mod:`crp_jax.adversarial` says why). With PGD-AT the
  step's accuracy metric is on the adversarial points. TRADES keeps the
  BatchNorm statistics of the clean pass. ``adversary.eps = 0`` (PGD-AT)
  or ``adversary.beta = 0`` (TRADES) trains exactly as ``standard`` does.
  With ``adversary.eps_warmup_epochs`` the radius and step of step ``t``
  are scaled by :meth:`AdversarySpec.scale` (``steps_per_epoch``, required
  then, sets its length).
  """
  adv = spec.adversary
  if adv.eps_warmup_epochs and not steps_per_epoch:
    raise ValueError("steps_per_epoch: required (a positive integer) with adversary.eps_warmup_epochs > 0")

  def objective(point_loss: PointLoss, x: jax.Array, batch: Batch, step: jax.Array, attack_logits):
    y, step_key = batch["label"], jax.random.fold_in(key, step)
    scale = adv.scale(step, steps_per_epoch)
    budget = dict(eps=adv.eps * scale, step_size=adv.step_size * scale, num_steps=adv.steps)
    if spec.method == "pgd_at":
      return point_loss(adversarial.pgd_at_inputs(attack_logits, x, y, key=step_key, **budget), y)
    x_adv = adversarial.trades_inputs(attack_logits, x, key=step_key, **budget)
    _, (logits, labels, batch_stats) = point_loss(x, y)
    _, (logits_adv, _, _) = point_loss(x_adv, y)
    return adversarial.trades_loss(logits, logits_adv, y, beta=adv.beta), (logits, labels, batch_stats)

  return objective


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, objective: Objective,
                    dropout_key: jax.Array) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure step: the mean of ``objective``'s cross-entropies over one batch."""

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}
    attack_logits = lambda x: model.apply(state.variables(), x, train=False)

    def loss_fn(params):
      def point_loss(x, y):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                      train=True, mutable=["batch_stats"], rngs=rngs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return ce, (logits, y, updates.get("batch_stats", {}))

      per_row, aux = objective(point_loss, to_float(batch["image"]), batch, state.step, attack_logits)
      return per_row.mean(), aux

    (loss, (logits, labels, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((new_state.params, batch_stats))
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
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


def host_batches(split: Split, spec: TrainSpec, num_examples: int,
                 start_step: int, total_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Host batches of the extended set: uint8 images and indices, never δ.

  The per-step host work is one gather of ``batch_size`` images, whatever K.
  """
  num_perturbed, include_clean = spec.layout()
  pairs = extended_set.iterate_pairs(spec.seed, num_examples, num_perturbed, include_clean,
                                     spec.batch_size, start_step, total_steps)
  for step, pair in pairs:
    i = pair.example_index
    yield step, {"image": split.images[i], "label": split.labels[i],
                 "example_id": split.ids[i], "draw_id": pair.draw_id}


def to_device(batches: Iterator[tuple[int, dict[str, np.ndarray]]], mesh: Mesh,
              prefetch: int = 2) -> Iterator[tuple[int, Batch]]:
  """Puts host batches on the mesh ``prefetch`` steps ahead, so copies overlap compute.

  Every process builds the same host batch and contributes its own slice
  of it (:func:`~crp_jax.runner.distributed.global_batch`), so the global
  batch is the same for any process count.
  """
  sharding = NamedSharding(mesh, P("data"))
  queue: list[tuple[int, Batch]] = []

  def put(step: int, batch: dict[str, np.ndarray]) -> tuple[int, Batch]:
    return step, {k: distributed.global_batch(sharding, v) for k, v in batch.items()}

  for item in batches:
    queue.append(put(*item))
    if len(queue) > prefetch:
      yield queue.pop(0)
  yield from queue


def num_train_steps(spec: TrainSpec, num_examples: int) -> tuple[int, int]:
  """``(steps per epoch, total steps)`` of a run over the extended set."""
  num_perturbed, include_clean = spec.layout()
  spe = extended_set.steps_per_epoch(num_examples * (num_perturbed + int(include_clean)), spec.batch_size)
  return spe, spe * spec.epochs


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
  ``config`` is one that :func:`crp_jax.runner.pipeline.prepare` accepted
  (its checks, batch size against the epoch included, run there, before
  anything is written). Returns the final state.
  """
  from crp_jax.runner.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  spec = TrainSpec.from_config(config)
  keys = seeds.run_keys(spec.seed)
  num_examples = min(config.train_subset or split.num_examples, split.num_examples)
  spe, total = num_train_steps(spec, num_examples)
  tx = make_optimizer(spec, total)
  end = total if stop_at is None else min(stop_at, total)
  atomic.remove_stale_temps(workdir)
  ckpt = Checkpointer(workdir, config.max_checkpoints)
  state = create_state(model, tx, keys["init"], split.image_shape)
  state = ckpt.restore_latest(state) or state
  start = int(state.step)
  _truncate_metrics(workdir, start)
  state = distributed.replicate(state, mesh)
  objective = make_objective(spec, keys["perturbations"], spe, keys["adversary"])
  step_fn = jit_train_step(make_train_step(model, tx, objective, keys["dropout"]), mesh)
  logger = _Logger(workdir, spe, ckpt)
  bar = tqdm(total=total, initial=start, disable=not progress, desc=f"train {config.method}",
             unit="step", dynamic_ncols=True)
  compiled = None
  for step, batch in to_device(host_batches(split, spec, num_examples, start, end), mesh):
    if compiled is None:   # the CPU's heap option, where it applies (crp_jax.cpu.heap_split_options)
      compiled = cpu.compile_for_cpu(step_fn, state, batch)
    state, metrics = compiled(state, batch)
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
