"""The ``hrnn`` command line. Every pipeline step is a command, so it runs without Airflow.

Errors the user can act on print one line on stderr and exit 2; nothing prints a traceback
unless ``HRNN_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from hrnn_core.cli_options import ConfigOpt, DataDirOpt, WarehouseOpt
from hrnn_core.errors import HrnnError

app = typer.Typer(
    help="hrnn: HRNN-meta recommendations as a batch workflow (ingest, transform, train, serve).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
datasets_app = typer.Typer(help="Fetch, convert and generate datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


def _add_models_app() -> None:
    from hrnn_core.cli_models import models_app  # noqa: PLC0415 - light module (typer only)

    app.add_typer(models_app, name="models")


def _add_experiments_app() -> None:
    from hrnn_core.cli_experiments import experiments_app  # noqa: PLC0415 - commands import heavy parts lazily

    app.add_typer(experiments_app, name="experiments")


_add_models_app()
_add_experiments_app()


def _cfg(config: Path | None, warehouse: Path | None = None, data_dir: Path | None = None):
    from hrnn_core.config import load_config  # noqa: PLC0415

    paths: dict = {}
    if warehouse:
        paths["warehouse"] = str(warehouse)
    if data_dir:
        paths["data_dir"] = str(data_dir)
    return load_config(config, overrides={"paths": paths} if paths else None)


def _guard(fn: Callable) -> Callable:
    """Turn errors into one clear line and an exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except HrnnError as exc:
            if os.environ.get("HRNN_DEBUG"):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - last resort: a message, not a traceback
            if os.environ.get("HRNN_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            typer.echo(f"error: {type(exc).__name__}: {first} (set HRNN_DEBUG=1 for details)", err=True)
            raise typer.Exit(1) from None

    return wrapper


# --------------------------------------------------------------------------- datasets


@datasets_app.command("list")
@_guard
def datasets_list() -> None:
    """List the dataset adapters usable with `hrnn ingest --dataset NAME`."""
    from hrnn_core.datasets import registry  # noqa: PLC0415

    for name in sorted(registry()):
        typer.echo(name)


@datasets_app.command("fetch")
@_guard
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: ml-100k.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Fetch a dataset into the data dir and convert it to contract files (checksums verified)."""
    paths = fetch_dataset(_cfg(config, data_dir=data_dir), name)
    for table, path in paths.items():
        typer.echo(f"{table}: {path}")


def fetch_dataset(cfg, name: str) -> dict[str, Path]:
    """Fetch ``name`` (only ml-100k is downloadable) and convert it; returns contract files."""
    from hrnn_core.datasets import convert  # noqa: PLC0415
    from hrnn_core.datasets.ml100k import fetch_ml100k  # noqa: PLC0415
    from hrnn_core.errors import DatasetError  # noqa: PLC0415

    if name != "ml-100k":
        raise DatasetError(
            f"only ml-100k can be fetched; for {name!r} use `hrnn ingest --dataset {name} --path DIR`"
        )
    cache = cfg.paths.datasets_dir
    raw = fetch_ml100k(cache)
    out = cache / name / "contract"
    if (out / "interactions.parquet").exists() and (out / "conversion_report.json").exists():
        return {t: out / f"{t}.parquet" for t in ("interactions", "users", "items") if (out / f"{t}.parquet").exists()}
    return convert(name, raw, out)


@datasets_app.command("synth")
@_guard
def datasets_synth(
    out: Annotated[Path, typer.Option(help="Output folder for the contract files.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 2000,
    events: Annotated[int, typer.Option(help="Number of events (exact).")] = 50_000,
    genres: Annotated[int, typer.Option(help="Number of genres.")] = 20,
    days: Annotated[int, typer.Option(help="Days the log spans.")] = 30,
    cold_items: Annotated[float, typer.Option(help="Fraction of items created during the log.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    truth: Annotated[bool, typer.Option(help="Also write per-event true log-probabilities.")] = False,
) -> None:
    """Generate a seeded synthetic log with known ground truth (streamed to Parquet)."""
    from hrnn_core.datasets import synth  # noqa: PLC0415

    paths = synth.generate(
        out, n_users=users, n_items=items, n_events=events, n_genres=genres, days=days,
        cold_items_fraction=cold_items, seed=seed, write_truth=truth,
    )
    for table, path in paths.items():
        typer.echo(f"{table}: {path}")


# --------------------------------------------------------------------------- ingest


def _print_reports(reports, as_json: bool) -> None:
    totals = {k: sum(getattr(r, k) for r in reports) for k in ("rows_in", "accepted", "duplicates", "quarantined")}
    reasons: dict[str, int] = {}
    for r in reports:
        for reason, n in r.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    if as_json:
        payload = {**totals, "quarantine_reasons": reasons, "files": [r.to_dict() for r in reports]}
        typer.echo(json.dumps(payload))
        return
    for r in reports:
        note = " (already ingested: unchanged)" if r.already_ingested else ""
        typer.echo(f"{r.table:<12} {Path(r.source_file).name}{note}")
        typer.echo(
            f"  read {r.rows_in:,}  accepted {r.accepted:,}  duplicates {r.duplicates:,}  "
            f"quarantined {r.quarantined:,}  ({r.seconds:.1f} s)"
        )
        for reason, n in sorted(r.quarantine_reasons.items()):
            typer.echo(f"    quarantined: {reason}: {n:,}")


def ingest_dataset(cfg, dataset: str, path: Path | None = None, own_warehouse: bool = True):
    """Convert and ingest ``dataset`` for an evaluation; returns the config whose warehouse holds it.

    ml-100k is fetched; another dataset is converted from ``path``, by default the development
    copy beside the checkout (``hrnn_core.datasets.shared_raw_dir``). ``own_warehouse``: one warehouse per
    dataset (``<data_dir>/eval-<dataset>.duckdb``), so datasets never mix. Re-ingesting the same
    files is a no-op (ingest is idempotent).
    """
    from hrnn_core.config import replace  # noqa: PLC0415
    from hrnn_core.datasets import convert, shared_raw_dir  # noqa: PLC0415
    from hrnn_core.errors import DatasetError  # noqa: PLC0415
    from hrnn_core.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.warehouse import connect  # noqa: PLC0415

    if own_warehouse:
        cfg = replace(cfg, paths={"warehouse": Path(cfg.paths.data_dir) / f"eval-{dataset}.duckdb"})
    if path is None and dataset != "ml-100k":
        path = shared_raw_dir(dataset)
        if not path.is_dir():
            raise DatasetError(f"{dataset}: no raw folder at {path}; give --path DIR (see `hrnn datasets list`)")
    files = fetch_dataset(cfg, dataset) if path is None else convert(
        dataset, path, cfg.paths.datasets_dir / dataset / "contract")
    src = Path(next(iter(files.values()))).parent
    with connect(cfg) as con:
        ingest_path(_dataset_time_range(cfg, src), src, None, con)
    return cfg


def _dataset_time_range(cfg, contract_dir: Path):
    """Apply the dataset's documented collection window (conversion report) to validation."""
    from hrnn_core.config import replace  # noqa: PLC0415

    report = contract_dir / "conversion_report.json"
    if not report.exists():
        return cfg
    window = json.loads(report.read_text()).get("notes", {}).get("valid_time_range")
    if not window:
        return cfg
    return replace(cfg, ingest={"min_timestamp": float(window[0]), "max_timestamp": float(window[1])})


@app.command("ingest")
@_guard
def ingest(
    path: Annotated[Optional[Path], typer.Option("--path", help="Contract file or folder; with --dataset: the raw dataset folder.")] = None,
    table: Annotated[Optional[str], typer.Option("--table", help="interactions | users | items (default: from file name, else interactions).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Convert a known dataset format first (see `hrnn datasets list`).")] = None,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Validate contract files (Great Expectations), quarantine bad rows, load into DuckDB."""
    from hrnn_core.datasets import convert  # noqa: PLC0415
    from hrnn_core.errors import ContractError  # noqa: PLC0415
    from hrnn_core.ingest import ingest_path  # noqa: PLC0415

    cfg = _cfg(config, warehouse, data_dir)
    if dataset:
        if path is None:
            if dataset != "ml-100k":
                raise ContractError(dataset, "--dataset needs --path DIR (the raw dataset folder)")
            files = fetch_dataset(cfg, dataset)
        else:
            files = convert(dataset, path, cfg.paths.datasets_dir / dataset / "contract")
        src = Path(next(iter(files.values()))).parent
        cfg = _dataset_time_range(cfg, src)
        reports = ingest_path(cfg, src, None)
    else:
        if path is None:
            raise ContractError("(no file)", "give --path FILE_OR_DIR or --dataset NAME")
        reports = ingest_path(cfg, path, table)
    _print_reports(reports, as_json)


# --------------------------------------------------------------------------- transforms


@app.command("transform")
@_guard
def transform(
    start: Annotated[Optional[float], typer.Option(help="Data interval start (epoch s); default: all data.")] = None,
    end: Annotated[Optional[float], typer.Option(help="Data interval end (epoch s, exclusive).")] = None,
    gap: Annotated[Optional[float], typer.Option(help="Session inactivity gap in seconds.")] = None,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Rebuild sessions and time deltas, and the interval's hourly item popularity; run checks."""
    from hrnn_core.transforms import build_sessions, update_hourly_popularity  # noqa: PLC0415
    from hrnn_core.warehouse import connect, run_checks  # noqa: PLC0415

    cfg = _cfg(config, warehouse, data_dir)
    with connect(cfg) as con:
        n_sessions = build_sessions(con, cfg, gap)
        lo, hi, n_rows = update_hourly_popularity(con, cfg, start, end)
        failed = {k: v[:3] for k, v in run_checks(con, cfg).items() if v}
    typer.echo(f"sessions: {n_sessions:,}")
    typer.echo(f"hourly popularity: {n_rows:,} item-hours in [{lo}, {hi})")
    if failed:
        raise HrnnError(f"warehouse checks failed: {failed}")
    typer.echo("checks: all passed")


@app.command("snapshot")
@_guard
def snapshot(
    as_of: Annotated[Optional[float], typer.Option("--as-of", help="Cut time (epoch s); default: after the last event.")] = None,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export training sequences, item frequencies, items and users as of a cut time (Parquet)."""
    from hrnn_core.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.warehouse import connect  # noqa: PLC0415

    cfg = _cfg(config, warehouse, data_dir)
    with connect(cfg) as con:
        snap = export_snapshot(con, cfg, as_of)
    typer.echo(f"snapshot {snap.snapshot_id}: {snap.n_events:,} events, {snap.n_owners:,} sequences, "
               f"{snap.n_items:,} items -> {snap.path}")


@app.command("checks")
@_guard
def checks(warehouse: WarehouseOpt = None, data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Run the warehouse's data checks (sql/checks); exit 1 if any returns rows."""
    from hrnn_core.warehouse import connect, run_checks  # noqa: PLC0415

    cfg = _cfg(config, warehouse, data_dir)
    with connect(cfg, read_only=True) as con:
        results = run_checks(con, cfg)
    bad = False
    for name, rows in results.items():
        typer.echo(f"{'ok  ' if not rows else 'FAIL'} {name} ({len(rows)} rows)")
        bad = bad or bool(rows)
    if bad:
        raise typer.Exit(1)


@app.command("demo")
@_guard
def demo(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """The main job on MovieLens-100k through Airflow: ingest, retrain + gate, batch export."""
    from hrnn_core.demo import run_demo  # noqa: PLC0415

    run_demo(_cfg(config, data_dir=data_dir), say=typer.echo)


@app.command("airflow")
@_guard
def airflow_ui(
    port: Annotated[int, typer.Option(help="Port of the UI/API server (bound to 127.0.0.1).")] = 8080,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start the Airflow UI with these DAGs (api-server, scheduler, dag-processor, triggerer)."""
    from hrnn_core.local_airflow import serve_ui  # noqa: PLC0415

    serve_ui(_cfg(config, data_dir=data_dir), port)


# --------------------------------------------------------------------------- train


@app.command("train")
@_guard
def train_command(
    as_of: Annotated[Optional[float], typer.Option("--as-of", help="Snapshot cut time (epoch s); default: after the last event.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Run folder name under <data_dir>/models (default: snapshot id + config hash).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last epoch checkpoint.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda (default: train.device).")] = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", min=1, help="Data-parallel processes launched with torchrun (default: train.processes).")] = None,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export a snapshot and train HRNN-meta on it: checkpoints, report.json and loss_curve.png.

    With --processes N > 1 it trains data-parallel on N local processes (torchrun; gloo on CPU,
    nccl on GPUs): each process trains batch_size / N of every batch's owners.
    """
    import dataclasses  # noqa: PLC0415
    import hashlib  # noqa: PLC0415

    from hrnn_core.train import train  # noqa: PLC0415
    from hrnn_core.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.warehouse import connect  # noqa: PLC0415

    cfg = _cfg(config, warehouse, data_dir)
    train_cfg = dataclasses.replace(cfg.train, device=device) if device else cfg.train
    if processes:
        train_cfg = dataclasses.replace(train_cfg, processes=processes)
    with connect(cfg) as con:
        snap = export_snapshot(con, cfg, as_of)
    if run_id is None:
        settings = {"model": dataclasses.asdict(cfg.model),
                    "train": {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in ("progress", "device")}}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
        run_id = f"{snap.snapshot_id}-{digest}"
    run_dir = Path(cfg.paths.data_dir) / "models" / run_id
    typer.echo(f"snapshot {snap.snapshot_id}: {snap.n_events:,} events, {snap.n_owners:,} sequences, {snap.n_items:,} items")
    typer.echo(f"run: {run_dir}")
    if train_cfg.processes > 1:
        from hrnn_core.distributed import train_distributed  # noqa: PLC0415

        typer.echo(f"data-parallel: {train_cfg.processes} processes (log: {run_dir / 'ddp.log'})")
        result = train_distributed(snap.path, run_dir, cfg.model, train_cfg, resume=resume)
    else:
        result = train(snap.path, run_dir, cfg.model, train_cfg, resume=resume)
    last = result.history[-1] if result.history else {}
    shown = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    typer.echo(f"epochs: {len(result.history)}{' (early stop)' if result.stopped_early else ''}; last: {shown}")
    typer.echo(f"best checkpoint: {result.best_checkpoint}")
    typer.echo(f"report: {result.report}")


# --------------------------------------------------------------------------- evaluate


@app.command("evaluate")
@_guard
def evaluate_command(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="ml-100k (fetched), or a shared dataset name with --path.")] = None,
    path: Annotated[Optional[Path], typer.Option("--path", help="Raw dataset folder for --dataset (see `hrnn datasets list`).")] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="leave_one_out | temporal | user_holdout | cold_start_items | rolling.")] = "leave_one_out",
    models: Annotated[str, typer.Option("--models", help="Comma-separated: hrnn,pop,recent_pop,bpr,fm,gru.")] = "hrnn,pop,recent_pop,bpr,fm,gru",
    output: Annotated[Optional[Path], typer.Option("--output", help="Write the report JSON here (per-event arrays beside it).")] = None,
    chart: Annotated[Optional[Path], typer.Option("--chart", help="PNG chart path (default: beside --output, else data dir).")] = None,
    params: Annotated[Optional[str], typer.Option("--params", help='Protocol parameters as JSON, e.g. \'{"test_fraction": 0.2}\'.')] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits and fitting.")] = 0,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Evaluate models on a fixed protocol (full ranking): leaderboard, PNG chart, JSON."""
    from hrnn_core.evaluate import leaderboard, run_evaluation  # noqa: PLC0415
    from hrnn_core.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.warehouse import connect  # noqa: PLC0415

    cfg = _cfg(config, warehouse, data_dir)
    if dataset:
        cfg = ingest_dataset(cfg, dataset, path, own_warehouse=warehouse is None and data_dir is None)
    with connect(cfg) as con:
        snap = export_snapshot(con, cfg)
    names = [m.strip() for m in models.split(",") if m.strip()]
    options = {"hrnn": {"model": cfg.model, "train": cfg.train},
               "gru": {"model": cfg.model, "train": cfg.train}}
    chart_path = chart or (output.with_suffix(".png") if output else Path(cfg.paths.data_dir) / "reports" / f"{dataset or 'warehouse'}-{protocol}.png")
    report = run_evaluation(
        snap.path, protocol, names, dataset=dataset or "", protocol_params=json.loads(params) if params else None,
        model_options=options, seed=seed, output=output, chart_path=chart_path,
        progress=lambda msg: typer.echo(msg, err=True),
    )
    typer.echo(f"{report['dataset'] or 'warehouse'} / {protocol}: {report['n_events']:,} test events, {report['n_users']} users")
    typer.echo(leaderboard(report["_results"]))
    for name, test in report["significance"].items():
        typer.echo(f"  {name}: ndcg@10 diff {test['mean_diff']:+.4f} (95% CI {test['ci_low']:+.4f}..{test['ci_high']:+.4f}, p={test['p_value']:.3g})")
    typer.echo(f"chart: {chart_path}")
    if output:
        typer.echo(f"report: {output}")


# --------------------------------------------------------------------------- export


@app.command("export")
@_guard
def export_command(
    model: Annotated[Optional[str], typer.Option("--model", help="Model tag (default: the champion in the model store).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Recommendations per user (default: export.k, 25).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Export folder (default: <data_dir>/exports/until-<interval end>).")] = None,
    shards: Annotated[Optional[int], typer.Option("--shards", help="Score users in this many shards (default: export.n_shards).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Batch recommendations for every user: recommendations.csv, .jsonl (Personalize shape), manifest."""
    from hrnn_core.export import export_all  # noqa: PLC0415

    cfg = _cfg(config, data_dir=data_dir)
    m = export_all(cfg, model, k, shards, out)
    typer.echo(f"model {m['model_tag']}: {m['n_users']:,} users x k={m['k']} -> "
               f"{m['files']['recommendations.csv']['rows']:,} rows in {m['seconds']:.1f} s")
    typer.echo(f"export: {m['path']}")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
