"""The retrain trains the production model itself (``hrnn_core.retrain.train_and_evaluate``): one training
run in the run's own folder, whose checkpoint is both the model the test cases were scored with and the
registered artifact; and no temporary folder outlives an HRNN-meta fit (``HRNNScorer``)."""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path

import bentoml
import pytest

from hrnn_core import registry, retrain
from hrnn_core.config import load_config
from research.synth import synthetic_snapshot
from hrnn_core.data.warehouse import connect
from hrnn_core.errors import HrnnError
from hrnn_core.evaluation.harness import evaluate_split, train_data
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"hidden_size": 16, "field_dim": 8, "input_size": 16}
TRAIN = {"epochs": 1, "batch_size": 8, "bptt": 8, "progress": False, "val_owners": 10, "threads": 1}


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_snapshot(tmp_path_factory.mktemp("retrain-data"), n_users=40, n_items=60, n_events=1500,
                              n_genres=5, seed=5)


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temporary folder, for this test alone (so leftovers can be counted)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("hrnn-"))


def test_a_fit_without_run_dir_leaves_no_temporary_folder(snap, tmp_root, tmp_path) -> None:
    split = build_split("temporal", SnapshotData.load(snap), test_fraction=0.1, valid_fraction=0.0)
    options = {"hrnn": {"model": SMALL, "train": TRAIN, "device": "cpu"}}

    kept: dict = {}  # kept by the caller (to save it): trained in a temporary folder until closed
    evaluate_split(split, ["hrnn"], model_options=options, keep_scorers=kept)
    scorer = kept.pop("hrnn")
    assert scorer.checkpoint_path.parent.name.startswith("hrnn-run-")
    scorer.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.pt").read_bytes() == scorer.checkpoint_path.read_bytes()
    assert leftovers(tmp_root) == [scorer.checkpoint_path.parent.name]  # the harness's own folder is gone
    scorer.close()
    assert leftovers(tmp_root) == []

    evaluate_split(split, ["hrnn"], model_options=options)  # not kept: the harness closes it
    assert leftovers(tmp_root) == []

    with tempfile.TemporaryDirectory(prefix="hrnn-test-") as work:  # fit directly, then dropped unclosed
        scorer = HRNNScorer(SMALL, TRAIN, device="cpu")
        scorer.fit(train_data(split, "train", 0, Path(work)))
        scorer.save(tmp_path / "saved-again")
        del scorer
        gc.collect()
    assert leftovers(tmp_root) == []


def test_the_retrain_registers_the_checkpoint_it_trained_and_scored(snap, tmp_root, tmp_path) -> None:
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path / "data")}, "model": SMALL,
                                 "train": {**TRAIN, "epochs": 2}}, environ={})
    manifest = json.loads((snap / "manifest.json").read_text())
    snapshot = {"snapshot_id": snap.name, "path": str(snap), "n_events": manifest["n_events"]}
    run = retrain.train_and_evaluate(cfg, snapshot, "hrnn")
    folder = retrain.runs_dir(cfg, snap.name) / "hrnn"
    artifact = Path(run["artifact"]) / "model.pt"
    trained = folder / "train" / "best.pt"
    trained = trained if trained.exists() else folder / "train" / "last.pt"
    assert artifact.samefile(trained)  # the trained checkpoint itself (a hard link), not a copy
    assert sorted(p.name for p in folder.parent.iterdir()) == ["hrnn"]  # no .hrnn.tmp left
    assert leftovers(tmp_root) == []  # nor any temporary folder

    # the run's metrics describe that file: scoring it again on the same split gives the same numbers
    again = evaluate_split(retrain._split(cfg, snapshot["path"]), ["hrnn"],
                           model_options={"hrnn": {"checkpoint": artifact, "device": "cpu"}})["hrnn"].metrics
    for metric in ("ndcg@10", "recall@10", "mrr@10", "ppl"):
        assert again[metric] == run["metrics"][metric], metric

    with connect(cfg) as con:  # what the registry stores is that checkpoint
        tag = registry.register(con, "hrnn", Path(run["artifact"]), metrics=run["metrics"], protocol=run["protocol"],
                                snapshot_id=snap.name)
    try:
        assert Path(bentoml.models.get(tag).path_of("model.pt")).read_bytes() == trained.read_bytes()
    finally:
        bentoml.models.delete(tag)
    assert retrain.train_and_evaluate(cfg, snapshot, "hrnn") == run  # a finished run is reused

    # the retrain's page, beside its run: the model's curves from the run's own per-epoch history
    assert [h["epoch"] for h in run["history"]] == [1, 2]
    decision = {"candidate": tag, "promoted": False, "champion": None, "reason": "ndcg@10 does not beat pop 0.9",
                "gate_metric": "ndcg@10", "paired_test_vs": None, "paired_test": None, "compared": {"pop": 0.9}}
    page = Path(retrain.write_report(cfg, snapshot, [run], None, decision))  # register_and_promote's decision
    assert page == folder.parent / "report.html"
    html = page.read_text(encoding="utf-8")
    assert 'id="leaderboard"' in html and 'alt="hrnn: training curves per epoch"' in html
    assert "not promoted" in html and "does not beat pop 0.9" in html


