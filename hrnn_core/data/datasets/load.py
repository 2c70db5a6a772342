"""A named dataset into a warehouse: fetch (ml-100k) or convert it, then ingest it.

Used by ``hrnn datasets fetch``, ``hrnn ingest --dataset``, ``hrnn evaluate --dataset``, the demo
and the ``hrnn-research`` commands; kept here, not in ``cli.py``, so none of them imports
the CLI module.
"""

from __future__ import annotations

import json
from pathlib import Path

from hrnn_core.config import Config, replace
from hrnn_core.data.datasets import convert, shared_raw_dir
from hrnn_core.errors import DatasetError


def fetch_dataset(cfg: Config, name: str) -> dict[str, Path]:
    """Fetch ``name`` (only ml-100k is downloadable) and convert it; returns contract files."""
    from hrnn_core.data.datasets.ml100k import fetch_ml100k  # noqa: PLC0415 - pandas, subprocess: only when fetching

    if name != "ml-100k":
        raise DatasetError(
            f"only ml-100k can be fetched; for {name!r} use `hrnn ingest --dataset {name} --path DIR`"
        )
    cache = cfg.paths.datasets_dir
    raw = fetch_ml100k(cache)
    out = cache / name / "contract"
    if (out / "interactions.parquet").exists() and (out / "conversion_report.json").exists():
        return {t: out / f"{t}.parquet" for t in ("interactions", "users", "items") if (out / f"{t}.parquet").exists()}
    return convert(name, raw, out)


def dataset_time_range(cfg: Config, contract_dir: Path) -> Config:
    """Apply the dataset's documented collection window (conversion report) to validation."""
    report = Path(contract_dir) / "conversion_report.json"
    if not report.exists():
        return cfg
    window = json.loads(report.read_text()).get("notes", {}).get("valid_time_range")
    if not window:
        return cfg
    return replace(cfg, ingest={"min_timestamp": float(window[0]), "max_timestamp": float(window[1])})


def ingest_dataset(cfg: Config, dataset: str, path: Path | None = None, own_warehouse: bool = True) -> Config:
    """Convert and ingest ``dataset`` for an evaluation; returns the config whose warehouse holds it.

    ml-100k is fetched; another dataset is converted from ``path``, by default the development
    copy beside the checkout (``hrnn_core.data.datasets.shared_raw_dir``). ``own_warehouse``: one warehouse per
    dataset (``<data_dir>/eval-<dataset>.duckdb``), so datasets never mix. Re-ingesting the same
    files is a no-op (ingest is idempotent).
    """
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415 - Great Expectations: only when ingesting
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    if own_warehouse:
        cfg = replace(cfg, paths={"warehouse": cfg.paths.eval_warehouse(dataset)})
    if path is None and dataset != "ml-100k":
        path = shared_raw_dir(dataset)
        if not path.is_dir():
            raise DatasetError(f"{dataset}: no raw folder at {path}; give --path DIR (see `hrnn datasets list`)")
    files = fetch_dataset(cfg, dataset) if path is None else convert(
        dataset, path, cfg.paths.datasets_dir / dataset / "contract")
    src = Path(next(iter(files.values()))).parent
    with connect(cfg) as con:
        ingest_path(dataset_time_range(cfg, src), src, None, con)
    return cfg

