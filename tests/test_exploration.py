"""Exploration for new items (hrnn_core.serving.exploration): the bonus, its reason, the per-request switch,
the filters, the slot share against the weight, and the service and the export ranking alike."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import bentoml
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.config import ConfigError, ServeConfig
from hrnn_core.data.contract import is_session_owner
from hrnn_core.model.scoring import NO_SCORE
from hrnn_core.serving.exploration import DAY_SECONDS, Exploration
from hrnn_core.serving.export import export_all
from hrnn_core.serving.recommend import EXPLORATION, Filters, Request, ServingModel, load_serving_model
from tests.champions import Champion, promote_tiny_champion
from tests.test_service import configure

REPO = Path(__file__).resolve().parents[1]
AGE_DAYS = 10.0  # of the synthetic log's 30 days: items created in its last third are young at the cut
K = 10


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory):
    """A tiny champion on a synthetic log where a fifth of the items are created during the log."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    c = promote_tiny_champion(tmp_path_factory.mktemp("explore"), n_users=60, n_items=150, n_events=2_000, seed=7,
                              cold_items_fraction=0.2)
    yield c
    torch.set_num_threads(threads)
    bentoml.models.delete(c.tag)  # the test session shares one store: leave no champion behind


def as_of(c: Champion) -> float:
    return float(json.loads((c.snap / "manifest.json").read_text())["as_of"])


def served(c: Champion, weight: float) -> ServingModel:
    serve = dataclasses.replace(c.cfg.serve, exploration_weight=weight, exploration_item_age_days=AGE_DAYS)
    return load_serving_model(dataclasses.replace(c.cfg, serve=serve), c.tag)


def recommend_all(m: ServingModel, at: float, k: int = K, explore: bool = True, filters: Filters = Filters()):
    """{owner: [Recommendation]} for every owner of the snapshot at ``at``."""
    owners = [o for _, o in m.history.owners()]
    states = m.engine.replay([(m.history.events_of(o), m.history.user_features(o)) for o in owners])
    recs = m.recommender.recommend_many([Request(s, k, filters, None, at, explore=explore) for s in states])
    return dict(zip(owners, recs, strict=True))


def young_items(c: Champion, at: float) -> set[str]:
    """Item ids created (creation_timestamp) less than AGE_DAYS before ``at``: the generator's new items."""
    t = pq.read_table(c.snap / "items.parquet", columns=["item_id", "creation_timestamp"]).to_pydict()
    return {i for i, ct in zip(t["item_id"], t["creation_timestamp"], strict=True)
            if ct is not None and 0 <= at - ct < AGE_DAYS * DAY_SECONDS}


def share(recs: dict) -> float:
    reasons = [r.reason for rs in recs.values() for r in rs]
    return reasons.count(EXPLORATION) / len(reasons)


# --------------------------------------------------------------------------- the bonus itself


def test_bonus_is_weight_times_spread_over_sqrt_events_for_young_items_only() -> None:
    day, now = DAY_SECONDS, 1.8e9
    # item 0: first event 40 days ago (old); 1: first of 3 events 2 days ago; 2: no snapshot event, a first
    # event logged by the service a day ago; 3: no event and no creation time (age unknown)
    times = np.array([now - 40 * day, now - 2 * day, now - 2 * day + 1, now - 2 * day + 2])
    items = np.array([0, 1, 1, 1])
    ex = Exploration({}, 4, None, times, items, weight=2.0, item_age_days=30.0)
    ex.add_live(np.array([now - day]), np.array([2]))  # item 2's first event: logged by the service
    assert ex.events(1) == 3 and ex.events(2) == 1 and ex.events(3) == 0
    assert ex.item_age_seconds(2, now) == pytest.approx(day) and math.isinf(ex.item_age_seconds(3, now))
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    cand, b = ex.bonus(scores, np.array([now, now]), [True, True])
    assert sorted(cand.tolist()) == [1, 2]  # old and unknown-age items get nothing
    spread = float(scores[0].std())
    got = dict(zip(cand.tolist(), b[0].tolist(), strict=True))
    assert got[1] == pytest.approx(2.0 * spread / math.sqrt(1 + 3))
    assert got[2] == pytest.approx(2.0 * spread / math.sqrt(1 + 1))
    assert b[1].abs().max() == 0  # no spread: no bonus (nothing to be scale-aware of)
    cand, b = ex.bonus(scores, np.array([now, now]), [True, False])
    assert float(b[1].abs().max()) == 0 and float(b[0].min()) > 0  # the second request switched it off
    assert ex.bonus(scores, np.array([now + 40 * day] * 2), [True, True]) is None  # nobody young any more
    # an item the model cannot score (NO_SCORE: no events, no metadata) neither counts in the spread nor gets a bonus
    blank = torch.tensor([[0.0, NO_SCORE, 2.0, 3.0]])
    cand, b = ex.bonus(blank, np.array([now]), [True])
    got = dict(zip(cand.tolist(), b[0].tolist(), strict=True))
    assert got[1] == 0 and got[2] == pytest.approx(2.0 * float(torch.tensor([0.0, 2.0, 3.0]).std()) / math.sqrt(2))
    off = Exploration({}, 4, None, times, items, weight=0.0, item_age_days=30.0)
    assert not off.active and off.bonus(scores, np.array([now, now]), [True, True]) is None
    assert off.events(1) == 0  # weight 0: nothing is even counted


