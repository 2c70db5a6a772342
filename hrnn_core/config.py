"""Typed configuration: one frozen object, loaded from a TOML file plus environment overrides.

Unknown keys are an error (never silently ignored). Every field has a comment saying what it
does. Code receives the config object explicitly; no module reads global state.

Environment overrides use ``HRNN__SECTION__FIELD`` (double underscores), e.g.
``HRNN__PATHS__WAREHOUSE=/tmp/w.duckdb`` or ``HRNN__INGEST__SESSION_GAP_SECONDS=600``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hrnn_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """Project data dir: ``$HRNN_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get("HRNN_DATA_DIR", REPO_ROOT / "data"))


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path = field(default_factory=default_data_dir)  # root for caches, warehouse, exports
    warehouse: Path | None = None  # DuckDB file; None -> <data_dir>/warehouse.duckdb
    sql_dir: Path = REPO_ROOT / "sql"  # where the SQL files live (one file per table)

    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse) if self.warehouse else Path(self.data_dir) / "warehouse.duckdb"

    @property
    def datasets_dir(self) -> Path:
        return Path(self.data_dir) / "datasets"

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.data_dir) / "snapshots"


@dataclass(frozen=True)
class IngestConfig:
    min_timestamp: float = 0.0  # epoch seconds; earlier timestamps are quarantined (out of range)
    max_future_seconds: float = 86_400.0  # timestamps later than now + this are quarantined
    max_id_length: int = 256  # ids longer than this are quarantined (protects indexes and UIs)
    chunk_rows: int = 2_000_000  # rows validated per Great Expectations batch (bounds memory)
    session_gap_seconds: float = 1800.0  # inactivity gap that starts a new inferred session
    default_event_type: str = "default"  # event_type used when the file has none
    memory_limit: str = "3GB"  # DuckDB memory limit for ingest and transforms
    threads: int = 2  # DuckDB worker threads


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)  # where things live
    ingest: IngestConfig = field(default_factory=IngestConfig)  # ingest, validation, transforms


def _coerce(value: object, annotation: object, where: str) -> object:
    """Coerce a TOML/env value to the field's annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    try:
        if annotation is Path:
            return Path(os.path.expanduser(str(value)))
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)  # type: ignore[operator]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if origin in (tuple, list):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return tuple(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {where}: cannot read {value!r} as {annotation}") from exc
    return value


def _build(cls: type, data: dict, where: str) -> object:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config {where or 'top level'}: unknown key(s) {unknown}; known: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        ann = hints[name]
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(ann):
            if not isinstance(value, dict):
                raise ConfigError(f"config {sub}: expected a table of keys")
            kwargs[name] = _build(ann, value, sub)
        else:
            kwargs[name] = _coerce(value, ann, sub)
    return cls(**kwargs)


def _env_overrides(environ: typing.Mapping[str, str]) -> dict:
    out: dict = {}
    for key, value in environ.items():
        if not key.startswith("HRNN__"):
            continue
        parts = [p.lower() for p in key[len("HRNN__") :].split("__")]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: dict | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Load the config: defaults <- TOML file (``path`` or ``$HRNN_CONFIG``) <- env <- overrides."""
    environ = os.environ if environ is None else environ
    data: dict = {}
    path = path or environ.get("HRNN_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    return typing.cast(Config, _build(Config, data, ""))


def replace(cfg: Config, **sections: dict) -> Config:
    """Copy ``cfg`` with some fields of some sections replaced, e.g. replace(c, paths={...})."""
    changes = {}
    for name, values in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **values)
    return dataclasses.replace(cfg, **changes)
