"""The study driver: workdirs, resumption, aggregation, the CLI end to end (tiny sizes)."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from crp_jax.runner import atomic, checkpoint, pipeline
from studies import cells as aggregate, common, engine as study_lib, k, registry, variable, white_black
from experiments import cli
from experiments.configs import get_config, study_config
from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", ["crp", "pgd_at"])
def test_configs_that_differ_in_any_training_field_never_share_a_workdir(method):
  # `adversary` is read by the adversarial methods only: varied on a pgd_at run, every other field on both.
  base = study_config("mnist5k")
  base.method = method
  varied = [f for f in checkpoint.flatten(base.to_dict()) if not f.startswith(checkpoint.SAFE_TO_CHANGE)
            and (method == "pgd_at" or not f.startswith("adversary."))]
  names = {study_lib.run_name(base)}
  for field in varied:
    value = checkpoint.flatten(base.to_dict())[field]
    c = ml_collections.ConfigDict(base.to_dict())
    new = (not value if isinstance(value, bool) else value + 1 if isinstance(value, (int, float))
           else list(value) + [1] if isinstance(value, list) else value + "x")
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = new
    names.add(study_lib.run_name(c))
  assert len(names) == len(varied) + 1


def test_identical_training_configs_share_a_workdir_whatever_their_evaluation():
  a, b = study_config("mnist5k"), study_config("mnist5k")
  b.eval.attack_subset, b.eval.pgd_steps, b.log_every_steps = 7, (3,), 9
  assert study_lib.run_name(a) == study_lib.run_name(b)
  # Table 1's uniform runs are Table 4's K = 10, Table 7's G and flatness' G.
  t1 = {study_lib.run_name(r.config) for r in white_black.table1_runs(a, 2) if r.group.startswith("U")}
  t4 = {study_lib.run_name(r.config) for r in k.k_runs(a, 2) if r.group == "K=10"}
  t7 = {study_lib.run_name(r.config) for r in variable.table7_runs(a, 2) if r.group == "G"}
  assert t1 == t4 == t7 and len(t1) == 2


def test_default_workdir_names_every_changed_training_field():
  preset = get_config("mnist5k")
  assert cli.default_workdir(preset, preset) == "runs/mnist5k-crp-vs-standard-seed0"
  gauss = ml_collections.ConfigDict(preset.to_dict())
  gauss.distribution = "gaussian"
  k1 = ml_collections.ConfigDict(preset.to_dict())
  k1.num_perturbations = 1
  names = {cli.default_workdir(c, preset) for c in (preset, gauss, k1)}
  assert len(names) == 3 and "runs/mnist5k-crp-vs-standard-seed0-distribution=gaussian" in names
  assert cli.default_workdir(preset, preset, "paper").endswith("-paper")


def _fake_results(config, clean, fgsm, pgd):
  return {"config": config.to_dict(), "training": {"steps": 1, "seconds": 0.0},
          "evaluation": {"paper": {"clean_accuracy": clean, "num_attacked": 10, "accuracy":
                                   {"clean": clean, "fgsm": fgsm, "pgd20": pgd, "pgd100": pgd},
                                   "labels": {}},
                         "strong": {"worst_case": 0.0, "num_flags": 1, "checks": [], "all_attacks": 0.0}}}


def test_killed_study_resumes_without_retraining_finished_runs(tmp_path, monkeypatch):
  base = study_config("mnist5k")
  runs = k.k_runs(base, 2)
  calls = []

  def fake_run(config, workdir, **kw):
    calls.append(workdir)
    if len(calls) == 3:
      raise KeyboardInterrupt
    atomic.write_json(os.path.join(workdir, "results.json"), _fake_results(config, 0.9, 0.5, 0.1))

  monkeypatch.setattr(pipeline, "run", fake_run)
  study = registry.STUDIES["table4"]
  with pytest.raises(KeyboardInterrupt):
    study_lib.execute(study, runs, root=str(tmp_path), log=lambda s: None)
  assert len(calls) == 3
  lines = []
  done = study_lib.execute(study, runs, root=str(tmp_path), log=lines.append)
  assert len(calls) == 3 + 4  # the two finished runs are not run again
  assert [d.reused for d in done] == [True, True, False, False, False, False]
  assert "reused" in lines[0] and "ETA" in lines[2] and "4 left" in lines[1]
  again = study_lib.execute(study, runs, root=str(tmp_path), log=lambda s: None)
  assert all(d.reused for d in again) and len(calls) == 7


def test_shards_split_a_study_and_each_reuses_the_others_finished_runs(tmp_path, monkeypatch):
  runs = k.k_runs(study_config("mnist5k"), 2)   # 6 distinct runs
  calls = []

  def fake_run(config, workdir, **kw):
    calls.append(study_lib.run_name(config))
    atomic.write_json(os.path.join(workdir, "results.json"), _fake_results(config, 0.9, 0.5, 0.1))

  monkeypatch.setattr(pipeline, "run", fake_run)
  study, names = registry.STUDIES["table4"], [study_lib.run_name(r.config) for r in runs]
  run = lambda shard: study_lib.execute(study, runs, root=str(tmp_path), log=lambda s: None,
                                        shard=study_lib.Shard.parse(shard))
  done = run("1/3")
  assert calls == [names[1], names[4]] and [d.run for d in done] == [runs[1], runs[4]]
  assert len(study_lib.missing(runs, done)) == 4
  run("0/3")
  done = run("2/3")
  assert sorted(calls) == sorted(names) and len(calls) == 6   # every run trained once, by its shard
  assert not study_lib.missing(runs, done) and [d.run for d in done] == runs
  assert [d.reused for d in done] == [True, True, False, True, True, False]


def test_aggregation_matches_hand_computed_mean_std_and_best():
  s = aggregate.stat([0.50, 0.60, 0.70, 0.40, 0.80])
  assert s.mean == pytest.approx(0.60)
  assert s.std == pytest.approx(np.sqrt(((0.1 ** 2) * 2 + (0.2 ** 2) * 2) / 4))
  assert s.text() == "60.00 ± 15.81"
  assert aggregate.best_index([0.3, 0.9, 0.9, 0.1]) == 1
  base = study_config("mnist5k")
  base.eval.pgd_steps = (20, 100)
  runs = k.k_runs(base, 3)
  pgd = {1: [0.1, 0.3, 0.2], 5: [0.4, 0.5, 0.9], 10: [0.7, 0.6, 0.8]}
  done = [study_lib.Done(r, "", _fake_results(r.config, 0.9 + 0.01 * r.seed, 0.5, pgd[r.config.num_perturbations][r.seed]),
                         0.0, False) for r in runs]
  ctx = study_lib.Context(registry.STUDIES["table4"], base, done)
  outcome = k.k_table(ctx)
  t = outcome.tables[0]
  assert t.cells[("PGD-100", "5")].ours.text() == "60.00 ± 26.46"
  assert t.cells[("PGD-100", "5")].paper == "96.24±0.39"  # Table 4 as printed
  assert t.cells[("No attack", "1")].ours.text() == "91.00 ± 1.00"
  assert t.cells[(common.FLAGS_ROW, "10")].text() == "1, 1, 1"
  assert "accuracy_vs_k.png" in outcome.figures and outcome.figures["accuracy_vs_k.png"][:4] == b"\x89PNG"
  g = [d for d in done if d.run.config.num_perturbations == 5]
  assert common.best(g, base)[0].run.seed == 2


def test_evaluate_saved_keeps_models_that_share_a_folder_name(tmp_path):
  dirs = []
  for parent in ("a", "b", "c"):
    d = tmp_path / "runs" / parent / "crp"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    dirs.append(str(d))
  named = pipeline.named_model_dirs(dirs + [dirs[0]])
  assert sorted(named.values()) == sorted(dirs) and len(named) == 3
  solo = pipeline.named_model_dirs([dirs[0]])
  assert list(solo) == ["crp"]


# The strong protocol is off here to keep the suite fast; its cells are tested on fake results above.
TINY = ["--config.train_subset=96", "--config.batch_size=64", "--config.eval.attack_subset=16",
        "--config.eval.batch_size=16", "--config.eval.pgd_steps=(2,)", "--config.eval.extra_step_size=0",
        "--config.eval.strong=False", "--config.eval.apgd_steps=2", "--config.log_every_steps=1000"]


def _study_args(tmp_path, *args) -> list[str]:
  return ["--dataset=mnist5k", "--seeds=2", f"--runs_dir={tmp_path}/runs", f"--out={tmp_path}/results", *TINY, *args]


def _study(tmp_path, *args):
  return cli_server.run("experiments.study", _study_args(tmp_path, *args), timeout=900)


def test_tiny_study_through_the_cli_writes_table_json_and_figure(tmp_path):
  # Table 2's layout (white-box, best, black-box) on mnist5k, split over two jobs as an array job would.
  first = _study(tmp_path, "--study=table2", "--shard=0/2")
  assert first.returncode == 0, first.stderr[-3000:]
  out = tmp_path / "results" / "table2" / "mnist5k-small"
  assert "seed 1: not finished yet (shard 1/2 runs it)" in first.stdout and "no table yet" in first.stdout
  assert not out.exists()
  p = _study(tmp_path, "--study=table2", "--shard=1/2")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "seed 0: reused" in p.stdout and "seed 1: trained" in p.stdout
  table = (out / "table.md").read_text()
  assert "Best of 2" in table and "Black-box" in table and common.STRONG_ROW in table, table
  assert "| FGSM |" in table and "| PGD-2 |" in table
  assert "[table2 2/2]" in p.stdout
  record = json.loads((out / "study.json").read_text())
  assert [r["seed"] for r in record["runs"]] == [0, 1] and record["runs"][0]["config"]["num_perturbations"] == 10
  black = record["extras"][record["runs"][0]["group"]]["black_box"]
  assert set(black) == {"fgsm", "pgd2"} and len(black["fgsm"]) == 2
  # The cross-run file holds every (source, target) number; the table's cell is their mean over sources, then targets.
  group = record["runs"][0]["group"]
  crossed = record["black_box"][group]
  assert set(crossed["accuracy"]) == {"seed0", "seed1"}
  assert crossed["accuracy"]["seed0"]["fgsm"].keys() == {"seed1"} and crossed["settings"]["models"].keys() == {"seed0", "seed1"}
  per_target = [np.mean(list(crossed["accuracy"][t]["fgsm"].values())) for t in ("seed0", "seed1")]
  assert black["fgsm"] == pytest.approx(per_target, abs=0)
  cell = next(c for c in record["tables"][0]["cells"] if c["row"] == "FGSM" and c["column"] == "Black-box")
  assert cell["ours"]["mean"] == pytest.approx(np.mean(per_target), abs=1e-12)
  files = list((tmp_path / "runs" / "mnist5k-small" / "_black_box").glob("*.json"))
  assert len(files) == 1 and json.loads(files[0].read_text())["accuracy"] == crossed["accuracy"]
  assert record["code"]["crp_jax"] and "Regenerate: `python -m experiments.study" in table
  # Fig. 3 reads the same G models: reused, not retrained (its PGD-AT and TRADES curves are trained).
  p = _study(tmp_path, "--study=fig3")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "G, seed 0: reused" in p.stdout and "G, seed 1: reused" in p.stdout
  assert "G, seed 0: trained" not in p.stdout and "evaluated with eps_curve added" in p.stdout   # only the new evaluator ran on G
  g0 = json.loads(next((tmp_path / "runs" / "mnist5k-small").glob("crp-*seed0-*/results.json")).read_text())
  assert g0["evaluation"]["eps_curve"]["eps"] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
  assert g0["added_evaluations"][0]["evaluators"] == ["eps_curve"] and "paper" in g0["evaluation"]
  fig3_table = (tmp_path / "results" / "fig3" / "mnist5k-small" / "table.md").read_text()
  assert "PGD-AT (seed 0, trained here)" in fig3_table and "TRADES (seed 0, trained here)" in fig3_table
  # Tables 8 and 10 on mnist5k (the analogue) reuse the same G, PGD-AT and TRADES runs; Table 8 trains A.
  p = _study(tmp_path, "--study=table8")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "G, seed 1: reused" in p.stdout and "PGD-AT, seed 0: reused" in p.stdout and "A, seed 0: trained" in p.stdout
  t8 = tmp_path / "results" / "table8" / "mnist5k-small"
  assert "this project's analogue" in (t8 / "table.md").read_text() and "Adv. Training" in (t8 / "table.md").read_text()
  crossed = json.loads((t8 / "study.json").read_text())["black_box"]["G from A and PGD-AT"]
  assert crossed["settings"]["sources"] == ["A", "PGD-AT"] and set(crossed["accuracy"]["G seed1"]["fgsm"]) == {"A", "PGD-AT"}
  p = _study(tmp_path, "--study=table10", "--seeds=1")
  assert p.returncode == 0, p.stderr[-3000:]
  assert ": trained" not in p.stdout   # G, PGD-AT and TRADES seed 0 all come from the studies above
  t10 = (tmp_path / "results" / "table10" / "mnist5k-small" / "table.md").read_text()
  for row in ("| G |", "| G-best |", "| PGD-AT (trained here) |", "| TRADES (trained here) |"):
    assert row in t10, (row, t10)
  assert (tmp_path / "results" / "fig3" / "mnist5k-small" / "fig3.png").read_bytes()[:4] == b"\x89PNG"


def test_study_bad_input_is_one_line_and_writes_nothing(tmp_path):
  for args, message in ((["--study=tabel1"], "unknown"), (["--study=table9", "--dataset=mnist5k", "--seeds=0"], "--seeds"),
                        (["--study=table1", "--config.epochs=0"], "config.epochs=0"),
                        (["--study=table1", "--shard=2/2"], "need 0 <= i < n"),
                        (["--study=table1", "--shard=1"], "expected i/n"),
                        (["--study=table1", "--out=/proc/crp-study"], "--out folder /proc/crp-study/table1")):
    # Forks of one server (tests/cli_server.py): these fail on their flags, so a new interpreter each would
    # be nearly all of their cost.
    p = cli_server.run("experiments.study", _study_args(tmp_path, *args))
    assert p.returncode == 2, (args, p.stderr)
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
  assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_groups_select_settings_by_short_name():
  runs = white_black.table1_runs(study_config("mnist5k"), 2)
  assert {r.group for r in study_lib.select_groups(runs, ["U"])} == {"U(−0.3, 0.3)"}
  assert len(study_lib.select_groups(runs, [])) == 4
  with pytest.raises(study_lib.config_lib.ConfigError, match="no group 'G'; this study has U, N"):
    study_lib.select_groups(runs, ["G"])


def _full_fake_results(run, rng):
  """A run's record with every section a study reads (paper, strong, flatness, saturation, ε curve)."""
  cfg = run.config
  r = _fake_results(cfg, *rng.random(3))
  n = max(cfg.eval.pgd_steps)
  r["evaluation"]["paper"]["accuracy"].update({f"pgd{k}": float(rng.random()) for k in cfg.eval.pgd_steps})
  r["evaluation"]["flatness"] = {"mean": float(rng.random()), "variance": float(rng.random()), "draws": 10}
  r["evaluation"]["saturation"] = {
      "clean_subset": 0.9, "zero_gradient": {"ce": 0.0, "prob_ce": 0.5},
      "accuracy": {f"{a}-{loss}": float(rng.random()) for a in ("fgsm", f"pgd{n}", f"bim{n}") for loss in ("ce", "prob_ce")}}
  grid = (0.1, 0.2)
  r["evaluation"]["eps_curve"] = {"eps": list(grid), "pgd20": [0.5, 0.2], "apgd": [0.4, 0.1],
                                  "accuracy": {"pgd20@0.1": 0.5, "pgd20@0.2": 0.2, "apgd@0.1": 0.4, "apgd@0.2": 0.1}}
  return r