def test_config_checks_the_knobs() -> None:
    with pytest.raises(ConfigError, match="exploration_weight"):
        ServeConfig(exploration_weight=-1.0)
    with pytest.raises(ConfigError, match="exploration_item_age_days"):
        ServeConfig(exploration_item_age_days=0.0)
    assert ServeConfig().exploration_weight > 0  # on by default (chosen by issue 19's simulation, docs/exploration.md)


# --------------------------------------------------------------------------- through the recommender


def test_young_items_are_explored_with_reason_exploration(champion: Champion) -> None:
    at = as_of(champion)
    young = young_items(champion, at)
    assert young, "the synthetic log must have items created in its last days"
    plain = recommend_all(served(champion, 0.0), at)
    m = served(champion, 3.0)
    explored = recommend_all(m, at)
    assert share(plain) == 0 and share(explored) > 0
    engine, ex = m.engine, m.recommender.exploration
    for owner, recs in explored.items():
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)  # ranking scores
        before = {r.item_id for r in plain[owner]}
        for r in recs:
            if r.reason == EXPLORATION:
                assert r.item_id in young and r.item_id not in before
                j = engine.item_index[r.item_id]
                assert ex.item_age_seconds(j, at) < AGE_DAYS * DAY_SECONDS
    # the score of an explored item is its model score plus the bonus of the formula
    owner, r = next((o, r) for o, rs in explored.items() for r in rs if r.reason == EXPLORATION)
    state = engine.replay([(m.history.events_of(owner), m.history.user_features(owner))])[0]
    s = engine.score(state, at_time=at)
    j = engine.item_index[r.item_id]
    expected = float(s[j]) + 3.0 * float(s.std()) / math.sqrt(1 + ex.events(j))
    assert r.score == pytest.approx(expected, abs=1e-4)


def test_exploration_is_on_by_default(champion: Champion) -> None:
    """The champion's config carries the defaults (``load_config(environ={})``): a young item of the synthetic
    log (created within the default ``exploration_item_age_days`` before the cut) is explored."""
    assert champion.cfg.serve.exploration_weight == ServeConfig().exploration_weight > 0
    m = load_serving_model(champion.cfg, champion.tag)
    assert m.info["exploration_weight"] == ServeConfig().exploration_weight
    at = as_of(champion)
    explored = [r for rs in recommend_all(m, at).values() for r in rs if r.reason == EXPLORATION]
    assert explored
    age = ServeConfig().exploration_item_age_days * DAY_SECONDS
    ex = m.recommender.exploration
    assert all(ex.item_age_seconds(m.engine.item_index[r.item_id], at) < age for r in explored)


def test_never_explored_when_the_weight_is_zero_or_the_request_says_no(champion: Champion) -> None:
    at = as_of(champion)
    plain = recommend_all(served(champion, 0.0), at)
    switched_off = recommend_all(served(champion, 5.0), at, explore=False)
    assert share(plain) == 0 and share(switched_off) == 0
    for owner, recs in plain.items():  # off is exactly the ranking without exploration
        assert [(r.item_id, r.reason) for r in recs] == [(r.item_id, r.reason) for r in switched_off[owner]]
        assert [r.score for r in recs] == pytest.approx([r.score for r in switched_off[owner]], abs=1e-5)


def test_filters_still_exclude_explored_items(champion: Champion) -> None:
    at = as_of(champion)
    m = served(champion, 5.0)
    explored = {r.item_id for rs in recommend_all(m, at).values() for r in rs if r.reason == EXPLORATION}
    assert explored
    out = recommend_all(m, at, filters=Filters(exclude_items=tuple(sorted(explored))))
    assert not explored & {r.item_id for rs in out.values() for r in rs}
    items = pq.read_table(champion.snap / "items.parquet").to_pylist()
    genres = {it["item_id"]: set(dict(it["categorical"] or []).get("genres", "").split("|")) for it in items}
    out = recommend_all(m, at, filters=Filters(metadata={"genres": ("g1",)}))
    assert share(out) > 0  # young items of the genre are still explored
    assert all("g1" in genres[r.item_id] for rs in out.values() for r in rs)
    some = tuple(sorted(explored)[:1]) + ("i1", "i2", "i3")
    out = recommend_all(m, at, k=3, filters=Filters(exclude_seen=False, include_items=some))
    assert all(r.item_id in some for rs in out.values() for r in rs)


