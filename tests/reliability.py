"""Fault scenarios against a real `bentoml serve` on 127.0.0.1, shared by tests/test_reliability.py (small,
in `make test`; long variants marked slow) and the figures of docs/reliability.md:

    .venv/bin/python -m tests.reliability crash --kills 12 --clients 16    # writes bench/results/reliability_crash.json

Every loop is bounded in count and time; all traffic goes to loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def crash_under_load(root: Path, kills: int, clients: int = 16, seed: int = 0, load_seconds: tuple[float, float] = (1.0, 3.0)
                     ) -> dict:
    """``clients`` loopback clients post /events and /recommend for overlapping owners; the server (arbiter and
    worker) is SIGKILLed at a random moment ``kills`` times and restarted each time. Then: every acknowledged
    event is in the log exactly once, and each owner's /recommend equals the engine replaying its logged events."""
    import httpx  # noqa: PLC0415

    from hrnn_core.config import PathsConfig  # noqa: PLC0415
    from hrnn_core.data.eventlog import EventLog  # noqa: PLC0415
    from hrnn_core.model.inference import InferenceEngine  # noqa: PLC0415
    from hrnn_core.serving.recommend import logged_to_event  # noqa: PLC0415
    from tests.champions import promote_tiny_champion  # noqa: PLC0415
    from tests.test_service import KEY, Server  # noqa: PLC0415

    rng = random.Random(seed)
    champ = promote_tiny_champion(root / "champion", n_users=40, n_items=120, n_events=1_500, seed=seed)
    data = root / "serve-data"
    data.mkdir()
    (data / "snapshots").symlink_to(champ.cfg.paths.snapshots_dir)
    os.environ.pop("HRNN_MODEL_TAG", None)
    os.environ["HRNN_DATA_DIR"] = str(data)
    owners = [f"crash{i}" for i in range(clients // 2 or 1)]  # two clients per owner: overlapping writes
    acked: list[tuple[str, str, float]] = []
    lock = threading.Lock()
    restarts: list[float] = []
    errors = Counter()
    t_event = [1.7e9]

    def client(n: int, stop: threading.Event, url: str) -> None:
        owner = owners[n % len(owners)]
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=10) as h:
            while not stop.is_set():
                try:
                    if rng.random() < 0.6:
                        with lock:
                            t_event[0] += 1.0
                            ts = t_event[0]
                        item = f"i{rng.randrange(120)}"
                        r = h.post("/events", json={"user_id": owner, "events": [{"item_id": item, "timestamp": ts}]})
                        if r.status_code == 200:
                            with lock:
                                acked.append((owner, item, ts))
                    else:
                        r = h.post("/recommend", json={"user_id": owner, "num_results": 5})
                    if r.status_code != 200:
                        errors[f"http {r.status_code}"] += 1
                except httpx.HTTPError:
                    errors["connection (server killed)"] += 1
                    return

    log_file = root / "serve.log"
    started = time.time()
    server = Server(data, log_file)
    restarts.append(time.time() - started)
    for _ in range(kills):
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(n, stop, server.url)) for n in range(clients)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(*load_seconds))
        server.kill(signal.SIGKILL)  # arbiter and worker, mid-flight
        stop.set()
        for t in threads:
            t.join(30)
        started = time.time()
        server = Server(data, log_file)
        restarts.append(time.time() - started)

    try:
        landing = PathsConfig(data_dir=data).landing_dir
        records = list(EventLog(landing).read_all())
        logged = [(e.user_id, e.item_id, e.timestamp) for e in records]
        counts = Counter(logged)
        lost = [a for a in acked if counts[a] == 0]
        doubled = [a for a in acked if counts[a] > 1]
        engine = InferenceEngine.from_checkpoint(champ.artifact / "model.pt", device="cpu")
        mismatched = []
        at = 1.7e9 + 10 * 86_400.0
        for owner in owners:
            mine = [logged_to_event(e, "default") for e in records if e.user_id == owner]  # log order, as served
            state = engine.replay([(mine, None)])[0]
            ref = engine.top_k(state, 5, exclude_seen=True, at_time=at)
            got = server.client.post("/recommend", json={"user_id": owner, "num_results": 5, "at_time": at}).json()
            if [i["item_id"] for i in got["items"]] != [r[0] for r in ref] or any(
                    abs(i["score"] - r[1]) > 1e-4 for i, r in zip(got["items"], ref, strict=False)):
                mismatched.append(owner)
    finally:
        server.kill(signal.SIGTERM)
        import bentoml  # noqa: PLC0415

        bentoml.models.delete(champ.tag)
    return {"kills": kills, "clients": clients, "events_acknowledged": len(acked), "events_logged": len(logged),
            "acknowledged_lost": len(lost), "acknowledged_twice": len(doubled),
            "logged_not_acknowledged": len(logged) - len(set(acked)),  # cut off by a kill after the fsync
            "owners_checked": len(owners), "owners_state_mismatch": len(mismatched),
            "restart_to_ready_s": {"mean": round(statistics.fmean(restarts[1:]), 2), "max": round(max(restarts[1:]), 2)},
            "client_errors": dict(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["crash"])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hrnn-reliability-") as tmp:
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")  # a private model store
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
        result = crash_under_load(Path(tmp), args.kills, args.clients, args.seed)
    result["command"] = f".venv/bin/python -m tests.reliability crash --kills {args.kills} --clients {args.clients} --seed {args.seed}"
    out = REPO / "bench" / "results" / "reliability_crash.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
