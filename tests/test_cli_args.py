"""Bad arguments fail first (issue 22): every `hrnn` command checks all its arguments before any work.

Each case runs one command in-process (typer's CliRunner) with an empty, isolated data dir and the
functions that do work (fetch, convert, ingest, sessions, snapshot, training, evaluation, export,
Airflow) replaced by ones that fail the test. A case passes when the command exits 2 (an
``HrnnError`` turned into one line by ``guard``), the message names the bad value, there is no
traceback, nothing was called and nothing was written under the data dir.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hrnn_core.cli.main import app
from hrnn_core.data.datasets.load import fetch_dataset as REAL_FETCH


class WorkDone(BaseException):
    """Raised by a forbidden work step; a BaseException, so ``guard`` cannot turn it into a message."""


def _forbid(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    def boom(*args, **kwargs):
        raise WorkDone(f"{target} was called: an argument should have failed first")

    monkeypatch.setattr(target, boom)


# Every step that does work, patched where the commands import it from (lazily, at call time).
WORK = [
    "hrnn_core.data.datasets.load.fetch_dataset",
    "hrnn_core.data.datasets.load.ingest_dataset",
    "hrnn_core.data.datasets.ml100k.fetch_ml100k",
    "hrnn_core.data.datasets.convert",
    "hrnn_core.data.ingest.ingest_path",
    "hrnn_core.data.transforms.build_sessions",
    "hrnn_core.data.transforms.export_snapshot",
    "hrnn_core.train.trainer.train",
    "hrnn_core.train.distributed.train_distributed",
    "hrnn_core.evaluation.harness.run_evaluation",
    "hrnn_core.serving.export.export_all",
    "hrnn_core.cli.local_airflow.setup",
    "hrnn_core.cli.local_airflow.serve_ui",
]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HRNN_DATA_DIR, no HRNN_CONFIG or HRNN__* overrides, every work step forbidden."""
    import os

    monkeypatch.setenv("HRNN_CONFIG", "")  # recorded, so a command that sets it cannot leak it
    for key in ["HRNN_CONFIG", *(k for k in os.environ if k.startswith("HRNN__"))]:
        monkeypatch.delenv(key)
    d = tmp_path / "data"
    monkeypatch.setenv("HRNN_DATA_DIR", str(d))
    for target in WORK:
        _forbid(monkeypatch, target)
    return d


