r"""crp_jax against a PyTorch reference on this machine: ``python -m benchmarks.run``.

  python -m benchmarks.run                              # every row; writes benchmarks/results.md
  python -m benchmarks.run --rows=lenet,attacks --repeats=9
  python -m benchmarks.run --plain --devices=1          # no process tuning, one device
  python -m benchmarks.run --tiny --notorch --out=/tmp/r.md    # smoke size (the test)

Rows (each contender on the same architecture, batch and dtype, timed
alternately A B A B … in this one process, medians of ``--repeats`` after a
warm-up round):

0. ``plain``: the plain-process table (:mod:`benchmarks.plain`): a user's
   ``ball_loss`` step in their own jitted loop, FGSM, PGD-40, APGD-CE-100 and
   the CLI's step, in a fresh interpreter started from the environment this
   command was given, before anything below changes it. CPU only.
1. ``lenet``: LeNet train step on 28x28x1, batch 128: crp_jax's ``crp`` step
   (δ drawn inside the step, Adam) vs a PyTorch eager step (same LeNet, Adam)
   on the same images with δ precomputed on the host.
2. ``resnet18``: the same for ResNet-18 on 32x32x3, batch 128.
3. ``attacks``: FGSM, PGD-40 and APGD-CE-100 on LeNet, batch 256, vs
   torchattacks on the same weights (Flax weights copied into torch). The
   labels are the model's own predictions, so every example is attacked by
   both (torchattacks' APGD skips those already misclassified).
4. ``perturbation``: the LeNet step with ``crp`` vs with ``standard``.
4b. ``pgd_at``: a PGD-AT train step on LeNet, batch 128, PGD-10 inside
   (crp_jax's ``pgd_at`` method, the attack a ``lax`` loop in the jitted
   step) vs a PyTorch step with ``torchattacks.PGD`` inside the same loop,
   on the same initial weights and clean images.
4c. ``certify``: randomized smoothing's Monte Carlo counts
   (:func:`crp_jax.certify.sample_counts`, sharded over the attack mesh) vs
   the loop of Cohen et al.'s reference code in torch, on the same LeNet
   weights, in noisy forward passes per second (target ≥ 1.5×).
5. ``memory``: peak RSS of ``python -m experiments.run`` with K=1 and K=100
   (subprocesses), against the size of a stored K·M float32 set.
6. ``compile``: compile time of each jitted function above.
7. ``wrn``: WRN-28-10 ``crp`` train step in bf16, batch 128: images/s and
   MFU (:mod:`benchmarks._flops`), against the card's datasheet peak and a
   measured bf16 matmul. No reference column; by default on accelerators only.

On a GPU (``python -m benchmarks.run --plain --out=benchmarks/results-gpu.md``)
the default rows are all but ``memory`` (a host-RSS measure), plus ``wrn``;
the reference runs on ``cuda``, synchronised before each timer stops, and
each repeat runs more steps (:func:`sizes`).

crp_jax runs as ``python -m experiments.run`` does: one XLA CPU device per
core (:func:`crp_jax.runner.process.setup_devices`, as the command line),
attack batches sharded over a ``data`` mesh of all of them, train steps
(:func:`crp_jax.runner.train.jit_train_step`) on
:func:`crp_jax.runner.meshes.make_train_mesh` (one device per process on a CPU).
Unless ``--plain``, the process re-executes itself once with the settings of
:mod:`benchmarks._env` (huge pages for glibc's large blocks, Eigen
convolutions); both contenders run under them. PyTorch and torchattacks come
from the optional ``.[bench]`` extra; without them the reference columns say
so and the crp_jax columns are still measured.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import _env, _flops, _timing
from crp_jax import attacks, cpu
from crp_jax.runner import train, meshes, seeds
from crp_jax.models import LeNet, ResNet18, WideResNet, init_variables
from crp_jax.perturbations import make_delta

ROWS = ("plain", "lenet", "resnet18", "attacks", "autoattack", "certify", "perturbation", "pgd_at", "memory",
        "compile", "wrn")
BEGIN = "<!-- benchmarks.run: begin (generated; edit outside these markers) -->"
END = "<!-- benchmarks.run: end -->"
NO_TORCH = "not measured: torch not installed"
FAILED = "FAILED"
NO_GPU = "not measured in a CPU run: see `benchmarks/results-gpu.md`"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md")
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Sizes:
  """Workload sizes; :func:`sizes` gives the real ones and the smoke-test ones."""
  train_batch: int = 128
  lenet_steps: int = 10          # steps per timed repeat
  resnet_steps: int = 1
  resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
  attack_batch: int = 256
  pgd_steps: int = 40
  apgd_steps: int = 100
  pgd_at_steps: int = 2          # PGD-AT train steps per timed repeat
  pgd_at_inner: int = 10         # PGD steps inside each
  aa_examples: int = 100         # AutoAttack standard: examples per repeat
  aa_steps: int = 10             # APGD-CE, APGD-T and FAB-T steps (AutoAttack: 100)
  aa_targets: int = 9
  aa_queries: int = 100          # Square (AutoAttack: 5000)
  memory_ks: tuple[int, int] = (1, 100)
  memory_subset: int = 64
  wrn_depth: int = 28
  wrn_width: int = 10
  wrn_steps: int = 5
  certify_rows_per_device: int = 1
  certify_samples: int = 10_000   # noisy copies per example
  certify_batch: int = 1000       # copies per forward per example
  tiny: bool = False


def sizes(tiny: bool, accelerator: bool = False) -> Sizes:
  """Real sizes; on an accelerator more steps per repeat (a GPU step takes milliseconds)."""
  if tiny:
    return Sizes(train_batch=8, lenet_steps=1, resnet_steps=1, resnet_widths=(4, 8, 8, 8),
                 attack_batch=8, pgd_steps=2, apgd_steps=2, pgd_at_steps=1, pgd_at_inner=2,
                 aa_examples=8, aa_steps=2, aa_targets=2, aa_queries=4,
                 memory_ks=(1, 3), memory_subset=16,
                 wrn_depth=10, wrn_width=1, wrn_steps=1, certify_samples=64, certify_batch=32, tiny=True)
  if accelerator:
    return Sizes(lenet_steps=500, resnet_steps=50, wrn_steps=20, pgd_at_steps=50, aa_steps=100, aa_queries=5000)
  return Sizes()


def on_accelerator() -> bool:
  return jax.default_backend() != "cpu"


def default_rows() -> list[str]:
  """Every row but ``wrn`` on a CPU; every row but ``memory`` and ``plain`` (CPU only) on an accelerator."""
  return [r for r in ROWS if r not in (("memory", "plain") if on_accelerator() else ("wrn",))]


def plain_wanted(rows: str) -> bool:
  """Whether ``--rows`` asks for the plain table, without starting JAX (by default: no accelerator plugin)."""
  return "plain" in rows.split(",") if rows else not cpu.accelerator_plugin()


@dataclasses.dataclass
class Row:
  """One line of the table. ``ours``/``ref`` are display strings; ``ratio`` ours/ref."""
  name: str
  workload: str
  ours: str
  ref: str
  ratio: str = ""
  target: str = ""
  status: str = ""


# ----------------------------------------------------------------------------- torch


def load_torch(enabled: bool, threads: int | None = os.cpu_count() or 1) -> Any | None:
  """The reference module, or ``None`` when torch is missing or ``--notorch``; ``threads=None``: torch's default."""
  if not enabled:
    return None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if threads is not None:
    torch.set_num_threads(threads)
  from reference import torch_models  # pylint: disable=g-import-not-at-top
  return torch_models