def test_aggregation_loads_no_checkpoint_and_runs_no_attack(monkeypatch):
  from crp_jax import attacks  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import black_box  # pylint: disable=g-import-not-at-top
  from crp_jax.runner.evaluators import batches  # pylint: disable=g-import-not-at-top
  calls = []
  for owner, name in ((pipeline, "load_trained"), (pipeline, "load_saved"), (pipeline, "run"),
                      (pipeline, "add_evaluations"), (black_box, "measure"), (attacks, "run_attack"),
                      (batches, "run_specs"), (batches, "map_batches"), (batches, "transfer_matrix")):
    monkeypatch.setattr(owner, name, lambda *a, _n=name, **k: calls.append(_n))
  rng = np.random.default_rng(0)
  built = 0
  for study in registry.STUDIES.values():
    if study.waits_for:
      continue
    base = study_config("mnist5k")
    runs = study_lib.study_runs(study, base, 3)
    done = [study_lib.Done(r, f"/runs/{i}", _full_fake_results(r, rng), 0.0, True) for i, r in enumerate(runs)]
    crossed = {}
    for cross in study.cross_runs(study_lib.by_group(done)):
      sources = cross.sources or tuple(cross.models)
      acc = {t: {a: {s: float(rng.random()) for s in sources if s != t} for a in ("fgsm", "pgd20", "pgd100")}
             for t in cross.models}
      crossed[cross.name] = {"accuracy": acc, "mean": {t: {a: float(np.mean(list(v.values()))) for a, v in by.items()
                                                           if v} for t, by in acc.items()}}
    outcome = study.aggregate(study_lib.Context(study, base, done, crossed))
    assert outcome.tables and all(t.markdown() for t in outcome.tables), study.name
    built += 1
  assert calls == [] and built == 15


