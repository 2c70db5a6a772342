"""Clean stops (issue 22 "Stops", issue 18 "Clean stops"): Ctrl-C and SIGTERM leave no process behind and a
training stops within seconds. The process tree is listed before and after. The demo takes minutes to start,
so its stop is marked slow; the Airflow UI's stop is tests/test_dags.py::test_airflow_ui_starts_and_stops_every_process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from research import synth

REPO = Path(__file__).resolve().parents[1]
HRNN = str(Path(sys.executable).parent / "hrnn")


def tree(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(family: list[psutil.Process], within: float) -> None:
    _, alive = psutil.wait_procs(family, timeout=within)
    for p in alive:  # never leave them behind, even when the test fails
        p.kill()
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"


def default_signals() -> None:
    """As from a terminal: a job started in the background without job control (CI) inherits SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like `airflow dags test`, which ignored SIGTERM for > 7 s
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)  # left the group
    print("ready", flush=True)
    time.sleep(120)
""")

PARENT = textwrap.dedent("""
    import sys
    from hrnn_core.procs import run_group
    run_group([sys.executable, "-c", sys.argv[1]], grace=1.0)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_command_stops_its_whole_tree(sig: int) -> None:
    """hrnn_core.procs.run_group (what the demo runs `airflow dags test` and training runs torchrun with):
    a signal to the parent stops a child that ignores SIGTERM and a grandchild that left the process group."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STUBBORN], cwd=REPO, preexec_fn=default_signals)
    deadline = time.time() + 30
    while len(tree(parent.pid)) < 3 and time.time() < deadline:  # parent, child, grandchild
        time.sleep(0.1)
    family = tree(parent.pid)
    assert len(family) == 3, [p.cmdline() for p in family]
    time.sleep(0.5)
    started = time.time()
    parent.send_signal(sig)
    parent.wait(20)
    assert time.time() - started < 10
    assert parent.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGINT)  # as if unhandled
    assert_all_gone(family, within=5)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small synthetic warehouse (ingested and transformed) for `hrnn train`."""
    root = tmp_path_factory.mktemp("stops")
    env = {**os.environ, "HRNN_DATA_DIR": str(root / "data"), "HRNN__TRAIN__THREADS": "1"}
    synth.generate(root / "synth", n_users=200, n_items=300, n_events=20_000)
    for args in (["ingest", "--path", str(root / "synth")], ["transform"]):
        subprocess.run([HRNN, *args], env=env, check=True, capture_output=True, timeout=300)
    return env


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_hrnn_train_stops_within_seconds(warehouse: dict[str, str], tmp_path: Path, sig: int) -> None:
    env = {**warehouse, "HRNN__TRAIN__EPOCHS": "200", "HRNN__TRAIN__PROGRESS": "false"}
    run_id = f"stop-{int(sig)}"
    proc = subprocess.Popen([HRNN, "train", "--run-id", run_id], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=default_signals)
    run = Path(env["HRNN_DATA_DIR"]) / "models" / run_id
    deadline = time.time() + 240
    while not list(run.glob("*.pt")) and time.time() < deadline:  # training: an epoch checkpointed
        assert proc.poll() is None, "hrnn train ended before it was stopped"
        time.sleep(0.2)
    assert list(run.glob("*.pt")), "no epoch checkpoint within 240 s"
    family = tree(proc.pid)
    started = time.time()
    proc.send_signal(sig)
    proc.wait(30)
    assert time.time() - started < 5, f"took {time.time() - started:.1f} s to stop"
    assert_all_gone(family, within=5)


AIRFLOW_TASK = textwrap.dedent("""
    import json, signal, sys
    signal.signal(signal.SIGTERM, lambda *_: None)  # Airflow 3's task runner: SIGTERM only calls on_kill
    from hrnn_core import retrain
    from hrnn_core.config import load_config
    cfg = load_config(overrides=json.loads(sys.argv[1]), environ={})
    retrain.train_and_evaluate(cfg, json.loads(sys.argv[2]), "hrnn")
""")


