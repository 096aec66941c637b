"""Checked inputs at every public entry point of the library: one ValueError/TypeError naming the argument.

Each bad call must raise before anything is compiled (no XLA backend
compile during the call), with a one-line message that names the argument
and what was found. Inside the caller's ``jax.jit`` the value checks are
skipped (the values are tracers) and the rest run at trace time only, so a
jitted loop pays nothing: the traced program holds no check.

``python -m tests.test_library_inputs`` prints the table of cases and messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks, ball_loss, certify, make_delta, perturb

B, C = 4, 10
W = jax.random.normal(jax.random.key(0), (28 * 28, C))
F = lambda z: z.reshape(z.shape[0], -1) @ W   # a linear "model": (B, 28, 28, 1) -> (B, C)
X = jax.random.uniform(jax.random.key(1), (B, 28, 28, 1))
Y = jnp.arange(B, dtype=jnp.int32)
IDS = jnp.arange(B, dtype=jnp.int32)
KEY = jax.random.key(2)
POINT = lambda x, y: jnp.sum(F(x), axis=1) * 0.0 + y * 0.0   # a per-example loss, (B,)
# Bad arrays made here, so that a case's call itself compiles nothing unless the library does.
X255, XU8, X2D, X_UP = X * 255, (X * 255).astype(jnp.uint8), X.reshape(B, -1), X + 1
YF, Y_UP, NARROW, HALF_IDS, IDS_1 = Y.astype(jnp.float32), Y + C, X[:, :3], IDS * 0.5, IDS[:1]


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  call: Callable[[], Any]
  error: type
  names: tuple[str, ...]   # must appear in the message


def pgd(**kw):
  args = dict(key=KEY, eps=0.3, step_size=0.01, num_steps=2)
  args.update(kw)
  x, y = args.pop("x", X), args.pop("y", Y)
  return lambda: attacks.pgd(F, x, y, **args)


def aa(**kw):
  args = dict(key=KEY, eps=0.3, log=None, apgd_steps=1, fab_steps=1, num_targets=2, square_queries=4)
  args.update(kw)
  x, y = args.pop("x", X), args.pop("y", Y)
  return lambda: attacks.autoattack(F, x, y, **args)


def ball(**kw):
  args = dict(key=KEY, example_ids=IDS, num_perturbations=2, eps=0.3)
  args.update(kw)
  x, y = args.pop("x", X), args.pop("y", Y)
  return lambda: ball_loss(POINT, x, y, **args)


CASES = (
    Case("pgd: images in [0, 255]", pgd(x=X255), ValueError, ("x", "outside clip", "255")),
    Case("fgsm: uint8 images", lambda: attacks.fgsm(F, XU8, Y, eps=0.3), TypeError,
         ("x", "uint8", "255")),
    Case("pgd: a label = C", pgd(y=Y.at[0].set(C)), ValueError, ("y", "[0, 10)", "10")),
    Case("pgd: a negative label", pgd(y=Y.at[0].set(-1)), ValueError, ("y", "-1")),
    Case("pgd: float labels", pgd(y=YF), TypeError, ("y", "float32")),
    Case("pgd: one label too few", pgd(y=Y[:-1]), ValueError, ("y", "(3,)", "4 examples")),
    Case("pgd: negative eps", pgd(eps=-0.1), ValueError, ("eps=-0.1",)),
    Case("pgd: eps nan", pgd(eps=float("nan")), ValueError, ("eps=nan",)),
    Case("pgd: eps a string", pgd(eps="0.3"), TypeError, ("eps='0.3'",)),
    Case("pgd: unknown norm", pgd(norm="l3"), ValueError, ("norm='l3'", "'Linf'")),
    Case("pgd: negative steps", pgd(num_steps=-1), ValueError, ("num_steps=-1",)),
    Case("pgd: 2.5 steps", pgd(num_steps=2.5), TypeError, ("num_steps=2.5",)),
    Case("pgd: no restarts", pgd(restarts=0), ValueError, ("restarts=0",)),
    Case("pgd: negative step size", pgd(step_size=-0.01), ValueError, ("step_size=-0.01",)),
    Case("pgd: unknown loss", pgd(loss="hinge"), ValueError, ("loss='hinge'",)),
    Case("pgd: clip backwards", pgd(clip=(1.0, 0.0)), ValueError, ("clip=(1.0, 0.0)",)),
    Case("pgd: logits_fn not a function", lambda: attacks.pgd("lenet", X, Y, key=KEY, eps=0.3, step_size=0.1,
                                                              num_steps=1), TypeError, ("logits_fn",)),
    Case("apgd: 0 steps", lambda: attacks.apgd(F, X, Y, key=KEY, eps=0.3, num_steps=0), ValueError,
         ("num_steps=0",)),
    Case("apgd_targeted: 0 targets", lambda: attacks.apgd_targeted(F, X, Y, key=KEY, eps=0.3, num_targets=0),
         ValueError, ("num_targets=0",)),
    Case("fab: clip=None", lambda: attacks.fab(F, X, Y, key=KEY, eps=0.3, clip=None), ValueError, ("clip=None",)),
    Case("fab: images above 1", lambda: attacks.fab(F, X_UP, Y, key=KEY, eps=0.3), ValueError,
         ("x", "outside clip")),
    Case("square: 1 query", lambda: attacks.square(F, X, Y, key=KEY, eps=0.3, num_queries=1), ValueError,
         ("num_queries=1",)),
    Case("square: L0", lambda: attacks.square(F, X, Y, key=KEY, eps=0.3, norm="l0"), ValueError, ("norm='l0'",)),
    Case("square: not NHWC", lambda: attacks.square(lambda z: z @ W, X2D, Y, key=KEY, eps=0.3),
         ValueError, ("x", "NHWC")),
    Case("random_noise: 0 samples", lambda: attacks.random_noise(F, X, Y, key=KEY, eps=0.3, num_samples=0),
         ValueError, ("num_samples=0",)),
    Case("strong_eval: 0 APGD steps", lambda: attacks.strong_eval(F, X, Y, key=KEY, eps=0.3, apgd_steps=0),
         ValueError, ("apgd_steps=0",)),
    Case("AttackSpec: unknown kind", lambda: attacks.AttackSpec("pgdx"), ValueError, ("kind='pgdx'",)),
    Case("autoattack: unknown version", aa(version="rand"), ValueError, ("version='rand'",)),
    Case("autoattack: norm L0", aa(norm="L0"), ValueError, ("norm='L0'",)),
    Case("autoattack: images in [0, 255]", aa(x=X255), ValueError, ("x", "outside clip")),
    Case("autoattack: float labels", aa(y=YF), TypeError, ("y", "float32")),
    Case("autoattack: labels above C", aa(y=Y_UP), ValueError, ("y", "[0, 10)")),
    Case("autoattack: batch_size 0", aa(batch_size=0), ValueError, ("batch_size=0",)),
    Case("autoattack: 0 APGD steps", aa(apgd_steps=0), ValueError, ("apgd_steps=0",)),
    Case("autoattack: unknown custom attack", aa(custom=["pgd"]), ValueError, ("'pgd'",)),
    Case("check_data: labels above C", lambda: attacks.check_data(X, Y_UP, num_classes=C), ValueError,
         ("y", "[0, 10)")),
    Case("ball_loss: K = 0", ball(num_perturbations=0), ValueError, ("num_perturbations=0",)),
    Case("ball_loss: negative eps", ball(eps=-0.3), ValueError, ("eps=-0.3",)),
    Case("ball_loss: ids too short", ball(example_ids=IDS[:2]), ValueError, ("example_ids", "(2,)", "4 examples")),
    Case("ball_loss: float ids", ball(example_ids=IDS.astype(jnp.float32)), TypeError, ("example_ids", "float32")),
    Case("ball_loss: images in [0, 255]", ball(x=X255), ValueError, ("x", "outside clip")),
    Case("ball_loss: labels of another batch", ball(y=jnp.zeros(3, jnp.int32)), ValueError, ("y", "4 examples")),
    Case("ball_loss: uint8 images", ball(x=XU8), TypeError, ("x", "uint8")),
    Case("ball_loss: draws_per_chunk 0", ball(draws_per_chunk=0), ValueError, ("draws_per_chunk",)),
    Case("perturb: uint8 images", lambda: perturb(XU8, X), TypeError, ("x", "uint8")),
    Case("perturb: delta of another shape", lambda: perturb(X, NARROW), ValueError, ("delta", "(4, 3, 28, 1)")),
    Case("make_delta: negative eps", lambda: make_delta(IDS, IDS, (2,), key=KEY, eps=-1.0), ValueError,
         ("eps=-1",)),
    Case("make_delta: float draw ids", lambda: make_delta(IDS, HALF_IDS, (2,), key=KEY, eps=0.3), TypeError,
         ("draw_ids", "float32")),
    Case("make_delta: unknown law", lambda: make_delta(IDS, IDS, (2,), key=KEY, eps=0.3, distribution="laplace"),
         ValueError, ("distribution='laplace'",)),
    Case("make_delta: key given positionally", lambda: make_delta(KEY, IDS, IDS, (2,), eps=0.3), TypeError,
         ("key",)),
    Case("certify: sigma 0", lambda: certify.certify(F, X, key=KEY, sigma=0.0, n0=10, n=10), ValueError,
         ("sigma=0.0",)),
    Case("certify: n = 0", lambda: certify.certify(F, X, key=KEY, sigma=0.25, n0=10, n=0), ValueError, ("n=0",)),
    Case("certify: n a string", lambda: certify.certify(F, X, key=KEY, sigma=0.25, n0=10, n="100"), TypeError,
         ("n='100'",)),
    Case("certify: uint8 images", lambda: certify.certify(F, XU8, key=KEY, sigma=0.25, n0=10, n=10), TypeError, ("x", "uint8")),
    Case("certify: ids too short", lambda: certify.certify(F, X, key=KEY, sigma=0.25, n0=10, n=10, ids=IDS_1),
         ValueError, ("ids", "(1,)")),
)

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.mark.usefixtures("no_persistent_cache")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_named_error_before_any_compile(case):
  compiles = []
  listener = lambda name, secs, **kw: compiles.append(name) if name == BACKEND_COMPILE else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises(case.error) as info:
      case.call()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  message = str(info.value)
  assert "\n" not in message.strip()
  for name in case.names:
    assert name in message, (name, message)
  assert compiles == [], f"{len(compiles)} XLA compiles before the error"


def test_autoattack_spellings_of_the_norms_are_accepted():
  for norm, want in (("Linf", "linf"), ("L2", "l2"), ("linf", "linf")):
    r = attacks.autoattack(F, X, jnp.argmax(F(X), 1).astype(jnp.int32), key=KEY, eps=0.0, norm=norm, log=None,
                           custom=["apgd-ce"], apgd_steps=1)
    assert r.norm == want and r.robustbench_entry()["norm"] == {"linf": "Linf", "l2": "L2"}[want]
  x_adv = attacks.pgd(F, X, Y, key=KEY, eps=0.1, step_size=0.05, num_steps=2, norm="Linf")
  assert float(jnp.max(jnp.abs(x_adv - X))) <= 0.1 + 1e-6


def test_in_a_jitted_loop_the_checks_are_not_in_the_program():
  # Traced x and y: only static checks run, once, at trace time; the program has no check left in it.
  jaxpr = str(jax.make_jaxpr(lambda x, y: attacks.fgsm(F, x, y, eps=0.3))(X, Y))
  assert "reduce_min" not in jaxpr and "callback" not in jaxpr
  # Bad values under jit are the caller's to check once on the host: check_data does that.
  out = jax.jit(lambda x, y: attacks.fgsm(F, x, y, eps=0.3))(X * 255, Y)   # no error inside jit
  assert out.shape == X.shape
  with pytest.raises(ValueError, match="outside clip"):
    attacks.check_data(X255, Y, num_classes=C)
  with pytest.raises(ValueError, match="eps=-0.3"):   # static settings are checked under jit too
    jax.jit(lambda x, y: attacks.fgsm(F, x, y, eps=-0.3))(X, Y)


def table() -> str:
  """The cases and their messages, one per line (``python -m tests.test_library_inputs``)."""
  lines = []
  for c in CASES:
    try:
      c.call()
      lines.append(f"| {c.id} | (no error) |")
    except (ValueError, TypeError) as e:
      lines.append(f"| {c.id} | {type(e).__name__}: {e} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(table())
