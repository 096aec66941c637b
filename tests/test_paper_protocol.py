"""The paper's protocol as §2 and §4.1 describe it: Madry's PGD (random start, last iterate), the
black-box matrix of FGSM and PGD-n among models, and the report rows that show it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax import attacks, data
from crp_jax.attacks import AttackSpec, _autoattack
from crp_jax.runner import evaluators, report, train, meshes
from crp_jax.runner.evaluators import batches
from crp_jax.runner import config as base
from crp_jax.runner.evaluators.paper import PaperProtocol, black_box_specs, paper_specs
from crp_jax.runner.evaluators.strong import StrongProtocol


def cfg(**kw):
  c = base.eval_config(eps=0.3, step_size=1 / 255)
  c.update(dict(pgd_steps=(2, 5), extra_step_size=0.01, attack_subset=16, batch_size=8, strong=False))
  c.update(kw)
  return c


def test_default_pgd_is_madry_with_a_random_start_and_the_last_iterate():
  specs = {s.name: s for s in paper_specs(cfg())}
  assert base.eval_config(eps=0.3, step_size=0.01).random_start
  for name in ("pgd2", "pgd5", "pgd2-rs", "pgd5-rs"):
    assert specs[name].random_start and specs[name].last_iterate, name
  assert specs["pgd5"].label == "PGD-5 (η=0.003922, random start, last iterate)"
  assert specs["pgd5-rs"].label == "PGD-5 (η=0.01, random start, last iterate)"
  # The key paths are those of before the change, so FGSM's bits do not move.
  assert [s.key_path for s in specs.values()] == [(), (0,), (1,), (2,), (3,), (4,)]
  assert specs["fgsm"] == AttackSpec("fgsm", eps=0.3, name="fgsm", label="FGSM", key_path=(0,))


def test_bim_option_keeps_the_extra_rows_random():
  specs = {s.name: s for s in paper_specs(cfg(random_start=False))}
  assert not specs["pgd2"].random_start and specs["pgd2"].last_iterate
  assert specs["pgd2"].label == "PGD-2 (η=0.003922, no random start, last iterate)"
  assert specs["pgd2-rs"].random_start and specs["pgd2-rs"].last_iterate


def test_black_box_specs_are_fgsm_and_pgd_at_the_papers_step():
  assert [s.name for s in black_box_specs(cfg())] == ["fgsm", "pgd2", "pgd5"]
  assert PaperProtocol(cfg()).transfer_specs == black_box_specs(cfg())
  strong = StrongProtocol(cfg(strong=True))
  assert strong.transfer_specs == (strong.transfer_spec,)
  assert strong.transfer_spec.kind == "apgd" and strong.transfer_spec.key_path == ()


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(10)(nn.relu(nn.Dense(16)(x.reshape(len(x), -1))))


@pytest.fixture(scope="module")
def three_models():
  test = data.load_split("mnist5k", "test")
  model, x = _MLP(), jnp.zeros((1, 28, 28, 1))
  return test, {f"m{i}": evaluators.Model(model, model.init(jax.random.key(i), x), cfg(), jax.random.key(0))
                for i in range(3)}


def test_transfer_alone_gives_every_spec_from_every_other_model(three_models):
  test, models = three_models
  plan = evaluators.build_plan(cfg())
  mesh = meshes.make_mesh(jax.devices()[:2])
  out = evaluators.transfer(plan, models, test, mesh=mesh, progress=False)
  specs = black_box_specs(cfg())
  assert set(out) == set(models)
  for target, by_spec in out.items():
    assert set(by_spec) == set(specs)
    for spec in specs:
      assert set(by_spec[spec]) == set(models) - {target}
      assert all(v.shape == (16,) and v.dtype == np.bool_ for v in by_spec[spec].values())
  # The same numbers as transfer_matrix on that one spec.
  subset = batches.take(test, batches.subset_indices(test.num_examples, 16))
  pgd5 = specs[-1]
  alone = batches.transfer_matrix({n: (m.module, m.variables) for n, m in models.items()}, subset, pgd5,
                                   jax.random.key(0), mesh=mesh, batch_size=8, progress=False)
  np.testing.assert_array_equal(out["m0"][pgd5]["m2"], alone["m0"]["m2"])
  assert evaluators.transfer(plan, dict(list(models.items())[:1]), test, mesh=mesh, progress=False) == {}


def _measurements(plan, transfer, n=20, seed=0):
  rng = np.random.default_rng(seed)
  specs = {s for e in plan for s in e.specs}
  correct = {s: rng.random(n) < 0.7 for s in specs}
  grads = np.tile([1.0, -3.0, -5.0], (n, 1))
  # AutoAttack's loop over the evaluators' chains: measured specs read, the others (FAB-T) drawn.
  chains = {e.name: _autoattack.run_in_order(e.chain, np.ones(n, bool), lambda s, idx: (
      correct[s][idx] if s in correct else rng.random(idx.size) < 0.7, None)) for e in plan if e.chain}
  return batches.Measurements(rng.random(100) < 0.9, 100, correct, grads, transfer, chains)


def test_summaries_read_their_own_transfer_entries():
  plan = evaluators.build_plan(cfg(strong=True))
  paper, strong = plan
  rng = np.random.default_rng(1)
  transfer = {s: {src: rng.random(20) < p for src, p in (("a", 0.2), ("b", 0.6))}
              for s in (*paper.transfer_specs, *strong.transfer_specs)}
  m = _measurements(plan, transfer)
  p = paper.summarize(m, 10)
  for s in paper.transfer_specs:
    assert p["transfer"][s.name] == {src: float(v.mean()) for src, v in transfer[s].items()}
    assert p["black_box"][s.name] == pytest.approx(np.mean([v.mean() for v in transfer[s].values()]))
  assert set(p["black_box"]) == {"fgsm", "pgd2", "pgd5"}
  st = strong.summarize(m, 10)
  own = transfer[strong.transfer_spec]
  assert st["transfer"] == {src: float(v.mean()) for src, v in own.items()}
  assert [c["name"] for c in st["checks"] if c["name"].startswith("4b")] == [
      "4b transfer from a never beats white-box", "4b transfer from b never beats white-box"]
  # With one model there is no black-box section.
  alone = paper.summarize(_measurements(plan, {}), 10)
  assert "transfer" not in alone and "black_box" not in alone


def test_report_shows_black_box_rows_and_the_pgd_choice():
  plan = evaluators.build_plan(cfg())
  paper = plan[0]
  transfer = {s: {"b": np.ones(20, bool)} for s in paper.transfer_specs}
  results = {"a": {"evaluation": {"paper": paper.summarize(_measurements(plan, transfer), 10)}},
             "b": {"evaluation": {"paper": paper.summarize(_measurements(plan, {}), 10)}}}
  table = report.accuracy_table(results)
  assert "| Black-box from the other models, FGSM | 100.00 | — |" in table
  assert "| Black-box from the other models, PGD-5 (η=0.003922, random start, last iterate) |" in table
  assert "Black-box from the other models, PGD-5 (η=0.01" not in table
  assert report.paper_pgd(cfg().to_dict()) == "paper protocol PGD: random start, last iterate"
  assert report.paper_pgd(cfg(random_start=False).to_dict()) == (
      "paper protocol PGD: no random start (BIM), last iterate")
