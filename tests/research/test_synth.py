"""The synthetic generator plants known effects; these tests check each one is really there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from research import synth
from hrnn_core.errors import ConfigError

START = 1_700_000_000
# Several CHUNK_EVENTS chunks, cold items and per-event truth: one run shared by most tests.
BASE = dict(n_users=600, n_items=2_000, n_events=120_000, seed=7, days=30,
            cold_items_fraction=0.2, write_truth=True, start_time=START)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synth")
    paths = synth.generate(out, **BASE)
    ev = pd.read_parquet(paths["interactions"])
    tr = pd.read_parquet(paths["truth_events"])
    items = pd.read_parquet(paths["items"])
    users = pd.read_parquet(paths["users"])
    truth = json.loads(paths["truth"].read_text())
    ev["u"] = ev.user_id.str[1:].astype(int)
    ev["i"] = ev.item_id.str[1:].astype(int)
    world = synth.build_world(synth.SynthConfig(**truth["config"]))
    return dict(paths=paths, ev=ev, tr=tr, items=items, users=users, truth=truth, world=world)


def _pairs(ev: pd.DataFrame) -> pd.DataFrame:
    """Consecutive event pairs of the same user: gap and the row indices of both events."""
    same = (ev.u.values[1:] == ev.u.values[:-1])
    gap = np.diff(ev.timestamp.values)
    idx = np.flatnonzero(same)
    return pd.DataFrame({"a": idx, "b": idx + 1, "gap": gap[idx]})


def test_schema_and_exact_counts(run: dict) -> None:
    ev, items, users = run["ev"], run["items"], run["users"]
    schema = pq.read_schema(run["paths"]["interactions"])
    assert schema.names == ["user_id", "item_id", "timestamp", "event_type", "event_value", "device"]
    assert str(schema.field("timestamp").type) == "int64"
    assert str(schema.field("event_value").type) == "double"
    assert "session_id" not in schema.names
    assert len(ev) == BASE["n_events"] and len(run["tr"]) == BASE["n_events"]
    assert list(users.columns) == ["user_id", "age", "segment"] and len(users) == BASE["n_users"]
    assert list(items.columns) == ["item_id", "genres", "price", "creation_timestamp"]
    assert len(items) == BASE["n_items"] and items.item_id.is_unique
    assert set(ev.event_type) == set(synth.EVENT_TYPES) and set(ev.device) <= set(synth.DEVICES)
    assert ev.event_value.between(1, 5).all()
    assert set(ev.user_id) <= set(users.user_id) and set(ev.item_id) <= set(items.item_id)
    n_genres = items.genres.str.split("|").map(len)
    assert n_genres.between(1, 3).all() and (n_genres > 1).any()
    assert ev.groupby("u").size().min() >= 2


def _content_hash(paths: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name in ("interactions", "users", "items"):
        df = pd.read_parquet(paths[name])
        h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path: Path) -> None:
    small = dict(n_users=50, n_items=300, n_events=2_000, write_truth=True)
    a = synth.generate(tmp_path / "a", seed=3, **small)
    b = synth.generate(tmp_path / "b", synth.SynthConfig(seed=3, **small))
    c = synth.generate(tmp_path / "c", seed=4, **small)
    assert _content_hash(a) == _content_hash(b) != _content_hash(c)
    for name in a:  # byte-for-byte, truth.json and truth_events included
        assert a[name].read_bytes() == b[name].read_bytes(), name


def test_timestamps_sorted_and_in_span(run: dict) -> None:
    ev = run["ev"]
    assert ev.u.is_monotonic_increasing  # rows ordered by user, then time
    assert (ev.groupby("u").timestamp.diff().dropna() >= 0).all()
    assert ev.timestamp.min() >= START and ev.timestamp.max() < START + 30 * 86_400


def test_sessions_short_within_long_between(run: dict) -> None:
    ev, tr = run["ev"], run["tr"]
    p = _pairs(ev)
    within = tr.session_index.values[p.b] == tr.session_index.values[p.a]
    cfg = synth.SynthConfig()
    assert p.gap[within].max() <= cfg.within_gap_max_s
    assert p.gap[within].median() < 120
    assert p.gap[~within].min() >= cfg.min_between_gap_s
    assert p.gap[~within].median() > 6 * 3600  # hours to days
    # So inferring sessions with a 30 min inactivity gap recovers the true sessions exactly.
    assert ((p.gap > 1800).values == ~within).all()
    assert run["truth"]["n_sessions"] == BASE["n_users"] + int((~within).sum())


def test_intent_persists_within_sessions_not_across(run: dict) -> None:
    ev, items = run["ev"], run["items"]
    genre_sets = items.genres.str.split("|").map(frozenset).values
    g = genre_sets[ev.i.values]
    p = _pairs(ev)
    share = np.array([bool(g[a] & g[b]) for a, b in zip(p.a, p.b, strict=True)])
    short, long = share[p.gap.values < 1800].mean(), share[p.gap.values >= 1800].mean()
    assert short > 0.85 and long < 0.6 and short - long > 0.3, (short, long)


def test_user_features_shift_preferences(run: dict) -> None:
    ev, users, truth = run["ev"], run["users"], run["truth"]
    ev = ev.merge(users, on="user_id")
    genre_sets = run["items"].genres.str.split("|").map(set).values[ev.i.values]
    for seg, favs in truth["segment_favoured_genres"].items():
        hit = np.array([bool(s & set(favs)) for s in genre_sets])
        inside, outside = hit[ev.segment.values == seg].mean(), hit[ev.segment.values != seg].mean()
        assert inside > outside + 0.1, (seg, inside, outside)
    # Age: the genre with the steepest positive age slope is watched more by older users.
    g_old = max(truth["age_slope"], key=truth["age_slope"].get)
    hit = np.array([g_old in s for s in genre_sets])
    old = ev.age.values >= 50
    young = ev.age.values < 35
    assert hit[old].mean() > hit[young].mean(), g_old


def test_event_value_correlates_with_affinity(run: dict) -> None:
    ev, w = run["ev"], run["world"]
    ig = w.item_genres[ev.i.values].astype(np.int64)
    aff = np.where(ig >= 0, w.taste[ev.u.values[:, None], np.maximum(ig, 0)], 0.0).sum(axis=1)
    assert np.corrcoef(aff, ev.event_value)[0, 1] > 0.3
    buy = (ev.event_type == "buy").values
    assert aff[buy].mean() > aff[~buy].mean()


def test_cold_items_never_before_creation(run: dict) -> None:
    ev, items = run["ev"], run["items"]
    created = items.creation_timestamp.values[ev.i.values]
    assert (ev.timestamp.values >= created).all()
    cold = items.creation_timestamp > START
    assert abs(cold.mean() - 0.2) < 0.01
    assert ev.i.isin(np.flatnonzero(cold)).mean() > 0.01  # cold items do get traffic later


def test_popularity_drifts(tmp_path: Path) -> None:
    overlap = {}
    for amp in (1.5, 0.0):  # the same run without drift is the control
        p = synth.generate(tmp_path / str(amp), n_users=500, n_items=1_000, n_events=100_000,
                           days=10, drift_amplitude=amp, seed=1)
        ev = pd.read_parquet(p["interactions"])
        day = (ev.timestamp - START) // 86_400
        top = [set(ev.item_id[day == d].value_counts().index[:10]) for d in (0, 9)]
        overlap[amp] = len(top[0] & top[1])
    assert overlap[1.5] <= 6 and overlap[0.0] - overlap[1.5] >= 3, overlap


def test_truth_logp_and_oracle(run: dict) -> None:
    tr, truth = run["tr"], run["truth"]
    for col in ("true_logp", "true_logp_user"):
        assert np.isfinite(tr[col]).all() and (tr[col] <= 0).all()
    ppl = float(np.exp(-tr.true_logp.mean()))
    assert ppl == pytest.approx(truth["oracle_ppl_intent"], rel=1e-9)
    # Knowing the session intent beats knowing only the user, which beats uniform.
    assert truth["oracle_ppl_intent"] < truth["oracle_ppl_user"] < BASE["n_items"]


def test_sampler_matches_oracle_distribution() -> None:
    cfg = synth.SynthConfig(n_users=10, n_items=200, n_events=100, cold_items_fraction=0.3,
                            epsilon=0.2)
    w = synth.build_world(cfg)
    z, zall = w.normalizers()
    rng = np.random.default_rng(0)
    n, g, b = 200_000, 4, 20
    drawn = synth._sample_items(w, rng, np.full(n, g), np.full(n, b), rng.random(n) < cfg.epsilon)
    items = np.arange(cfg.n_items)
    wi = np.exp(w.log_w0 + w.log_multiplier(items, np.full(cfg.n_items, b))) * (w.avail_from <= b)
    member = (w.item_genres == g).any(axis=1)
    p = (1 - cfg.epsilon) * member * wi / z[b, g] + cfg.epsilon * wi / zall[b]
    assert p.sum() == pytest.approx(1.0)
    assert np.abs(np.bincount(drawn, minlength=cfg.n_items) / n - p).sum() < 0.03
    assert p[drawn].min() > 0  # never draws an unavailable or impossible item


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="n_events"):
        synth.SynthConfig(n_users=100, n_events=150)
    with pytest.raises(ConfigError, match="cold_items_fraction"):
        synth.SynthConfig(cold_items_fraction=1.0)


@pytest.mark.parametrize("args, names", [
    (["--users", "0"], ["n_users", "0"]),
    (["--items", "5", "--genres", "10"], ["n_items", "5"]),
    (["--events", "10"], ["n_events", "10"]),
    (["--days", "0"], ["days (0)"]),
    (["--cold-items", "1.5"], ["cold_items_fraction", "1.5"]),
    (["--seed", "-1"], ["seed", "-1"]),
    (["file"], ["is a file"]),
])
def test_synth_command_checks_arguments_before_writing(tmp_path: Path, args: list[str], names: list[str]) -> None:
    """`hrnn-research synth`: a bad size or an --out that is a file is one line on stderr, exit 2, nothing written."""
    from typer.testing import CliRunner

    from research.cli import app

    out = tmp_path / "synth"
    if args == ["file"]:
        out, args = tmp_path / "file.txt", []
        out.write_text("x")
    res = CliRunner().invoke(app, ["synth", "--out", str(out), *args])
    assert res.exit_code == 2 and res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert all(n in res.output for n in names), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == (["file.txt"] if out.name == "file.txt" else [])
