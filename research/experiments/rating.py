"""``hrnn-research rating``: the rating prediction task of the paper's Tables 4-5 (section 4.3).

Predict every test event's rating on a protocol split (``temporal`` by default) and report RMSE
and MAE for the training mean, the rolling-average baseline, the rating FM, and the plain GRU,
HRNN-meta without feedback and HRNN-meta, each recurrent model with the same value decoder on its
frozen state (``research.rating``). Paired tests (bootstrap CI + t-test) on the per-event
squared errors compare HRNN-meta with every other model.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hrnn_core.cli.options import DataDirOpt, OutputOpt, RawPathOpt, SnapshotOpt, cli_config, config_opt, guard
from research.experiments import dataset_snapshot, write_report

RatingConfigOpt = config_opt("TOML config file (else $HRNN_CONFIG): its model and train sections configure the recurrent models.")


def register(app: typer.Typer) -> None:
    @app.command("rating")
    @guard
    def rating(
        dataset: Annotated[str, typer.Option("--dataset", help="ml-100k (fetched) or a shared dataset name (../shared/data, or --path).")] = "ml-100k",
        path: RawPathOpt = None,
        snapshot: SnapshotOpt = None,
        protocol: Annotated[str, typer.Option("--protocol", help="temporal | rolling | leave_one_out | cold_start_items (one target event per case).")] = "temporal",
        params: Annotated[Optional[str], typer.Option("--params", help='Protocol parameters as JSON, e.g. \'{"test_fraction": 0.2}\'.')] = None,
        models: Annotated[str, typer.Option("--models", help="Comma-separated: global_mean,rolling_average,fm,gru,hrnn_no_feedback,hrnn.")] = "global_mean,rolling_average,fm,gru,hrnn_no_feedback,hrnn",
        seed: Annotated[int, typer.Option(help="Seed of the split (where random) and of every fit.")] = 0,
        output: OutputOpt = None,
        data_dir: DataDirOpt = None,
        config: RatingConfigOpt = None,
    ) -> None:
        """Tables 4-5: RMSE of rating prediction: rolling average, FM, GRU and HRNN-meta (+ value decoder)."""
        from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
        from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415
        from hrnn_core.threads import apply_torch_threads  # noqa: PLC0415
        from research.rating import format_table, run_rating  # noqa: PLC0415

        cfg = cli_config(config, data_dir=data_dir)
        apply_torch_threads(cfg.train.threads)
        data = SnapshotData.load(dataset_snapshot(cfg, dataset, path, snapshot))
        split = build_split(protocol, data, **(json.loads(params) if params else {}))
        say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
        say(split.describe())
        names = [m.strip() for m in models.split(",") if m.strip()]
        report = run_rating(split, names, seed=seed, model_cfg=cfg.model, train_cfg=cfg.train,
                            device=cfg.train.device, progress=say)
        report.pop("_squared_errors")
        report["dataset"] = dataset if snapshot is None else ""
        report["snapshot_id"] = data.snapshot_id
        typer.echo(f"{report['dataset'] or data.snapshot_id} / {protocol}: {report['n_events']:,} rated test "
                   f"events, {report['n_users']:,} users")
        typer.echo(format_table(report))
        if output:
            write_report(output, report)
