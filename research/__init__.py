"""Research on HRNN-meta, kept out of the product package ``hrnn_core``.

- ``research.experiments``: the paper's tables and figures, one command each (``hrnn-research``);
  their results are recorded in ``docs/evaluation/``.
- ``research.rating``, ``research.rating_head``, ``research.fm_rating``: the rating prediction task
  (Tables 4-5) and its models.
- ``research/tuning/``: the validation-only tuning drivers of the defaults and the dated pins of
  earlier defaults (``configs/defaults-*.toml``), ``docs/benchmarks.md``.
- ``research/leaderboards/``: the script that runs the test leaderboards and the tools that merge,
  test and tabulate them, ``docs/evaluation/leaderboards.md``.

``research`` imports ``hrnn_core``; ``hrnn_core`` never imports ``research``. Raw results (JSON,
per-event arrays) are written to ``bench/results/`` with the benchmarks'.
"""

from research.baselines import register as _register_baselines  # noqa: E402

_register_baselines()  # sasrec, hgru, random: known to the harness wherever research code runs
