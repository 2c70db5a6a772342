"""What the ``hrnn`` commands share: typer option declarations, the config they load, the error guard.

Kept out of ``cli.py`` so that command groups living elsewhere (``cli_models``, the
``hrnn-research`` commands) can use them without importing the CLI module itself.

Each ``*Opt`` is an ``Annotated`` type to put on a command parameter, defaulting to ``None``::

    def command(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None: ...

Where a command's help says more than the shared text, the lower-case factory of the same option
takes that help: ``output: output_opt("Write the tables as JSON here.") = None`` (or an alias made
from it). Same flag, type and default either way.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from hrnn_core.errors import HrnnError

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


def cli_config(config: Path | None, warehouse: Path | None = None, data_dir: Path | None = None):
    """The ``Config`` of a command: ``--config`` (else ``$HRNN_CONFIG``), with ``--warehouse`` and
    ``--data-dir`` overriding its paths when given."""
    from hrnn_core.config import load_config  # noqa: PLC0415 - keeps `--help` fast

    paths: dict = {}
    if warehouse:
        paths["warehouse"] = str(warehouse)
    if data_dir:
        paths["data_dir"] = str(data_dir)
    return load_config(config, overrides={"paths": paths} if paths else None)


def guard(fn: Callable) -> Callable:
    """Turn errors into one clear line and an exit code (never a traceback unless ``HRNN_DEBUG=1``).

    ``HrnnError`` (the user can act on it): exit 2; Ctrl-C: 130; anything else: exit 1.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except HrnnError as exc:
            if os.environ.get("HRNN_DEBUG"):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - last resort: a message, not a traceback
            if os.environ.get("HRNN_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            typer.echo(f"error: {type(exc).__name__}: {first} (set HRNN_DEBUG=1 for details)", err=True)
            raise typer.Exit(1) from None

    return wrapper