def test_best_of_n_says_when_the_pick_is_a_tie():
  base = study_config("mnist5k")
  runs = [r for r in k.k_runs(base, 3) if r.group == "K=10"]
  make = lambda pgd: [study_lib.Done(r, "", _fake_results(r.config, 0.9, 0.5, p), 0.0, False)
                      for r, p in zip(runs, pgd)]
  top, note = common.best(make([0.0, 0.0, 0.0]), base)
  assert top.run.seed == 0 and note == "tie: seeds 0, 1, 2 all 0.00 under PGD-100; seed 0 shown"
  top, note = common.best(make([0.1, 0.3, 0.2]), base)
  assert top.run.seed == 1 and note == ""
  top, note = common.best(make([0.1, 0.3, 0.3]), base)
  assert top.run.seed == 1 and "seeds 1, 2" in note
  table = variable.table7(study_lib.Context(registry.STUDIES["table7"], base, make([0.0, 0.0, 0.0]) and [
      study_lib.Done(r._replace(group="G"), "", _fake_results(r.config, 0.9, 0.5, 0.0), 0.0, False) for r in runs]))
  assert any(n.startswith("G-best: tie: seeds 0, 1, 2") for n in table.notes)
  table = variable.table7(study_lib.Context(registry.STUDIES["table7"], base, [
      study_lib.Done(r._replace(group="G"), "", _fake_results(r.config, 0.9, 0.5, 0.1 * i), 0.0, False)
      for i, r in enumerate(runs)]))
  assert not any("tie" in n for n in table.notes)