def run(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a WorkDone, or an error that escaped guard
    return res.exit_code, res.output, time.monotonic() - started


def assert_fails_first(data_dir: Path, args: list[str], *names: str) -> str:
    code, out, seconds = run(*args)
    assert code == 2, f"exit {code}: {out}"
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1, out
    assert "Traceback" not in out
    for name in names:
        assert name in out, f"{name!r} not in {out!r}"
    written = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")) if data_dir.exists() else []
    assert written == [], f"work was done: {written}"
    assert seconds < 30, f"took {seconds:.0f} s to fail"
    return out


# --------------------------------------------------------------------------- evaluate


def test_evaluate_unknown_model_fails_before_fetch_and_ingest(data_dir: Path) -> None:
    """The issue's example: it used to fetch, ingest and train HRNN-meta for six minutes first."""
    out = assert_fails_first(data_dir, ["evaluate", "--dataset", "ml-100k", "--models", "hrnn,bert4rec"],
                             "unknown model 'bert4rec'")
    assert "hrnn" in out and "pop" in out  # it lists the known ones


@pytest.mark.parametrize("args, names", [
    (["--models", ","], ["no models given"]),
    (["--models", "pop,pop"], ["pop", "more than once"]),
    (["--protocol", "temporl"], ["unknown protocol 'temporl'"]),
    (["--params", "{bad"], ["--params", "{bad"]),
    (["--params", "[0.2]"], ["--params", "[0.2]"]),
    (["--protocol", "temporal", "--params", '{"test_frac": 0.2}'], ["test_frac"]),
    (["--protocol", "temporal", "--params", '{"test_fraction": 2}'], ["test_fraction", "2"]),
    (["--protocol", "user_holdout", "--params", '{"seed": "one"}'], ["seed", "'one'"]),
    (["--protocol", "rolling", "--params", '{"frame_seconds": 0}'], ["frame_seconds", "0"]),
    (["--dataset", "movielens"], ["unknown dataset 'movielens'"]),
    (["--dataset", "yoochoose", "--path", "/no/such/folder"], ["/no/such/folder"]),
    (["--path", "/tmp"], ["--path", "needs --dataset"]),
    ([], ["warehouse", "does not exist"]),  # no --dataset and no warehouse: nothing to evaluate
])
def test_evaluate_checks_every_argument_first(data_dir: Path, args: list[str], names: list[str]) -> None:
    dataset = [] if "--dataset" in args or "--path" in args or not args else ["--dataset", "ml-100k"]
    assert_fails_first(data_dir, ["evaluate", *dataset, *args], *names)


def test_evaluate_unknown_protocol_with_a_good_model(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["evaluate", "--dataset", "ml-100k", "--models", "pop",
                                  "--protocol", "leave-one-out"], "'leave-one-out'")


# --------------------------------------------------------------------------- config (every command)

CONFIG_COMMANDS = [
    ["datasets", "fetch", "ml-100k"],
    ["ingest", "--dataset", "ml-100k"],
    ["transform"],
    ["snapshot"],
    ["checks"],
    ["demo"],
    ["airflow"],
    ["train"],
    ["evaluate", "--dataset", "ml-100k", "--models", "pop"],
    ["export"],
    ["models", "list"],
    ["models", "show", "hrnn-meta:abc"],
    ["models", "promote", "hrnn-meta:abc"],
    ["models", "rollback"],
    ["report"],
]


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_missing_config_file_fails_first(data_dir: Path, tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert_fails_first(data_dir, [*command, "--config", str(missing)], str(missing), "does not exist")


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_unknown_config_key_fails_first(data_dir: Path, tmp_path: Path, command: list[str]) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[train]\nepochs = 1\nepocs = 2\n")
    assert_fails_first(data_dir, [*command, "--config", str(conf)], "epocs")


@pytest.mark.parametrize("command", [["demo"], ["airflow"]])
@pytest.mark.parametrize("setting, names", [
    ('[retrain]\nmodels = ["hrnn", "bert4rec"]\n', ["unknown model 'bert4rec'"]),
    ('[retrain]\ngate_metric = "ndcg@11"\n', ["ndcg@11"]),
    ('[train]\ndevice = "gpu"\n', ["'gpu'"]),
])
def test_demo_and_airflow_check_the_retrain_settings_first(data_dir: Path, tmp_path: Path, command: list[str],
                                                          setting: str, names: list[str]) -> None:
    """`hrnn demo` would fetch and ingest ml-100k before the retrain DAG met the bad setting."""
    conf = tmp_path / "c.toml"
    conf.write_text(setting)
    assert_fails_first(data_dir, [*command, "--config", str(conf)], *names)


def test_airflow_port(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["airflow", "--port", "0"], "--port", "0")


# --------------------------------------------------------------------------- datasets


def test_datasets_fetch_unknown_name(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["datasets", "fetch", "movielens"], "unknown dataset 'movielens'")


def test_datasets_fetch_a_dataset_that_cannot_be_fetched(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hrnn_core.data.datasets.load as load

    monkeypatch.setattr(load, "fetch_dataset", REAL_FETCH)  # it says no before fetch_ml100k (still forbidden)
    assert_fails_first(data_dir, ["datasets", "fetch", "yoochoose"], "'yoochoose'", "--path")


# --------------------------------------------------------------------------- ingest, transform, snapshot, checks


@pytest.mark.parametrize("args, names", [
    (["--path", "/no/such/file.csv"], ["/no/such/file.csv", "does not exist"]),
    (["--dataset", "yoochoose", "--path", "/no/such/dir"], ["/no/such/dir", "does not exist"]),
    (["--dataset", "movielens"], ["unknown dataset 'movielens'"]),
    (["--dataset", "movielens", "--path", "/tmp"], ["unknown dataset 'movielens'"]),
    (["--dataset", "yoochoose"], ["--path"]),
    (["--table", "ratings", "--path", "/tmp"], ["'ratings'"]),
    ([], ["--path"]),
])
def test_ingest_checks_every_argument_first(data_dir: Path, args: list[str], names: list[str]) -> None:
    assert_fails_first(data_dir, ["ingest", *args], *names)


def test_transform_gap(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["transform", "--gap", "-5"], "--gap", "-5")


def test_transform_without_a_warehouse_does_not_create_one(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["transform"], "warehouse", "does not exist")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_snapshot_as_of_not_finite(data_dir: Path, value: str) -> None:
    assert_fails_first(data_dir, ["snapshot", "--as-of", value], "--as-of", value)


def test_snapshot_without_a_warehouse_does_not_create_one(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["snapshot"], "warehouse", "does not exist")


def test_checks_without_a_warehouse(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["checks"], "warehouse", "does not exist")


# --------------------------------------------------------------------------- train


@pytest.mark.parametrize("args, names", [
    (["--device", "gpu"], ["'gpu'"]),
    (["--device", "cuda:x"], ["'cuda:x'"]),
    (["--as-of", "nan"], ["--as-of", "nan"]),
    (["--processes", "0"], ["--processes", "0"]),
    (["--run-id", "../elsewhere"], ["'../elsewhere'"]),
    ([], ["warehouse", "does not exist"]),
])
def test_train_checks_every_argument_first(data_dir: Path, args: list[str], names: list[str]) -> None:
    assert_fails_first(data_dir, ["train", *args], *names)


def test_train_cuda_without_a_gpu(data_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_fails_first(data_dir, ["train", "--device", "cuda"], "'cuda'", "no CUDA device")


def test_train_run_id_that_already_holds_a_run(data_dir: Path) -> None:
    run_dir = data_dir / "models" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"")
    code, out, _ = run("train", "--run-id", "r1")
    assert code == 2 and "r1" in out and "--resume" in out and "Traceback" not in out, out
    assert not (data_dir / "warehouse.duckdb").exists() and not (data_dir / "snapshots").exists()


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("args, names", [
    (["--k", "0"], ["--k", "0"]),
    (["--k", "501"], ["--k", "501"]),
    (["--shards", "0"], ["--shards", "0"]),
    (["--model", "hrnn-meta:nosuchtag"], ["'hrnn-meta:nosuchtag'", "not in the model store"]),
])
def test_export_checks_every_argument_first(data_dir: Path, args: list[str], names: list[str]) -> None:
    assert_fails_first(data_dir, ["export", *args], *names)


def test_export_out_is_a_file(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_fails_first(data_dir, ["export", "--out", str(f)], str(f))


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("command", [["show", "hrnn-meta:abc"], ["promote", "hrnn-meta:abc"], ["rollback"]])
def test_models_without_a_registry_do_not_create_a_warehouse(data_dir: Path, command: list[str]) -> None:
    assert_fails_first(data_dir, ["models", *command], "warehouse", "no model is registered")


@pytest.mark.parametrize("command", ["show", "promote"])
def test_models_unknown_tag(data_dir: Path, command: str) -> None:
    from hrnn_core.config import load_config
    from hrnn_core.data.warehouse import connect

    cfg = load_config()
    with connect(cfg) as con:  # an empty registry
        before = con.execute("select count(*) from model_events").fetchall()[0][0]
    code, out, _ = run("models", command, "hrnn-meta:nosuchtag")
    assert code == 2 and "'hrnn-meta:nosuchtag'" in out and "Traceback" not in out, out
    with connect(cfg, read_only=True) as con:
        assert con.execute("select count(*) from model_events").fetchall()[0][0] == before


# --------------------------------------------------------------------------- report


def test_report_without_a_retrain(data_dir: Path) -> None:
    assert_fails_first(data_dir, ["report"], "no retrain has written a report yet")


def test_report_finds_a_run_by_snapshot_prefix(data_dir: Path) -> None:
    import os

    old, new = data_dir / "runs" / "0a1b2c" / "report.html", data_dir / "runs" / "0a9f00" / "report.html"
    for page in (old, new):
        page.parent.mkdir(parents=True)
        page.write_text("<html></html>")
    os.utime(old, (1, 1))  # the older run
    assert run("report")[:2] == (0, f"{new}\n")  # the newest
    assert run("report", "0a1")[:2] == (0, f"{old}\n")
    for arg, says in (("0a", "2 retrain reports match '0a'"), ("ff", "no retrain report matches 'ff'"),
                      ("../../etc", "no retrain report matches")):
        code, out, _ = run("report", arg)
        assert code == 2 and out.startswith("error: ") and says in out and "Traceback" not in out, out


def test_every_command_is_covered() -> None:
    """A new command gets its argument checks and a case here."""
    import typer.main

    group = typer.main.get_command(app)
    names = set()
    for name, cmd in group.commands.items():
        names.update({f"{name} {sub}" for sub in cmd.commands} if hasattr(cmd, "commands") else {name})
    covered = {"evaluate", "demo", "airflow", "datasets fetch", "ingest", "transform",
               "snapshot", "checks", "train", "export", "models list", "models show", "models promote",
               "models rollback", "datasets list", "report"}  # datasets list: no arguments
    assert names == covered
