r"""crp_jax against PyTorch in a plain process, as in a user's own script: ``python -m benchmarks.plain``.

  python -m benchmarks.plain --json_out=/tmp/plain.json     # what benchmarks.run runs first
  python -m benchmarks.plain --tiny --notorch                # smoke size

A fresh interpreter that does what a user's script does, following the
README: ``import crp_jax`` (which sets nothing), each ``jax.jit`` given
``crp_jax.cpu.compiler_options()`` (Eigen convolutions, :mod:`crp_jax.cpu`),
then JAX on its default single CPU device (set, in case the caller's
``XLA_FLAGS`` force more), no mesh, no re-execution, the
allocator the process started with, torch at its default thread count. Both
contenders run in this one process, alternately (:mod:`benchmarks._timing`).

Rows:

* ``ball_loss``: a train step written the way a user writes one, outside
  crp_jax's runner: LeNet (``crp_jax.models.LeNet``), ``optax.adam(1e-3)``,
  and ``crp_jax.ball_loss`` with K = 10 draws plus the clean copy, batch 128
  (1,408 images per step), in one ``jax.jit``. Reference: PyTorch's eager
  Adam step on the same 1,408 perturbed images, δ drawn on the host.
* ``fgsm``, ``pgd``, ``apgd``: ``crp_jax.attacks.fgsm``/``pgd`` (40 steps)/
  ``apgd`` (CE, 100 steps) under a bare ``jax.jit``, batch 256, ε = 0.3, vs
  torchattacks on the same weights, as ``benchmarks.run``'s attack rows.
* ``cli_step``: the CLI's own ``crp`` train step
  (:func:`crp_jax.runner.train.make_train_step`), batch 128, as
  ``benchmarks.run``'s ``lenet`` row, on the one device.

``--json_out`` writes the rows and the process settings as JSON (what
``python -m benchmarks.run`` puts in its plain-process table).
"""

from __future__ import annotations

import crp_jax  # isort: skip

import dataclasses
import functools
import json
import os
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import _env, _timing, run as bench
from crp_jax import attacks, cpu
from crp_jax.models import LeNet, init_variables
from crp_jax.perturbations import make_delta

ROWS = ("ball_loss", "fgsm", "pgd", "apgd", "cli_step")
FLAGS = flags.FLAGS
K, EPS = 10, 0.3


def settings() -> dict[str, str]:
  """This process's settings, for the table's header."""
  return {"XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
          "import crp_jax": f"sets nothing; per-executable options {cpu.compiler_options() or 'none'}",
          "devices": f"{jax.device_count()} {jax.default_backend()}",
          "allocator": _env.loaded_allocator(), "torch threads": _torch_threads()}


def _torch_threads() -> str:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "torch not installed"
  return str(torch.get_num_threads())


def user_step(model, tx, key: jax.Array) -> Callable:
  """A user's jitted ``ball_loss`` step: mean over the batch of the K-draw (+ clean) ball loss, Adam."""

  def loss(params, x, y, ids):
    point = lambda xp, yp: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, xp), yp)
    return crp_jax.ball_loss(point, x, y, key=key, example_ids=ids, num_perturbations=K, eps=EPS,
                             include_clean=True).mean()

  @functools.partial(jax.jit, compiler_options=cpu.compiler_options() or None)   # the README's call
  def step(params, opt_state, x, y, ids):
    value, grads = jax.value_and_grad(loss)(params, x, y, ids)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return step


def extended_batch(x: np.ndarray, ids: np.ndarray, key: jax.Array) -> np.ndarray:
  """The ``(K + 1)·B`` inputs ``ball_loss`` builds (clean first, then draw d at rows d·B..), on the host."""
  draws = [x] + [np.clip(x + np.asarray(make_delta(ids, np.full_like(ids, d), x.shape[1:], key=key, eps=EPS)), 0, 1)
                 for d in range(K)]
  return np.concatenate(draws).astype(np.float32)


def ball_loss_row(s: bench.Sizes, tr, repeats: int) -> bench.Row:
  model, tx, key = LeNet(), optax.adam(1e-3), jax.random.key(3)
  params = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))["params"]
  data = bench.make_data((28, 28, 1), s.train_batch)
  x = [jnp.asarray(data.image[i] / np.float32(255)) for i in range(len(data.image))]
  y, ids = [jnp.asarray(v) for v in data.label], [jnp.asarray(v) for v in data.example_id]
  step, state = user_step(model, tx, key), {"p": params, "o": tx.init(params)}

  def ours() -> None:
    for i in range(s.lenet_steps):
      state["p"], state["o"], loss = step(state["p"], state["o"], x[i % 4], y[i % 4], ids[i % 4])
    loss.block_until_ready()

  work = {"ours": ours}
  if tr is not None:
    work["ref"] = _torch_ball_loss(tr, params, data, x, key, s.lenet_steps)
  times = _timing.interleave(work, repeats=repeats)
  images = s.train_batch * (K + 1)
  return bench.ratio_row("ball_loss", f"user's `jax.jit` step: LeNet, `crp_jax.ball_loss` K={K} + clean, batch "
                         f"{s.train_batch} ({images:,} images/step), Adam; {s.lenet_steps} step(s) per repeat; "
                         "reference: eager PyTorch on the same perturbed images", times, images * s.lenet_steps)


