"""The jitted train step and every attack compile once across calls of one shape.

A recompile per call would cost seconds each time on a CPU (the LeNet train
step compiles in several). Compiles are counted two ways: XLA backend
compile events (``jax.monitoring``) and the jitted function's cache size.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from crp_jax import attacks
from crp_jax.data import Split
from crp_jax.runner import train, meshes, seeds
from crp_jax.runner.evaluators import batches as eval_batches
from crp_jax.models import LeNet

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
pytestmark = pytest.mark.usefixtures("no_persistent_cache")
CALLS = 3


@contextlib.contextmanager
def backend_compiles() -> Iterator[list[str]]:
  """Collects the XLA backend compiles made inside the block."""
  events: list[str] = []

  def listener(name: str, secs: float, **kwargs) -> None:
    del secs, kwargs
    if name == BACKEND_COMPILE:
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_counter_sees_a_recompile():
  f = jax.jit(lambda x: x * 2)
  a, b = np.ones(3, np.float32), np.ones(4, np.float32)
  with backend_compiles() as events:
    f(a)
    f(a + 1)
    f(b)  # a new shape compiles again
  assert len(events) == 2 and f._cache_size() == 2  # pylint: disable=protected-access


def test_train_step_compiles_once():
  mesh = meshes.make_mesh()
  config = train.TrainSpec(method="crp", perturbation_eps=0.3)
  model, shape = LeNet(), (28, 28, 1)
  tx = train.make_optimizer(config, 100)
  keys = seeds.run_keys(0)
  state = jax.device_put(train.create_state(model, tx, keys["init"], shape), NamedSharding(mesh, P()))
  step = train.jit_train_step(
      train.make_train_step(model, tx, train.make_objective(config, keys["perturbations"], 10),
                            keys["dropout"]), mesh)
  batch_size = 2 * len(mesh.devices.flat)
  rng = np.random.default_rng(0)
  batches = [jax.device_put({
      "image": rng.integers(0, 256, (batch_size, *shape), dtype=np.uint8),
      "label": rng.integers(0, 10, batch_size).astype(np.int32),
      "example_id": np.arange(i * batch_size, (i + 1) * batch_size, dtype=np.int32),
      "draw_id": rng.integers(-1, 4, batch_size).astype(np.int32),
  }, NamedSharding(mesh, P("data"))) for i in range(CALLS)]
  with backend_compiles() as events:
    for batch in batches:  # new data, new step counter, a donated state each time
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  assert int(state.step) == CALLS
  assert len(events) == 1
  assert step._cache_size() == 1  # pylint: disable=protected-access


ATTACKS: dict[str, Callable] = {
    "fgsm": lambda f, x, y, k, eps: attacks.fgsm(f, x, y, eps=eps),
    "pgd": lambda f, x, y, k, eps: attacks.pgd(f, x, y, key=k, eps=eps, step_size=eps / 4, num_steps=3),
    "apgd": lambda f, x, y, k, eps: attacks.apgd(f, x, y, key=k, eps=eps, num_steps=3),
    "square": lambda f, x, y, k, eps: attacks.square(f, x, y, key=k, eps=eps, num_queries=6),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_compiles_once(name):
  if not hasattr(attacks, name):
    pytest.skip(f"crp_jax.attacks has no {name}")
  attack = ATTACKS[name]
  fn = jax.jit(lambda w, x, y, k, eps: attack(lambda z: z.reshape(z.shape[0], -1) @ w, x, y, k, eps))
  w = jax.random.normal(jax.random.key(0), (16, 10))
  inputs = [(jax.random.uniform(jax.random.key(i), (8, 4, 4, 1)), jnp.arange(8, dtype=jnp.int32) % 10,
             jax.random.key(100 + i), jnp.float32(0.1 * (i + 1))) for i in range(CALLS)]
  jax.block_until_ready([(x, y, jax.random.key_data(k), eps) for x, y, k, eps in inputs])
  with backend_compiles() as events:
    # New inputs, keys and ε values (ε is traced, not static): one compile.
    outs = [fn(w, x, y, k, eps) for x, y, k, eps in inputs]
    jax.block_until_ready(outs)
  assert len(events) == 1
  assert fn._cache_size() == 1  # pylint: disable=protected-access


def test_autoattack_compiles_once_across_new_parameters_and_frees_the_old_ones():
  # An "evaluate every epoch" loop: each call a new parameter set behind a new logits_fn. ε = 0 keeps every
  # example robust, so each attack runs on all of them, in one chunk shape, on every call.
  import gc  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top
  from crp_jax.attacks import _autoattack  # pylint: disable=g-import-not-at-top
  from crp_jax.models import init_variables  # pylint: disable=g-import-not-at-top
  model, x = LeNet(), jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
  budget = dict(apgd_steps=2, fab_steps=2, num_targets=2, square_queries=4)
  compiles, alive = [], []
  _autoattack._EXECUTABLES.clear()  # pylint: disable=protected-access  (another test's programs)
  for call in range(CALLS):
    variables = init_variables(model, jax.random.key(10 + call), (28, 28, 1))
    alive.append(weakref.ref(jax.tree.leaves(variables)[0]))
    logits_fn = lambda z, v=variables: model.apply(v, z, train=False)
    y = jnp.argmax(logits_fn(x), axis=1).astype(jnp.int32)
    before = len(_autoattack._EXECUTABLES)  # pylint: disable=protected-access
    with backend_compiles() as events:
      result = attacks.autoattack(logits_fn, x, y, key=jax.random.key(2), eps=0.0, log=None, **budget)
    compiles.append((len(events), len(_autoattack._EXECUTABLES) - before))  # pylint: disable=protected-access
    assert [s.name for s in result.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    del variables, logits_fn, result
    gc.collect()
    assert [r() is None for r in alive[:-1]] == [True] * call, "an earlier parameter set is still alive"
  # Call 1 compiles the clean pass, the checks' gradient and each of the four attacks once (six programs);
  # calls 2 and 3 compile nothing.
  assert compiles[0][1] == 6 and compiles[0][0] >= 6
  assert compiles[1:] == [(0, 0)] * (CALLS - 1), compiles


def test_an_eps_grid_compiles_one_program_per_attack_and_gives_the_bits_of_constant_eps():
  """ε and η are operands of run_specs' programs: five radii, one PGD and one APGD compile, same verdicts."""
  mesh = meshes.make_mesh()
  model = LeNet()
  variables = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), train=False)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
  labels = np.asarray(jnp.argmax(model.apply(variables, images / 255.0, train=False), -1), np.int32)
  split = Split(images=images, labels=labels, ids=np.arange(32), num_classes=10, image_shape=(28, 28, 1))
  grid = (0.002, 0.01, 0.03, 0.1, 0.3)
  specs = tuple(s for i, e in enumerate(grid) for s in (
      attacks.AttackSpec("pgd", eps=e, steps=3, step_size=e / 4, last_iterate=True, name=f"pgd@{e}", key_path=(i,)),
      attacks.AttackSpec("apgd", eps=e, steps=3, name=f"apgd@{e}", key_path=(i, 1))))
  key = jax.random.key(2)
  with backend_compiles() as events:
    swept = eval_batches.run_specs(model, variables, split, specs, key, batch_size=16, mesh=mesh, progress=False)
  assert len(events) == 2, events
  for spec in specs:  # the same attack with ε a constant of its own program
    alone = eval_batches.map_batches(eval_batches.correct_under(model, spec), variables, split.images,
                                     split.labels, spec.key(key), batch_size=16, mesh=mesh, progress=False,
                                     ids=split.ids)
    np.testing.assert_array_equal(swept[spec], alone)
  accuracies = {float(swept[s].mean()) for s in specs}
  assert len(accuracies) > 1, accuracies   # the radii matter: a program that ignored ε would fail here
