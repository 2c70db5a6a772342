"""The HTML report (``hrnn_core.evaluation.report``): every section is on the page, every image is embedded as a
``data:`` URI, nothing is fetched from the network; the breakdowns it shows partition the test cases.

Tiny: a synthetic snapshot (and an earlier one beside it, for the data section's "since the previous snapshot"),
popularity, a two-epoch BPR and a one-epoch HRNN-meta (per-epoch curves with validation)."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from hrnn_core.config import load_config
from research.synth import synthetic_snapshot
from hrnn_core.data.transforms import export_snapshot
from hrnn_core.data.warehouse import connect
from hrnn_core.evaluation import breakdowns, snapshot_stats
from hrnn_core.evaluation.harness import evaluate_split
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.report import SECTIONS, gate_section, write_report
from hrnn_core.evaluation.splits import SnapshotData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"hidden_size": 16, "field_dim": 8, "input_size": 16}
TRAIN = {"epochs": 1, "batch_size": 8, "bptt": 8, "progress": False, "val_owners": 10, "threads": 1}


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the snapshot, an earlier one of the same warehouse in the same folder)."""
    root = tmp_path_factory.mktemp("report-data")
    snap = synthetic_snapshot(root, n_users=40, n_items=60, n_events=1500, n_genres=5, seed=5)
    cfg = load_config(overrides={"paths": {"data_dir": str(root)}}, environ={})
    ts = SnapshotData.load(snap).timestamp
    with connect(cfg) as con:
        earlier = export_snapshot(con, cfg, as_of=float(np.quantile(ts, 0.6)))
    assert earlier.path.parent == snap.parent
    return snap, earlier.path


@pytest.fixture(scope="module")
def evaluated(snapshots):
    split = build_split("temporal", SnapshotData.load(snapshots[0]), test_fraction=0.2, valid_fraction=0.0)
    options = {"hrnn": {"model": SMALL, "train": TRAIN, "device": "cpu"}, "bpr": {"epochs": 2, "factors": 8}}
    return split, evaluate_split(split, ["pop", "bpr", "hrnn"], model_options=options)


class Page(HTMLParser):
    """Ids, image sources and every URL-valued attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data") and v]


def test_the_page_has_every_section_and_needs_no_network(evaluated, tmp_path) -> None:
    split, results = evaluated
    metrics = {k: r.metrics for k, r in results.items() if k != "hrnn"}
    gate = gate_section("hrnn", results["hrnn"].metrics, metrics, "ndcg@10", False, "does not beat pop",
                        verdict="not promoted")
    path = write_report(tmp_path / "run" / "report.html", split, results, title="tiny run", gate=gate)
    html = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)

    assert set(SECTIONS) <= set(page.ids)
    assert not re.search(r"https?://", html)  # nothing to fetch: no stylesheet, script, font or image URL
    assert all(u.startswith(("data:", "#")) for u in page.urls), page.urls
    # leaderboard, frames-free: intervals chart; curves for bpr and hrnn; segments, popularity, shift
    assert len(page.images) == 6, len(page.images)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("not promoted", "does not beat pop", "returning users", "new users",
                 "cold targets", "Since the previous snapshot", "total variation distance"):
        assert text in html or text in html.replace("&#39;", "'"), text
    assert 'alt="hrnn: training curves per epoch"' in html and 'alt="bpr: training curves per epoch"' in html
    assert "No per-epoch numbers" in html and "pop" in html.split('id="training"')[1].split("</section>")[0]


def test_breakdowns_partition_the_test_cases(evaluated) -> None:
    split, results = evaluated
    n = len(split.test)
    segments = breakdowns.user_segments(split)
    assert sum(m.astype(int) for m in segments.values()).tolist() == [1] * n
    train_owners = set(split.train["user_idx"].to_pylist())
    assert segments["returning users"].tolist() == [o in train_owners for o in split.test.owner]
    buckets = breakdowns.popularity_buckets(split)
    assert sum(m.astype(int) for m in buckets.values()).tolist() == [1] * n
    assert np.array_equal(buckets["cold (0 training events)"], breakdowns.cold_targets(split))
    table = breakdowns.group_means(results["pop"].per_event, buckets)
    weighted = sum(row["n"] * row["ndcg@10"] for row in table.values() if row["n"])
    assert weighted / n == pytest.approx(results["pop"].per_event["ndcg@10"].mean())


def test_snapshot_changes_and_popularity_shift(snapshots) -> None:
    snap, earlier = snapshots
    assert snapshot_stats.previous_snapshot(snap) == earlier
    assert snapshot_stats.previous_snapshot(earlier) is None
    now, before = snapshot_stats.summary(snap), snapshot_stats.summary(earlier)
    ch = snapshot_stats.changes(snap, earlier)
    assert ch["new_events"] == now["events"] - before["events"] > 0
    assert ch["new_users"] == now["owners"] - before["owners"]  # synthetic users never leave
    assert sum(t["events"] for t in now["event_types"]) == now["events"]
    assert snapshot_stats.popularity_shift([1, 0], [1, 0]) == 0.0
    assert snapshot_stats.popularity_shift([1, 0], [0, 3]) == 1.0
    assert snapshot_stats.popularity_shift([0, 0], [1, 1]) is None


# What the page asks of the browser: every section, every image decoded, nothing fetched, nothing logged.
IN_BROWSER = """
const ids = arguments[0];
return {
  sections: ids.filter(id => { const e = document.getElementById(id); return e && e.offsetHeight > 0; }),
  images: Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
  fetched: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('data:')),
  title: document.title,
};
"""


def test_the_page_renders_in_a_real_browser(evaluated, tmp_path) -> None:
    """Headless Chromium opens the page from a file: every section shows, every chart decodes as an image,
    nothing is fetched and the console stays empty."""
    import os

    from tests import browser

    why = browser.missing()
    if why:
        if os.environ.get("HRNN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no browser, though HRNN_REQUIRE_BROWSER=1: {why}")
        pytest.skip(why)
    split, results = evaluated
    path = write_report(tmp_path / "run" / "report.html", split, results, title="tiny run in a browser")
    with browser.chromium() as driver:
        driver.get(path.resolve().as_uri())
        seen = driver.execute_script(IN_BROWSER, list(SECTIONS))
        console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert seen["title"] == "tiny run in a browser"
    assert seen["sections"] == list(SECTIONS)
    assert len(seen["images"]) == 6 and all(i["ok"] for i in seen["images"]), seen["images"]
    assert seen["fetched"] == [] and console == [], (seen["fetched"], console)
