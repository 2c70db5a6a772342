"""The BentoML service at three levels: the class called directly, the ASGI app in-process, and a
real `bentoml serve` over HTTP on 127.0.0.1 (events, restart after SIGKILL, bad input, load)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bentoml
import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from starlette.testclient import TestClient

from hrnn_core import registry
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.config import Config, ModelConfig, PathsConfig, load_config
from hrnn_core.data.eventlog import OPEN_PREFIX, EventLog
from hrnn_core.model.features import USER_ID_FIELD
from hrnn_core.model.inference import Event, InferenceEngine
from hrnn_core.serving.recommend import load_serving_model
from hrnn_core.data.warehouse import connect
from tests.champions import promote_tiny_champion

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789abcdef"
NOW = time.time()


@dataclass
class World:
    cfg: Config
    tag: str
    snap: Path
    checkpoint: Path
    artifact: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny HRNN-meta champion trained on a synthetic snapshot (registered, promoted)."""
    torch.set_num_threads(1)
    c = promote_tiny_champion(tmp_path_factory.mktemp("service"), n_users=60, n_items=150, n_events=2_000, seed=5,
                              metrics={"ndcg@10": 0.2})
    yield World(c.cfg, c.tag, c.snap, c.artifact / "model.pt", c.artifact)
    bentoml.models.delete(c.tag)  # the test session shares one store: leave no champion behind


@pytest.fixture(scope="module")
def svcmod(world: World):
    spec = importlib.util.spec_from_file_location("hrnn_bento_service", REPO / "bento" / "service.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data dir (its own landing folder) sharing the model's snapshots."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "snapshots").symlink_to(world.cfg.paths.snapshots_dir)
    monkeypatch.setenv("HRNN_DATA_DIR", str(d))
    monkeypatch.delenv("HRNN_MODEL_TAG", raising=False)
    return d


