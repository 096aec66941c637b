"""The studies: the paper's tables and figures, aggregated from what the runs' evaluation plans wrote.

This layer sits on top of the library and the run machinery and nothing
imports it but ``experiments.study``. It loads no checkpoint and runs no
attack: every per-model number comes from a run's ``results.json``
(:mod:`crp_jax.runner.evaluators`), every black-box number from the
cross-run file (:mod:`crp_jax.runner.black_box`).

* :mod:`studies.engine`: the engine (runs, reuse, shards, cross-run step, outputs);
* :mod:`studies.registry`: the registry, ``STUDIES`` by ``--study`` name;
* one module per table or figure family: :mod:`~studies.white_black` (Tables 1–3),
  :mod:`~studies.k` (Tables 4–6, Fig. 2), :mod:`~studies.bound` (Fig. 1),
  :mod:`~studies.variable` (Table 7), :mod:`~studies.flatness` (§4.4),
  :mod:`~studies.saturation`, :mod:`~studies.eps_curve` (Fig. 3);
* :mod:`studies.common` (rows and notes every table shares), :mod:`studies.cells`
  (mean ± std cells and markdown tables), :mod:`studies.paper_numbers` (the paper's numbers as printed).
"""
