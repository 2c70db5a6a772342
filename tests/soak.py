"""Soak (issue 22 "Time"): simulated days of events through /events on 127.0.0.1, each day followed by the
hourly ingests (load + archive) and a nightly champion whose cut is that day's end; after each day the
worker's RSS, the logged events it holds, the landing folder and the time a restart takes to be ready.
Used by tests/test_reliability.py (small) and for the figure in docs/reliability.md:

    .venv/bin/python -m tests.reliability soak --days 5 --events-per-day 200000   # bench/results/reliability_soak.json
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

DAY = 86_400.0


def _nightly_champion(cfg, snap: Path, artifact: Path, as_of: float, name: str) -> str:
    """The same weights registered with a snapshot cut at ``as_of`` (what a nightly retrain would publish)."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    copy = snap.parent / name
    shutil.copytree(snap, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "snapshot_id": name, "as_of": as_of}))
    with connect(cfg) as con:
        tag = registry.register(con, "hrnn", artifact, snapshot_id=name, data_interval=(as_of - DAY, as_of))
        registry.promote(con, tag)
    return tag


def soak(root: Path, days: int, events_per_day: int, clients: int = 4, batch: int = 100) -> dict:
    import httpx  # noqa: PLC0415
    import psutil  # noqa: PLC0415

    from hrnn_core.config import load_config  # noqa: PLC0415
    from hrnn_core.data.pipeline import archive_ingested, find_new_files, ingest_one  # noqa: PLC0415
    from tests.champions import promote_tiny_champion  # noqa: PLC0415
    from tests.test_service import KEY, Server  # noqa: PLC0415

    champ = promote_tiny_champion(root / "champion", n_users=40, n_items=120, n_events=1_500, seed=1)
    t0 = json.loads((champ.snap / "manifest.json").read_text())["as_of"]
    data = root / "serve-data"
    data.mkdir()
    (data / "snapshots").symlink_to(champ.cfg.paths.snapshots_dir)
    os.environ.pop("HRNN_MODEL_TAG", None)
    env = {"HRNN__SERVE__CHAMPION_CHECK_SECONDS": "1", "HRNN__SERVE__SEGMENT_MAX_EVENTS": "20000"}
    cfg = load_config(overrides={"paths": {"data_dir": str(data)}}, environ={})
    registry_cfg = champ.cfg  # the champion's warehouse holds the registry
    log_file = root / "serve.log"
    server = Server(data, log_file, env_extra=env)
    rows, tags = [], [champ.tag]
    try:
        for d in range(1, days + 1):
            start = t0 + (d - 1) * DAY
            per_client = events_per_day // clients
            errors: list[int] = []

            def client(n: int, start: float = start, per_client: int = per_client, errors: list = errors) -> None:
                with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as h:
                    for lo in range(0, per_client, batch):
                        k = min(batch, per_client - lo)
                        step = DAY / per_client
                        events = [{"item_id": f"i{(n * 7 + lo + j) % 120}",
                                   "timestamp": start + (lo + j) * step + n * step / clients} for j in range(k)]
                        r = h.post("/events", json={"user_id": f"soak{(n * 131 + lo) % 500}", "events": events})
                        if r.status_code != 200:
                            errors.append(r.status_code)

            t = time.time()
            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            post_s = time.time() - t
            for path in find_new_files(cfg):  # the day's hourly ingests (what the ingest DAG runs)
                ingest_one(cfg, path)
            archived = archive_ingested(cfg)
            tags.append(_nightly_champion(registry_cfg, champ.snap, champ.artifact, start + DAY, f"{champ.snap.name}-d{d}"))
            deadline = time.time() + 60
            while server.client.get("/model").json().get("tag") != tags[-1] and time.time() < deadline:
                time.sleep(0.5)
            info = server.client.get("/model").json()
            worker = max(psutil.Process(server.proc.pid).children(recursive=True), key=lambda p: p.memory_info().rss)
            rss = worker.memory_info().rss
            server.kill(signal.SIGTERM)  # closes the open segment: the next ingest loads it
            t = time.time()
            server = Server(data, log_file, env_extra=env)
            startup = time.time() - t
            landing = [p for p in cfg.paths.landing_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
            rows.append({"day": d, "events_logged_total": d * per_client * clients, "post_seconds": round(post_s, 1),
                         "errors": len(errors), "worker_rss_mb": round(rss / 2**20, 1),
                         "events_held_after_new_model": info["logged_events"], "served_tag": info["tag"],
                         "landing_files_after_ingest": len(landing), "archived": archived["archived"],
                         "restart_to_ready_s": round(startup, 2)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.kill(signal.SIGTERM)
        import bentoml  # noqa: PLC0415

        for tag in tags:
            bentoml.models.delete(tag)
    return {"days": days, "events_per_day": events_per_day, "clients": clients, "batch": batch, "rows": rows}