def configure(svcmod, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """The service reads its config once, at import (as under `bentoml serve`); a test that changes the
    environment (its data dir, a serve option) has it read again."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(svcmod, "CONFIG", load_config())


@pytest.fixture
def svc(svcmod, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    configure(svcmod, monkeypatch)
    s = svcmod.HRNNService()
    yield s
    s.shutdown()


def user_history(world: World, user: str) -> list[Event]:
    seq = pq.read_table(world.snap / "sequences.parquet").to_pylist()
    items = dict(zip(*pq.read_table(world.snap / "items.parquet", columns=["item_idx", "item_id"]).to_pydict().values(),
                     strict=True))
    row = next(r for r in seq if r["owner_id"] == user)
    return [Event(items[i], t, et, v, dict(c or []))
            for i, t, et, v, c in zip(row["item_idx"], row["timestamps"], row["event_types"], row["event_values"],
                                      row["contexts"], strict=True)]


def reference_top_k(world: World, user: str, new: list[Event], k: int, at: float) -> list[tuple[str, float]]:
    """The engine alone (not the service's code): history, then one update per new event."""
    eng = InferenceEngine.from_checkpoint(world.checkpoint, device="cpu")
    feats = pq.read_table(world.snap / "users.parquet").to_pylist()
    f = next(({"categorical": {**dict(u["categorical"] or []), USER_ID_FIELD: user},  # + its id, as served
               "numeric": dict(u["numeric"] or [])} for u in feats if u["user_id"] == user), None)
    state = eng.replay([(user_history(world, user), f)])[0]
    for e in new:
        eng.update(state, e)
    return eng.top_k(state, k, exclude_seen=True, at_time=at)


def new_events(user: str, items: list[str], t0: float) -> dict:
    return {"user_id": user, "events": [{"item_id": it, "timestamp": t0 + i, "event_type": "default",
                                         "context": {"device": "mobile"}} for i, it in enumerate(items)]}


def as_events(body: dict) -> list[Event]:
    return [Event(e["item_id"], e["timestamp"], e["event_type"], None, e["context"]) for e in body["events"]]


def assert_same_ranking(items: list, ref: list[tuple[str, float]]) -> None:
    assert [i["item_id"] for i in items] == [r[0] for r in ref]
    assert [i["score"] for i in items] == pytest.approx([r[1] for r in ref], abs=1e-4)


def dump(resp) -> dict:
    return resp.model_dump()


# --------------------------------------------------------------------------- level 1: the class


def test_class_recommend_events_follow_the_engine(svc, svcmod, world: World) -> None:
    m = svcmod
    at = json.loads((world.snap / "manifest.json").read_text())["as_of"] + 3600
    before = dump(svc.recommend(m.RecommendRequest(user_id="u1", num_results=8, at_time=at)))
    assert before["model_tag"] == world.tag
    assert {i["reason"] for i in before["items"]} <= {"personalized", "cold_start_metadata"}
    assert_same_ranking(before["items"], reference_top_k(world, "u1", [], 8, at))

    body = new_events("u1", ["i3", "i7", "i11"], at - 600)
    out = svc.events(m.EventsRequest(**body))
    assert out.accepted == 3 and out.n_events == len(user_history(world, "u1")) + 3
    after = dump(svc.recommend(m.RecommendRequest(user_id="u1", num_results=8, at_time=at)))
    assert after["items"] != before["items"]  # the next request reflects the events at once
    assert_same_ranking(after["items"], reference_top_k(world, "u1", as_events(body), 8, at))
    assert not {"i3", "i7", "i11"} & {i["item_id"] for i in after["items"]}  # exclude-seen

    cold = dump(svc.recommend(m.RecommendRequest(user_id="stranger", context={"device": "tv"}, num_results=5)))
    assert len(cold["items"]) == 5 and {i["reason"] for i in cold["items"]} <= {"cold_start_metadata", "trending"}


def test_trend_settings_are_the_models(world: World) -> None:
    """The service adds eq. (5) with the model's own weight, window and bucket: what the evaluation
    scored it with (there is no serving-side override)."""
    model_cfg = load_checkpoint(world.checkpoint).model_config
    info = load_serving_model(world.cfg, world.tag).info
    assert info["trend_weight"] == model_cfg.trend_weight
    assert info["trend_window_seconds"] == model_cfg.trend_window_seconds == ModelConfig().trend_window_seconds
    assert info["trend_bucket_seconds"] == model_cfg.trend_bucket_seconds


def test_class_filters_reasons_and_similar_items(svc, svcmod, world: World) -> None:
    m = svcmod
    items = pq.read_table(world.snap / "items.parquet").to_pylist()
    genres = {it["item_id"]: dict(it["categorical"] or []).get("genres", "").split("|") for it in items}
    got = dump(svc.recommend(m.RecommendRequest(user_id="u2", num_results=10,
                                                filters={"metadata": {"genres": ["g1"]}})))["items"]
    assert got and all("g1" in genres[i["item_id"]] for i in got)
    got = dump(svc.recommend(m.RecommendRequest(user_id="u2", num_results=3,
                                                filters={"include_items": ["i1", "i2", "i3", "i4"],
                                                         "exclude_items": ["i2"], "exclude_seen": False})))["items"]
    assert {i["item_id"] for i in got} <= {"i1", "i3", "i4"} and len(got) == 3
    refused = svc.recommend(m.RecommendRequest(user_id="u2", filters={"metadata": {"genre": ["g1"]}}))
    assert refused.status_code == 400  # an object {"error": ...}, as declared (not BentoML's one-element list)
    assert json.loads(refused.body) == {"error": "unknown categorical item field 'genre' in the metadata filter; "
                                                 "known: ['genres']"}

    # live events on an item the model has never seen: a placeholder once the catalog runs out (q(t) is
    # recounted per model.trend_bucket_seconds, an hour: the events count from the next bucket on)
    svc.events(m.EventsRequest(**new_events("u3", ["brand-new-item"], NOW - 30)))
    got = dump(svc.recommend(m.RecommendRequest(user_id="u4", num_results=2, at_time=NOW + 3600, filters={
        "include_items": ["i5", "brand-new-item"], "exclude_seen": False})))["items"]
    assert [(i["item_id"], i["reason"]) for i in got][1] == ("brand-new-item", "popular_fallback")
    assert got[1]["score"] is None and got[0]["item_id"] == "i5"

    # trending: many recent events on the item a cold user ranks last (with a model that has the term)
    scorer = svc._active.model.engine.scorer
    scorer.trend_weight = 1.0
    try:
        last = dump(svc.recommend(m.RecommendRequest(user_id="cold-a", num_results=150)))["items"][-1]["item_id"]
        for u in range(20):
            svc.events(m.EventsRequest(**new_events(f"fan{u}", [last], NOW - 120)))
        top = dump(svc.recommend(m.RecommendRequest(user_id="cold-b", num_results=3, at_time=NOW + 3600)))["items"]
        assert (last, "trending") in [(i["item_id"], i["reason"]) for i in top]
    finally:
        scorer.trend_weight = 0.0

    sim = dump(svc.similar_items(m.SimilarItemsRequest(item_id="i5", num_results=4)))["items"]
    assert len(sim) == 4 and "i5" not in {i["item_id"] for i in sim}
    assert all(-1.0001 <= i["score"] <= 1.0001 for i in sim)
    missing = svc.similar_items(m.SimilarItemsRequest(item_id="nope"))
    assert missing.status_code == 404 and json.loads(missing.body) == {"error": "item 'nope' is not in the model's catalog"}


def test_class_hot_swap_keeps_serving_and_follows_the_champion(svcmod, data_dir: Path, world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    configure(svcmod, monkeypatch, HRNN__SERVE__CHAMPION_CHECK_SECONDS="1")
    m = svcmod
    svc = m.HRNNService()
    tag_b = None
    try:
        svc.events(m.EventsRequest(**new_events("u6", ["i9", "i10"], NOW - 50)))
        ref = dump(svc.recommend(m.RecommendRequest(user_id="u6", num_results=5, at_time=NOW)))["items"]
        with connect(world.cfg) as con:  # the same weights under a new tag: results must not move
            tag_b = registry.register(con, "hrnn", world.artifact, snapshot_id=world.snap.name)
        stop, errors, served = threading.Event(), [], []

        def client() -> None:
            while not stop.is_set():
                try:
                    served.append(svc.recommend(m.RecommendRequest(user_id="u6", num_results=5, at_time=NOW)))
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        with connect(world.cfg) as con:
            registry.promote(con, tag_b)
        deadline = time.time() + 20
        while svc.model_info()["tag"] != tag_b and time.time() < deadline:  # the periodic check
            time.sleep(0.2)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert svc.model_info()["tag"] == tag_b and not errors
        assert {r.model_tag for r in served} == {world.tag, tag_b}
        after = dump(svc.recommend(m.RecommendRequest(user_id="u6", num_results=5, at_time=NOW)))
        assert after["model_tag"] == tag_b
        assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in ref]  # events carried over

        info = dump(svc.admin_reload(m.ReloadRequest(tag=world.tag)))  # pinned by the admin
        assert info["tag"] == world.tag and info["pinned"]
    finally:
        svc.shutdown()
        with connect(world.cfg) as con:
            registry.promote(con, world.tag)
        if tag_b:
            bentoml.models.delete(tag_b)


def test_no_champion_yet_answers_503_then_loads_one_without_restart(svcmod, data_dir: Path, world: World,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    configure(svcmod, monkeypatch, HRNN__SERVE__CHAMPION_CHECK_SECONDS="1")
    store = {"champion": None}
    monkeypatch.setattr(svcmod, "champion_from_store", lambda name, s=None: store["champion"])
    monkeypatch.setattr(svcmod, "PACKAGED_TAG", None)
    m = svcmod
    svc = m.HRNNService()
    try:
        assert not svc.__is_ready__()
        calls = [lambda: svc.recommend(m.RecommendRequest(user_id="u1")),
                 lambda: svc.events(m.EventsRequest(**new_events("u1", ["i1"], NOW))),
                 lambda: svc.similar_items(m.SimilarItemsRequest(item_id="i1"))]
        for call in calls:
            r = call()
            assert r.status_code == 503 and r.headers["Retry-After"] == "30"
            assert re.search("champion .*hrnn models promote", json.loads(r.body)["error"])
        with pytest.raises(m.ModelUnavailable, match="champion .*hrnn models promote"):
            svc.model_info()
        assert svc.owner_log.n_events == 0  # nothing acknowledged, nothing logged
        store["champion"] = world.tag  # promoted while the service runs
        deadline = time.time() + 20
        while not svc.__is_ready__() and time.time() < deadline:
            time.sleep(0.2)
        assert svc.__is_ready__()
        assert dump(svc.recommend(m.RecommendRequest(user_id="u1", num_results=3)))["model_tag"] == world.tag
    finally:
        svc.shutdown()


def test_events_answer_503_when_the_log_cannot_be_written(svc, svcmod, monkeypatch: pytest.MonkeyPatch) -> None:
    m = svcmod
    body = new_events("u9", ["i1", "i2"], NOW - 30)
    real = svc.log.append

    def full(events):
        raise m.EventLogError("cannot write the event log in landing: No space left on device")

    monkeypatch.setattr(svc.log, "append", full)
    r = svc.events(m.EventsRequest(**body))
    assert r.status_code == 503 and b"No space left on device" in r.body and b"retry" in r.body
    assert svc.owner_log.events_of("u9") == [] and svc.log.appended == 0  # nothing acknowledged
    monkeypatch.setattr(svc.log, "append", real)  # space returns
    assert dump(svc.events(m.EventsRequest(**body)))["n_events"] >= 2
    assert [e.item_id for e in svc.owner_log.events_of("u9")] == ["i1", "i2"]


def test_the_service_holds_only_the_events_its_model_lacks(svcmod, data_dir: Path, world: World,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Logged events older than the model's cut minus serve.log_overlap_seconds are in its history: a restart
    does not read them, a newer model forgets them, an older model served again reads them back."""
    from types import SimpleNamespace

    m = svcmod
    configure(m, monkeypatch)
    day = m.CONFIG.serve.log_overlap_seconds
    as_of = json.loads((world.snap / "manifest.json").read_text())["as_of"]
    svc = m.HRNNService()
    for t in (as_of - 3 * day, as_of + 10, as_of + 20):
        svc.events(m.EventsRequest(**new_events("keep", ["i1"], t)))
    svc.shutdown()

    def model_cut_at(t: float):
        return SimpleNamespace(model=SimpleNamespace(history=SimpleNamespace(as_of=t), trend=SimpleNamespace(
            add_live=lambda events: None)))

    svc = m.HRNNService()  # restarted: reads the log from the cut minus the overlap on
    try:
        times = lambda: [e.timestamp for e in svc.owner_log.events_of("keep")]  # noqa: E731
        assert times() == [as_of + 10, as_of + 20]
        svc._sync_log(model_cut_at(as_of + 15 + day))  # a newer model: what it holds is forgotten
        assert times() == [as_of + 20] and svc.owner_log.n_events == 1
        svc._sync_log(model_cut_at(as_of))  # the older model again (a rollback): read back from the log
        assert times() == [as_of + 10, as_of + 20]
    finally:
        svc.shutdown()


# --------------------------------------------------------------------------- level 2: ASGI in-process


def test_asgi_app_in_process(svcmod, data_dir: Path, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # One app per process (BentoML registers its Prometheus metrics globally), so with a key.
    configure(svcmod, monkeypatch, HRNN__SERVE__API_KEY=KEY)
    with TestClient(svcmod.HRNNService.to_asgi(), headers={"X-API-Key": KEY}) as client:
        assert client.get("/readyz", headers={"X-API-Key": ""}).status_code == 200  # probes stay open
        info = client.get("/model").json()
        assert info["tag"] == world.tag and info["training_interval"]["start"] == 1.7e9
        r = client.post("/recommend", json={"user_id": "u1", "num_results": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        r = client.post("/events", json=new_events("u1", ["i2"], NOW - 5))
        assert r.status_code == 200 and r.json()["accepted"] == 1
        r = client.post("/recommend_batch", json=[{"user_id": "u1", "num_results": 2}, {"session_id": "s", "num_results": 4}])
        assert r.status_code == 200 and [len(x["items"]) for x in r.json()] == [2, 4]
        bad = [
            {"user_id": "u1", "num_results": 0}, {"user_id": "u1", "num_results": 501}, {"num_results": 3},
            {"user_id": "x" * 257}, {"user_id": "a\nb"}, {"user_id": "u1", "surprise": 1},
            {"user_id": "u1", "filters": {"include_items": ["i"] * 10_001}},
            {"user_id": "u1", "filters": {"numeric": {"price": {"min": 5, "max": 1}}}},
            {"user_id": "u1", "context": {f"k{i}": "v" for i in range(17)}}, {"user_id": "u1", "at_time": -5},
            # found by schemathesis (tests/test_reliability.py::test_api_fuzzing): a value past ~1e38 x the
            # model's std made every score NaN (null, or an invalid NaN literal in /recommend_batch's list);
            # lax pydantic took true / "3" as numbers and "yes" as a flag
            {"user_id": "u1", "recent_events": [{"item_id": "i1", "timestamp": NOW, "event_value": 1e39}]},
            {"user_id": "u1", "at_time": True}, {"user_id": "u1", "num_results": "3"}, {"user_id": "u1", "num_results": 2.5},
            {"user_id": "u1", "filters": {"exclude_seen": "yes"}},
        ]
        for body in bad:
            r = client.post("/recommend", json=body)
            assert r.status_code == 400, (body, r.text)
        assert client.post("/recommend", json={"user_id": "u1", "num_results": 2.0}).status_code == 200  # an integer
        r = client.post("/similar_items", json={"item_id": "missing"})
        assert r.status_code == 404 and r.json() == {"error": "item 'missing' is not in the model's catalog"}
        # more schemathesis finds: a 500 each, or a 4xx whose body was a list
        r = client.post("/admin/reload", json={"tag": "M\u00f5\u00c41"})  # not a BentoML tag: was a 500
        assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["tag"]
        r = client.post("/admin/reload", json={"tag": "hrnn-meta:nosuchversion"})
        assert r.status_code == 404 and "not in the model store" in r.json()["error"]
        for raw in (b"\x00", b"\n"):
            r = client.post("/recommend_batch", content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and "not JSON" in r.json()["error"]  # was a 500 (json.loads inside BentoML)
        r = client.post("/events", content=b"garbage", headers={"Content-Type": "multipart/form-data"})
        assert r.status_code == 415 and r.json()["error"].startswith("send JSON")  # was a 500
        r = client.post("/recommend", content=b"x", headers={"Content-Type": "application/vnd.bentoml+pickle"})
        assert r.status_code == 415 and isinstance(r.json(), dict)  # BentoML's own 415 was a list
        r = client.post("/recommend_batch", json=[{"user_id": "u1"}, {"user_id": "u2", "filters": {"metadata": {"x": ["a"]}}}])
        assert r.status_code == 400 and "unknown categorical item field 'x'" in r.json()["error"]

        spec = client.get("/docs.json").json()  # what the service answers, declared (schemathesis checks it)
        assert spec["openapi"] == "3.1.0" and set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
        assert spec["components"]["schemas"]["InvalidArgument"]["properties"]["detail"]["type"] == "array"
        recommend = spec["paths"]["/recommend"]["post"]
        assert {"200", "400", "401", "404", "415", "503"} <= set(recommend["responses"]) and recommend["security"]
        body = recommend["requestBody"]
        assert body["required"] and len(body["content"]["application/json"]["schema"]["anyOf"]) == 2  # an owner id
        assert "security" not in spec["paths"]["/readyz"]["get"] and "503" in spec["paths"]["/readyz"]["get"]["responses"]
        assert client.get("/docs.json", headers={"X-API-Key": ""}).status_code == 401
        r = client.post("/recommend", json={"user_id": "u1", "filters": {"metadata": {"nope": ["a"]}}})
        assert r.status_code == 400 and "unknown categorical item field" in r.text and "Traceback" not in r.text

        for path, body in [("/recommend", {"user_id": "u1"}), ("/events", new_events("u1", ["i1"], NOW)),
                           ("/admin/reload", {})]:
            assert client.post(path, json=body, headers={"X-API-Key": ""}).status_code == 401
            assert client.post(path, json=body, headers={"X-API-Key": "wrong" + KEY}).status_code == 401
        assert client.get("/model", headers={"X-API-Key": ""}).status_code == 401
        bearer = {"X-API-Key": "", "Authorization": f"Bearer {KEY}"}
        assert client.post("/recommend", json={"user_id": "u1"}, headers=bearer).status_code == 200
        r = client.post("/admin/reload", json={})
        assert r.status_code == 200 and r.json()["tag"] == world.tag


def test_admin_is_refused_without_a_configured_key(svcmod, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    monkeypatch.delenv("HRNN__SERVE__API_KEY", raising=False)
    configure(svcmod, monkeypatch)
    inner = Starlette(routes=[Route("/{p:path}", lambda r: PlainTextResponse("ok"), methods=["GET", "POST"])])
    client = TestClient(svcmod.ApiKeyMiddleware(inner))
    assert client.post("/recommend").status_code == 200  # no key: open
    r = client.post("/admin/reload", headers={"X-API-Key": "anything-at-all-123"})
    assert r.status_code == 403 and "HRNN__SERVE__API_KEY" in r.text


# --------------------------------------------------------------------------- level 3: bentoml serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` in bento/ on 127.0.0.1 and a free port."""

    def __init__(self, data: Path, log: Path, env_extra: dict | None = None, probe: str = "/readyz"):
        self.port, self.log = free_port(), log
        env = {**os.environ, "HRNN_DATA_DIR": str(data), "HRNN__SERVE__API_KEY": KEY, "BENTOML_DO_NOT_TRACK": "True",
               **(env_extra or {})}
        env.pop("HRNN_MODEL_TAG", None)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "bentoml"), "serve", "--port", str(self.port)],
                cwd=REPO / "bento", env=env, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(self.url + probe, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        tail = log.read_text()[-3000:]
        self.kill(signal.SIGKILL)  # a server that never got ready leaves no worker behind either
        raise AssertionError("service not ready in 60 s:\n" + tail)

    def kill(self, sig: int) -> None:
        """Signal the server; SIGKILL takes its workers too (they run in sessions of their own)."""
        family = psutil.Process(self.proc.pid).children(recursive=True)
        if sig == signal.SIGKILL:
            for p in family:
                p.kill()
        self.proc.send_signal(sig)
        self.proc.wait(30)
        _, alive = psutil.wait_procs(family, timeout=15)
        for p in alive:  # never leave a worker behind
            p.kill()
        self.client.close()


def test_bentoml_serve_without_a_champion_starts_and_says_why(data_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    (home / "models").mkdir(parents=True)  # an empty model store: nothing promoted yet
    server = Server(data_dir, tmp_path / "serve.log", env_extra={"BENTOML_HOME": str(home)}, probe="/livez")
    try:
        assert httpx.get(server.url + "/readyz", timeout=5).status_code == 503
        for path, body in [("/recommend", {"user_id": "u1"}), ("/events", new_events("u1", ["i1"], NOW))]:
            r = server.client.post(path, json=body)
            assert r.status_code == 503 and "champion in the model store" in r.text and "hrnn models promote" in r.text, r.text
        assert server.client.get("/model").status_code == 503
        assert sum("not ready: no hrnn-meta champion" in line for line in server.log.read_text().splitlines()) == 1
        assert "Traceback" not in server.log.read_text()
    finally:
        server.kill(signal.SIGTERM)


def test_worker_exits_when_its_arbiter_is_killed(world: World, data_dir: Path, tmp_path: Path) -> None:
    server = Server(data_dir, tmp_path / "serve.log")
    workers = psutil.Process(server.proc.pid).children(recursive=True)
    try:
        assert server.client.post("/events", json=new_events("u1", ["i4"], NOW - 10)).json()["accepted"] == 1
        server.proc.kill()  # the arbiter alone: its worker must not keep serving the old state
        server.proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
        assert not list(PathsConfig(data_dir=data_dir).landing_dir.glob(f"{OPEN_PREFIX}*"))  # its segment closed
        with socket.socket() as s:  # nobody answers on the old port any more: a restart can take it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", server.port))
        server = Server(data_dir, tmp_path / "serve.log")
        assert server.client.post("/recommend", json={"user_id": "u1"}).status_code == 200
    finally:
        for p in workers:
            if p.is_running():
                p.kill()
        server.kill(signal.SIGTERM)


def test_bentoml_serve_over_http(world: World, data_dir: Path, tmp_path: Path) -> None:
    landing = PathsConfig(data_dir=data_dir).landing_dir  # where the service's event log lives
    server = Server(data_dir, tmp_path / "serve.log")
    try:
        c = server.client
        assert httpx.post(server.url + "/recommend", json={"user_id": "u1"}).status_code == 401
        at = NOW
        body = new_events("u1", ["i4", "i8"], NOW - 100)
        assert c.post("/events", json=body).json()["accepted"] == 2
        got = c.post("/recommend", json={"user_id": "u1", "num_results": 6, "at_time": at}).json()
        assert_same_ranking(got["items"], reference_top_k(world, "u1", as_events(body), 6, at))

        for raw in [b'{"user_id": "u1",', b'{"user_id": "u1", "at_time": NaN}', b'[1, 2]', b'\xff\xfe', b'\x00']:
            for path in ("/recommend", "/recommend_batch"):  # /recommend_batch (a JSON array) answered 500 to b'\x00'
                r = c.post(path, content=raw, headers={"Content-Type": "application/json"})
                assert r.status_code == 400 and isinstance(r.json()["error"], str), (path, raw, r.text)
        assert c.post("/events", json=new_events("u1", ["i1"] * 101, NOW)).status_code == 400
        assert c.post("/events", json={**new_events("u1", ["i1"], NOW), "extra": True}).status_code == 400
        assert c.post("/events", json={"user_id": "u1", "events": [{"item_id": "i1", "timestamp": 1e300}]}).status_code == 400

        acked: list[tuple[str, str]] = []
        lock = threading.Lock()

        def client(n: int) -> list[int]:
            codes = []
            with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30) as h:
                for i in range(25):
                    if i % 3 == 0:
                        item = f"i{(n * 25 + i) % 150}"
                        r = h.post("/events", json=new_events(f"load{n}", [item], NOW - 1000 + i))
                        if r.status_code == 200:
                            with lock:
                                acked.append((f"load{n}", item))
                    elif i % 3 == 1:
                        r = h.post("/recommend", json={"user_id": f"load{n}", "num_results": 10})
                    else:
                        r = h.post("/recommend_batch", json=[{"user_id": f"u{n}"}, {"session_id": f"s{n}"}])
                    codes.append(r.status_code)
            return codes

        with ThreadPoolExecutor(8) as pool:
            codes = [c_ for cs in pool.map(client, range(8)) for c_ in cs]
        assert len(codes) == 200 and set(codes) == {200}
        before = c.post("/recommend", json={"user_id": "load3", "num_results": 5, "at_time": at}).json()

        server.kill(signal.SIGKILL)  # no shutdown hook: the open segment stays behind
        assert list(landing.glob(f"{OPEN_PREFIX}*"))
        server = Server(data_dir, tmp_path / "serve.log")
        after = server.client.post("/recommend", json={"user_id": "load3", "num_results": 5, "at_time": at}).json()
        assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]]
        assert [i["score"] for i in after["items"]] == pytest.approx([i["score"] for i in before["items"]], abs=1e-4)
        assert not list(landing.glob(f"{OPEN_PREFIX}*"))  # the dead writer's segment: closed
        logged = [(e.user_id, e.item_id) for e in EventLog(landing).read_all()]
        assert sorted(a for a in logged if a[0].startswith("load")) == sorted(acked)  # every acknowledged event
        assert ("u1", "i4") in logged and ("u1", "i8") in logged
    finally:
        server.kill(signal.SIGTERM)
    assert not list(landing.glob(f"{OPEN_PREFIX}*"))  # SIGTERM: segments closed for ingest