def test_adversarial_table_quotes_the_papers_other_methods_and_marks_them_not_run():
  from studies import adversarial  # pylint: disable=g-import-not-at-top
  base = study_config("cifar10")
  runs = adversarial.adversarial_runs(base, 2)
  rng = np.random.default_rng(0)
  done = [study_lib.Done(r, "", _full_fake_results(r, rng), 0.0, False) for r in runs]
  t = adversarial.adversarial_table(study_lib.Context(registry.STUDIES["table10"], base, done)).tables[0]
  assert t.rows[:4] == ("G", "G-best", "PGD-AT (trained here)", "TRADES (trained here)")
  assert "RST_adv (quoted; not run here)" in t.rows and "ME-NET (0.6–0.8) (quoted; not run here)" in t.rows
  assert t.cells[("RST_adv (quoted; not run here)", "No attack")].text() == "— (paper: 89.7 ± 0.1)"
  assert t.cells[("PGD-AT (trained here)", "No attack")].paper == "87.30"    # Madry et al. as the paper prints it
  assert t.cells[("G-best", "No attack")].paper == "91.77" and t.cells[("G", "No attack")].paper == ""
  mnist = study_config("mnist5k")
  done = [study_lib.Done(r, "", _fake_results(r.config, 0.9, 0.5, 0.1), 0.0, False)
          for r in adversarial.adversarial_runs(mnist, 2)]
  t = adversarial.adversarial_table(study_lib.Context(registry.STUDIES["table10"], mnist, done)).tables[0]
  assert "this project's analogue" in t.title and not any("quoted" in r for r in t.rows)


