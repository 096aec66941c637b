"""Randomized smoothing: exact on linear models, Clopper–Pearson against scipy, abstention, keys, the CLI."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from crp_jax import certify
from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear(w: np.ndarray, b: float):
  """sign(w·x + b) as two logits: class 1 where w·x + b > 0."""
  w = jnp.asarray(w, jnp.float32)
  return lambda x: jnp.stack([-(x.reshape(len(x), -1) @ w + b), x.reshape(len(x), -1) @ w + b], -1)


def points(w: np.ndarray, b: float, distances: np.ndarray, seed: int = 0) -> np.ndarray:
  """Random points at signed distances ``distances`` from the hyperplane w·x + b = 0."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(distances), len(w)))
  unit = w / np.linalg.norm(w)
  x -= ((x @ w + b) / np.linalg.norm(w))[:, None] * unit   # onto the plane
  return (x + distances[:, None] * unit).astype(np.float32)


W, B = np.array([0.6, -1.2, 0.4, 2.0, 0.1]), 0.3


def test_radius_never_exceeds_the_distance_to_the_hyperplane_and_reaches_it_at_large_n():
  """P(f(x + ε) = c) = Φ(|w·x + b| / (σ‖w‖)), so the true radius is the distance |w·x + b| / ‖w‖.

  Each certificate may exceed it with probability α; at α = 1e-6 no draw of the six should (at
  α = 0.001 one key put a point 3.2 standard errors high, as 1 in 700 draws would).
  """
  sigma, n, alpha = 0.5, 200_000, 1e-6
  distances = np.array([0.1, 0.3, 0.5, -0.5, 0.8, -1.0])
  x = points(W, B, distances)
  cert = certify.certify(linear(W, B), jnp.asarray(x), key=jax.random.key(0), sigma=sigma, n0=100, n=n,
                         alpha=alpha, batch_size=5000)
  np.testing.assert_array_equal(cert.prediction, (distances > 0).astype(int))
  assert np.all(cert.radius <= np.abs(distances))
  # Tolerance: at n = 200k and α = 1e-6 the Clopper–Pearson bound sits ~4.8 standard errors below
  # Φ(d/σ), < 0.009 in radius for d/σ <= 2; 0.02 leaves room for the Monte Carlo draw itself.
  np.testing.assert_allclose(cert.radius, np.abs(distances), atol=0.02)


def test_many_random_points_are_never_over_certified():
  sigma = 0.25
  distances = np.random.default_rng(1).uniform(-0.6, 0.6, 64)
  x = points(W, B, distances, seed=2)
  cert = certify.certify(linear(W, B), jnp.asarray(x), key=jax.random.key(3), sigma=sigma, n0=50, n=2000,
                         alpha=0.001, batch_size=500)
  ok = cert.prediction != certify.ABSTAIN
  assert ok.sum() > 40
  assert np.all(cert.radius[ok] <= np.abs(distances[ok]))
  assert np.all(cert.prediction[ok] == (distances[ok] > 0))


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_lower_bound_matches_scipy_exact_interval(alpha):
  trials = 1000
  counts = np.array([1, 5, 100, 500, 900, 999, 1000])
  ours = certify.lower_confidence_bound(counts, trials, alpha)
  # The one-sided bound at 1 − α is the lower end of the two-sided exact interval at 1 − 2α.
  theirs = [stats.binomtest(int(k), trials).proportion_ci(1 - 2 * alpha, method="exact").low for k in counts]
  np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
  assert certify.lower_confidence_bound(np.array([0]), trials, alpha)[0] == 0.0


def test_tied_classes_abstain():
  """At a point on the hyperplane both classes have probability 1/2: PREDICT and CERTIFY abstain."""
  x = points(W, B, np.zeros(4))
  f = linear(W, B)
  pred = certify.predict(f, jnp.asarray(x), key=jax.random.key(0), sigma=0.5, n=4000, alpha=0.001, batch_size=1000)
  assert np.all(pred == certify.ABSTAIN)
  cert = certify.certify(f, jnp.asarray(x), key=jax.random.key(0), sigma=0.5, n0=100, n=4000, batch_size=1000)
  assert np.all(cert.prediction == certify.ABSTAIN) and np.all(cert.radius == 0)