def torch_device() -> str:
  """``cuda`` when crp_jax runs on a GPU and torch sees one, else ``cpu``: both on the same hardware."""
  import torch  # pylint: disable=g-import-not-at-top
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_sync() -> None:
  """Waits for torch's queued GPU work (a no-op on the CPU), so a timer sees all of it."""
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def has_torchattacks() -> bool:
  try:
    import torchattacks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


# ----------------------------------------------------------------------------- formatting


def rate(seconds: list[float], items: int) -> float:
  """Items per second at the median time."""
  return items / _timing.median(seconds)


def fmt_rate(seconds: list[float], items: int, unit: str = "img/s") -> str:
  return f"{rate(seconds, items):,.1f} {unit} (±{100 * _timing.spread(seconds) / 2:.0f}%)"


def ratio_row(name: str, workload: str, times: dict[str, list[float]], items: int, *,
              floor: float = 1.0, goal: float = 1.5, ref_missing: str = NO_TORCH) -> Row:
  ours = fmt_rate(times["ours"], items)
  if "ref" not in times:
    return Row(name, workload, ours, ref_missing, "–", f"≥{floor:.1f}× (goal {goal:.1f}×)", "not measured")
  r = rate(times["ours"], items) / rate(times["ref"], items)
  status = "goal met" if r >= goal else "floor met" if r >= floor else "NOT MET"
  return Row(name, workload, ours, fmt_rate(times["ref"], items), f"{r:.2f}×",
             f"≥{floor:.1f}× (goal {goal:.1f}×)", status)


# ----------------------------------------------------------------------------- crp_jax train step


@dataclasses.dataclass
class Data:
  """A few host batches of the extended set (uint8 images, ids, draw ids) and their δ."""
  image: np.ndarray     # (n, B, *shape) uint8
  label: np.ndarray     # (n, B) int32
  example_id: np.ndarray
  draw_id: np.ndarray

  def batch(self, i: int) -> dict[str, np.ndarray]:
    return {"image": self.image[i], "label": self.label[i], "example_id": self.example_id[i],
            "draw_id": self.draw_id[i]}


def make_data(shape: tuple[int, ...], batch: int, *, num_batches: int = 4, k: int = 10, seed: int = 0) -> Data:
  rng = np.random.default_rng(seed)
  n = num_batches
  return Data(image=rng.integers(0, 256, (n, batch, *shape), dtype=np.uint8),
              label=rng.integers(0, 10, (n, batch)).astype(np.int32),
              example_id=np.arange(n * batch, dtype=np.int32).reshape(n, batch),
              draw_id=rng.integers(-1, k, (n, batch)).astype(np.int32))


class JaxTrainer:
  """crp_jax's jitted train step on a mesh, run ``steps`` times per call.

  The step is the library's (:func:`crp_jax.runner.train.make_train_step`)
  for a :class:`~crp_jax.runner.train.TrainSpec` with ``method`` and radius
  ``eps`` and every other field at its default: Adam at 1e-3, uniform δ,
  clipped, the extended-set objective.
  """

  def __init__(self, model, shape: tuple[int, ...], data: Data, mesh, *, method: str, eps: float,
               dropout_key: jax.Array | None = None, adversary: train.AdversarySpec | None = None):
    spec = train.TrainSpec(method=method, perturbation_eps=eps, adversary=adversary or train.AdversarySpec())
    tx = train.make_optimizer(spec, 1000)
    keys = seeds.run_keys(0)
    if dropout_key is not None:
      keys["dropout"] = dropout_key
    self.perturbation_key = keys["perturbations"]
    state = train.create_state(model, tx, keys["init"], shape)
    self.state = jax.device_put(state, NamedSharding(mesh, P()))
    objective = train.make_objective(spec, keys["perturbations"], 100, keys["adversary"])
    step = train.jit_train_step(train.make_train_step(model, tx, objective, keys["dropout"]), mesh)
    sharding = NamedSharding(mesh, P("data"))
    self.batches = [jax.device_put(data.batch(i), sharding) for i in range(len(data.image))]
    start = time.perf_counter()
    self.step = step
    self.compiled = cpu.compile_for_cpu(step, self.state, self.batches[0])   # as train.fit compiles it
    self.compile_s = time.perf_counter() - start
    self.metrics = None

  def run(self, steps: int) -> None:
    for i in range(steps):
      self.state, self.metrics = self.compiled(self.state, self.batches[i % len(self.batches)])
    jax.block_until_ready((self.state, self.metrics))


