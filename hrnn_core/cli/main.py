"""The ``hrnn`` command line. Every pipeline step is a command, so it runs without Airflow.

Errors the user can act on print one line on stderr and exit 2; nothing prints a traceback
unless ``HRNN_DEBUG=1``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrnn_core.cli import checks as argcheck
from hrnn_core.cli.models import models_app
from hrnn_core.cli.options import ConfigOpt, DataDirOpt, WarehouseOpt, cli_config, guard
from hrnn_core.errors import HrnnError

app = typer.Typer(
    help="hrnn: HRNN-meta recommendations as a batch workflow (ingest, transform, train, serve).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
datasets_app = typer.Typer(help="Fetch and convert datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")  # `hrnn models ...`: the registry (hrnn_core.cli.models)


# --------------------------------------------------------------------------- datasets


@datasets_app.command("list")
@guard
def datasets_list() -> None:
    """List the dataset adapters usable with `hrnn ingest --dataset NAME`."""
    from hrnn_core.data.datasets import registry  # noqa: PLC0415

    for name in sorted(registry()):
        typer.echo(name)


@datasets_app.command("fetch")
@guard
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: ml-100k.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Fetch a dataset into the data dir and convert it to contract files (checksums verified)."""
    from hrnn_core.data.datasets.load import fetch_dataset  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    argcheck.check_dataset(name)
    paths = fetch_dataset(cfg, name)
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


@app.command("ingest")
@guard
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
    from hrnn_core.data.datasets import convert  # noqa: PLC0415
    from hrnn_core.data.datasets.load import dataset_time_range, fetch_dataset  # noqa: PLC0415
    from hrnn_core.errors import ContractError  # noqa: PLC0415
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415

    cfg = cli_config(config, warehouse, data_dir)
    argcheck.check_exists(path, "--path")
    argcheck.check_table(table)
    if dataset:
        argcheck.check_dataset(dataset)
        if path is None:
            if dataset != "ml-100k":
                raise ContractError(dataset, "--dataset needs --path DIR (the raw dataset folder)")
            files = fetch_dataset(cfg, dataset)
        else:
            files = convert(dataset, path, cfg.paths.datasets_dir / dataset / "contract")
        src = Path(next(iter(files.values()))).parent
        cfg = dataset_time_range(cfg, src)
        reports = ingest_path(cfg, src, None)
    else:
        if path is None:
            raise ContractError("(no file)", "give --path FILE_OR_DIR or --dataset NAME")
        reports = ingest_path(cfg, path, table)
    _print_reports(reports, as_json)


# --------------------------------------------------------------------------- transforms