def test_counts_depend_on_the_key_only_not_on_batch_size_or_sharding():
  x = jnp.asarray(points(W, B, np.linspace(-0.2, 0.2, 8)))
  f = linear(W, B)
  kw = dict(key=jax.random.key(7), sigma=0.5, num=3000)
  a = certify.counts_of(f, x, batch_size=1000, **kw)
  assert a.sum() == 8 * 3000 and np.all(a.sum(1) == 3000)
  np.testing.assert_array_equal(a, certify.counts_of(f, x, batch_size=1000, **kw))       # deterministic
  np.testing.assert_array_equal(a, certify.counts_of(f, x, batch_size=128, **kw))        # 3000 % 128 != 0
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  np.testing.assert_array_equal(a, certify.counts_of(f, x, batch_size=700, mesh=mesh, **kw))
  other = certify.counts_of(f, x, batch_size=1000, **{**kw, "key": jax.random.key(8)})
  assert not np.array_equal(a, other)
  ids = jnp.arange(8) + 100   # a row's noise follows its id, wherever the row sits
  by_id = certify.counts_of(f, x, batch_size=1000, ids=ids, **kw)
  np.testing.assert_array_equal(by_id[::-1], certify.counts_of(f, x[::-1], batch_size=1000, ids=ids[::-1], **kw))


