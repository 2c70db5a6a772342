"""Benchmark of the BentoML service over HTTP on loopback, against the in-process scoring it wraps.

For each champion (ml-100k: 1,682 items; synthetic: 100,000 items) the script registers the
model in a private BentoML store, starts `bentoml serve` on 127.0.0.1, and measures:

* /recommend latency (p50/p99) at concurrency 1 and 16, and requests/s, for known users;
* load: 16 and 64 concurrent clients for a bounded time, each sending /recommend and /events (one event) for
  its own users, 4 to 1: requests/s, p50/p99 per endpoint, errors (issue 22);
* /events latency (one event per call: fsync'ed to the log, one GRU step);
* in the benchmark process, on the same model and users: ``engine.top_k`` (the engine's own
  top k), ``Recommender.recommend`` (filters, trend, reasons: what the service runs) and the
  service class method called directly (plus state lookup and pydantic), so the HTTP share
  is visible as a ratio;
* the machine's roofline for the scoring product: one 1 x H x n_items matrix-vector product.

Requests per phase are bounded in count or time; every non-200 answer and every failed request (timeout,
connection error) is counted as an error. Writes bench/results/service.json.

    .venv/bin/python bench/bench_service.py            # both models (trains the 100k one once)
    .venv/bin/python bench/bench_service.py --quick    # fewer requests, 5 s load phases
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 3), "p99_ms": round(pct(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


# --------------------------------------------------------------------------- models


def ml100k_checkpoint(work: Path) -> tuple[Path, Path] | None:
    """The ml-100k checkpoint of `make demo`/bench (data/models/*/best.pt) and its snapshot; without one, a dense
    HRNN-meta trained here for 2 epochs on the ml-100k snapshot under data/snapshots (trained once, reused)."""
    import torch

    for ck in sorted((REPO / "data" / "models").glob("*/best.pt")):
        snap_id = torch.load(ck, map_location="cpu", weights_only=True)["snapshot_id"]
        snap = REPO / "data" / "snapshots" / snap_id
        if (snap / "manifest.json").is_file() and json.loads((snap / "manifest.json").read_text())["n_items"] < 5000:
            return ck, snap
    for manifest in sorted((REPO / "data" / "snapshots").glob("*/manifest.json")):
        if json.loads(manifest.read_text())["n_items"] == 1682:  # MovieLens-100k
            from hrnn_core.config import ModelConfig, TrainConfig
            from hrnn_core.train.trainer import train

            run = work / "ml100k-run"
            if not (run / "last.pt").exists():
                t = time.time()
                train(manifest.parent, run, ModelConfig(), TrainConfig(epochs=2, min_epochs=1, progress=False,
                                                                       val_owners=200, threads=2, device="cpu"))
                print(f"trained the ml-100k model (2 epochs) in {time.time() - t:.0f} s", flush=True)
            return run / "last.pt", manifest.parent
    return None


def synthetic_100k(work: Path) -> tuple[Path, Path]:
    """A 100,000-item synthetic champion: one epoch of the sampled softmax (trained once, reused)."""
    from hrnn_core.config import ModelConfig, TrainConfig
    from research.synth import synthetic_snapshot
    from hrnn_core.train.trainer import train

    snap = synthetic_snapshot(work / "synth100k", n_users=5_000, n_items=100_000, n_events=200_000, n_genres=20,
                              seed=0)
    run = work / "synth100k-run"
    if not (run / "last.pt").exists():
        t = time.time()
        train(snap, run, ModelConfig(), TrainConfig(output="sampled", epochs=1, progress=False, val_owners=200,
                                                    threads=2, device="cpu"))
        print(f"trained the 100k-item model in {time.time() - t:.0f} s", flush=True)
    return run / "last.pt", snap


def make_store(home: Path, checkpoint: Path, snapshot_id: str) -> str:
    """A private model store holding the checkpoint as the champion (labels only: no warehouse)."""
    import bentoml
    # Private API on purpose: BentoML 1.4 has no public ModelStore (bentoml.models.* take one only as `_model_store`).
    from bentoml._internal.models.model import ModelStore

    (home / "models").mkdir(parents=True, exist_ok=True)
    with bentoml.models.create(name="hrnn-meta", labels={"stage": "champion", "kind": "hrnn"},
                               metadata={"snapshot_id": snapshot_id, "metrics": {}},
                               _model_store=ModelStore(home / "models")) as m:
        shutil.copy(checkpoint, m.path_of("model.pt"))
    return str(m.tag)


# --------------------------------------------------------------------------- server and clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, data: Path, log: Path):
        import httpx

        self.port = free_port()
        env = {**os.environ, "BENTOML_HOME": str(home), "HRNN_DATA_DIR": str(data), "BENTOML_DO_NOT_TRACK": "True",
               "HRNN__SERVE__API_KEY": KEY, "HRNN__SERVE__CHAMPION_CHECK_SECONDS": "0"}
        env.pop("HRNN_MODEL_TAG", None)  # the champion of this store
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "--port",
                                          str(self.port)], cwd=REPO / "bento", env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        t0 = time.time()
        while time.time() - t0 < 180:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    self.ready_s = time.time() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SystemExit(f"server not ready; see {log}")

    def stop(self) -> None:
        import psutil

        family = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        _, alive = psutil.wait_procs(family, timeout=15)
        for p in alive:
            p.kill()


