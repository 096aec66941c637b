"""The registry of studies, one per table or figure of the paper (the engine is :mod:`studies.engine`).

Every study trains its settings with seeds ``0 .. seeds-1`` (a new
perturbation set and initialisation each) and aggregates what the runs'
evaluation plans wrote:

* white-box rows: the paper's protocol (clean, FGSM, PGD-n with the paper's
  η, random start, last iterate) as mean ± std over the seeds, and "best"
  (the seed with the highest PGD-n accuracy for the largest n, picked on
  the test set as the paper does; a tie says so);
* black-box rows (§4.1): each model attacked with FGSM and PGD-n examples
  crafted on each of the other models, averaged over those sources, then
  mean ± std over the models (:func:`studies.engine.cross_run`);
* beside every setting, the strong protocol's worst case (AutoAttack
  standard: APGD-CE, APGD-T, FAB-T, Square; mean ± std) and each model's
  count of masking-check FLAGs.
"""

from __future__ import annotations

from studies.adversarial import adversarial_runs, adversarial_table, table8, table8_cross, table8_runs
from studies.bound import fig1, fig1_runs
from studies.engine import Study, within_groups
from studies.eps_curve import fig3, fig3_evals, fig3_runs
from studies.flatness import flatness, flatness_evals, flatness_runs
from studies.k import k_runs, k_table
from studies.saturation import saturation, saturation_evals, saturation_runs
from studies.variable import table7, table7_runs
from studies.white_black import table1, table1_runs, table23, table23_runs


#: Every study, by ``--study`` name.
STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("table1", "Table 1: uniform vs Gaussian constant perturbations (MNIST), white- and black-box",
          "mnist", table1_runs, table1, cross_runs=within_groups),
    Study("table2", "Table 2: SVHN, white-box with best of five, black-box", "svhn", table23_runs, table23,
          cross_runs=within_groups),
    Study("table3", "Table 3: CIFAR-10, white-box with best of five, black-box", "cifar10", table23_runs, table23,
          cross_runs=within_groups),
    Study("fig1", "Fig. 1: the perturbation bound (ε/2, ε, 2ε; K = 1): clean, FGSM, PGD", "cifar10",
          fig1_runs, fig1),
    Study("table4", "Table 4: number of perturbations K = 1, 5, 10 (MNIST)", "mnist", k_runs, k_table),
    Study("table5", "Table 5: number of perturbations K = 1, 5, 10 (SVHN)", "svhn", k_runs, k_table),
    Study("table6", "Table 6: number of perturbations K = 1, 5, 10 (CIFAR-10)", "cifar10", k_runs, k_table),
    Study("fig2", "Fig. 2: accuracy against K (the runs of Tables 4–6)", "cifar10", k_runs, k_table),
    Study("table7", "Table 7: constant (G) vs variable (B–E) perturbations and standard training (A)", "cifar10",
          table7_runs, table7),
    Study("flatness", "§4.4: loss flatness ℓ(x+δ) − ℓ(x) around test examples, A vs G", "cifar10",
          flatness_runs, flatness, evals=flatness_evals),
    Study("saturation", "Saturation test: does a clipped-probability loss explain PGD-100 = clean?", "mnist",
          saturation_runs, saturation, evals=saturation_evals),
    Study("fig3", "Fig. 3: PGD-20 accuracy against ε, top-1 and top-2 G models", "cifar10", fig3_runs, fig3,
          evals=fig3_evals),
    Study("table8", "Table 8: black-box against G from a standard (A) and an adversarially trained model",
          "cifar10", table8_runs, table8, cross_runs=table8_cross),
    Study("table9", "Table 9 (SVHN in the paper): G against Madry PGD-AT and TRADES trained here, beside the "
          "paper's quotes",
          "svhn", adversarial_runs, adversarial_table),
    Study("table10", "Table 10 (CIFAR-10 in the paper): G against Madry PGD-AT and TRADES trained here, beside "
          "the paper's quotes", "cifar10", adversarial_runs, adversarial_table),
)}
