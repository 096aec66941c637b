"""Where FGSM's time goes on LeNet at batch 256 in a plain process, crp_jax against PyTorch.

    python -m benchmarks.probes.fgsm_probe              # stages, interleaved, then per-op profiles
    python -m benchmarks.probes.fgsm_probe --noprofile  # the stages only
    python -m benchmarks.probes.fgsm_probe --layers     # each of LeNet's pieces alone

A plain process as in ``benchmarks.plain`` (``import crp_jax`` first, one CPU
device, torch at its default threads). Stages, each jitted on its own
(crp_jax) or eager (torch), median ms of interleaved repeats:

* ``forward``: the logits;
* ``input grad``: the cross-entropy's gradient in the input (what FGSM needs);
* ``fgsm``: the attack (gradient, sign, step, clip), ``crp_jax.attacks.fgsm``
  against ``torchattacks.FGSM``.

Then per-thunk times of crp_jax's ``fgsm`` from a ``jax.profiler`` trace and
per-operator times of torchattacks' from ``torch.profiler``. XLA:CPU runs
Eigen convolutions as tasks the trace does not name, so ``--layers`` also
times each of LeNet's pieces jitted alone (run it once with
``CRP_JAX_CPU_TUNING=0`` for YNNPACK's convolutions).
"""

from __future__ import annotations


import functools
import glob
import gzip
import os
import json
import re
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import _env, _timing
from benchmarks.probes import train_probe
from crp_jax import attacks, cpu
from crp_jax.models import LeNet, init_variables

BATCH, EPS, REPEATS = 256, 0.3, 15


def jax_stages(model, variables, x, y) -> dict[str, Callable[[], object]]:
  f = lambda v, z: model.apply(v, z, train=False)
  loss = lambda v, z, y: optax.softmax_cross_entropy_with_integer_labels(f(v, z), y).sum()
  jit = functools.partial(jax.jit, compiler_options=cpu.compiler_options() or None)   # as a user's, per the README
  forward = jit(f)
  grad = jit(jax.grad(loss, argnums=1))
  fgsm = jit(lambda v, z, y: attacks.fgsm(lambda u: f(v, u), z, y, eps=EPS))
  return {"forward": lambda: forward(variables, x).block_until_ready(),
          "input grad": lambda: grad(variables, x, y).block_until_ready(),
          "fgsm": lambda: fgsm(variables, x, y).block_until_ready()}


def torch_stages(variables, x, y) -> dict[str, Callable[[], object]]:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  from reference import torch_models as tr  # pylint: disable=g-import-not-at-top
  net = tr.lenet_from_flax(jax.device_get(variables)).eval()
  xt, yt = tr.to_nchw(np.asarray(x)), torch.from_numpy(np.asarray(y).astype(np.int64))
  atk = torchattacks.FGSM(net, eps=EPS)

  def forward():
    with torch.no_grad():
      return net(xt)

  def grad():
    z = xt.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(net(z), yt, reduction="sum"), z)[0]

  return {"forward": forward, "input grad": grad, "fgsm": lambda: atk(xt, yt)}


def stages() -> tuple[dict, dict]:
  model = LeNet()
  variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1))
  y = jnp.argmax(model.apply(variables, x), -1).astype(jnp.int32)
  ours, theirs = jax_stages(model, variables, x, y), torch_stages(variables, x, y)
  for name in ours:
    times = _timing.interleave({"crp_jax": ours[name], "torch": theirs[name]}, repeats=REPEATS, warmup=2)
    a, b = (1e3 * _timing.median(times[k]) for k in ("crp_jax", "torch"))
    print(f"{name:11s} crp_jax {a:7.2f} ms   torch {b:7.2f} ms   ours/ref speed {b / a:4.2f}x", flush=True)
  return ours, theirs


def jax_profile(fn: Callable[[], object], steps: int = 10) -> None:
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(steps):
        fn()
    with gzip.open(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]) as f:
      events = json.load(f)["traceEvents"]
  total = train_probe.durations(events)[0]
  print("-- crp_jax fgsm: per thunk (ms per call)")
  for name, us in total.most_common(25):
    if not re.match(r"^(PjRt|Execute|ThreadPool|jit_)", name):
      print(f"{us / (1e3 * steps):8.3f}  {name[:110]}")


def torch_profile(fn: Callable[[], object], steps: int = 10) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      fn()
  print("-- torchattacks FGSM: per operator (self CPU time, ms per call)")
  rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:20]
  for e in rows:
    print(f"{e.self_cpu_time_total / (1e3 * steps):8.3f}  {e.key[:100]}")


def layers() -> None:
  """Median ms of each piece of LeNet's forward and input gradient at batch 256, each jitted alone."""
  from crp_jax.models import conv as c  # pylint: disable=g-import-not-at-top
  from crp_jax.models.lenet import max_pool_2x2  # pylint: disable=g-import-not-at-top
  k, pads = jax.random.key(0), ((2, 2), (2, 2))
  normal = lambda *shape: jax.random.normal(k, shape)
  conv = jax.jit(lambda x, w: c._plain(x, w, pads, None))  # pylint: disable=protected-access
  flip = lambda w: jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  w1, w2, dense = normal(5, 5, 1, 32), normal(5, 5, 32, 64), normal(3136, 1024)
  pool_vjp = jax.jit(lambda h, g: jax.vjp(lambda h: max_pool_2x2(jax.nn.relu(h)), h)[1](g)[0])
  pieces = {
      "conv1 forward (1 -> 32)": (conv, normal(BATCH, 28, 28, 1), w1),
      "conv2 forward (32 -> 64)": (conv, normal(BATCH, 14, 14, 32), w2),
      "conv2 input grad (64 -> 32)": (conv, normal(BATCH, 14, 14, 64), flip(w2)),
      "conv1 input grad (32 -> 1)": (conv, normal(BATCH, 28, 28, 32), flip(w1)),
      "relu + max-pool vjp, 28x28x32": (pool_vjp, normal(BATCH, 28, 28, 32), normal(BATCH, 14, 14, 32)),
      "dense1 forward": (jax.jit(jnp.matmul), normal(BATCH, 3136), dense),
      "dense1 input grad": (jax.jit(lambda g, w: g @ w.T), normal(BATCH, 1024), dense),
  }
  for name, (fn, *args) in pieces.items():
    run = lambda fn=fn, args=args: fn(*args).block_until_ready()
    times = _timing.interleave({name: run}, repeats=REPEATS, warmup=2)[name]
    print(f"{name:30s} {1e3 * _timing.median(times):7.2f} ms", flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  print(f"devices {jax.devices()}, XLA_FLAGS {os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  if flags.FLAGS.layers:
    layers()
    return
  ours, theirs = stages()
  if flags.FLAGS.profile:
    jax_profile(ours["fgsm"])
    torch_profile(theirs["fgsm"])


if __name__ == "__main__":
  flags.DEFINE_bool("profile", True, "Print per-op profiles after the stages.")
  flags.DEFINE_bool("layers", False, "Time each piece of LeNet alone instead (the module doc).")
  app.run(main, flags_parser=_env.parse_flags)
