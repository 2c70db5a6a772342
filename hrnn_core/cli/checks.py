"""Argument checks of the ``hrnn`` commands: every command checks all its arguments before any work.

A command calls these (and ``hrnn_core.evaluation.checks`` for model names, protocols and devices)
right after loading its config, before it fetches, ingests, snapshots or trains, so a typo fails
in a second with one line naming the bad value (``HrnnError`` -> ``guard`` -> exit 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hrnn_core.errors import DatasetError, HrnnError, WarehouseError


class ArgumentError(HrnnError):
    """A command-line argument that cannot work (the message names the flag and the value)."""


def check_exists(path: Path | None, flag: str) -> None:
    """``path`` (when given) exists."""
    if path is not None and not Path(path).exists():
        raise ArgumentError(f"{flag} {path} does not exist")


def check_not_file(path: Path | None, flag: str) -> None:
    """``path`` (when given) is a folder or nothing yet: something will be written inside it."""
    if path is not None and Path(path).is_file():
        raise ArgumentError(f"{flag} {path} is a file; give a folder")


def check_finite(value: float | None, flag: str) -> None:
    if value is not None and not math.isfinite(value):
        raise ArgumentError(f"{flag} must be a finite number, got {value}")


def check_positive(value: float | None, flag: str) -> None:
    check_finite(value, flag)
    if value is not None and value <= 0:
        raise ArgumentError(f"{flag} must be > 0, got {value}")


def check_range(value: int | None, flag: str, lo: int, hi: int | None = None) -> None:
    """``value`` (when given) is in [lo, hi] (no upper bound when ``hi`` is None)."""
    if value is not None and not (lo <= value and (hi is None or value <= hi)):
        want = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ArgumentError(f"{flag} must be {want}, got {value}")


def parse_json_object(text: str | None, flag: str) -> dict:
    """``text`` as a JSON object (``{}`` when not given)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"{flag} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise ArgumentError(f"{flag} must be a JSON object like '{{\"test_fraction\": 0.2}}', got {text!r}")
    return value


def check_dataset(name: str) -> None:
    """``name`` is a registered dataset adapter (``hrnn datasets list``)."""
    from hrnn_core.data.datasets import registry  # noqa: PLC0415

    known = registry()
    if name not in known:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(known))}")


def check_raw_folder(dataset: str, path: Path | None, flag: str = "--path") -> None:
    """The raw folder a dataset is converted from exists: ``path``, else (not ml-100k, which is
    fetched) its development copy beside the checkout."""
    from hrnn_core.data.datasets import shared_raw_dir  # noqa: PLC0415

    if path is not None:
        if not Path(path).is_dir():
            raise ArgumentError(f"{flag} {path} is not a folder (the raw {dataset} dataset)")
    elif dataset != "ml-100k" and not shared_raw_dir(dataset).is_dir():
        raise DatasetError(f"{dataset}: no raw folder at {shared_raw_dir(dataset)}; give --path DIR "
                           "(see `hrnn datasets list`)")


def check_table(table: str | None) -> None:
    from hrnn_core.data.contract import TABLES  # noqa: PLC0415

    if table is not None and table not in TABLES:
        raise ArgumentError(f"unknown --table {table!r}; use one of {', '.join(TABLES)}")


def require_warehouse(cfg, hint: str = "run `hrnn ingest` first") -> None:
    """The warehouse exists (a command that reads it must not create an empty one)."""
    path = cfg.paths.warehouse_path
    if not path.exists():
        raise WarehouseError(f"warehouse {path} does not exist; {hint}")


def check_run_id(run_id: str | None) -> None:
    """A run folder name: one plain path component."""
    if run_id is None:
        return
    if not run_id or run_id in (".", "..") or any(c in run_id for c in "/\\\0"):
        raise ArgumentError(f"--run-id {run_id!r} must be a plain folder name (no '/', not '.' or '..')")


def check_store_tag(tag: str) -> None:
    """``tag`` is a model in the BentoML model store."""
    import bentoml  # noqa: PLC0415

    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise ArgumentError(f"--model {tag!r} is not in the model store; see `hrnn models list`") from None
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:
        raise ArgumentError(f"--model {tag!r} is not a model tag ({exc})") from None
