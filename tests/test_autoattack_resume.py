"""Resumable AutoAttack: a run stopped after any attack or chunk, or SIGKILLed, resumes to the same bits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from crp_jax import attacks
from crp_jax.attacks import _chain_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A linear model, one row at a time, on 48 examples in chunks of 16: AutoAttack standard's four
# attacks, three chunks each while examples remain. The same code runs in the killed subprocess.
SETUP = textwrap.dedent("""
    import jax, jax.numpy as jnp
    kw, kx = jax.random.split(jax.random.key(3))
    w = jax.random.normal(kw, (36, 10))
    logits_fn = lambda x: jax.lax.map(lambda row: row.reshape(-1) @ w, x)
    x = jax.random.uniform(kx, (48, 6, 6, 1))
    y = jnp.argmax(logits_fn(x), axis=1)
    ARGS = dict(key=jax.random.key(7), eps=0.03, batch_size=16, log=None, apgd_steps=6, fab_steps=6,
                num_targets=3, square_queries=30)
""")
exec(SETUP)  # pylint: disable=exec-used


class Stop(Exception):
  pass


def _same(a: attacks.AutoAttackResult, b: attacks.AutoAttackResult) -> None:
  np.testing.assert_array_equal(a.x_adv, b.x_adv)
  np.testing.assert_array_equal(a.clean, b.clean)
  assert list(a.chain.robust_after) == list(b.chain.robust_after)
  for name, robust in a.chain.robust_after.items():
    np.testing.assert_array_equal(b.chain.robust_after[name], robust, err_msg=name)
  assert a.chain.attacked == b.chain.attacked


@pytest.fixture(scope="module")
def reference():
  r = attacks.autoattack(logits_fn, x, y, **ARGS)  # noqa: F821 (from SETUP)
  # Every attack runs on some examples and the last still leaves some robust: each stop below is real.
  assert all(n > 0 for n in r.chain.attacked.values()) and 0 < r.robust_accuracy < r.clean_accuracy
  return r


def _saves(folder) -> int:
  """How many times a full uninterrupted run with state in ``folder`` saves."""
  count = [0]
  real = _chain_state.ChainState.save

  def counting(self):
    count[0] += 1
    real(self)

  _chain_state.ChainState.save = counting
  try:
    attacks.autoattack(logits_fn, x, y, state_dir=folder, **ARGS)  # noqa: F821
  finally:
    _chain_state.ChainState.save = real
  return count[0]


def test_a_run_stopped_after_any_chunk_or_attack_resumes_to_the_same_bits(reference, tmp_path, monkeypatch):
  total = _saves(tmp_path / "count")
  assert total >= 8   # chunks and the four attacks' ends
  _same(reference, attacks.autoattack(logits_fn, x, y, state_dir=tmp_path / "count", **ARGS))  # all restored
  real = _chain_state.ChainState.save
  for stop_after in range(1, total):
    folder = tmp_path / f"stop{stop_after}"
    calls = [0]

    def stopping(self):
      real(self)
      calls[0] += 1
      if calls[0] == stop_after:
        raise Stop

    monkeypatch.setattr(_chain_state.ChainState, "save", stopping)
    with pytest.raises(Stop):
      attacks.autoattack(logits_fn, x, y, state_dir=folder, **ARGS)  # noqa: F821
    monkeypatch.setattr(_chain_state.ChainState, "save", real)
    _same(reference, attacks.autoattack(logits_fn, x, y, state_dir=folder, **ARGS))  # noqa: F821


def test_a_killed_subprocess_resumes_to_the_same_bits(reference, tmp_path):
  out = tmp_path / "result.npz"
  script = SETUP + textwrap.dedent(f"""
      import os, signal, sys
      import numpy as np
      from crp_jax import attacks
      from crp_jax.attacks import _chain_state
      kill_after = int(os.environ.get("KILL_AFTER_SAVES", "0"))
      if kill_after:
        real, calls = _chain_state.ChainState.save, [0]
        def save(self):
          real(self)
          calls[0] += 1
          if calls[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        _chain_state.ChainState.save = save
      r = attacks.autoattack(logits_fn, x, y, state_dir=sys.argv[1], **ARGS)
      np.savez({str(out)!r}, x_adv=r.x_adv, **{{k: v for k, v in r.chain.robust_after.items()}})
  """)
  folder = str(tmp_path / "state")
  # The five processes share compiled programs through a cache of their own: a SIGKILL can cut a cache
  # write short, and a truncated entry must not reach the suite's cache (conftest.py).
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache")}
  for kill_after in (2, 3, 3, 3):   # each killed run goes 2-3 saves further (chunks and attacks' ends)
    killed = subprocess.run([sys.executable, "-c", script, folder], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "KILL_AFTER_SAVES": str(kill_after)}, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
  done = subprocess.run([sys.executable, "-c", script, folder], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with np.load(out) as f:
    np.testing.assert_array_equal(f["x_adv"], reference.x_adv)
    for name, robust in reference.chain.robust_after.items():
      np.testing.assert_array_equal(f[name], robust, err_msg=name)
  assert os.listdir(folder) == [_chain_state.FILE_NAME]   # no temporary file left


def test_a_state_of_other_arguments_is_refused(reference, tmp_path):
  attacks.autoattack(logits_fn, x, y, state_dir=tmp_path, **{**ARGS, "custom": ["apgd-ce"]})  # noqa: F821
  with pytest.raises(ValueError, match="state_dir: .* other arguments"):
    attacks.autoattack(logits_fn, x, y, state_dir=tmp_path, **{**ARGS, "eps": 0.05, "custom": ["apgd-ce"]})
  with pytest.raises(TypeError, match="state_dir"):
    attacks.autoattack(logits_fn, x, y, state_dir=3, **ARGS)  # noqa: F821
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match="state_dir: .* is a file"):
    attacks.autoattack(logits_fn, x, y, state_dir=tmp_path / "a_file", **ARGS)  # noqa: F821


def test_the_command_lines_evaluation_reads_back_the_batches_it_saved(tmp_path):
  """``run_specs`` with a store: the same bits as without; a second call computes nothing it saved."""
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from crp_jax import _files, models  # pylint: disable=g-import-not-at-top
  from crp_jax.data import Split  # pylint: disable=g-import-not-at-top
  from crp_jax.runner.evaluators import batches  # pylint: disable=g-import-not-at-top
  module = models.LeNet(num_classes=10)
  variables = module.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32), train=False)
  rng = np.random.default_rng(0)
  split = Split(rng.integers(0, 256, (24, 28, 28, 1), np.uint8), rng.integers(0, 10, 24).astype(np.int32),
                np.arange(24, dtype=np.int32), 10, (28, 28, 1))
  spec = attacks.AttackSpec("pgd", eps=0.1, step_size=0.02, steps=3, name="pgd")
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  common = dict(batch_size=8, mesh=mesh, progress=False)
  plain = batches.run_specs(module, variables, split, (spec,), jax.random.key(1), **common)[spec]
  store = batches.open_store(str(tmp_path), variables)
  first = batches.run_specs(module, variables, split, (spec,), jax.random.key(1), store=store, **common)[spec]
  np.testing.assert_array_equal(first, plain)
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 3   # one per batch
  # Flip what one saved batch says: a second run must read it, not compute it again.
  path = os.path.join(tmp_path, files[0])
  with np.load(path, allow_pickle=False) as f:
    flipped = ~f["result"]
  _files.write_arrays(path, {"result": flipped})
  again = batches.run_specs(module, variables, split, (spec,), jax.random.key(1), store=store, **common)[spec]
  assert int(np.sum(again != plain)) == 8
  # Another key, or other variables, is another tag: nothing is read back.
  other = batches.run_specs(module, variables, split, (spec,), jax.random.key(2), store=store, **common)[spec]
  assert len(os.listdir(tmp_path)) == 6 and other.shape == plain.shape