def torch_trainer(tr, net, data: Data, shape: tuple[int, ...], key: jax.Array, eps: float
                  ) -> Callable[[int], None]:
  """The reference step on inputs perturbed on the host beforehand (the stored extended set)."""
  import torch  # pylint: disable=g-import-not-at-top
  device = torch_device()
  xs, ys = [], []
  for i in range(len(data.image)):
    delta = np.asarray(make_delta(data.example_id[i], data.draw_id[i], shape, key=key, eps=eps))
    xs.append(tr.to_nchw(np.clip(data.image[i] / np.float32(255) + delta, 0.0, 1.0)).to(device))
    ys.append(torch.from_numpy(data.label[i].astype(np.int64)).to(device))
  step = tr.make_train_step(net.to(device))

  def run(steps: int) -> None:
    for i in range(steps):
      step(xs[i % len(xs)], ys[i % len(ys)])
    torch_sync()

  return run


def train_workload(model_name: str, s: Sizes) -> tuple[Any, tuple[int, ...], float, int, str]:
  """``(model, input shape, ε, steps per repeat, description)`` of a train-step row."""
  if model_name == "lenet":
    return (LeNet(), (28, 28, 1), 0.3, s.lenet_steps,
            f"LeNet train step, 28x28x1, batch {s.train_batch}, f32, Adam")
  if model_name == "wrn":
    return (WideResNet(depth=s.wrn_depth, width=s.wrn_width, dtype=jnp.bfloat16), (32, 32, 3), 8 / 255,
            s.wrn_steps, f"WRN-{s.wrn_depth}-{s.wrn_width} crp train step, 32x32x3, batch {s.train_batch}, "
            "bf16 compute, f32 params, Adam")
  workload = f"ResNet-18 train step, 32x32x3, batch {s.train_batch}, f32, Adam"
  if s.tiny:
    workload += f" (tiny widths {s.resnet_widths})"
  return ResNet18(widths=s.resnet_widths), (32, 32, 3), 16 / 255, s.resnet_steps, workload


def torch_reference(tr, model_name: str, ours: JaxTrainer, data: Data, shape: tuple[int, ...], eps: float
                    ) -> Callable[[int], None]:
  """PyTorch's step on ``ours``'s initial weights and the same perturbed data."""
  variables = jax.device_get(ours.state.variables())
  net = tr.lenet_from_flax(variables) if model_name == "lenet" else tr.resnet18_from_flax(variables)
  return torch_trainer(tr, net, data, shape, ours.perturbation_key, eps)


def train_row(name: str, model_name: str, s: Sizes, mesh, tr, repeats: int,
              compile_times: dict[str, float]) -> Row:
  model, shape, eps, steps, workload = train_workload(model_name, s)
  data = make_data(shape, s.train_batch)
  ours = JaxTrainer(model, shape, data, mesh, method="crp", eps=eps)
  compile_times[f"{'LeNet' if model_name == 'lenet' else 'ResNet-18'} train step (crp)"] = ours.compile_s
  work = {"ours": lambda: ours.run(steps)}
  if tr is not None:
    work["ref"] = functools.partial(torch_reference(tr, model_name, ours, data, shape, eps), steps)
  times = _timing.interleave(work, repeats=repeats)
  return ratio_row(name, workload + f"; {steps} step(s) per repeat", times, s.train_batch * steps)


# ----------------------------------------------------------------------------- attacks


def attack_rows(s: Sizes, mesh, tr, repeats: int, compile_times: dict[str, float]) -> list[Row]:
  model = LeNet()
  variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (s.attack_batch, 28, 28, 1))
  y = jnp.argmax(model.apply(variables, x), -1).astype(jnp.int32)   # every example starts correct
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  variables = jax.device_put(variables, replicated)
  x, y = jax.device_put(x, data), jax.device_put(y, data)
  key = jax.device_put(jax.random.key(2), replicated)
  eps, step_size = 0.3, 0.01
  specs: dict[str, tuple[str, Callable, dict[str, Any]]] = {
      "fgsm": ("FGSM", lambda f, x, y, k: attacks.fgsm(f, x, y, eps=eps), {}),
      "pgd": (f"PGD-{s.pgd_steps}",
              lambda f, x, y, k: attacks.pgd(f, x, y, key=k, eps=eps, step_size=step_size,
                                             num_steps=s.pgd_steps, early_stop=False),
              {"num_steps": s.pgd_steps}),
      "apgd": (f"APGD-CE-{s.apgd_steps}",
               lambda f, x, y, k: attacks.apgd(f, x, y, key=k, eps=eps, num_steps=s.apgd_steps,
                                               early_stop=False),
               {"num_steps": s.apgd_steps}),
  }
  net = tr.lenet_from_flax(jax.device_get(variables)) if tr is not None else None
  torch_ok = tr is not None and has_torchattacks()
  if tr is not None:
    import torch  # pylint: disable=g-import-not-at-top
    net = net.to(torch_device())
    xt = tr.to_nchw(jax.device_get(x)).to(torch_device())
    yt = torch.from_numpy(np.asarray(jax.device_get(y)).astype(np.int64)).to(torch_device())
  rows = []
  for name, (label, attack, extra) in specs.items():
    workload = f"{label} on LeNet, batch {s.attack_batch}, ε=0.3, f32"
    fn = jax.jit(lambda v, x, y, k, attack=attack: attack(lambda z: model.apply(v, z, train=False), x, y, k),
                 in_shardings=(replicated, data, data, replicated), out_shardings=data)
    start = time.perf_counter()
    compiled = fn.lower(variables, x, y, key).compile()
    compile_times[label] = time.perf_counter() - start
    work = {"ours": lambda compiled=compiled: compiled(variables, x, y, key).block_until_ready()}
    if torch_ok:
      atk = tr.make_attack(name, net, eps=eps, step_size=step_size, num_steps=extra.get("num_steps", 1))
      work["ref"] = lambda atk=atk: (atk(xt, yt), torch_sync())
    times = _timing.interleave(work, repeats=repeats)
    missing = NO_TORCH if tr is None else "not measured: torchattacks not installed"
    floor, goal = (1.0, 1.5) if name != "fgsm" else (0.0, 1.5)
    row = ratio_row(name, workload, times, s.attack_batch, floor=floor, goal=goal, ref_missing=missing)
    if name == "fgsm":
      row.target = "– (goal 1.5×)"
      if "ref" in times:
        row.status = "goal met" if rate(times["ours"], 1) >= 1.5 * rate(times["ref"], 1) else "below goal"
    rows.append(row)
  return rows


