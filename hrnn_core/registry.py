"""Model registry: artifacts in the BentoML model store, history in the DuckDB warehouse.

- Every trained model (HRNN-meta and baselines) is saved with ``bentoml.models.create``: its
  files, labels (``stage`` = candidate | champion | archived, ``kind``, data interval) and
  metadata (metrics, protocol, snapshot, code version).
- ``model_registry`` / ``model_events`` (sql/schema.sql) keep the history; the champion is the
  tag of the latest ``promote``/``rollback`` event.
- The ``stage`` label mirrors that history, so the service finds the champion from the model
  store alone (it never opens the warehouse, which has a single writer).

Promotion is gated (``gate``): a candidate becomes champion only when it beats the current
champion and every baseline on the gating metric of the same evaluation.

The store location is BentoML's: ``$BENTOML_HOME`` (the Makefile points it into the data dir).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from hrnn_core.config import REPO_ROOT
from hrnn_core.errors import HrnnError

STAGES = ("candidate", "champion", "archived")
# metadata of an HRNN-meta the retrain registered (hrnn_core.retrain.retrain_plan): warm | full, why, the champion a
# warm start began from, the data time of its lineage's last full retrain
LINEAGE_KEYS = ("retrain_mode", "mode_reason", "warm_from", "full_base_as_of")
NAMES = {  # kind -> BentoML model name
    "hrnn": "hrnn-meta",
    "gru": "baseline-gru",
    "pop": "baseline-pop",
    "recent_pop": "baseline-recent-pop",
    "bpr": "baseline-bpr",
    "fm": "baseline-fm",
}


class RegistryError(HrnnError):
    """A registry operation cannot be done (unknown tag, no champion to roll back to...)."""


@dataclass(frozen=True)
class Entry:
    tag: str
    kind: str
    stage: str
    registered_at: str
    metrics: dict[str, float]
    protocol: str | None
    snapshot_id: str | None
    data_interval: tuple[float | None, float | None]
    path: str

    def to_dict(self) -> dict:
        return {**self.__dict__, "data_interval": list(self.data_interval)}


def code_version() -> str:
    """The git commit of the code (or 'unknown' outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _set_stage(tag: str, stage: str) -> None:
    """Rewrite the ``stage`` label of a stored model (BentoML has no public label update)."""
    import bentoml  # noqa: PLC0415
    # Private API on purpose: BentoML 1.4 has no public way to change a stored model's labels.
    from bentoml._internal.models.model import ModelInfo  # noqa: PLC0415

    model = bentoml.models.get(tag)
    info = model.info
    new = ModelInfo(
        tag=info.tag, module=info.module, labels={**info.labels, "stage": stage}, options=info.options,
        metadata=info.metadata, context=info.context, signatures=info.signatures,
        api_version=info.api_version, creation_time=info.creation_time,
    )
    object.__setattr__(model, "_info", new)
    model.flush()


def register(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    artifact_dir: Path,
    *,
    metrics: dict[str, float] | None = None,
    protocol: str | None = None,
    snapshot_id: str | None = None,
    data_interval: tuple[float | None, float | None] = (None, None),
    extra_metadata: dict[str, Any] | None = None,
) -> str:
    """Save every file of ``artifact_dir`` as a new model version (stage candidate); its tag."""
    import bentoml  # noqa: PLC0415

    if kind not in NAMES:
        raise RegistryError(f"unknown model kind {kind!r}; known: {', '.join(NAMES)}")
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise RegistryError(f"artifact folder {artifact_dir} does not exist")
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    version = code_version()
    labels = {
        "stage": "candidate",
        "kind": kind,
        "interval_end": str(int(data_interval[1])) if data_interval[1] is not None else "none",
    }
    metadata = {
        "metrics": metrics, "protocol": protocol or "", "snapshot_id": snapshot_id or "",
        "code_version": version, **(extra_metadata or {}),
    }
    # BentoML metadata takes basic types only (no None): include the bounds that are known.
    for key, value in zip(("data_interval_start", "data_interval_end"), data_interval):
        if value is not None:
            metadata[key] = float(value)
    with bentoml.models.create(name=NAMES[kind], labels=labels, metadata=metadata) as model:
        for f in artifact_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, model.path_of(f.name))
    tag = str(model.tag)
    con.execute(
        "insert into model_registry values ($tag, $kind, now(), $s, $e, $snap, $proto, $metrics, $code)",
        {"tag": tag, "kind": kind, "s": data_interval[0], "e": data_interval[1], "snap": snapshot_id,
         "proto": protocol, "metrics": json.dumps(metrics), "code": version},
    )
    _event(con, tag, "register", None)
    return tag


def _event(con: duckdb.DuckDBPyConnection, tag: str, action: str, note: str | None) -> None:
    con.execute(
        "insert into model_events select coalesce(max(event_seq), 0) + 1, now(), $tag, $action, $prev, $note "
        "from model_events",
        {"tag": tag, "action": action, "prev": champion(con), "note": note},
    )


def champion(con: duckdb.DuckDBPyConnection) -> str | None:
    """The current champion's tag (None before the first promotion)."""
    rows = con.execute(
        "select tag from model_events where action in ('promote', 'rollback') order by event_seq desc limit 1"
    ).fetchall()
    return rows[0][0] if rows else None


def _stage_of(con: duckdb.DuckDBPyConnection, tag: str) -> str:
    if tag == champion(con):
        return "champion"
    promoted = con.execute(
        "select count(*) from model_events where tag = $t and action in ('promote', 'rollback')", {"t": tag}
    ).fetchall()[0][0]
    return "archived" if promoted else "candidate"