@pytest.mark.parametrize("kw, message", [
    (dict(sigma=0.0), "sigma=0.0: must be > 0"), (dict(sigma=-1.0), "must be > 0"),
    (dict(n0=0), "n0=0"), (dict(n=0), "n=0"), (dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"),
    (dict(batch_size=0), "batch_size=0")])
def test_bad_arguments_are_refused(kw, message):
  args = {**dict(key=jax.random.key(0), sigma=0.5, n0=10, n=10, alpha=0.01, batch_size=10), **kw}
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    certify.certify(linear(W, B), jnp.zeros((2, 5)), **args)


def test_max_radius():
  assert certify.max_radius(0.5, 100_000, 0.001) == pytest.approx(0.5 * stats.norm.ppf(0.001 ** 1e-5))
  assert certify.max_radius(0.5, 10_000, 0.001) < certify.max_radius(0.5, 100_000, 0.001)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny standard LeNet trained by the CLI (for the certify CLI tests)."""
  root = tmp_path_factory.mktemp("certify")
  cmd = [sys.executable, "-m", "experiments.run", f"--workdir={root}", "--progress=false", "--config.compare_with=",
         "--config.method=standard", "--config.epochs=1", "--config.train_subset=256", "--config.eval.attack_subset=8",
         "--config.eval.pgd_steps=(1,)", "--config.eval.batch_size=8", "--config.eval.strong=False"]
  p = cli_server.run(cmd[2], cmd[3:], timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return root


def certify_cli(*args):
  cmd = [sys.executable, "-m", "experiments.certify", "--progress=false", *args]
  return cli_server.run(cmd[2], cmd[3:], timeout=600)


def test_certify_cli_writes_table_json_and_plot(trained):
  p = certify_cli(f"--workdir={trained}", "--config.eval.certify.sigma=0.25", "--config.eval.certify.n0=20",
                  "--config.eval.certify.n=200", "--config.eval.certify.batch_size=100",
                  "--config.eval.certify.num_examples=16", "--config.eval.certify.radii=(0,0.25,0.5)")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| standard |" in p.stdout and "r = 0.25" in p.stdout
  record = json.loads((trained / "certify-sigma0.25.json").read_text())
  r = record["models"]["standard"]
  acc = list(r["certified_accuracy"].values())
  assert len(acc) == 3 and acc == sorted(acc, reverse=True) and 0 < acc[0] <= 1
  assert r["num_examples"] == 16 and record["spec"]["n"] == 200
  assert max(r["radius"]) <= certify.max_radius(0.25, 200, 0.001) + 1e-9
  assert (trained / "certify-sigma0.25.png").read_bytes()[:4] == b"\x89PNG"
  assert (trained / "certify-sigma0.25.md").exists()
  # The evaluation plan's certify entry (eval.certify) gives the command's numbers, example by example.
  section = plan_certification(r["workdir"], sigma=0.25, n0=20, n=200, batch_size=100, num_examples=16,
                               radii=(0.0, 0.25, 0.5))
  for field in ("radius", "prediction", "label", "certified_accuracy", "abstain_rate"):
    assert section[field] == r[field], field
  assert section["max_radius"] == certify.max_radius(0.25, 200, 0.001)


def test_evaluate_cli_certifies_a_saved_model(trained):
  cmd = [sys.executable, "-m", "experiments.evaluate", f"--workdir={trained}", "--progress=false"]
  p = cli_server.run(cmd[2], cmd[3:] + ["--config.eval.certify.sigma=0.25", "--config.eval.certify.n=200",
                                         "--config.eval.certify.num_examples=16"], timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "certified at L2 radius 0.5 |" in p.stdout and "Certified (a proof" in p.stdout
  section = json.loads((trained / "evaluation.json").read_text())["standard"]["evaluation"]["certify"]
  assert section["spec"]["sigma"] == 0.25 and section["spec"]["n"] == 200 and section["spec"]["n0"] == 100
  assert section["num_examples"] == 16 and len(section["certified_accuracy"]) == len(certify.DEFAULT_RADII)
  bad = cli_server.run(cmd[2], cmd[3:] + ["--config.eval.certify.sigma=-1.0"], timeout=600)
  assert bad.returncode == 2 and "config.eval.certify.sigma=-1.0: must be > 0" in bad.stderr, bad.stderr[-2000:]
  assert len(bad.stderr.strip().splitlines()) == 1


def plan_certification(workdir, **fields):
  """The ``certify`` section of ``workdir``'s model evaluated with ``eval.certify`` set to ``fields``."""
  from crp_jax import data  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import evaluators, pipeline, report, train, meshes  # pylint: disable=g-import-not-at-top
  trained = pipeline.load_trained(workdir)
  trained.config.eval.certify.update(fields)
  trained.config.eval.strong = False
  test = data.load_split(trained.config.dataset, "test")
  assert [e.name for e in evaluators.build_plan(trained.config.eval)] == ["paper", "certify"]
  out = pipeline.evaluate_all({"m": trained}, test, mesh=meshes.make_mesh(), progress=False)
  table = report.accuracy_table({"m": {"config": trained.config.to_dict(), "evaluation": out["m"]}})
  assert "certified at L2 radius 0.25" in table and "abstained" in table, table
  return out["m"]["certify"]


@pytest.mark.parametrize("fields, message", [
    (dict(sigma=-0.5), "config.eval.certify.sigma=-0.5: must be > 0"),
    (dict(alpha=1.0), "config.eval.certify.alpha=1.0"), (dict(n=0), "config.eval.certify.n=0"),
    (dict(n0=0), "config.eval.certify.n0=0"), (dict(radii=(-1.0,)), "config.eval.certify.radii")])
def test_certify_evaluator_bad_config_is_refused(fields, message):
  from crp_jax.runner import config as config_lib, evaluators  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  assert [e.name for e in evaluators.build_plan(config.eval)] == ["paper", "strong"]  # off by default
  config.eval.certify.update({"sigma": 0.25, **fields})
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    config_lib.validate(config)


C = "--config.eval.certify."


@pytest.mark.parametrize("args, message", [
    ([f"{C}sigma=0"], f"{C}sigma=0.0: must be > 0"), ([f"{C}sigma=0.5", f"{C}n0=0"], f"{C}n0=0"),
    ([f"{C}sigma=0.5", f"{C}n=0"], f"{C}n=0"), ([f"{C}sigma=0.5", f"{C}alpha=1.5"], f"{C}alpha=1.5"),
    ([f"{C}sigma=0.5", f"{C}radii=a"], f"{C}radii=a"), ([], f"{C}sigma=0.0: must be > 0"),
    (["--sigma=0.5"], f"--sigma: renamed; use {C}sigma=0.5"), ([f"{C}nn=5"], "has no field 'nn'")])
def test_certify_cli_bad_input_is_one_line_and_exit_2(trained, args, message):
  p = certify_cli(f"--workdir={trained}", *args)
  assert p.returncode == 2, p.stderr[-2000:]
  assert message in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