def _torch_ball_loss(tr, params, data, x, key, steps: int) -> Callable[[], None]:
  import torch  # pylint: disable=g-import-not-at-top
  net = tr.lenet_from_flax(jax.device_get({"params": params}))
  xs = [tr.to_nchw(extended_batch(np.asarray(xi), data.example_id[i], key)) for i, xi in enumerate(x)]
  ys = [torch.from_numpy(np.tile(data.label[i], K + 1).astype(np.int64)) for i in range(len(x))]
  step = tr.make_train_step(net)

  def ref() -> None:
    for i in range(steps):
      step(xs[i % len(xs)], ys[i % len(ys)])

  return ref


def attack_fns(s: bench.Sizes) -> dict[str, tuple[str, Callable, int]]:
  """``name -> (label, attack(logits_fn, x, y, key), steps)`` of the attack rows."""
  return {
      "fgsm": ("FGSM", lambda f, x, y, k: attacks.fgsm(f, x, y, eps=EPS), 1),
      "pgd": (f"PGD-{s.pgd_steps}", lambda f, x, y, k: attacks.pgd(
          f, x, y, key=k, eps=EPS, step_size=0.01, num_steps=s.pgd_steps, early_stop=False), s.pgd_steps),
      "apgd": (f"APGD-CE-{s.apgd_steps}", lambda f, x, y, k: attacks.apgd(
          f, x, y, key=k, eps=EPS, num_steps=s.apgd_steps, early_stop=False), s.apgd_steps),
  }


def attack_rows(names: Sequence[str], s: bench.Sizes, tr, repeats: int) -> list[bench.Row]:
  model = LeNet()
  variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (s.attack_batch, 28, 28, 1))
  y = jnp.argmax(model.apply(variables, x), -1).astype(jnp.int32)
  key, rows = jax.random.key(2), []
  for name in names:
    label, attack, steps = attack_fns(s)[name]
    fn = jax.jit(lambda v, x, y, k, attack=attack: attack(lambda z: model.apply(v, z, train=False), x, y, k),
                 compiler_options=cpu.compiler_options() or None)   # the README's call for a user's jit
    work = {"ours": lambda fn=fn: fn(variables, x, y, key).block_until_ready()}
    if tr is not None and bench.has_torchattacks():
      import torch  # pylint: disable=g-import-not-at-top
      atk = tr.make_attack(name, tr.lenet_from_flax(jax.device_get(variables)), eps=EPS, step_size=0.01,
                           num_steps=steps)
      xt, yt = tr.to_nchw(np.asarray(x)), torch.from_numpy(np.asarray(y).astype(np.int64))
      work["ref"] = lambda atk=atk, xt=xt, yt=yt: atk(xt, yt)
    times = _timing.interleave(work, repeats=repeats)
    missing = bench.NO_TORCH if tr is None else "not measured: torchattacks not installed"
    rows.append(bench.ratio_row(name, f"{label} on LeNet under a bare `jax.jit`, batch {s.attack_batch}, "
                                f"ε={EPS}, f32", times, s.attack_batch, ref_missing=missing))
  return rows


def cli_step_row(s: bench.Sizes, tr, repeats: int) -> bench.Row:
  from crp_jax.runner import train, meshes  # pylint: disable=g-import-not-at-top
  row = bench.train_row("cli_step", "lenet", s, meshes.make_train_mesh(), tr, repeats, {})
  row.workload = "the CLI's `crp` step (`crp_jax.runner.train`), " + row.workload
  return row


def measure(names: Sequence[str], s: bench.Sizes, tr, repeats: int) -> list[bench.Row]:
  print(f"benchmarks.plain: measuring {', '.join(names)} ...", flush=True)
  rows = []
  if "ball_loss" in names:
    rows += bench.guarded("ball_loss", lambda: ball_loss_row(s, tr, repeats))
  wanted = [n for n in ("fgsm", "pgd", "apgd") if n in names]
  if wanted:
    rows += bench.guarded(",".join(wanted), lambda: attack_rows(wanted, s, tr, repeats))
  if "cli_step" in names:
    rows += bench.guarded("cli_step", lambda: cli_step_row(s, tr, repeats))
  return rows


def define_flags() -> None:
  flags.DEFINE_string("rows", ",".join(ROWS), f"Comma-separated subset of {','.join(ROWS)}.")
  flags.DEFINE_integer("repeats", 5, "Timed repeats per contender.")
  flags.DEFINE_bool("tiny", False, "Smoke-test sizes.")
  flags.DEFINE_bool("torch", True, "Measure the PyTorch reference (--notorch skips it).")
  flags.DEFINE_string("json_out", "", "Write the rows and settings here as JSON.")


def main(argv: Sequence[str]) -> None:
  names = _env.selected_rows(argv, FLAGS.rows, list(ROWS))
  jax.config.update("jax_num_cpu_devices", 1)   # JAX's default, whatever device count the caller forces
  tr = bench.load_torch(FLAGS.torch, threads=None)   # torch's default threads: a user's script sets none
  rows = measure(names, bench.sizes(FLAGS.tiny), tr, FLAGS.repeats)
  for r in rows:
    print(f"{r.name:10s} {r.ours:34s} {r.ref:40s} {r.ratio:>8s}  {r.status}", flush=True)
  if FLAGS.json_out:
    out = {"settings": settings(), "rows": [dataclasses.asdict(r) for r in rows]}
    with open(FLAGS.json_out + ".tmp", "w") as f:
      json.dump(out, f, indent=1)
    os.replace(FLAGS.json_out + ".tmp", FLAGS.json_out)
  if any(r.status == bench.FAILED for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_env.parse_flags)