def _require(con: duckdb.DuckDBPyConnection, tag: str) -> None:
    if not con.execute("select count(*) from model_registry where tag = $t", {"t": tag}).fetchall()[0][0]:
        raise RegistryError(f"no registered model {tag!r}; see `hrnn models list`")


def promote(con: duckdb.DuckDBPyConnection, tag: str, note: str | None = None) -> str | None:
    """Make ``tag`` the champion (recorded); returns the previous champion."""
    _require(con, tag)
    previous = champion(con)
    if previous == tag:
        return previous
    con.execute("begin transaction")
    try:
        _event(con, tag, "promote", note)
        _set_stage(tag, "champion")
        if previous:
            _set_stage(previous, "archived")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        _set_stage(tag, _stage_of(con, tag))  # labels back in line with the history
        if previous:
            _set_stage(previous, "champion")
        raise
    return previous


def rollback(con: duckdb.DuckDBPyConnection, note: str | None = None) -> str:
    """Bring the previous champion back (recorded as a 'rollback' event); returns its tag."""
    chain = [r[0] for r in con.execute(
        "select tag from model_events where action in ('promote', 'rollback') order by event_seq"
    ).fetchall()]
    if not chain:
        raise RegistryError("there is no champion to roll back")
    current = chain[-1]
    earlier = [t for t in chain[:-1] if t != current]
    if not earlier:
        raise RegistryError(f"{current} is the only champion there has been; nothing to roll back to")
    target = earlier[-1]
    con.execute("begin transaction")
    try:
        _event(con, target, "rollback", note or f"rolled back from {current}")
        _set_stage(target, "champion")
        _set_stage(current, "archived")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        _set_stage(target, "archived")
        _set_stage(current, "champion")
        raise
    return target


def reject(con: duckdb.DuckDBPyConnection, tag: str, note: str) -> None:
    """Record that a candidate was evaluated and not promoted (it stays a candidate)."""
    _require(con, tag)
    _event(con, tag, "reject", note)


def gate(candidate: dict[str, float], others: dict[str, dict[str, float]], metric: str) -> tuple[bool, str]:
    """Promotion rule: the candidate must beat every other model (champion and baselines)
    strictly on ``metric`` of the same evaluation. Returns (promote?, reason)."""
    if metric not in candidate:
        return False, f"candidate has no {metric}"
    losers = {name: m.get(metric) for name, m in others.items() if m.get(metric) is not None and m[metric] >= candidate[metric]}
    if losers:
        worse = ", ".join(f"{n} {v:.4f}" for n, v in sorted(losers.items()))
        return False, f"{metric} {candidate[metric]:.4f} does not beat {worse}"
    return True, f"{metric} {candidate[metric]:.4f} beats " + ", ".join(
        f"{n} {m.get(metric, float('nan')):.4f}" for n, m in sorted(others.items())
    )


def entries(con: duckdb.DuckDBPyConnection) -> list[Entry]:
    """Every registered model, newest first."""
    import bentoml  # noqa: PLC0415

    from hrnn_core.data.warehouse import table_exists  # noqa: PLC0415

    if not table_exists(con, "model_registry"):  # a read-only warehouse from before the registry
        return []
    rows = con.execute(
        "select tag, kind, registered_at, metrics, protocol, snapshot_id, data_interval_start, "
        "data_interval_end from model_registry order by registered_at desc, tag"
    ).fetchall()
    out = []
    for tag, kind, at, metrics, protocol, snap, s, e in rows:
        try:
            path = str(bentoml.models.get(tag).path)
        except bentoml.exceptions.NotFound:
            path = "(missing from the model store)"
        out.append(Entry(tag, kind, _stage_of(con, tag), str(at), json.loads(metrics or "{}"), protocol, snap, (s, e), path))
    return out


def show(con: duckdb.DuckDBPyConnection, tag: str) -> dict:
    """One model: registry row, stage, history events and the store's labels/metadata."""
    import bentoml  # noqa: PLC0415

    _require(con, tag)
    entry = next(e for e in entries(con) if e.tag == tag)
    events = con.execute(
        "select happened_at, action, previous, note from model_events where tag = $t order by event_seq", {"t": tag}
    ).fetchall()
    model = bentoml.models.get(tag)
    meta = dict(model.info.metadata)
    return {
        **entry.to_dict(),
        "lineage": show_lineage(tag),
        "labels": dict(model.info.labels),
        "metadata": meta,
        "events": [{"at": str(a), "action": b, "previous": c, "note": d} for a, b, c, d in events],
    }


def show_lineage(tag: str) -> dict:
    """How ``tag`` was trained (``hrnn_core.retrain.retrain_plan``): warm from which champion, or full, and why;
    {} for a model registered without lineage (baselines, models from before warm start)."""
    import bentoml  # noqa: PLC0415

    try:
        meta = bentoml.models.get(tag).info.metadata
    except bentoml.exceptions.NotFound:  # registered, then deleted from the store
        return {}
    return {k: meta[k] for k in LINEAGE_KEYS if k in meta}


def champion_from_store(name: str = NAMES["hrnn"], store=None) -> str | None:
    """The champion's tag from the model store's labels alone (for the service and the export).

    ``store``: a BentoML model store to read instead of the current one (the service's
    ``model_store()``); the newest model labelled stage=champion wins.
    """
    import bentoml  # noqa: PLC0415

    kwargs = {"_model_store": store} if store is not None else {}
    try:
        models = bentoml.models.list(name, **kwargs)
    except bentoml.exceptions.NotFound:  # nothing of that name stored yet
        return None
    found = [m for m in models if m.info.labels.get("stage") == "champion"]
    if not found:
        return None
    found.sort(key=lambda m: m.info.creation_time)
    return str(found[-1].tag)