def test_a_failed_retrain_leaves_no_folder(snap, tmp_root, tmp_path) -> None:
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path / "data")}, "model": SMALL,
                                 "train": {**TRAIN, "max_dense_logits": 1}}, environ={})  # training refuses to start
    snapshot = {"snapshot_id": snap.name, "path": str(snap)}
    with pytest.raises(HrnnError):  # the trainer refuses the dense output
        retrain.train_and_evaluate(cfg, snapshot, "hrnn")
    assert list(retrain.runs_dir(cfg, snap.name).iterdir()) == []
    assert leftovers(tmp_root) == []


def test_a_retrain_killed_mid_training_changes_nothing_and_the_next_run_succeeds(snap, tmp_path) -> None:
    """SIGKILL of the training task: the champion and the model store are untouched, nothing half-written is
    published (so nothing can be registered), and the next attempt succeeds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.champions import promote_tiny_champion

    champ = promote_tiny_champion(tmp_path / "champion", n_users=30, n_items=60, n_events=800, seed=3)
    try:
        store_before = sorted(str(m.tag) for m in bentoml.models.list())
        data = tmp_path / "data"
        overrides = {"paths": {"data_dir": str(data)}, "model": SMALL, "train": {**TRAIN, "epochs": 200}}
        script = (
            "import json, sys\n"
            "from hrnn_core import retrain\n"
            "from hrnn_core.config import load_config\n"
            f"cfg = load_config(overrides=json.loads({json.dumps(json.dumps(overrides))}), environ={{}})\n"
            f"retrain.train_and_evaluate(cfg, {{'snapshot_id': {snap.name!r}, 'path': {str(snap)!r}}}, 'hrnn')\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        tmp = retrain.runs_dir(load_config(overrides=overrides, environ={}), snap.name) / ".hrnn.tmp"
        deadline = time.time() + 120
        while not list((tmp / "train").glob("*.pt")) and time.time() < deadline:  # an epoch checkpointed
            assert proc.poll() is None, "the retrain ended before it could be killed"
            time.sleep(0.2)
        assert list((tmp / "train").glob("*.pt")), "no checkpoint within 120 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

        assert not (tmp.parent / "hrnn").exists()  # nothing published, so nothing for register_and_promote
        assert registry.champion_from_store() == champ.tag
        assert sorted(str(m.tag) for m in bentoml.models.list()) == store_before

        cfg = load_config(overrides={**overrides, "train": TRAIN}, environ={})
        run = retrain.train_and_evaluate(cfg, {"snapshot_id": snap.name, "path": str(snap)}, "hrnn")  # the next run
        assert (Path(run["artifact"]) / "model.pt").exists() and not tmp.exists()
        assert registry.champion_from_store() == champ.tag
    finally:
        bentoml.models.delete(champ.tag)
