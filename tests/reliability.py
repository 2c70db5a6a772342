"""Fault scenarios against a real `bentoml serve` on 127.0.0.1, shared by tests/test_reliability.py (small,
in `make test`; long variants marked slow) and the figures of docs/reliability.md:

    .venv/bin/python -m tests.reliability crash --kills 12 --clients 16    # writes bench/results/reliability_crash.json
    .venv/bin/python -m tests.reliability fuzz --examples 200              # writes bench/results/reliability_fuzz.json
    .venv/bin/python -m tests.reliability load --clients 64 --seconds 30   # writes bench/results/reliability_load.json
    .venv/bin/python -m tests.reliability soak --days 5 --events-per-day 40000 --clients 4   # writes bench/results/reliability_soak.json

Every loop is bounded in count and time; all traffic goes to loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import re
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
    # live events come after the champion's snapshot cut (the service holds logged events from
    # serve.log_overlap_seconds before the cut on; older ones are taken to be in the model's history)
    cut = json.loads((champ.snap / "manifest.json").read_text())["as_of"]
    t_event = [cut]

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
        at = t_event[0] + 3600.0
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


@contextlib.contextmanager
def tiny_server(root: Path, seed: int = 0):
    """`bentoml serve` (tests.test_service.Server, with its API key) of a tiny champion, in its own data dir."""
    from tests.champions import promote_tiny_champion  # noqa: PLC0415
    from tests.test_service import Server  # noqa: PLC0415

    champ = promote_tiny_champion(root / "champion", n_users=60, n_items=150, n_events=2_000, seed=seed)
    data = root / "serve-data"
    data.mkdir()
    (data / "snapshots").symlink_to(champ.cfg.paths.snapshots_dir)
    os.environ.pop("HRNN_MODEL_TAG", None)
    server = Server(data, root / "serve.log")
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)
        import bentoml  # noqa: PLC0415

        bentoml.models.delete(champ.tag)


def finite_scores(ctx, response, case) -> bool | None:
    """A schemathesis check of what the schema cannot say: every score is a finite number, null only for a
    popular-fallback placeholder (a NaN score was serialized as null, or as an invalid NaN literal in a list)."""
    if response.status_code != 200 or case.operation.path not in ("/recommend", "/recommend_batch", "/similar_items"):
        return None
    body = response.json()
    for answer in body if isinstance(body, list) else [body]:
        for item in answer["items"]:
            score = item["score"]
            if score is None:
                assert item["reason"] == "popular_fallback", f"null score for a {item['reason']!r} item: {item}"
            else:
                assert math.isfinite(score), f"score {score!r}: {item}"
    return True


def fuzz_api(url: str, key: str, examples: int, seed: int = 0) -> dict:
    """schemathesis against the service's OpenAPI document (``/docs.json``): for every operation, ``examples``
    requests generated from the schema (positive), and for every POST as many that violate it (negative). Each
    response goes through schemathesis' checks (no 5xx, status code, content type, headers and body as declared,
    schema-violating requests refused, the API key enforced) and ``finite_scores``. Not enforced: "positive data
    acceptance", since some schema-valid requests are refused by design (a filter on a field the model does
    not have, min > max, an item not in the catalog); those answers are counted. Failures are collected (one per
    operation, mode and kind), not raised: the result says what was found."""
    import hypothesis  # noqa: PLC0415
    import schemathesis  # noqa: PLC0415
    from schemathesis import GenerationMode  # noqa: PLC0415
    from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: PLC0415

    auth = {"X-API-Key": key}
    schema = schemathesis.openapi.from_url(url + "/docs.json", headers=auth, timeout=30)
    statuses: dict[str, Counter] = {}
    failures: dict[tuple, dict] = {}
    refused_valid = Counter()
    settings = hypothesis.settings(max_examples=examples, deadline=None, database=None,
                                   suppress_health_check=list(hypothesis.HealthCheck),
                                   phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])

    def one_mode(op, mode: GenerationMode, seen: Counter):
        @hypothesis.seed(seed)
        @settings
        @hypothesis.given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:
            response = case.call(base_url=url, headers=auth, timeout=60)
            seen[response.status_code] += 1
            if mode == GenerationMode.POSITIVE and response.status_code == 400:  # why a schema-valid request was not
                refused_valid["(requests)"] += 1
                try:
                    body = response.json()
                    why = {f"{d['type']} at {[x for x in d['loc'] if isinstance(x, str)][-1:]}" for d in body.get("detail", [])}
                    for reason in why or {re.sub(r"'[^']*'", "'...'", str(body.get("error")))[:100]}:
                        refused_valid[reason] += 1
                except (ValueError, AttributeError, KeyError, TypeError):  # not the declared body: a check says so
                    refused_valid["(not an Error object)"] += 1
            try:
                case.validate_response(response, headers=auth, additional_checks=[finite_scores],
                                       excluded_checks=[positive_data_acceptance])
            except (AssertionError, BaseExceptionGroup) as exc:
                for failure in getattr(exc, "exceptions", [exc]):
                    kind = (op.label, mode.value, getattr(failure, "code", "assert"),
                            getattr(failure, "title", type(failure).__name__))
                    failures.setdefault(kind, {
                        "operation": op.label, "mode": mode.value, "code": kind[2], "title": kind[3],
                        "message": str(failure)[:2000], "status": response.status_code,
                        "response": response.text[:500],
                        "curl": case.as_curl_command(headers={"X-API-Key": "KEY"}, base_url=url)[:2000]})

        return run

    started = time.time()
    operations = [result.ok() for result in schema.get_all_operations()]
    for op in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.lower() == "post" else [])
        for mode in modes:
            one_mode(op, mode, statuses.setdefault(f"{op.label} {mode.value}", Counter()))()
    requests = sum(sum(c.values()) for c in statuses.values())
    return {"operations": len(operations), "examples_per_operation_and_mode": examples, "requests": requests,
            "seconds": round(time.time() - started, 1),
            "responses_5xx": sum(n for c in statuses.values() for code, n in c.items() if code >= 500),
            "failures": len(failures), "failure_details": list(failures.values()),
            "statuses": {k: dict(sorted(v.items())) for k, v in statuses.items()},
            "schema_valid_refused_400": dict(refused_valid.most_common(12))}  # by reason; a request may have several


def bench_service_module():
    """bench/bench_service.py (its load clients), imported by path: bench/ is not a package."""
    spec = importlib.util.spec_from_file_location("hrnn_bench_service_clients", REPO / "bench" / "bench_service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fuzz(root: Path, examples: int, seed: int = 0) -> dict:
    """``fuzz_api`` against a tiny champion served by `bentoml serve`."""
    from tests.test_service import KEY  # noqa: PLC0415

    with tiny_server(root, seed) as server:
        result = fuzz_api(server.url, KEY, examples, seed)
        log = server.log.read_text(errors="replace")
    result["server_log_tracebacks"] = log.count("Traceback")
    return result


def load(root: Path, clients: int, seconds: float, seed: int = 0) -> dict:
    """``clients`` loopback clients for ``seconds`` against a tiny champion: /recommend and /events (4 to 1),
    each client its own users (bench/bench_service.py's ``timed_load``, as the benchmark's load phases)."""
    from tests.test_service import KEY  # noqa: PLC0415

    bench = bench_service_module()
    with tiny_server(root, seed) as server:
        users = [f"u{i}" for i in range(60)]
        return bench.timed_load(server.url, bench.mixed_requests(users, clients, 25, time.time()), clients, seconds,
                                key=KEY)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["crash", "fuzz", "load", "soak"])
    parser.add_argument("--kills", type=int, default=12, help="crash: kills")
    parser.add_argument("--clients", type=int, default=16, help="crash, load: concurrent clients")
    parser.add_argument("--examples", type=int, default=200, help="fuzz: requests per operation and mode")
    parser.add_argument("--seconds", type=float, default=30.0, help="load: duration")
    parser.add_argument("--days", type=int, default=5, help="soak: simulated days")
    parser.add_argument("--events-per-day", type=int, default=200_000, help="soak: events per day")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop the servers it started (no orphans)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="hrnn-reliability-") as tmp:
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")  # a private model store
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
        if args.scenario == "crash":
            result = crash_under_load(Path(tmp), args.kills, args.clients, args.seed)
            flags = f"--kills {args.kills} --clients {args.clients}"
        elif args.scenario == "fuzz":
            result = fuzz(Path(tmp), args.examples, args.seed)
            flags = f"--examples {args.examples}"
        elif args.scenario == "load":
            result = load(Path(tmp), args.clients, args.seconds, args.seed)
            flags = f"--clients {args.clients} --seconds {args.seconds:g}"
        else:
            from tests.soak import soak  # noqa: PLC0415

            result = soak(Path(tmp), args.days, args.events_per_day, args.clients)
            flags = f"--days {args.days} --events-per-day {args.events_per_day} --clients {args.clients}"
    result["command"] = f".venv/bin/python -m tests.reliability {args.scenario} {flags} --seed {args.seed}"
    out = REPO / "bench" / "results" / f"reliability_{args.scenario}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