def run_clients(url: str, bodies: list[tuple[str, dict]], concurrency: int) -> tuple[list[float], int, float]:
    """Send ``bodies`` (path, json) from ``concurrency`` threads, each with one keep-alive
    connection; returns (latencies ms, errors, wall seconds). A failed request is an error too."""
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    chunks = [bodies[i::concurrency] for i in range(concurrency)]

    def worker(chunk: list[tuple[str, dict]]) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as c:
            mine = []
            for path, body in chunk:
                t = time.perf_counter()
                try:
                    ok = c.post(path, json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append((time.perf_counter() - t) * 1e3)
                if not ok:
                    with lock:
                        errors[0] += 1
            with lock:
                lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(ch,)) for ch in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.perf_counter() - t0


def timed_load(url: str, request: Callable[[int, int], tuple[str, dict]], clients: int, seconds: float,
               key: str = KEY, max_requests: int = 1_000_000) -> dict:
    """``clients`` threads, each with one keep-alive connection, send ``request(client, i)`` (path, json) back to
    back until ``seconds`` have passed (or ``max_requests`` in all). Returns requests/s and, per path, the
    count, p50/p99 and errors: a non-200 answer (by status) or a failed request (by exception type)."""
    import httpx

    lat: dict[str, list[float]] = {}
    errors: dict[str, Counter] = {}
    lock = threading.Lock()
    sent = [0]
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(n: int) -> None:
        mine: dict[str, list[float]] = {}
        bad: dict[str, Counter] = {}
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as c:
            start.wait()
            i = 0
            while time.perf_counter() < deadline[0]:
                with lock:
                    if sent[0] >= max_requests:
                        break
                    sent[0] += 1
                path, body = request(n, i)
                i += 1
                t = time.perf_counter()
                try:
                    status = c.post(path, json=body).status_code
                    kind = None if status == 200 else f"http {status}"
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                mine.setdefault(path, []).append((time.perf_counter() - t) * 1e3)
                if kind:
                    bad.setdefault(path, Counter())[kind] += 1
        with lock:
            for path, xs in mine.items():
                lat.setdefault(path, []).extend(xs)
            for path, kinds in bad.items():
                errors.setdefault(path, Counter()).update(kinds)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = sum(len(xs) for xs in lat.values())
    return {"clients": clients, "seconds": round(wall, 2), "requests": n, "req_per_s": round(n / wall, 1),
            "errors": sum(sum(c.values()) for c in errors.values()),
            "by_path": {path: {**summary(xs), "errors": dict(errors.get(path, {}))} for path, xs in sorted(lat.items())}}