def autoattack_row(s: Sizes, tr, repeats: int, compile_times: dict[str, float]) -> Row:
  """``attacks.autoattack(version="standard")`` vs torchattacks' four attacks in a ``MultiAttack``, per example.

  At ε = 0 no example can be broken, so both sides run every attack's whole
  budget on every example: fixed work, like the other attack rows'
  ``early_stop=False``. The labels are the model's own predictions, so
  every example starts correct. ``tools/parity.py --protocol=autoattack``
  times both sides on a robust model at AutoAttack's full budgets.
  """
  model = LeNet()
  variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (s.aa_examples, 28, 28, 1))
  f = lambda z: model.apply(variables, z, train=False)
  y = jnp.argmax(f(x), -1).astype(jnp.int32)
  eps, budgets = 0.0, dict(apgd_steps=s.aa_steps, fab_steps=s.aa_steps, num_targets=s.aa_targets,
                           square_queries=s.aa_queries)
  run = lambda: attacks.autoattack(f, x, y, key=jax.random.key(2), eps=eps, batch_size=s.aa_examples, log=None,
                                   **budgets)
  start = time.perf_counter()
  run()
  compile_times["AutoAttack standard (4 attacks) on LeNet"] = time.perf_counter() - start
  work = {"ours": lambda: run()}
  missing = NO_TORCH if tr is None else "not measured: torchattacks not installed"
  if tr is not None and has_torchattacks():
    import torch  # pylint: disable=g-import-not-at-top
    import torchattacks  # pylint: disable=g-import-not-at-top
    net = tr.lenet_from_flax(jax.device_get(variables)).to(torch_device())
    chain = torchattacks.MultiAttack(list(tr.autoattack_standard(
        net, eps=eps, steps=s.aa_steps, num_targets=s.aa_targets, queries=s.aa_queries).values()))
    xt = tr.to_nchw(jax.device_get(x)).to(torch_device())
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(torch_device())
    work["ref"] = lambda: (chain(xt, yt), torch_sync())
  times = _timing.interleave(work, repeats=repeats)
  workload = (f"AutoAttack standard on LeNet, {s.aa_examples} examples, ε=0 (every attack runs its whole budget): "
              f"APGD-CE {s.aa_steps} steps, APGD-T and FAB-T {s.aa_targets} targets x {s.aa_steps}, "
              f"Square {s.aa_queries} queries; reference: torchattacks.MultiAttack of the same four")
  row = ratio_row("autoattack", workload, times, s.aa_examples, ref_missing=missing)
  per = lambda t: f"{_timing.median(t):.1f} s per {s.aa_examples} examples; "
  row.ours = per(times["ours"]) + row.ours.replace("img/s", "examples/s")
  if "ref" in times:
    row.ref = per(times["ref"]) + row.ref.replace("img/s", "examples/s")
  return row


# ----------------------------------------------------------------------------- perturbation cost


def perturbation_row(s: Sizes, mesh, repeats: int, compile_times: dict[str, float]) -> Row:
  data = make_data((28, 28, 1), s.train_batch)
  crp = JaxTrainer(LeNet(), (28, 28, 1), data, mesh, method="crp", eps=0.3)
  std = JaxTrainer(LeNet(), (28, 28, 1), data, mesh, method="standard", eps=0.3)
  compile_times["LeNet train step (standard)"] = std.compile_s
  run_crp, run_std = lambda: crp.run(s.lenet_steps), lambda: std.run(s.lenet_steps)
  # Each crp repeat against the standard one next to it: the pair shares the
  # machine's state, so slow drifts of this noisy VM cancel; half the pairs
  # run crp first and half standard first, so an order effect cancels too.
  # 50 pairs at the default 5 repeats: with 20, the median still moved by ±3%.
  first = _timing.interleave({"crp": run_crp, "standard": run_std}, repeats=5 * repeats)
  second = _timing.interleave({"standard": run_std, "crp": run_crp}, repeats=5 * repeats, warmup=0)
  times = {k: first[k] + second[k] for k in first}
  overhead = 100 * (_timing.median([c / t for c, t in zip(times["crp"], times["standard"])]) - 1)
  items = s.train_batch * s.lenet_steps
  return Row("perturbation", f"LeNet step, batch {s.train_batch}: `crp` (δ drawn in the step) vs `standard`; "
             f"median of {len(times['crp'])} paired ratios",
             fmt_rate(times["crp"], items), "standard: " + fmt_rate(times["standard"], items),
             f"overhead {overhead:+.1f}%", "≤3%", "met" if overhead <= 3.0 else "NOT MET")


