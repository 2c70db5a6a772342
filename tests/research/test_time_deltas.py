"""Time deltas (Table 2): ``hrnn-research time-deltas`` on a tiny synthetic dataset.

The mechanism itself (the time-delta input moves the top-1) is tested on data built for it in
tests/test_train.py::test_time_delta_input_lowers_ppl_and_moves_top1; here: the command's rows,
its default user, its reuse of a trained run or a given checkpoint, and its errors.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from research.cli import app
from research.synth import synthetic_snapshot

torch.set_num_threads(1)

TINY = ("[model]\nhidden_size = 16\nfield_dim = 8\ninput_size = 16\ndropout = 0.0\n"
        "[train]\nepochs = 2\nbatch_size = 16\nbptt = 16\nval_owners = 20\nprogress = false\nthreads = 1\n"
        "device = \"cpu\"\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("deltas")
    snap = synthetic_snapshot(root / "synth", n_users=60, n_items=40, n_events=1_500, n_genres=4, seed=2)
    (root / "tiny.toml").write_text(TINY)
    return root, snap


def _run(root, *args):
    return CliRunner().invoke(app, ["time-deltas", "--config", str(root / "tiny.toml"),
                                    "--data-dir", str(root), *args])


def test_one_row_per_delta_for_the_median_user(tiny) -> None:
    root, snap = tiny
    out = root / "deltas.json"
    res = _run(root, "--snapshot", str(snap), "--deltas", "0,60,3600,86400", "--top", "1", "--output", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    rows = report["user"]["rows"]
    assert [r["delta_s"] for r in rows] == [0.0, 60.0, 3600.0, 86400.0] and all(r["rank"] == 1 for r in rows)
    # the printed table has the same rows: one line per delta, with the item id and its popularity
    user_part = res.output.split("\nall ")[0]  # the per-user table, before the all-users summary
    table = [line.split() for line in user_part.splitlines() if line.split()[:1] in (["0"], ["60"], ["3600"], ["86400"])]
    assert [t[0] for t in table] == ["0", "60", "3600", "86400"]
    assert [t[2] for t in table] == [r["item_id"] for r in rows]
    # popularity = the item's share of training events; never one of the user's own items
    seq = pq.read_table(snap / "sequences.parquet")
    user = report["user"]["user_id"]
    mine = seq.filter(pc.equal(seq["owner_id"], user))
    freq = pq.read_table(snap / "item_frequency.parquet").to_pylist()
    total = sum(f["events"] for f in freq)
    share = {f["item_id"]: f["events"] / total for f in freq}
    cols = pq.read_table(snap / "items.parquet", columns=["item_idx", "item_id"]).to_pydict()
    id_of = dict(zip(cols["item_idx"], cols["item_id"]))
    seen = {id_of[i] for i in mine["item_idx"][0].as_py()}
    for r in rows:
        assert r["popularity"] == pytest.approx(share.get(r["item_id"], 0.0))
        assert r["item_id"] not in seen
    # the default user has the median history length
    lengths = sorted(pc.list_value_length(seq["item_idx"]).to_pylist())
    assert report["user"]["n_events"] == lengths[(len(lengths) - 1) // 2]
    assert report["all_users"]["n_users"] == seq.num_rows
    assert report["all_users"]["per_delta"][0]["top1_differs_from_first_delta"] == 0.0


def test_reuses_the_trained_run_and_takes_a_checkpoint(tiny) -> None:
    root, snap = tiny
    first = _run(root, "--snapshot", str(snap), "--user", "u3", "--top", "2", "--output", str(root / "a.json"))
    assert first.exit_code == 0, first.output
    assert "reusing the trained run" in first.output  # the first test trained it
    ckpt = json.loads((root / "a.json").read_text())["checkpoint"]
    again = _run(root, "--checkpoint", ckpt, "--snapshot", str(snap), "--user", "u3", "--top", "2",
                 "--output", str(root / "b.json"))
    assert again.exit_code == 0, again.output
    a, b = (json.loads((root / f).read_text())["user"]["rows"] for f in ("a.json", "b.json"))
    assert [r["item_id"] for r in a] == [r["item_id"] for r in b] and len(a) == 4 * 2


def test_bad_user_and_bad_deltas_are_clear_errors(tiny) -> None:
    root, snap = tiny
    res = _run(root, "--snapshot", str(snap), "--user", "nobody")
    assert res.exit_code == 2 and "user 'nobody' has no events" in res.output
    res = _run(root, "--snapshot", str(snap), "--deltas", "0,soon")
    assert res.exit_code == 2 and "--deltas" in res.output
    res = _run(root, "--snapshot", str(snap), "--deltas", "-5")
    assert res.exit_code == 2 and ">= 0" in res.output
