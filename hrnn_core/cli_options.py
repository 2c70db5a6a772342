"""Typer option declarations shared by the ``hrnn`` commands (typer and typing only).

Each ``*Opt`` is an ``Annotated`` type to put on a command parameter, defaulting to ``None``::

    def command(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None: ...

Where a command's help says more than the shared text, the lower-case factory of the same option
takes that help: ``output: output_opt("Write the tables as JSON here.") = None`` (or an alias made
from it). Same flag, type and default either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

CONFIG_HELP = "TOML config file (else $HRNN_CONFIG)."
OUTPUT_HELP = "Write the report as JSON here."
RAW_PATH_HELP = "Raw dataset folder (default for non-ml-100k: its copy in ../shared/data)."
SNAPSHOT_HELP = "Use this snapshot folder instead of --dataset."


def _path_option(flag: str, help: str) -> Any:  # noqa: A002 - typer's own keyword
    return Annotated[Optional[Path], typer.Option(flag, help=help)]


def config_opt(help: str = CONFIG_HELP) -> Any:  # noqa: A002
    """``--config``: a TOML config file (else ``$HRNN_CONFIG``)."""
    return _path_option("--config", help)


def output_opt(help: str = OUTPUT_HELP) -> Any:  # noqa: A002
    """``--output``: where an experiment writes its JSON report."""
    return _path_option("--output", help)


def raw_path_opt(help: str = RAW_PATH_HELP) -> Any:  # noqa: A002
    """``--path``: the raw dataset folder behind ``--dataset``."""
    return _path_option("--path", help)


ConfigOpt = config_opt()
WarehouseOpt = _path_option("--warehouse", "DuckDB warehouse file.")
DataDirOpt = _path_option("--data-dir", "Project data dir (else $HRNN_DATA_DIR).")
SnapshotOpt = _path_option("--snapshot", SNAPSHOT_HELP)
OutputOpt = output_opt()
RawPathOpt = raw_path_opt()