def test_tables_8_to_10_quote_the_paper_as_printed():
  # The paper's own lines (tab-separated, LaTeX ± as \pm), and what paper_numbers quotes for them.
  from studies import paper_numbers  # pylint: disable=g-import-not-at-top
  printed = {
      "table8": ["FGSM\t-\t79.96 \\pm 0.78\t76.84 \\pm 0.79", "PGD\t7\t87.05 \\pm 0.82\t75.68 \\pm 0.79",
                 "PGD\t20\t87.21 \\pm 0.78\t74.08 \\pm 0.87", "PGD\t100\t88.20 \\pm 0.79\t73.94 \\pm 0.81"],
      "svhn": ["Proposed $\\mathcal{U}(-8/255, 8/255)$\t94.13\t74.30\t74.23",
               "Proposed $\\mathcal{U}(-16/255, 16/255)$\t93.73\t69.62\t69.61",
               "Madry et al. (2018)\t87.40\t48.40\t47.50", "ME-NET (0.2–0.4)\t87.60\t75.8\t69.80",
               "ME-NET (0.8–1.0)\t93.50\t41.40\t35.50"],
      "cifar10": ["Proposed best\t91.77\t66.75\t55.51\t51.92", "Madry et al. (2018)\t87.30\t56.1\t45.80\t45.05",
                  "RST _{adv}\t89.7 \\pm 0.1\t69.68\t63.10\t62.14", "TRADES\t84.92\t60.87\t55.38\t55.13",
                  "ME-NET (0.4–0.6)\t85.50\t71.39\t61.60\t55.90", "ME-NET (0.6–0.8)\t91.00\t-\t58.00\t53.40"],
  }
  paper = os.path.join(ROOT, "..", "shared", "paper", "constant-random-perturbations.txt")
  if os.path.isfile(paper):   # the checkout's sibling copy of the paper, where there is one
    text = open(paper, encoding="utf-8").read()
    assert all(line in text for lines in printed.values() for line in lines)
  as_printed = lambda cell: cell.replace("\\pm", "±")
  for line in printed["table8"]:
    kind, steps, standard, adversarial = line.split("\t")
    row = "FGSM" if kind == "FGSM" else f"PGD-{steps}"
    assert paper_numbers.quoted("table8", "cifar10", row, "Standard") == as_printed(standard)
    assert paper_numbers.quoted("table8", "cifar10", row, "Adv. Training") == as_printed(adversarial)
  names = {"svhn": ["Proposed U(−8/255, 8/255)", "Proposed U(−16/255, 16/255)", "Madry et al. (2018)",
                    "ME-NET (0.2–0.4)", "ME-NET (0.8–1.0)"],
           "cifar10": ["Proposed best", "Madry et al. (2018)", "RST_adv", "TRADES", "ME-NET (0.4–0.6)",
                       "ME-NET (0.6–0.8)"]}
  columns = {"svhn": ["No attack", "PGD-20", "PGD-100"], "cifar10": ["No attack", "FGSM", "PGD-20", "PGD-100"]}
  for dataset, lines in (("svhn", printed["svhn"]), ("cifar10", printed["cifar10"])):
    for name, line in zip(names[dataset], lines):
      for column, cell in zip(columns[dataset], line.split("\t")[1:]):
        assert paper_numbers.quoted("adversarial", dataset, name, column) == as_printed(cell), (name, column)


def test_the_strong_note_names_the_attacks_the_strong_row_ran():
  e = study_config("mnist5k").eval
  note = common.strong_note(e)
  assert f"AutoAttack {e.autoattack}" in note and f"FAB-T ({e.fab_steps} steps, {e.num_targets} targets)" in note
  e.autoattack = ""
  note = common.strong_note(e)
  assert "FAB-T" not in note.split("(eval.autoattack")[0] and "no FAB-T" in note
