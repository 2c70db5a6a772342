"""``hrnn-research``: the paper's tables and figures, reproduced by commands.

Research, not the product: the ``hrnn`` command line does not know these commands. Each one is
a module of ``research.experiments`` that registers itself here; errors print one line, as in
``hrnn`` (``hrnn_core.cli.options.guard``).
"""

from __future__ import annotations

import importlib

import typer

from hrnn_core.cli.main import evaluate_command
from hrnn_core.cli.options import guard
from research.experiments import EXPERIMENTS
from research.synth import synth_command

app = typer.Typer(
    help="hrnn-research: reproduce the paper's tables and figures (ablation, time deltas, cold start, "
         "rating prediction, trend correction, warm start, exploration). Results: docs/evaluation/.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _name in EXPERIMENTS:
    importlib.import_module(f"research.experiments.{_name}").register(app)

# `hrnn-research evaluate`: the product's `hrnn evaluate` with the research baselines (sasrec, hgru, random) known
# too (the research package registers them when imported)
app.command("evaluate", help="`hrnn evaluate` with the research baselines too: --models ...,sasrec,hgru.")(evaluate_command)

# `hrnn-research synth`: the seeded synthetic log with known ground truth (tests, benchmarks, experiments)
app.command("synth")(guard(synth_command))


if __name__ == "__main__":  # pragma: no cover
    app()