def certify_row(s: Sizes, mesh, tr, repeats: int, compile_times: dict[str, float]) -> Row:
  """Randomized smoothing's noise counts (:func:`crp_jax.certify.sample_counts`) vs Cohen et al.'s loop in torch."""
  from crp_jax import certify  # pylint: disable=g-import-not-at-top
  model = LeNet()
  variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
  rows = mesh.devices.size * s.certify_rows_per_device
  x = jax.random.uniform(jax.random.key(1), (rows, 28, 28, 1))
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  sigma, num, batch = 0.25, s.certify_samples, s.certify_batch
  fn = jax.jit(lambda v, x, k: certify.sample_counts(lambda z: model.apply(v, z, train=False), x, key=k,
                                                     sigma=sigma, num=num, batch_size=batch),
               in_shardings=(replicated, data, replicated), out_shardings=replicated)
  args = (jax.device_put(variables, replicated), jax.device_put(x, data), jax.random.key(2))
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_times["certify counts"] = time.perf_counter() - start
  work = {"ours": lambda: compiled(*args).block_until_ready()}
  if tr is not None:
    net = tr.lenet_from_flax(jax.device_get(variables)).to(torch_device())
    xt = tr.to_nchw(jax.device_get(x)).to(torch_device())
    work["ref"] = lambda: (tr.smoothing_counts(net, xt, sigma=sigma, num=num, batch_size=batch, num_classes=10),
                           torch_sync())
  times = _timing.interleave(work, repeats=repeats)
  row = ratio_row("certify", f"randomized smoothing counts on LeNet: {rows} examples × {num:,} noisy copies, "
                  f"{batch} per forward per example, σ = {sigma}", times, rows * num, floor=1.5, goal=1.5)
  row.ours, row.ref = (v.replace("img/s", "forwards/s") for v in (row.ours, row.ref))
  return row


def pgd_at_row(s: Sizes, mesh, tr, repeats: int, compile_times: dict[str, float]) -> Row:
  """crp_jax's PGD-AT step (PGD-k in the jitted step) vs PyTorch with torchattacks' PGD-k in the loop."""
  eps, step_size = 0.3, 0.01
  adversary = train.AdversarySpec(eps=eps, steps=s.pgd_at_inner, step_size=step_size)
  data = make_data((28, 28, 1), s.train_batch)
  ours = JaxTrainer(LeNet(), (28, 28, 1), data, mesh, method="pgd_at", eps=eps, adversary=adversary)
  compile_times[f"LeNet PGD-AT train step (PGD-{s.pgd_at_inner})"] = ours.compile_s
  work = {"ours": lambda: ours.run(s.pgd_at_steps)}
  missing = NO_TORCH if tr is None else "not measured: torchattacks not installed"
  if tr is not None and has_torchattacks():
    net = tr.lenet_from_flax(jax.device_get(ours.state.variables())).to(torch_device())
    step = tr.make_pgd_at_step(net, eps=eps, step_size=step_size, num_steps=s.pgd_at_inner)
    xs = [tr.to_nchw(data.image[i] / np.float32(255)).to(torch_device()) for i in range(len(data.image))]
    ys = [tr.torch_labels(data.label[i]).to(torch_device()) for i in range(len(data.label))]

    def ref() -> None:
      for i in range(s.pgd_at_steps):
        step(xs[i % len(xs)], ys[i % len(ys)])
      torch_sync()

    work["ref"] = ref
  times = _timing.interleave(work, repeats=repeats)
  workload = (f"PGD-AT train step on LeNet, batch {s.train_batch}, PGD-{s.pgd_at_inner} (ε={eps}, "
              f"step {step_size}, random start) inside, f32, Adam; {s.pgd_at_steps} step(s) per repeat; "
              "reference: torchattacks.PGD in the loop")
  return ratio_row("pgd_at", workload, times, s.train_batch * s.pgd_at_steps, floor=1.2, ref_missing=missing)


# ----------------------------------------------------------------------------- WRN-28-10 MFU


def wrn_row(s: Sizes, mesh, repeats: int, compile_times: dict[str, float]) -> Row:
  """WRN-28-10's bf16 ``crp`` step: images/s and MFU (train FLOPs = 3 × forward, see ``_flops``)."""
  model, shape, eps, steps, workload = train_workload("wrn", s)
  trainer = JaxTrainer(model, shape, make_data(shape, s.train_batch), mesh, method="crp", eps=eps)
  compile_times[f"WRN-{s.wrn_depth}-{s.wrn_width} bf16 train step (crp)"] = trainer.compile_s
  times = _timing.interleave({"ours": lambda: trainer.run(steps)}, repeats=repeats)
  items = s.train_batch * steps
  flops, devices = 3 * _flops.forward_flops(model, shape), mesh.devices.size
  achieved = flops * rate(times["ours"], items)              # model FLOP/s over the mesh's devices
  peak = _flops.peak_bf16(mesh.devices.flat[0])
  workload += f"; {flops / 1e9:.1f} GFLOP per image (3 × forward); {steps} step(s) per repeat"
  ours = fmt_rate(times["ours"], items) + f"; {achieved / 1e12:.0f} TFLOP/s"
  if peak is None:
    return Row("wrn", workload, ours, f"no bf16 peak known for {mesh.devices.flat[0].device_kind}", "–",
               "≥50% MFU", "not measured")
  matmul = _flops.matmul_bf16()
  mfu = achieved / (devices * peak)
  return Row("wrn", workload, ours,
             f"datasheet peak {peak / 1e12:.0f} TFLOP/s per device; measured 8192³ bf16 matmul "
             f"{matmul / 1e12:.0f} TFLOP/s ({achieved / (devices * matmul):.1%} of it)",
             f"MFU {mfu:.1%}", "≥50% MFU", "met" if mfu >= 0.5 else "NOT MET")


