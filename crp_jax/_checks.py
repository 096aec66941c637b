"""Argument checks of the public entry points: one ``ValueError`` or ``TypeError`` that names the argument.

Every check runs on the host before anything is traced or compiled. Shapes,
dtypes and Python numbers are static, so those checks also run when an
attack is traced inside the caller's ``jax.jit`` (once, at trace time, and
never again in the compiled loop). Value checks (images inside ``clip``,
labels inside ``[0, C)``, a non-negative ε given as an array) need the
values, so they run only where the value is concrete: a traced value is
the caller's own jitted data, which :func:`check_data` checks once on the
host before the loop.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: AutoAttack's spellings (and ours) of the three norms -> ours.
NORM_SPELLINGS: dict[str, str] = {"linf": "linf", "Linf": "linf", "LINF": "linf", "l2": "l2", "L2": "l2",
                                  "l1": "l1", "L1": "l1"}


def concrete(value: Any) -> bool:
  """Whether ``value``'s numbers are known here (not a tracer inside ``jit``, ``grad`` or ``vmap``)."""
  return not isinstance(value, jax.core.Tracer)


def _min_max(a: Any) -> tuple[Any, Any]:
  """``(min, max)`` of a concrete array as Python numbers, on the host: nothing is compiled, even inside a trace."""
  if isinstance(a, jax.Array) and not a.is_fully_addressable:   # another host holds part of it
    with jax.ensure_compile_time_eval():
      return jnp.min(a).item(), jnp.max(a).item()
  a = np.asarray(a)
  return a.min().item(), a.max().item()


def norm(value: Any, name: str = "norm") -> str:
  """``value`` as ``"linf"``, ``"l2"`` or ``"l1"`` (AutoAttack's ``"Linf"``, ``"L2"``, ``"L1"`` accepted)."""
  if not isinstance(value, str) or value not in NORM_SPELLINGS:
    raise ValueError(f"{name}={value!r}: unknown norm; use 'linf', 'l2' or 'l1' "
                     f"(AutoAttack's 'Linf', 'L2', 'L1' work too)")
  return NORM_SPELLINGS[value]


