"""Tests of crp_jax.models: shapes, exact parameter counts, train/eval modes, dtypes.

The big models are only traced (``jax.eval_shape``); real forward passes run
on LeNet, on ResNet-18 with a batch of 2, and on a WRN-10-1, so the file stays
fast on a 2-core CPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import models
from crp_jax.models import (
    MODEL_NAMES,
    LeNet,
    ResNet18,
    WideResNet,
    count_params,
    get_model,
    init_variables,
    max_pool_2x2,
)

INPUT_SHAPES = {"lenet": (28, 28, 1), "resnet18": (32, 32, 3), "wrn28_10": (32, 32, 3)}
PARAM_COUNTS = {"lenet": 3_274_634, "resnet18": 11_173_962, "wrn28_10": 36_479_194}
PARAM_COUNTS_ROUNDED = {"lenet": 3.27e6, "resnet18": 11.2e6, "wrn28_10": 36.5e6}


def _key(seed: int = 0) -> jax.Array:
  # The "rbg" PRNG compiles several times faster than threefry on CPU, and
  # compiling the initialisers dominates these tests' time.
  return jax.random.key(seed, impl="rbg")


def _images(shape: tuple[int, ...], batch: int = 2, seed: int = 1) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (batch, *shape))


def _abstract_variables(model: nn.Module, input_shape: tuple[int, ...]):
  return jax.eval_shape(lambda k: init_variables(model, k, input_shape), jax.random.key(0))


def _train_apply(model: nn.Module):
  """Jitted train-mode apply returning ``(logits, batch_stats updates)``."""
  return jax.jit(lambda v, x, k: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k}))


def _eval_apply(model: nn.Module):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


# --- registry ---------------------------------------------------------------


def test_model_names():
  assert MODEL_NAMES == ("lenet", "resnet18", "wrn28_10")
  assert isinstance(get_model("lenet"), LeNet)
  assert isinstance(get_model("resnet18"), ResNet18)
  wrn = get_model("wrn28_10", num_classes=100, dtype=jnp.bfloat16)
  assert isinstance(wrn, WideResNet)
  assert (wrn.depth, wrn.width, wrn.dropout_rate, wrn.num_classes, wrn.dtype) == (28, 10, 0.1, 100, jnp.bfloat16)


def test_get_model_unknown_name():
  with pytest.raises(ValueError, match="resnet50") as info:
    get_model("resnet50")
  for name in MODEL_NAMES:
    assert name in str(info.value)


def test_public_api():
  for name in models.__all__:
    assert hasattr(models, name)


# --- shapes and parameter counts (traced only) -------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count(name):
  variables = _abstract_variables(get_model(name), INPUT_SHAPES[name])
  n = count_params(variables["params"])
  assert n == PARAM_COUNTS[name]
  assert float(f"{n:.3g}") == PARAM_COUNTS_ROUNDED[name]  # 3 significant figures
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_batch_stats_collections():
  assert "batch_stats" not in _abstract_variables(get_model("lenet"), (28, 28, 1))
  # Mean and variance per BatchNorm channel; see the models' docstrings.
  assert count_params(_abstract_variables(get_model("resnet18"), (32, 32, 3))["batch_stats"]) == 9_600
  assert count_params(_abstract_variables(get_model("wrn28_10"), (32, 32, 3))["batch_stats"]) == 17_952


def test_wrn28_10_widths():
  params = _abstract_variables(get_model("wrn28_10"), (32, 32, 3))["params"]
  blocks = sorted((k for k in params if k.startswith("WideBasicBlock")), key=lambda k: int(k.split("_")[1]))
  assert len(blocks) == 12
  widths = [params[b]["Conv_1"]["kernel"].shape[-1] for b in blocks]
  assert widths == [160] * 4 + [320] * 4 + [640] * 4
  # 1x1 shortcut convs exactly where the shape changes: the first block of each group.
  assert [("Conv_2" in params[b]) for b in blocks] == [True, False, False, False] * 3


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(name, dtype, train):
  model = get_model(name, num_classes=7, dtype=dtype)
  variables = _abstract_variables(model, INPUT_SHAPES[name])
  x = jax.ShapeDtypeStruct((3, *INPUT_SHAPES[name]), jnp.float32)
  out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}),
      variables, x)
  logits = out[0]
  assert logits.shape == (3, 7)
  assert logits.dtype == jnp.float32


# --- max pooling --------------------------------------------------------------


def test_max_pool_2x2_matches_nn_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 28, 14, 3))
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(jax.jit(max_pool_2x2)(x), jax.jit(reference)(x))
  # Ties in a window split the gradient with reshape + max but not with
  # max_pool; random normal inputs have none, so the gradients match too.
  g = jax.random.normal(jax.random.key(1), (2, 14, 7, 3))
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * g)))(x)
  np.testing.assert_array_equal(grad(max_pool_2x2), grad(reference))


def test_max_pool_2x2_odd_size_raises():
  with pytest.raises(ValueError, match="even"):
    max_pool_2x2(jnp.zeros((1, 5, 4, 1)))


# --- LeNet (real compute) -------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_variables():
  return jax.jit(lambda k: init_variables(LeNet(), k, (28, 28, 1)))(_key())


def test_lenet_forward(lenet_variables):
  assert count_params(lenet_variables["params"]) == PARAM_COUNTS["lenet"]
  x = _images((28, 28, 1))
  logits = _eval_apply(LeNet())(lenet_variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # No BatchNorm or dropout: train mode is the same function, without mutable or rngs.
  train_logits = jax.jit(lambda v, x: LeNet().apply(v, x, train=True))(lenet_variables, x)
  np.testing.assert_array_equal(train_logits, logits)


def test_lenet_bfloat16(lenet_variables):
  x = _images((28, 28, 1))
  logits16 = _eval_apply(LeNet(dtype=jnp.bfloat16))(lenet_variables, x)
  logits32 = _eval_apply(LeNet())(lenet_variables, x)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.1 * float(jnp.max(jnp.abs(logits32))) + 1e-2)


# --- ResNet-18 (real compute, batch 2) -------------------------------------------


@pytest.fixture(scope="module")
def resnet_variables():
  return jax.jit(lambda k: init_variables(ResNet18(), k, (32, 32, 3)))(_key())


def test_resnet18_train_updates_batch_stats(resnet_variables):
  x = _images((32, 32, 3))
  logits, updates = _train_apply(ResNet18())(resnet_variables, x, _key(1))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  old, new = resnet_variables["batch_stats"], updates["batch_stats"]
  assert jax.tree.structure(old) == jax.tree.structure(new)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new)
  assert all(jax.tree.leaves(changed))


def test_resnet18_eval_uses_running_averages(resnet_variables):
  x = _images((32, 32, 3))
  apply = _eval_apply(ResNet18())
  logits = apply(resnet_variables, x)  # no mutable needed in eval mode
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  # Running averages, not batch statistics: an example's logits do not
  # depend on the rest of the batch.
  np.testing.assert_allclose(apply(resnet_variables, x[:1]), logits[:1], rtol=1e-5, atol=1e-5)


def test_resnet18_bfloat16(resnet_variables):
  logits = _eval_apply(ResNet18(dtype=jnp.bfloat16))(resnet_variables, _images((32, 32, 3)))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


# --- Wide-ResNet (real compute on a WRN-10-1) -----------------------------------


SMALL_WRN = WideResNet(depth=10, width=1)


@pytest.fixture(scope="module")
def wrn_variables():
  return jax.jit(lambda k: init_variables(SMALL_WRN, k, (32, 32, 3)))(_key())


def test_wrn_dropout(wrn_variables):
  x = _images((32, 32, 3))
  apply = _train_apply(SMALL_WRN)
  a, updates = apply(wrn_variables, x, _key(1))
  b, _ = apply(wrn_variables, x, _key(2))
  c, _ = apply(wrn_variables, x, _key(1))
  assert a.shape == (2, 10) and a.dtype == jnp.float32
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, c)
  changed = jax.tree.map(lambda u, v: bool(jnp.any(u != v)), wrn_variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_wrn_eval_is_deterministic(wrn_variables):
  x = _images((32, 32, 3))
  apply = _eval_apply(SMALL_WRN)  # no rngs and no mutable
  np.testing.assert_array_equal(apply(wrn_variables, x), apply(wrn_variables, x))
  # Dropout off: the rate does not matter in eval mode.
  np.testing.assert_array_equal(
      apply(wrn_variables, x), _eval_apply(WideResNet(depth=10, width=1, dropout_rate=0.5))(wrn_variables, x))


def test_wrn_bad_depth():
  with pytest.raises(ValueError, match="6n"):
    jax.eval_shape(lambda k: init_variables(WideResNet(depth=27), k, (32, 32, 3)), jax.random.key(0))