# ----------------------------------------------------------------------------- memory


# The child's own peak RSS, measured one process down: on Linux a vfork/exec'd child starts with the
# parent's high-water RSS in ``ru_maxrss`` (exec folds the old mm's peak into it), so a child of a
# 2 GiB pytest process reads >= 2 GiB whatever it does. A small Python parent in between fixes that.
_RSS_TRAMPOLINE = """
import os, subprocess, sys
fd = int(sys.argv[1])
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mib(cmd: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> float:
  """Peak resident set size (MiB) of ``cmd`` alone, from its own ``ru_maxrss`` (not the caller's)."""
  read, write = os.pipe()
  try:
    proc = subprocess.Popen([sys.executable, "-c", _RSS_TRAMPOLINE, str(write), *cmd], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write,))
    os.close(write)
    write = -1
    out, _ = proc.communicate()
    kib = os.read(read, 64).decode()
  finally:
    os.close(read)
    if write >= 0:
      os.close(write)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{out.decode()[-2000:]}")
  return int(kib) / 1024  # ru_maxrss is KiB on Linux


def memory_command(workdir: str, k: int, subset: int, batch: int = 128) -> list[str]:
  """A short real run (``python -m experiments.run``) with K perturbations per example."""
  return [sys.executable, "-m", "experiments.run", f"--workdir={workdir}", "--dataset=mnist5k",
          "--method=crp", "--config.compare_with=", f"--config.num_perturbations={k}",
          f"--config.train_subset={subset}", f"--config.batch_size={batch}", "--config.epochs=1",
          "--config.eval.strong=False",
          "--config.eval.attack_subset=16", "--config.eval.pgd_steps=(1,)",
          "--config.eval.extra_step_size=0.0", "--progress=False"]


def stored_set_gib(k: int, m: int, pixels: int = 28 * 28) -> float:
  """Size of a stored set of K·M perturbed float32 images."""
  return k * m * pixels * 4 / 2**30