def test_the_slot_share_grows_with_the_weight(champion: Champion) -> None:
    at = as_of(champion)
    weights = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    shares = [share(recommend_all(served(champion, w), at)) for w in weights]
    assert shares[0] == 0 and shares[-1] > shares[2] > 0
    assert all(a <= b + 1e-9 for a, b in zip(shares, shares[1:])), shares


# --------------------------------------------------------------------------- the service and the export


@pytest.fixture
def service(champion: Champion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The BentoML service class serving the champion with exploration on (weight 3)."""
    (tmp_path / "svc-data").mkdir()
    (tmp_path / "svc-data" / "snapshots").symlink_to(champion.cfg.paths.snapshots_dir)
    spec = importlib.util.spec_from_file_location("hrnn_bento_service_explore", REPO / "bento" / "service.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    configure(module, monkeypatch, HRNN_DATA_DIR=str(tmp_path / "svc-data"), HRNN_MODEL_TAG=champion.tag,
              HRNN__SERVE__EXPLORATION_WEIGHT="3", HRNN__SERVE__EXPLORATION_ITEM_AGE_DAYS=str(AGE_DAYS))
    svc = module.HRNNService()
    yield module, svc
    svc.shutdown()


def test_service_explores_and_a_request_can_switch_it_off(service, champion: Champion) -> None:
    module, svc = service
    at = as_of(champion)
    users = sorted(o for _, o in served(champion, 0.0).history.owners() if not is_session_owner(o))
    reqs = [module.RecommendRequest(user_id=u, num_results=K, at_time=at) for u in users]
    answers = svc.recommend_batch(reqs)
    reasons = [i.reason for a in answers for i in a.items]
    assert EXPLORATION in reasons
    assert svc.model_info()["exploration_weight"] == 3.0
    u = next(u for u, a in zip(users, answers, strict=True) if EXPLORATION in {i.reason for i in a.items})
    on = svc.recommend(module.RecommendRequest(user_id=u, num_results=K, at_time=at))
    off = svc.recommend(module.RecommendRequest(user_id=u, num_results=K, at_time=at, explore=False))
    assert EXPLORATION in {i.reason for i in on.items} and EXPLORATION not in {i.reason for i in off.items}
    both = svc.recommend_batch([module.RecommendRequest(user_id=u, num_results=K, at_time=at),
                                module.RecommendRequest(user_id=u, num_results=K, at_time=at, explore=False)])
    assert [i.item_id for i in both[0].items] == [i.item_id for i in on.items]
    assert [i.item_id for i in both[1].items] == [i.item_id for i in off.items]
    assert "explore" in json.dumps(module.RecommendRequest.model_json_schema())  # in the API schema


def test_export_ranks_as_the_service_does(service, champion: Champion, tmp_path: Path) -> None:
    module, svc = service
    cfg = dataclasses.replace(champion.cfg, serve=dataclasses.replace(
        champion.cfg.serve, exploration_weight=3.0, exploration_item_age_days=AGE_DAYS))
    m = export_all(cfg, champion.tag, k=K, out_dir=tmp_path / "exp")
    assert m["exploration_weight"] == 3.0
    rows = list(csv_rows(tmp_path / "exp" / "recommendations.csv"))
    checked = 0
    for user in sorted({r["user_id"] for r in rows}):
        resp = svc.recommend(module.RecommendRequest(user_id=user, num_results=K, at_time=m["at_time"]))
        expected = [r for r in rows if r["user_id"] == user]
        assert [i.item_id for i in resp.items] == [r["item_id"] for r in expected]
        assert [i.score for i in resp.items] == pytest.approx([float(r["score"]) for r in expected], abs=1e-4)
        checked += EXPLORATION in {i.reason for i in resp.items}
    assert checked > 0  # explored items were compared too
    off = export_all(cfg, champion.tag, k=K, out_dir=tmp_path / "off", explore=False)
    plain = export_all(dataclasses.replace(champion.cfg, serve=dataclasses.replace(champion.cfg.serve, exploration_weight=0.0)),
                       champion.tag, k=K, out_dir=tmp_path / "plain")  # weight 0: the ranking without exploration
    assert off["exploration_weight"] == 0.0
    assert off["files"]["recommendations.csv"]["sha256"] == plain["files"]["recommendations.csv"]["sha256"]


def csv_rows(path: Path):
    import csv  # noqa: PLC0415

    with open(path, encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)
