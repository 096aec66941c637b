"""Model FLOPs and hardware peaks for the MFU row of ``python -m benchmarks.run``.

MFU (model FLOPs utilisation) = FLOPs per image × images/s ÷ the device's
peak. The model's FLOPs are counted from its jaxpr, not from what XLA ran:

.. math::
  F_\\text{fwd} = \\sum_\\text{conv} 2\\,|y|\\,k_h k_w C_\\text{in}/g
                + \\sum_\\text{dot} 2\\,|y|\\,\\prod_\\text{contracted} n,
  \\qquad F_\\text{train} = 3\\,F_\\text{fwd}

(the backward pass costs two forward passes: one for the input gradient,
one for the kernel gradient). Element-wise work (BatchNorm, ReLU, Adam) is
left out, as in the usual MFU convention, so MFU is a lower bound on how
busy the matrix units are.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

# Dense (no sparsity) bf16 peaks from the vendors' datasheets, in FLOP/s,
# matched against ``device.device_kind`` in this order.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),    # SXM
    ("H200", 989.4e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v6", 918e12),
)


def _jaxprs(params: dict[str, Any]):
  """The sub-jaxprs held by an equation's params (pjit, custom_vjp, remat, cond ...)."""
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      inner = getattr(v, "jaxpr", v)
      if hasattr(inner, "eqns"):
        yield inner


def _eqn_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
    spec = eqn.params["dimension_numbers"].rhs_spec   # (out features, in features, *spatial)
    return 2 * math.prod(out.shape) * math.prod(rhs.shape[d] for d in spec[1:])
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
  inner = [jaxpr_flops(j) for j in _jaxprs(eqn.params)]
  if name == "cond":
    return max(inner, default=0)
  return sum(inner) * int(eqn.params.get("length", 1))   # scan repeats its body


def jaxpr_flops(jaxpr) -> int:
  """Multiply-add FLOPs (2 per MAC) of the convolutions and matmuls in ``jaxpr``."""
  return sum(_eqn_flops(e) for e in jaxpr.eqns)


def forward_flops(model: Any, shape: tuple[int, ...]) -> int:
  """Forward FLOPs of ``model`` on one ``shape`` image (eval mode, traced, nothing computed)."""
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return jaxpr_flops(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x).jaxpr)


def peak_bf16(device: jax.Device) -> float | None:
  """The datasheet's dense bf16 FLOP/s of ``device``, or ``None`` (CPU, unknown card)."""
  kind = getattr(device, "device_kind", "")
  return next((peak for name, peak in PEAK_BF16 if name.lower() in kind.lower()), None)


def matmul_bf16(n: int = 8192, repeats: int = 30, warmup: int = 20) -> float:
  """Measured FLOP/s of an ``n × n × n`` bf16 matmul on the default device (median of ``repeats``).

  The ``warmup`` calls also let the clocks ramp up from idle.
  """
  import statistics  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
  f = jax.jit(lambda a, b: a @ b)
  for _ in range(warmup):
    f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)