def memory_row(s: Sizes) -> Row:
  root = tempfile.mkdtemp(prefix="crp_bench_mem_")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # No persistent compilation cache: whether a run compiles or loads its programs depends on what ran
  # before it, not on K; both compile.
  env = {**os.environ, "CRP_COMPILATION_CACHE": ""}
  try:
    rss = {k: peak_rss_mib(memory_command(os.path.join(root, f"k{k}"), k, s.memory_subset, s.train_batch),
                           cwd=repo, env=env) for k in s.memory_ks}
  finally:
    shutil.rmtree(root, ignore_errors=True)
  k1, k2 = s.memory_ks
  change = 100 * (rss[k2] / rss[k1] - 1)
  steps = {k: -(-s.memory_subset * (k + 1) // s.train_batch) for k in s.memory_ks}
  stored = stored_set_gib(k2, s.memory_subset) * 1024
  return Row("memory", f"peak RSS of `python -m experiments.run` on mnist5k, M={s.memory_subset} examples "
             f"({steps[k1]} vs {steps[k2]} steps)",
             f"K={k1}: {rss[k1]:,.0f} MiB; K={k2}: {rss[k2]:,.0f} MiB ({change:+.1f}%)",
             f"stored K·M set: {stored:,.1f} MiB at M={s.memory_subset}; "
             f"{stored_set_gib(k2, 60000):,.1f} GiB for MNIST (M=60,000)",
             f"{change:+.1f}%", "flat within 5%", "met" if abs(change) <= 5.0 else "NOT MET")


# ----------------------------------------------------------------------------- plain process

PLAIN_JSON = "CRP_BENCH_PLAIN_JSON"


def user_environ(environ: dict[str, str]) -> dict[str, str]:
  """``environ`` as the user started this command: without the XLA flag this harness's re-execution added."""
  env = dict(environ)
  if "XLA_FLAGS" in env:
    env["XLA_FLAGS"] = " ".join(f for f in env["XLA_FLAGS"].split() if f not in cpu.FLAGS)
  return env


def plain_command(args: Args, json_out: str) -> list[str]:
  """``python -m benchmarks.plain`` with this run's sizes, repeats and torch choice."""
  return [sys.executable, "-m", "benchmarks.plain", f"--json_out={json_out}", f"--repeats={args.repeats}",
          *(["--tiny"] if args.tiny else []), *([] if args.torch else ["--notorch"])]


def measure_plain(args: Args, json_out: str, environ: dict[str, str]) -> None:
  """Runs the plain-process rows in a fresh interpreter started from ``environ`` (the user's)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  print("plain process: python -m benchmarks.plain (a fresh interpreter, as a user's script) ...", flush=True)
  proc = subprocess.run(plain_command(args, json_out), cwd=repo, env=user_environ(environ), check=False)
  if proc.returncode and not os.path.exists(json_out):
    raise RuntimeError(f"python -m benchmarks.plain exited with {proc.returncode} and wrote no rows")


def plain_rows(args: Args) -> tuple[dict[str, str], list[Row]]:
  """The plain-process settings and rows: from ``$CRP_BENCH_PLAIN_JSON`` (measured before the re-exec) or now."""
  path = os.environ.get(PLAIN_JSON)
  if not path:
    path = os.path.join(tempfile.mkdtemp(prefix="crp_bench_plain_"), "plain.json")
    measure_plain(args, path, dict(os.environ))
  with open(path) as f:
    out = json.load(f)
  return out["settings"], [Row(**r) for r in out["rows"]]


def plain_section(settings: dict[str, str], rows: list[Row]) -> str:
  described = ", ".join(f"{k} `{v}`" if k in ("XLA_FLAGS", "GLIBC_TUNABLES") else f"{k}: {v}"
                        for k, v in settings.items())
  return "\n".join([
      "### Plain process: a user's own script",
      "",
      "A fresh interpreter (`python -m benchmarks.plain`) started with the environment this command was "
      "given: it imports crp_jax first, as a user's script does, and runs both contenders in that one "
      "process with no re-execution, JAX's default single CPU device and no mesh, torch at its default "
      "thread count, the allocator the process started with.",
      "",
      f"- process settings (both contenders): {described}",
      "",
      markdown_table(rows),
      "### CLI process: the settings of `python -m experiments.run`",
      "",
      "This process, re-executed with the command line's settings unless `--plain`.",
      "",
      ""])


# ----------------------------------------------------------------------------- table


def markdown_table(rows: list[Row]) -> str:
  head = "| row | workload | crp_jax | reference | ours/ref | target | status |\n|---|---|---|---|---|---|---|\n"
  return head + "".join(f"| {r.name} | {r.workload} | {r.ours} | {r.ref} | {r.ratio} | {r.target} | {r.status} |\n"
                        for r in rows)


def devices_line(args: Args) -> str:
  """What crp_jax ran on: the CPU mesh and how it was sized, or the accelerator's name."""
  count, backend = jax.device_count(), jax.default_backend()
  if backend != "cpu":
    return f"- crp_jax: {count} × {jax.devices()[0].device_kind} ({backend}), batch sharded over a `data` mesh"
  how = ("`--devices`" if args.devices
         else "`jax_num_cpu_devices`, as `crp_jax.runner.process.setup_devices` sets it")
  return (f"- crp_jax: {count} XLA CPU device(s) ({how}); attack batches sharded over all of them, train "
          f"steps on {meshes.make_train_mesh().devices.size} (`crp_jax.runner.meshes.make_train_mesh`), "
          "as the pipeline runs them")


def allocator_line() -> str:
  name = _env.loaded_allocator()
  preload = os.environ.get("LD_PRELOAD", "")
  return f"{name}, for both contenders" + (f" (`LD_PRELOAD={preload}`; `--allocator`)" if preload else "")


def torch_line() -> str:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "- torch: not installed"
  if torch_device() == "cuda":
    return f"- torch device: cuda ({torch.cuda.get_device_name()}), synchronised before each timer stops"
  return f"- torch threads: {os.cpu_count()} (`torch.set_num_threads(os.cpu_count())`)"


def report(rows: list[Row], args: Args, started: str, seconds: float, plain: str = "") -> str:
  """The generated block: the machine and versions, the plain-process table if measured, the CLI-process table."""
  mem = _env.memory_gib()
  cli_settings = [
      devices_line(args),
      f"- process settings: XLA_FLAGS=`{os.environ.get('XLA_FLAGS', '')}`, "
      f"GLIBC_TUNABLES=`{os.environ.get('GLIBC_TUNABLES', '')}`, import crp_jax: {_import_settings()}"
      + (" (`--plain`: no re-execution)" if args.plain else " (see `benchmarks/_env.py`)"),
      f"- allocator: {allocator_line()}",
      torch_line(),
  ]
  lines = [
      f"Generated by `{' '.join(['python -m benchmarks.run', *args.argv])}`.",
      "",
      f"- machine: {_env.cpu_model()}, {os.cpu_count()} cores"
      + (f", {mem:.0f} GiB RAM" if mem else "") + f"; load average {started} at start, "
      f"{_env.load_average()} at the end (other jobs share this CPU)",
      "- versions: " + ", ".join(f"{k} {val}" for k, val in _env.versions().items()),
      f"- {args.repeats} timed repeats after one warm-up round, contenders interleaved; "
      "medians, ± half the relative range; wall time of the run "
      f"{seconds / 60:.1f} min",
      "",
      plain + "\n".join(cli_settings) + "\n",
      markdown_table(rows),
  ]
  return "\n".join(lines)


def _import_settings() -> str:
  return f"sets nothing; per-executable options {cpu.compiler_options() or 'none'}"


def write_results(path: str, text: str, *, begin: str = BEGIN, end: str = END) -> None:
  """Replaces the generated block between ``begin`` and ``end`` in ``path``, keeping the notes around it.

  A file without that block gets it appended; a missing file is written
  with a ``# Benchmarks`` title. Other commands' blocks (other markers)
  stay as they are.
  """
  block = f"{begin}\n{text}\n{end}"
  old = open(path).read() if os.path.exists(path) else ""
  if begin in old and end in old:
    new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
  elif old.strip():
    new = old.rstrip("\n") + f"\n\n{block}\n"
  else:
    new = f"# Benchmarks\n\n{block}\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write(new)
  os.replace(path + ".tmp", path)


@dataclasses.dataclass(frozen=True)
class Args:
  """The parsed command line; ``argv`` is what followed the program name (quoted in the report)."""
  rows: str
  repeats: int
  out: str
  tiny: bool
  torch: bool
  plain: bool
  allocator: str
  devices: int | None
  argv: tuple[str, ...]


def define_flags() -> None:
  """The absl flags of ``python -m benchmarks.run``; idempotent, so tests can call :func:`main` in-process."""
  if "rows" in FLAGS:
    return
  flags.DEFINE_string("rows", "", f"Comma-separated subset of {','.join(ROWS)} "
                      "(default: all but wrn on a CPU, all but memory on an accelerator).")
  flags.DEFINE_integer("repeats", 5, "Timed repeats per contender (>= 5 for the record).")
  flags.DEFINE_string("out", DEFAULT_OUT, "Markdown file whose generated block is rewritten.")
  flags.DEFINE_bool("tiny", False, "Smoke-test sizes.")
  flags.DEFINE_bool("torch", True, "Measure the PyTorch reference (--notorch skips it).")
  flags.DEFINE_bool("plain", False, "No re-execution with the CLI's process settings (huge pages, see "
                    "benchmarks/_env.py); import crp_jax still applies its XLA flag (CRP_JAX_CPU_TUNING=0 drops it).")
  flags.DEFINE_enum("allocator", "auto", ["auto", "tcmalloc", "glibc"],
                    "malloc of the process, both contenders (auto: tcmalloc if installed; "
                    "see benchmarks/_env.allocator_preload).")
  flags.DEFINE_integer("devices", None, "XLA CPU devices (default: one per core, as experiments.run).")


def parse_args(argv: Sequence[str]) -> Args:
  """The command line ``argv`` (program name first) as :class:`Args`; a bad flag exits in one line.

  Each call starts from the defaults, so in-process calls (the tests) do
  not inherit each other's flags.
  """
  define_flags()
  names = [f.name for f in dataclasses.fields(Args) if f.name != "argv"]
  for name in names:
    FLAGS[name].unparse()
  rest = _env.parse_flags(argv)
  _env.selected_rows(rest, FLAGS.rows, list(ROWS))
  return Args(**{name: FLAGS[name].value for name in names}, argv=tuple(argv[1:]))


def main(argv: Sequence[str]) -> str:
  """Runs the rows of the command line ``argv`` (program name first); returns the generated text."""
  return run_rows(parse_args(argv))


def run_rows(args: Args) -> str:
  """Runs the rows, prints the table and writes ``--out``; returns the generated text."""
  started, t0 = _env.load_average(), time.perf_counter()
  s = sizes(args.tiny, on_accelerator())
  wanted = args.rows.split(",") if args.rows else default_rows()
  tr = load_torch(args.torch)
  mesh, train_mesh = meshes.make_mesh(), meshes.make_train_mesh()   # as crp_jax.pipeline uses them
  compile_times: dict[str, float] = {}
  rows: list[Row] = []
  plain = ""
  if "plain" in wanted and (args.rows or plain_wanted(args.rows)):
    settings, measured = plain_rows(args)
    plain = plain_section(settings, measured)
    for r in measured:
      print(f"plain {r.name:9s} {r.ours:34s} {r.ref:40s} {r.ratio:>10s}  {r.status}", flush=True)

  def emit(new: list[Row]) -> str:
    """Prints ``new`` and rewrites ``--out`` with every row so far (a cut run keeps its rows)."""
    for r in new:
      print(f"{r.name:13s} {r.ours:34s} {r.ref:40s} {r.ratio:>16s}  {r.status}", flush=True)
    rows.extend(new)
    table = rows + [Row("compile", f"compile: {name}", f"{sec:.1f} s", "n/a (eager)", "", "", "")
                    for name, sec in compile_times.items()] if "compile" in wanted else rows
    text = report(table + ([] if on_accelerator() else [gpu]), args, started, time.perf_counter() - t0, plain)
    write_results(args.out, text)
    return text

  gpu = Row("gpu", "WRN-28-10 bf16 train step MFU; LeNet/ResNet-18/attacks on GPU", NO_GPU, NO_GPU,
            "–", "", "not measured")
  # Cheap rows first, so a run cut short still records them.
  plan: list[tuple[str, Callable[[], Row | list[Row]]]] = [
      ("lenet", lambda: train_row("lenet", "lenet", s, train_mesh, tr, args.repeats, compile_times)),
      ("perturbation", lambda: perturbation_row(s, train_mesh, args.repeats, compile_times)),
      ("pgd_at", lambda: pgd_at_row(s, train_mesh, tr, args.repeats, compile_times)),
      ("memory", lambda: memory_row(s)),
      ("resnet18", lambda: train_row("resnet18", "resnet18", s, train_mesh, tr, args.repeats, compile_times)),
      ("attacks", lambda: attack_rows(s, mesh, tr, args.repeats, compile_times)),
      ("autoattack", lambda: autoattack_row(s, tr, args.repeats, compile_times)),
      ("certify", lambda: certify_row(s, mesh, tr, args.repeats, compile_times)),
      ("wrn", lambda: wrn_row(s, train_mesh, args.repeats, compile_times)),
  ]
  failed = [r.name for r in (measured if plain else []) if r.status == FAILED]
  for name, measure in plan:
    if name in wanted:
      new = guarded(name, measure)
      failed += [r.name for r in new if r.status == FAILED]
      emit(new)
  text = emit([])
  print(f"\nwrote {args.out}")
  if failed:
    raise SystemExit(f"benchmarks.run: rows failed: {', '.join(failed)} (tracebacks above; the others are in {args.out})")
  return text


def guarded(name: str, measure: Callable[[], Row | list[Row]]) -> list[Row]:
  """``measure()``'s rows, or one FAILED row (traceback on stderr) so that the other rows still run."""
  try:
    out = measure()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return [Row(name, "failed", f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}",
                "", "", "", FAILED)]
  return out if isinstance(out, list) else [out]


def _command_line(args: Args) -> None:
  """``python -m benchmarks.run``: the plain-process rows from this environment, then the tuned process.

  The plain rows run first, in a fresh interpreter started from the
  environment the user gave this command, before the re-execution (unless
  ``--plain``) changes it; their JSON goes to the re-executed process in
  ``$CRP_BENCH_PLAIN_JSON``.
  """
  extra: dict[str, str] = {}
  if plain_wanted(args.rows) and not os.environ.get(PLAIN_JSON):
    extra[PLAIN_JSON] = os.path.join(tempfile.mkdtemp(prefix="crp_bench_plain_"), "plain.json")
    measure_plain(args, extra[PLAIN_JSON], dict(os.environ))
    os.environ.update(extra)
  if not args.plain:
    _env.reexec_tuned("benchmarks.run", list(args.argv), {**_env.allocator_env(args.allocator), **extra})
  if args.devices:
    os.environ["CRP_CPU_DEVICES"] = str(args.devices)
  _env.setup_devices()
  run_rows(args)


if __name__ == "__main__":
  app.run(_command_line, flags_parser=parse_args)