@app.command("transform")
@guard
def transform(
    gap: Annotated[Optional[float], typer.Option(help="Session inactivity gap in seconds.")] = None,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Rebuild sessions and time deltas; run the data checks."""
    from hrnn_core.data.transforms import build_sessions  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect, run_checks  # noqa: PLC0415

    cfg = cli_config(config, warehouse, data_dir)
    argcheck.check_positive(gap, "--gap")
    argcheck.require_warehouse(cfg)
    with connect(cfg) as con:
        n_sessions = build_sessions(con, cfg, gap)
        failed = {k: v[:3] for k, v in run_checks(con, cfg).items() if v}
    typer.echo(f"sessions: {n_sessions:,}")
    if failed:
        raise HrnnError(f"warehouse checks failed: {failed}")
    typer.echo("checks: all passed")


@app.command("snapshot")
@guard
def snapshot(
    as_of: Annotated[Optional[float], typer.Option("--as-of", help="Cut time (epoch s); default: after the last event.")] = None,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export training sequences, item frequencies, items and users as of a cut time (Parquet)."""
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    cfg = cli_config(config, warehouse, data_dir)
    argcheck.check_finite(as_of, "--as-of")
    argcheck.require_warehouse(cfg)
    with connect(cfg) as con:
        snap = export_snapshot(con, cfg, as_of)
    typer.echo(f"snapshot {snap.snapshot_id}: {snap.n_events:,} events, {snap.n_owners:,} sequences, "
               f"{snap.n_items:,} items -> {snap.path}")


@app.command("checks")
@guard
def checks(warehouse: WarehouseOpt = None, data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Run the warehouse's data checks (sql/checks); exit 1 if any returns rows."""
    from hrnn_core.data.warehouse import connect, run_checks  # noqa: PLC0415

    cfg = cli_config(config, warehouse, data_dir)
    with connect(cfg, read_only=True) as con:
        results = run_checks(con, cfg)
    bad = False
    for name, rows in results.items():
        typer.echo(f"{'ok  ' if not rows else 'FAIL'} {name} ({len(rows)} rows)")
        bad = bad or bool(rows)
    if bad:
        raise typer.Exit(1)


def _config_for_dags(config: Path | None) -> None:
    """The DAG tasks load their config from $HRNN_CONFIG: point it at --config when given."""
    import os  # noqa: PLC0415

    if config is not None:
        os.environ["HRNN_CONFIG"] = str(Path(config).resolve())


@app.command("demo")
@guard
def demo(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """The main job on MovieLens-100k through Airflow: ingest, retrain + gate, batch export."""
    from hrnn_core.cli.demo import run_demo  # noqa: PLC0415

    from hrnn_core.evaluation.checks import check_retrain_config  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    check_retrain_config(cfg)  # the DAGs' settings (run_demo checks them too): before the fetch and the ingest
    _config_for_dags(config)
    run_demo(cfg, say=typer.echo)


@app.command("airflow")
@guard
def airflow_ui(
    port: Annotated[int, typer.Option(help="Port of the UI/API server (bound to 127.0.0.1).")] = 8080,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start the Airflow UI with these DAGs (api-server, scheduler, dag-processor, triggerer)."""
    from hrnn_core.cli.local_airflow import serve_ui  # noqa: PLC0415
    from hrnn_core.evaluation.checks import check_retrain_config  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    argcheck.check_range(port, "--port", 1, 65535)
    check_retrain_config(cfg)  # the DAGs' settings: fail now, not in the first nightly run
    _config_for_dags(config)
    serve_ui(cfg, port)


# --------------------------------------------------------------------------- train


@app.command("train")
@guard
def train_command(
    as_of: Annotated[Optional[float], typer.Option("--as-of", help="Snapshot cut time (epoch s); default: after the last event.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Run folder name under <data_dir>/models (default: snapshot id + config hash).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last epoch checkpoint.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda (default: train.device).")] = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", help="Data-parallel processes launched with torchrun (default: train.processes).")] = None,
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

    from hrnn_core.train.trainer import train  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    from hrnn_core.evaluation.checks import check_device  # noqa: PLC0415

    cfg = cli_config(config, warehouse, data_dir)
    argcheck.check_finite(as_of, "--as-of")
    argcheck.check_run_id(run_id)
    argcheck.check_range(processes, "--processes", 1)
    train_cfg = dataclasses.replace(cfg.train, device=device) if device else cfg.train
    if processes:
        train_cfg = dataclasses.replace(train_cfg, processes=processes)  # ConfigError unless it divides batch_size
    check_device(train_cfg.device, "--device" if device else "train config: device")
    if run_id is not None and (cfg.paths.models_dir / run_id / "last.pt").exists() and not resume:
        raise argcheck.ArgumentError(f"--run-id {run_id}: {cfg.paths.models_dir / run_id} already holds a run; "
                                   "pass --resume or use another --run-id")
    argcheck.require_warehouse(cfg)
    with connect(cfg) as con:
        snap = export_snapshot(con, cfg, as_of)
    if run_id is None:
        settings = {"model": dataclasses.asdict(cfg.model),
                    "train": {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in ("progress", "device")}}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
        run_id = f"{snap.snapshot_id}-{digest}"
    run_dir = cfg.paths.models_dir / run_id
    typer.echo(f"snapshot {snap.snapshot_id}: {snap.n_events:,} events, {snap.n_owners:,} sequences, {snap.n_items:,} items")
    typer.echo(f"run: {run_dir}")
    if train_cfg.processes > 1:
        from hrnn_core.train.distributed import train_distributed  # noqa: PLC0415

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
@guard
def evaluate_command(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="ml-100k (fetched), or a shared dataset name with --path.")] = None,
    path: Annotated[Optional[Path], typer.Option("--path", help="Raw dataset folder for --dataset (see `hrnn datasets list`).")] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="leave_one_out | temporal | user_holdout | cold_start_items | rolling.")] = "leave_one_out",
    models: Annotated[str, typer.Option("--models", help="Comma-separated: hrnn,pop,recent_pop,bpr,fm,gru,sasrec.")] = "hrnn,pop,recent_pop,bpr,fm,gru",
    output: Annotated[Optional[Path], typer.Option("--output", help="Write the report JSON here (per-event arrays beside it).")] = None,
    chart: Annotated[Optional[Path], typer.Option("--chart", help="PNG chart path (default: beside --output, else data dir).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="HTML report path (default: beside --output, else data dir).")] = None,
    params: Annotated[Optional[str], typer.Option("--params", help='Protocol parameters as JSON, e.g. \'{"test_fraction": 0.2}\'.')] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits and fitting.")] = 0,
    warehouse: WarehouseOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Evaluate models on a fixed protocol (full ranking): leaderboard, PNG chart, HTML report, JSON."""
    from hrnn_core.data.datasets.load import ingest_dataset  # noqa: PLC0415
    from hrnn_core.evaluation.harness import leaderboard, run_evaluation  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    from hrnn_core.evaluation.checks import check_device, check_models  # noqa: PLC0415
    from hrnn_core.evaluation.harness import registered_options  # noqa: PLC0415
    from hrnn_core.evaluation.protocols import check_protocol  # noqa: PLC0415
    from hrnn_core.threads import apply_torch_threads  # noqa: PLC0415

    # Every argument first: a bad one fails here, before the fetch, the ingest and any training.
    cfg = cli_config(config, warehouse, data_dir)
    names = check_models([m.strip() for m in models.split(",") if m.strip()], where="--models")
    protocol_params = argcheck.parse_json_object(params, "--params")
    check_protocol(protocol, protocol_params)
    if {"hrnn", "gru", *registered_options(cfg)} & set(names):  # the models that train on train.device
        check_device(cfg.train.device, "train config: device")
    if dataset:
        argcheck.check_dataset(dataset)
        argcheck.check_raw_folder(dataset, path)
    elif path is not None:
        raise argcheck.ArgumentError(f"--path {path} needs --dataset NAME (the format of the raw folder)")
    else:
        argcheck.require_warehouse(cfg, "run `hrnn ingest` first or give --dataset NAME")
    argcheck.check_not_file(chart and chart.parent, "--chart's folder")
    argcheck.check_not_file(output and output.parent, "--output's folder")
    argcheck.check_not_file(html and html.parent, "--html's folder")

    if dataset:
        cfg = ingest_dataset(cfg, dataset, path, own_warehouse=warehouse is None and data_dir is None)
    with connect(cfg) as con:
        snap = export_snapshot(con, cfg)
    apply_torch_threads(cfg.train.threads)  # BPR/FM and the scoring too, not only HRNN-meta's training
    options = {"hrnn": {"model": cfg.model, "train": cfg.train},
               "gru": {"model": cfg.model, "train": cfg.train}, **registered_options(cfg)}
    chart_path = chart or (output.with_suffix(".png") if output else cfg.paths.reports_dir / f"{dataset or 'warehouse'}-{protocol}.png")
    report = run_evaluation(
        snap.path, protocol, names, dataset=dataset or "", protocol_params=protocol_params,
        model_options=options, seed=seed, output=output, chart_path=chart_path,
        progress=lambda msg: typer.echo(msg, err=True),
    )
    typer.echo(f"{report['dataset'] or 'warehouse'} / {protocol}: {report['n_events']:,} test events, {report['n_users']} users")
    typer.echo(leaderboard(report["_results"]))
    for name, test in report["significance"].items():
        typer.echo(f"  {name}: ndcg@10 diff {test['mean_diff']:+.4f} (95% CI {test['ci_low']:+.4f}..{test['ci_high']:+.4f}, p={test['p_value']:.3g})")
    html_path = html or (output.with_suffix(".html") if output else cfg.paths.reports_dir / f"{dataset or 'warehouse'}-{protocol}.html")
    _write_evaluation_page(cfg, report, html_path)
    typer.echo(f"chart: {chart_path}")
    typer.echo(f"page: {html_path}")
    if output:
        typer.echo(f"report: {output}")


def _write_evaluation_page(cfg, report: dict, path: Path) -> None:
    """The evaluation's HTML page, with what the nightly gate would decide on these numbers (no champion here)."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.evaluation.report import gate_section, write_report  # noqa: PLC0415

    results, metric = report["_results"], cfg.retrain.gate_metric
    gate = None
    others = {k: r.metrics for k, r in results.items() if k != "hrnn"}
    if "hrnn" in results and others:
        ok, why = registry.gate(results["hrnn"].metrics, others, metric)
        gate = gate_section("hrnn", results["hrnn"].metrics, others, metric, ok, why,
                            verdict="would be promoted" if ok else "would not be promoted",
                            note="An evaluation, not a retrain: nothing was registered or promoted. This is what the "
                                 "nightly gate (retrain.gate_metric) would decide against the models evaluated here; "
                                 "a retrain also compares the current champion.")
    title = f"Evaluation: {report['dataset'] or 'warehouse'}, {report['protocol']}"
    write_report(path, report["_split"], results, title=title, gate=gate)


@app.command("report")
@guard
def report_command(
    run: Annotated[Optional[str], typer.Argument(help="A retrain run: its snapshot id (or a prefix), or the tag of a "
                                                       "model it registered. Default: the newest run.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print the path of a retrain run's HTML report (open it in a browser; it needs no network)."""
    from hrnn_core.retrain import find_report  # noqa: PLC0415

    typer.echo(str(find_report(cli_config(config, data_dir=data_dir), run)))


# --------------------------------------------------------------------------- export


@app.command("export")
@guard
def export_command(
    model: Annotated[Optional[str], typer.Option("--model", help="Model tag (default: the champion in the model store).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Recommendations per user (default: export.k, 25).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Export folder (default: <data_dir>/exports/until-<interval end>).")] = None,
    shards: Annotated[Optional[int], typer.Option("--shards", help="Score users in this many shards (default: export.n_shards).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Batch recommendations for every user: recommendations.csv, .jsonl (Personalize shape), manifest."""
    from hrnn_core.serving.export import export_all  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    argcheck.check_range(k, "--k", 1, 500)
    argcheck.check_range(shards, "--shards", 1)
    argcheck.check_not_file(out, "--out")
    if model is not None:
        argcheck.check_store_tag(model)
    m = export_all(cfg, model, k, shards, out)
    typer.echo(f"model {m['model_tag']}: {m['n_users']:,} users x k={m['k']} -> "
               f"{m['files']['recommendations.csv']['rows']:,} rows in {m['seconds']:.1f} s")
    typer.echo(f"export: {m['path']}")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
