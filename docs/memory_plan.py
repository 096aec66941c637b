"""XLA's buffer plan of each model's f32 train step at batch 128: ``python docs/memory_plan.py``.

The cost table of the docs (``docs/hooks.py``, "Peak memory, estimate")
estimates a step's memory from the parameter count and the convolutions'
feature maps. This script checks that estimate against what XLA plans for
the same step (Adam, BatchNorm in train mode, the parameters and optimizer
state donated), from ``jax.jit(...).lower(...).compile().memory_analysis()``:
deterministic, nothing is run. On a CPU it compiles for the CPU, whose plan
is close to, not the same as, a GPU's (cuDNN workspaces come on top there).
It takes about half a minute, most of it WRN-28-10's compile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from crp_jax.models import get_model

MODELS = (("lenet", (28, 28, 1)), ("resnet18", (32, 32, 3)), ("wrn28_10", (32, 32, 3)))


def planned_bytes(name: str, shape: tuple[int, int, int], batch: int = 128) -> int:
  """Arguments + outputs + temporaries − aliased (donated) bytes of one jitted train step."""
  model = get_model(name)
  x, y = jnp.zeros((batch, *shape)), jnp.zeros((batch,), jnp.int32)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(1e-3)

  def step(params, rest, opt, x, y):
    def loss(p):
      logits, updates = model.apply({"params": p, **rest}, x, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(1)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
    deltas, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, deltas), updates, opt, value

  compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, rest, tx.init(params), x, y).compile()
  m = compiled.memory_analysis()
  return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


if __name__ == "__main__":
  print(f"{jax.devices()[0].platform}, jax {jax.__version__}, batch 128, f32")
  for model_name, image_shape in MODELS:
    print(f"{model_name}: {planned_bytes(model_name, image_shape) / 2**30:.2f} GiB")