def count(value: Any, name: str, minimum: int = 1) -> int:
  """``value`` as an ``int >= minimum`` (a step count, a number of runs, a batch size)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}={value!r}: must be an integer >= {minimum}, got {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name}={value}: must be >= {minimum}")
  return int(value)


def nonnegative(value: Any, name: str = "eps") -> None:
  """``value`` (a number, or a concrete scalar array) is finite and ``>= 0``."""
  if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) or hasattr(value, "dtype")):
    raise TypeError(f"{name}={value!r}: must be a number >= 0")
  if isinstance(value, numbers.Real) or (concrete(value) and np.ndim(value) == 0):
    try:
      v = float(value)
    except (TypeError, ValueError):
      raise TypeError(f"{name}={value!r}: must be a number >= 0") from None
    if not np.isfinite(v) or v < 0:
      raise ValueError(f"{name}={v:g}: must be a finite number >= 0")


def clip_range(clip: Any, name: str = "clip") -> None:
  """``clip`` is ``None`` or ``(lo, hi)`` with ``lo < hi``."""
  if clip is None:
    return
  if not isinstance(clip, Sequence) or len(clip) != 2 or not all(isinstance(c, numbers.Real) for c in clip):
    raise TypeError(f"{name}={clip!r}: must be None or a pair of numbers (lo, hi)")
  if not clip[0] < clip[1]:
    raise ValueError(f"{name}={tuple(clip)}: lo must be below hi")


def images(x: Any, clip: Any = (0.0, 1.0), name: str = "x") -> None:
  """``x`` is a floating array of at least one example axis, inside ``clip`` where its values are known."""
  clip_range(clip)
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    raise TypeError(f"{name}: must be an array, got {type(x).__name__}")
  if not jnp.issubdtype(dtype, jnp.floating):
    hint = (" (uint8 images? divide by 255: x.astype(np.float32) / 255)"
            if jnp.issubdtype(dtype, jnp.integer) else "")
    where = "" if clip is None else f" in clip={tuple(clip)}"
    raise TypeError(f"{name}: {dtype} images; give floating-point pixels{where}{hint}")
  if np.ndim(x) < 1 or np.shape(x)[0] == 0:
    raise ValueError(f"{name}: shape {tuple(np.shape(x))}; needs a non-empty batch axis first")
  if clip is not None and concrete(x):
    lo, hi = _min_max(x)
    if not (clip[0] <= lo and hi <= clip[1]):
      raise ValueError(f"{name}: values in [{lo:g}, {hi:g}], outside clip={tuple(clip)} "
                       "(images in [0, 255]? divide by 255, or pass the range as clip)")


def labels(y: Any, batch: int, num_classes: int | None = None, name: str = "y") -> None:
  """``y`` is ``(batch,)`` integers, inside ``[0, num_classes)`` where its values are known."""
  dtype = getattr(y, "dtype", None)
  if dtype is None:
    raise TypeError(f"{name}: must be an integer array, got {type(y).__name__}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name}: {dtype} labels; give integer class indices")
  if np.shape(y) != (batch,):
    raise ValueError(f"{name}: shape {tuple(np.shape(y))}, but x has {batch} examples; give one label per example")
  if concrete(y) and batch:
    lo, hi = _min_max(y)
    if lo < 0 or (num_classes is not None and hi >= num_classes):
      where = "C" if num_classes is None else f"{num_classes}) (the logits have {num_classes} classes"
      raise ValueError(f"{name}: labels in [{lo}, {hi}], outside [0, {where})")


def ids(value: Any, batch: int, name: str) -> None:
  """``value`` is ``(batch,)`` integers (example or draw ids)."""
  dtype = getattr(value, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name}: must be an integer array, got {getattr(value, 'dtype', type(value).__name__)}")
  if np.shape(value) != (batch,):
    raise ValueError(f"{name}: shape {tuple(np.shape(value))}, but x has {batch} examples; give one per example")


def num_classes(logits_fn: Any, x: Any) -> int:
  """``C``, the width of ``logits_fn``'s output on one example of ``x`` (traced, not compiled)."""
  out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + tuple(np.shape(x))[1:], x.dtype))
  if len(out.shape) != 2:
    raise ValueError(f"logits_fn: returns shape {out.shape} for one example; must be (B, C) logits")
  return int(out.shape[1])


def attack_inputs(logits_fn: Any, x: Any, y: Any, *, clip: Any = (0.0, 1.0), eps: Any = None,
                  norm_name: Any = "linf") -> str:
  """The common checks of an attack; returns the norm in our spelling.

  ``C`` is read from ``logits_fn`` (by tracing one example) only when the
  labels are concrete, so an attack traced inside ``jit`` traces no more.
  """
  if not callable(logits_fn):
    raise TypeError(f"logits_fn: must be a function (B, *shape) -> (B, C), got {type(logits_fn).__name__}")
  out = norm(norm_name)
  if eps is not None:
    nonnegative(eps)
  images(x, clip)
  batch = int(np.shape(x)[0])
  labels(y, batch, num_classes(logits_fn, x) if concrete(y) else None)
  return out


def check_data(x: Any, y: Any, *, num_classes: int, clip: Any = (0.0, 1.0)) -> None:
  """The value checks of the attacks on your data, on the host: call it once before a jitted loop.

  Inside ``jax.jit`` an attack sees tracers and checks only shapes, dtypes
  and static settings; this checks the values (``x`` inside ``clip``,
  ``y`` in ``[0, num_classes)``) with the same messages.
  """
  images(x, clip)
  labels(y, int(np.shape(x)[0]), count(num_classes, "num_classes"))