def test_a_retrain_task_stops_on_sigterm_within_seconds_and_leaves_the_champion(tmp_path: Path) -> None:
    """The HRNN-meta retrain task under Airflow's SIGTERM handler (which alone would let it train on): it stops
    within 5 s, removes its half-built run, publishes nothing (so nothing can be registered), the champion and
    the model store are unchanged, and the next attempt succeeds."""
    import json

    import bentoml

    from hrnn_core import registry, retrain
    from hrnn_core.config import load_config
    from research.synth import synthetic_snapshot
    from tests.champions import promote_tiny_champion

    champ = promote_tiny_champion(tmp_path / "champion", n_users=30, n_items=60, n_events=800, seed=3)
    try:
        store_before = sorted(str(m.tag) for m in bentoml.models.list())
        snap = synthetic_snapshot(tmp_path / "snap", n_users=40, n_items=60, n_events=1500, n_genres=5, seed=5)
        snapshot = {"snapshot_id": snap.name, "path": str(snap)}
        train = {"batch_size": 8, "bptt": 8, "progress": False, "val_owners": 10, "threads": 1}
        overrides = {"paths": {"data_dir": str(tmp_path / "data")},
                     "model": {"hidden_size": 16, "field_dim": 8, "input_size": 16},
                     "train": {**train, "epochs": 500, "min_epochs": 500}}  # trains for minutes unless stopped
        proc = subprocess.Popen([sys.executable, "-c", AIRFLOW_TASK, json.dumps(overrides), json.dumps(snapshot)],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=default_signals)
        runs = retrain.runs_dir(load_config(overrides=overrides, environ={}), snap.name)
        deadline = time.time() + 120
        while not list((runs / ".hrnn.tmp" / "train").glob("*.pt")) and time.time() < deadline:  # training
            assert proc.poll() is None, "the retrain task ended before it was stopped"
            time.sleep(0.2)
        assert list((runs / ".hrnn.tmp" / "train").glob("*.pt")), "no epoch checkpoint within 120 s"
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave it behind, even when the test fails
        assert time.time() - started < 5, f"took {time.time() - started:.1f} s to stop"
        assert proc.returncode == 128 + signal.SIGTERM
        assert sorted(p.name for p in runs.iterdir()) == []  # no half-built run, nothing published
        assert registry.champion_from_store() == champ.tag
        assert sorted(str(m.tag) for m in bentoml.models.list()) == store_before

        cfg = load_config(overrides={**overrides, "train": {**train, "epochs": 1}}, environ={})
        run = retrain.train_and_evaluate(cfg, snapshot, "hrnn")  # the next attempt
        assert (Path(run["artifact"]) / "model.pt").exists()
        assert registry.champion_from_store() == champ.tag
    finally:
        bentoml.models.delete(champ.tag)


def test_the_service_stops_on_sigterm_with_nothing_left(tmp_path: Path) -> None:
    import bentoml

    from tests.champions import promote_tiny_champion
    from tests.test_service import Server

    champ = promote_tiny_champion(tmp_path / "champion", n_users=30, n_items=60, n_events=800, seed=4)
    data = tmp_path / "data"
    data.mkdir()
    (data / "snapshots").symlink_to(champ.cfg.paths.snapshots_dir)
    try:
        server = Server(data, tmp_path / "serve.log")
        family = tree(server.proc.pid)
        assert len(family) >= 2  # the arbiter and its worker
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert_all_gone(family, within=15)
    finally:
        bentoml.models.delete(champ.tag)


def wait_for_descendant(proc: subprocess.Popen, needle: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, "the command ended before it was stopped"
        if any(needle in " ".join(p.cmdline()) for p in tree(proc.pid)[1:] if p.is_running()):
            return
        time.sleep(0.5)
    raise AssertionError(f"no {needle!r} process within {seconds} s")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_demo_leaves_no_process(tmp_path: Path, sig: int) -> None:
    """`hrnn demo` (what `make demo` runs; GNU make passes SIGTERM and the terminal's SIGINT on) stopped while
    `airflow dags test` runs."""
    env = {**os.environ, "HRNN_DATA_DIR": str(tmp_path / "data"), "HRNN__TRAIN__THREADS": "1"}
    proc = subprocess.Popen([HRNN, "demo"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=default_signals)
    wait_for_descendant(proc, "dags test", 600)
    time.sleep(3)
    family = tree(proc.pid)
    proc.send_signal(sig)
    proc.wait(30)
    assert_all_gone(family, within=10)
