"""``hrnn experiments``: the paper's tables and figures, reproduced by commands."""

from __future__ import annotations

import importlib

import typer

from hrnn_core.experiments import EXPERIMENTS

experiments_app = typer.Typer(help="Reproduce the paper's tables and figures (ablation, time deltas, cold start, "
                                   "trend correction, rating prediction).", no_args_is_help=True)

for _name in EXPERIMENTS:
    importlib.import_module(f"hrnn_core.experiments.{_name}").register(experiments_app)