def mixed_requests(users: list[str], clients: int, k: int, now: float) -> Callable[[int, int], tuple[str, dict]]:
    """Client ``n``'s ``i``-th request: /recommend for one of its own users (``users[n::clients]``, or a cold user
    of its own when there are fewer users than clients), every fifth an /events call (one event) for that user:
    clients never share a user, so no request waits for another's per-user lock."""

    def request(n: int, i: int) -> tuple[str, dict]:
        mine = users[n::clients] or [f"load-cold-{n}"]
        user = mine[i % len(mine)]
        if i % 5 == 4:
            return "/events", {"user_id": user, "events": [{"item_id": "bench-item", "timestamp": now - 3600 + i}]}
        return "/recommend", {"user_id": user, "num_results": k}

    return request


def http_floor(url: str, n: int) -> list[float]:
    """GET /readyz round trips: what HTTP (client, uvicorn, BentoML) costs with no work."""
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.get("/readyz")
            out.append((time.perf_counter() - t) * 1e3)
    return out


def fsync_floor(folder: Path, n: int) -> dict:
    """Append one CSV line + fsync, as /events does, in the landing folder's file system."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".fsync-probe.tmp"
    out = []
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(n):
            t = time.perf_counter()
            fh.write(f"u1,,i{i},1700000000.5,,,,mobile\n")
            fh.flush()
            os.fsync(fh.fileno())
            out.append((time.perf_counter() - t) * 1e3)
    path.unlink()
    return summary(out)


# --------------------------------------------------------------------------- in process


def in_process(home: Path, data: Path, tag: str, users: list[str], k: int, reps: int) -> dict:
    """engine.top_k, Recommender.recommend and the service method, same model and users."""
    import torch

    saved = dict(os.environ)
    os.environ.update({"BENTOML_HOME": str(home), "HRNN_DATA_DIR": str(data), "HRNN_MODEL_TAG": tag,
                       "HRNN__SERVE__CHAMPION_CHECK_SECONDS": "0"})
    torch.set_num_threads(1)  # as the service (serve.torch_threads)
    spec = importlib.util.spec_from_file_location("hrnn_bench_service", REPO / "bento" / "service.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    from hrnn_core.model.inference import Event
    from hrnn_core.serving.recommend import Filters, Request, copy_state

    svc = mod.HRNNService()
    try:
        m = svc._active.model
        states = {u: svc._state(svc._active, u, u) for u in users}
        eng, rec = m.engine, m.recommender
        out: dict[str, list[float]] = {"engine.top_k": [], "recommender.recommend": [], "service.recommend": [],
                                       "score_many": [], "topk_only": [], "engine.update": []}
        for _ in range(reps):
            for u in users:
                s = states[u]
                t = time.perf_counter()
                eng.top_k(s, k, exclude_seen=True)
                out["engine.top_k"].append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                rec.recommend(Request(s, k, Filters()))
                out["recommender.recommend"].append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                svc.recommend(mod.RecommendRequest(user_id=u, num_results=k))
                out["service.recommend"].append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                scores = eng.score_many([s])
                out["score_many"].append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                torch.topk(scores[0], k)
                out["topk_only"].append((time.perf_counter() - t) * 1e3)
                c = copy_state(s)
                t = time.perf_counter()
                eng.update(c, Event("bench-item", time.time() - 60))
                out["engine.update"].append((time.perf_counter() - t) * 1e3)
        h = eng.model.cfg.hidden_size
        w = torch.randn(eng.n_items, h)
        x = torch.randn(1, h)
        mv = []
        for _ in range(200):
            t = time.perf_counter()
            x @ w.T
            mv.append((time.perf_counter() - t) * 1e3)
        res = {name: summary(v) for name, v in out.items()}
        res["roofline_matvec_1xHxN"] = {**summary(mv), "H": h, "N": eng.n_items,
                                        "GB_per_s_at_p50": round(eng.n_items * h * 4 / (pct(mv, 50) / 1e3) / 1e9, 1)}
        return res
    finally:
        svc.shutdown()
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------- one model


def bench_model(name: str, checkpoint: Path, snap: Path, work: Path, n1: int, n16: int, n_events: int,
                load_seconds: float) -> dict:
    import pyarrow.parquet as pq

    from hrnn_core.data.contract import is_session_owner

    home = work / f"store-{name}"
    data = work / f"data-{name}"
    for p in (home, data):
        shutil.rmtree(p, ignore_errors=True)
    data.mkdir(parents=True)
    (data / "snapshots").mkdir()
    (data / "snapshots" / snap.name).symlink_to(snap)  # read-only use of the snapshot; own landing folder
    tag = make_store(home, checkpoint, snap.name)
    owners = [o for o in pq.read_table(snap / "sequences.parquet", columns=["owner_id"])["owner_id"].to_pylist()
              if not is_session_owner(o)]
    users = owners[:: max(1, len(owners) // 200)][:200]
    k = 25
    server = Server(home, data, work / f"serve-{name}.log")
    try:
        url = server.url
        rec = [("/recommend", {"user_id": users[i % len(users)], "num_results": k}) for i in range(max(n1, n16))]
        run_clients(url, rec[: len(users)], 4)  # warm-up: every user's state is built once
        lat1, err1, wall1 = run_clients(url, rec[:n1], 1)
        lat16, err16, wall16 = run_clients(url, rec[:n16], 16)
        now = time.time()
        load = {f"load_c{c}": timed_load(url, mixed_requests(users, c, k, now), c, load_seconds) for c in (16, 64)}
        ev = [("/events", {"user_id": users[i % len(users)],
                           "events": [{"item_id": "bench-item", "timestamp": now - 3600 + i}]}) for i in range(n_events)]
        late, erre, walle = run_clients(url, ev, 1)
        cold = [("/recommend", {"user_id": f"cold-{i}", "num_results": k, "context": {"device": "mobile"}})
                for i in range(min(n1, 200))]
        latc, errc, _ = run_clients(url, cold, 1)
        floor = http_floor(url, min(n1, 200))
        result = {
            "model_tag": tag, "n_items": None, "ready_seconds": round(server.ready_s, 2),
            "recommend_c1": {**summary(lat1), "errors": err1, "req_per_s": round(n1 / wall1, 1)},
            "recommend_c16": {**summary(lat16), "errors": err16, "req_per_s": round(n16 / wall16, 1)},
            **load,
            "recommend_cold_user_c1": {**summary(latc), "errors": errc},
            "events_c1": {**summary(late), "errors": erre, "req_per_s": round(n_events / walle, 1)},
            "http_floor_readyz_c1": summary(floor),
            "fsync_floor": fsync_floor(data / "landing", 200),
        }
    finally:
        server.stop()
    result["in_process"] = in_process(home, data, tag, users[:50], k, reps=4)
    result["n_items"] = result["in_process"]["roofline_matvec_1xHxN"]["N"]
    ip = result["in_process"]
    result["http_over_engine_topk_p50"] = round(result["recommend_c1"]["p50_ms"] / ip["engine.top_k"]["p50_ms"], 2)
    result["http_over_service_method_p50"] = round(result["recommend_c1"]["p50_ms"] / ip["service.recommend"]["p50_ms"], 2)
    for c in (16, 64):  # load against the concurrency-1 baseline; Little's law: clients / throughput = mean latency
        lc = result[f"load_c{c}"]
        lc["recommend_p50_over_c1_p50"] = round(lc["by_path"]["/recommend"]["p50_ms"] / result["recommend_c1"]["p50_ms"], 1)
        lc["req_per_s_over_c1"] = round(lc["req_per_s"] / result["recommend_c1"]["req_per_s"], 2)
        lc["littles_law_mean_ms"] = round(c / lc["req_per_s"] * 1e3, 1)
    return result


def table(results: dict) -> str:
    rows = [("model", "items", "/recommend c1 p50/p99", "c16 p50/p99", "c1 req/s", "c16 req/s",
             "/events p50/p99", "fsync p50/p99", "cold c1 p50/p99", "/readyz p50", "engine.top_k p50",
             "service method p50", "HTTP/top_k", "errors")]
    for name, r in results["models"].items():
        ip = r["in_process"]
        rows.append((name, f"{r['n_items']:,}",
                     f"{r['recommend_c1']['p50_ms']:.2f} / {r['recommend_c1']['p99_ms']:.2f}",
                     f"{r['recommend_c16']['p50_ms']:.1f} / {r['recommend_c16']['p99_ms']:.1f}",
                     f"{r['recommend_c1']['req_per_s']:.0f}", f"{r['recommend_c16']['req_per_s']:.0f}",
                     f"{r['events_c1']['p50_ms']:.2f} / {r['events_c1']['p99_ms']:.2f}",
                     f"{r['fsync_floor']['p50_ms']:.2f} / {r['fsync_floor']['p99_ms']:.2f}",
                     f"{r['recommend_cold_user_c1']['p50_ms']:.2f} / {r['recommend_cold_user_c1']['p99_ms']:.2f}",
                     f"{r['http_floor_readyz_c1']['p50_ms']:.2f}",
                     f"{ip['engine.top_k']['p50_ms']:.2f}", f"{ip['service.recommend']['p50_ms']:.2f}",
                     f"{r['http_over_engine_topk_p50']:.1f}x",
                     str(sum(r[x]["errors"] for x in ("recommend_c1", "recommend_c16", "events_c1",
                                                     "recommend_cold_user_c1", "load_c16", "load_c64")))))
    load_rows = [("model", "clients", "seconds", "requests", "req/s", "x c1 req/s", "/recommend p50/p99",
                  "/events p50/p99", "p50 / c1 p50", "errors")]
    for name, r in results["models"].items():
        for c in (16, 64):
            lc = r[f"load_c{c}"]
            rec, ev = lc["by_path"]["/recommend"], lc["by_path"].get("/events", {"p50_ms": 0, "p99_ms": 0})
            load_rows.append((name, c, f"{lc['seconds']:.0f}", f"{lc['requests']:,}", f"{lc['req_per_s']:.0f}",
                              f"{lc['req_per_s_over_c1']:.2f}", f"{rec['p50_ms']:.1f} / {rec['p99_ms']:.1f}",
                              f"{ev['p50_ms']:.1f} / {ev['p99_ms']:.1f}", f"{lc['recommend_p50_over_c1_p50']:.0f}x",
                              str(lc["errors"])))
    return _format(rows) + "\n\n" + _format(load_rows)


def _format(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hrnn-bench-service")
    ap.add_argument("--quick", action="store_true", help="fewer requests per phase, 5 s load phases")
    ap.add_argument("--load-seconds", type=float, help="length of each load phase (default 20, --quick 5)")
    ap.add_argument("--only", choices=["ml100k", "synth100k"], help="benchmark one model")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service.json")
    args = ap.parse_args()
    n1, n16, n_events = (100, 320, 100) if args.quick else (400, 1600, 400)
    load_seconds = args.load_seconds or (5.0 if args.quick else 20.0)
    args.work.mkdir(parents=True, exist_ok=True)
    models: dict[str, tuple[Path, Path]] = {}
    if args.only in (None, "ml100k"):
        found = ml100k_checkpoint(args.work)
        if found is None:
            print("no ml-100k checkpoint under data/models (run `make demo` or bench/tune_hrnn.py): skipped")
        else:
            models["ml100k"] = found
    if args.only in (None, "synth100k"):
        models["synth100k"] = synthetic_100k(args.work)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_start": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "requests": {"c1": n1, "c16": n16, "events": n_events, "k": 25, "load_seconds": load_seconds,
                     "load_mix": "4 /recommend : 1 /events, each client its own users"},
        "command": " ".join([".venv/bin/python", "bench/bench_service.py", *sys.argv[1:]]),
        "models": {},
    }
    for name, (ck, snap) in models.items():
        print(f"== {name}: {ck}", flush=True)
        results["models"][name] = bench_model(name, ck, snap, args.work, n1, n16, n_events, load_seconds)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
