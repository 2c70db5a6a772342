"""Datasets: fetch MovieLens-100k, adapt the shared research datasets (synthetic logs: ``research.synth``).

Every adapter converts a raw dataset folder into *contract files* (see ``hrnn_core.data.contract``):
``interactions.parquet`` and, when the dataset has them, ``users.parquet`` and ``items.parquet``.
Adapters never drop or repair rows: bad rows (e.g. taobao's out-of-range timestamps) are kept
as they are, so that ingest quarantines them with a reason and counts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hrnn_core.errors import DatasetError

# name -> converter(raw_dir, out_dir) -> {"interactions": path, "users": path?, "items": path?}
Converter = Callable[[Path, Path], dict[str, Path]]


# the development copies beside the checkout: ../shared/data/<folder> of each adapter's dataset
SHARED_FOLDERS = {"ml-latest-small": "ml-latest-small", "yoochoose": "yoochoose-100k-sessionrec",
                  "taobao": "taobao-userbehavior-head", "trivago": "trivago-rsc19-100k"}


def shared_raw_dir(name: str) -> Path:
    """``../shared/data/<folder>`` beside the checkout for dataset ``name`` (it may not exist)."""
    from hrnn_core.config import REPO_ROOT  # noqa: PLC0415

    return REPO_ROOT.parent / "shared" / "data" / SHARED_FOLDERS.get(name, name)


def registry() -> dict[str, Converter]:
    """The registered dataset adapters, by name (imports are lazy)."""
    import importlib  # noqa: PLC0415

    return dict(importlib.import_module("hrnn_core.data.datasets.adapters").ADAPTERS)


def convert(name: str, raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Convert the raw dataset ``name`` found in ``raw_dir`` into contract files in ``out_dir``."""
    table = registry()
    if name not in table:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(table))}")
    raw_dir = Path(raw_dir)
    if not raw_dir.exists():
        raise DatasetError(f"dataset folder {raw_dir} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return table[name](raw_dir, out_dir)
