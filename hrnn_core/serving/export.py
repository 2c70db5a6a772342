"""Batch recommendations: top-K for every user of the model's snapshot, scored by the same code
as the online service (``hrnn_core.serving.recommend``), so an exported score equals the service's
``/recommend`` score for the same user, time and context.

The batch DAG maps ``score_shard`` over shards (users with ``user_idx % n_shards == shard``), then
calls ``merge_shards``, which writes into a temporary folder:

* ``recommendations.csv``: ``user_id,rank,item_id,score`` (rank 1 = best);
* ``recommendations.jsonl``: one line per user in Amazon Personalize's batch output shape,
  ``{"input": {"userId": ...}, "output": {"recommendedItems": [...], "scores": [...]}, "error": null}``;
* ``manifest.json``: model tag, snapshot, data interval, scoring time, row counts, sha256 per file;

and publishes it atomically: ``out_dir`` is a symbolic link to a versioned sibling folder, and a
re-run of the same interval switches the link with one rename (readers see the old export or
the new one, never a mix), then removes the old folder.

Scoring time: the snapshot's cut time (``as_of``), each user with their latest context; seen
items excluded; young items ranked with the exploration bonus of ``serve.exploration_weight`` as the
service ranks them (``explore=False``: without it for this run; the manifest records the weight used).
Anonymous session owners are not exported (batch recommendations are for users).
Events logged by the service after the snapshot are not included: they reach the export once
ingest has loaded them and a new snapshot (and model) exists.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hrnn_core.config import Config
from hrnn_core.errors import HrnnError
from hrnn_core.data.contract import is_session_owner
from hrnn_core.hashing import file_sha256
from hrnn_core.model.scoring import rows_per_batch
from hrnn_core.serving.recommend import Filters, Request, ServingModel, load_serving_model
from hrnn_core.procs import stop_on_sigterm
from hrnn_core.threads import apply_torch_threads

SHARD_SCHEMA = pa.schema([("user_idx", pa.int64()), ("user_id", pa.string()), ("rank", pa.int32()),
                          ("item_id", pa.string()), ("score", pa.float64()), ("reason", pa.string())])
FILES = ("recommendations.csv", "recommendations.jsonl")


class ExportError(HrnnError):
    """The export cannot be made (no champion, no snapshot, shards that do not belong together)."""


def _load(cfg: Config, model_tag: str) -> ServingModel:
    apply_torch_threads(cfg.train.threads)  # the batch jobs' thread policy (the CLI and the DAG's shard tasks)
    m = load_serving_model(cfg, model_tag)
    if not m.history.snapshot_id:
        raise ExportError(f"model {model_tag} has no snapshot under {cfg.paths.snapshots_dir}: nothing to export")
    return m


def score_model_shard(cfg: Config, m: ServingModel, shard: int, n_shards: int, k: int, work_dir: Path,
                      explore: bool = True) -> Path:
    """``score_shard`` with an already loaded model."""
    if not (0 <= shard < n_shards):
        raise ExportError(f"shard must be in [0, {n_shards}), got {shard}")
    if not 1 <= k <= 500:
        raise ExportError(f"k must be in [1, 500], got {k}")
    at_time = m.history.as_of
    owners = [(u, o) for u, o in m.history.owners() if u % n_shards == shard and not is_session_owner(o)]
    owners.sort(key=lambda uo: m.history.n_events(uo[1]))  # similar lengths per batch: little padding
    cols: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    step = rows_per_batch(cfg.export.batch_users, m.engine.n_items)
    for lo in range(0, len(owners), step):
        batch = owners[lo:lo + step]
        # one batch's events at a time: a shard's whole history as Python objects held 10M events at once
        states = m.engine.replay([(m.history.events_of(o), m.history.user_features(o)) for _, o in batch])
        recs = m.recommender.recommend_many(
            [Request(s, k, Filters(exclude_seen=True), None, at_time, explore=explore) for s in states])
        for (u, o), items in zip(batch, recs, strict=True):
            for rank, r in enumerate(items, start=1):
                for name, v in zip(SHARD_SCHEMA.names, (u, o, rank, r.item_id, r.score, r.reason), strict=True):
                    cols[name].append(v)
    table = pa.table(cols, schema=SHARD_SCHEMA).replace_schema_metadata({
        "model_tag": m.tag, "snapshot_id": m.history.snapshot_id, "at_time": repr(at_time), "k": str(k),
        "shard": str(shard), "n_shards": str(n_shards), "n_users": str(len(owners)),
        "exploration_weight": repr(m.recommender.exploration.weight if explore else 0.0),
    })
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"shard-{shard:05d}-of-{n_shards:05d}.parquet"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a retried task overwrites its shard whole
    return path


@stop_on_sigterm()  # a SIGTERM'd task stops within seconds and leaves no work folder
def score_shard(cfg: Config, model_tag: str, shard: int, n_shards: int, k: int, work_dir: Path,
                explore: bool = True) -> Path:
    """Top-``k`` (seen items excluded) for the snapshot's users with ``user_idx % n_shards ==
    shard``; writes ``work_dir/shard-SSSSS-of-NNNNN.parquet`` and returns its path. ``explore=False``:
    no exploration bonus (``serve.exploration_weight``) in this run."""
    return score_model_shard(cfg, _load(cfg, model_tag), shard, n_shards, k, work_dir, explore)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Make ``out_dir`` a link to ``tmp``'s content with one atomic rename; drop the old version."""
    if out_dir.exists() and not out_dir.is_symlink():
        raise ExportError(f"{out_dir} exists and is not an export link; move it away or choose another --out")
    version = out_dir.parent / f".{out_dir.name}.v-{uuid.uuid4().hex[:12]}"
    tmp.rename(version)
    link = out_dir.parent / f".{out_dir.name}.link-{uuid.uuid4().hex[:12]}"
    os.symlink(version.name, link)  # relative: the export folder can move as a whole
    old = os.readlink(out_dir) if out_dir.is_symlink() else None
    os.replace(link, out_dir)  # the switch
    fd = os.open(out_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old and (out_dir.parent / old).resolve() != version.resolve():
        shutil.rmtree(out_dir.parent / old, ignore_errors=True)


def merge_shards(cfg: Config, model_tag: str, shard_files: Sequence[Path], out_dir: Path,
                 data_interval: tuple[float | None, float | None]) -> dict:
    """Merge shard files into ``out_dir`` (CSV, JSONL, manifest), atomically; returns the manifest."""
    if not shard_files:
        raise ExportError("no shard files to merge")
    tables = [pq.read_table(f) for f in shard_files]
    metas = [{k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()} for t in tables]
    for f, meta in zip(shard_files, metas, strict=True):
        if meta.get("model_tag") != model_tag:
            raise ExportError(f"{f} was scored with {meta.get('model_tag')}, not {model_tag}")
    keys = {(m["at_time"], m["k"], m["n_shards"], m["snapshot_id"], m.get("exploration_weight", "0.0"))
            for m in metas}
    if len(keys) != 1:
        raise ExportError(f"shards differ in scoring time, k, shard count, snapshot or exploration weight: "
                          f"{sorted(keys)}")
    at_time, k, n_shards, snapshot_id, exploration_weight = next(iter(keys))
    shards = sorted(int(m["shard"]) for m in metas)
    if shards != list(range(int(n_shards))):
        raise ExportError(f"need each of the {n_shards} shards once, got {shards}")
    table = pa.concat_tables(tables).sort_by([("user_idx", "ascending"), ("rank", "ascending")])
    n_users = sum(int(m["n_users"]) for m in metas)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; readers (DAG workers, other users) need it
    try:
        d = table.to_pydict()
        with open(tmp / "recommendations.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["user_id", "rank", "item_id", "score"])
            for u, rank, item, score in zip(d["user_id"], d["rank"], d["item_id"], d["score"], strict=True):
                w.writerow([u, rank, item, "" if score is None else repr(score)])
        with open(tmp / "recommendations.jsonl", "w", encoding="utf-8") as fh:
            i, n = 0, len(d["user_id"])
            while i < n:  # rows are grouped by user, best first
                j = i
                while j < n and d["user_id"][j] == d["user_id"][i]:
                    j += 1
                fh.write(json.dumps({"input": {"userId": d["user_id"][i]},
                                     "output": {"recommendedItems": d["item_id"][i:j], "scores": d["score"][i:j]},
                                     "error": None}) + "\n")
                i = j
        rows = {"recommendations.csv": table.num_rows, "recommendations.jsonl": n_users}
        manifest = {
            "model_tag": model_tag, "snapshot_id": snapshot_id, "data_interval": list(data_interval),
            "at_time": float(at_time), "k": int(k), "n_shards": int(n_shards), "n_users": n_users,
            "exploration_weight": float(exploration_weight),
            "created_at": datetime.now(timezone.utc).isoformat(),
            "files": {name: {"rows": rows[name], "bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                      for name in FILES},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for name in (*FILES, "manifest.json"):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**manifest, "path": str(out_dir)}


def interval_label(end: float | None) -> str:
    """Folder name of an export: its data interval's end, UTC."""
    if end is None:
        return "latest"
    return "until-" + datetime.fromtimestamp(end, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@stop_on_sigterm()  # a SIGTERM'd task stops within seconds and leaves no work folder
def export_all(cfg: Config, model_tag: str | None = None, k: int | None = None, n_shards: int | None = None,
               out_dir: Path | None = None, explore: bool = True) -> dict:
    """Score every shard with one loaded model and merge (the CLI's `hrnn export`); ``explore=False``:
    no exploration bonus in this run."""
    from hrnn_core.registry import champion_from_store  # noqa: PLC0415

    started = time.time()
    tag = model_tag or champion_from_store()
    if tag is None:
        raise ExportError("no champion in the model store; promote a model or pass --model TAG")
    k = cfg.export.k if k is None else k
    n_shards = cfg.export.n_shards if n_shards is None else n_shards
    m = _load(cfg, tag)
    meta = m.info["training_interval"]
    interval = (meta.get("start"), meta.get("end") if meta.get("end") is not None else m.history.as_of)
    root = Path(cfg.export.out_dir) if cfg.export.out_dir else cfg.paths.exports_dir
    out = Path(out_dir) if out_dir else root / interval_label(interval[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-work-", dir=out.parent) as work:
        files = [score_model_shard(cfg, m, s, n_shards, k, Path(work), explore) for s in range(n_shards)]
        manifest = merge_shards(cfg, tag, files, out, interval)
    return {**manifest, "seconds": round(time.time() - started, 3)}

